"""``skewless serve --workers N``: N server processes on one port, and their supervisor.

One Python process serves ``Score`` on one core (the GIL); the kernel spreads incoming
connections over several processes listening on the same port with ``SO_REUSEPORT``.
Each worker is a complete :class:`serving.server.ScoringServer` with its own model
watcher, store connection and prediction-log shard ``w<i>`` (``predictions-w<i>-<n>``);
with a metrics port ``P``, worker ``i`` serves ``/metrics`` on ``P + i``.

The parent only supervises:

* it checks the address once, and for port 0 reserves a free port with a bound,
  non-listening ``SO_REUSEPORT`` socket until every worker has bound it (so all workers
  get the same port and nobody else takes it);
* it prints ``listening on port P`` once every worker listens;
* SIGTERM/SIGINT are forwarded once to every worker as SIGTERM (workers run in their own
  session, so a terminal's Ctrl-C reaches only the parent), and each stops gracefully;
* exit code 0 when every worker stopped cleanly; when a worker dies, the others are
  stopped and the exit code is 1. Workers get SIGTERM if the parent itself dies
  (``PR_SET_PDEATHSIG``), so none is orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from serving.server import BindError, ServerConfig, check_bindable, serve
from serving.tls import server_credentials

log = logging.getLogger("skewless.serving.workers")

#: the worker process: read (config, log level) from stdin, serve until SIGTERM
_WORKER = "import sys; from serving.workers import worker_main; sys.exit(worker_main())"
#: seconds a worker may take beyond its grace period to stop before it is killed
STOP_SLACK_S = 30.0
_PR_SET_PDEATHSIG = 1


def worker_config(config: ServerConfig, index: int, port: int) -> ServerConfig:
    """The config of worker ``index``: the shared port, its shard and its metrics port."""
    host = config.address.rpartition(":")[0]
    return replace(
        config,
        address=f"{host}:{port}",
        reuse_port=True,
        worker=index,
        metrics_port=config.metrics_port + index if config.metrics_port else 0,
    )


def _reserve(address: str) -> tuple[int, socket.socket | None]:
    """(port, the socket holding it): a free port for ``host:0``, else the given one."""
    check_bindable(address)
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise BindError(f"address: --workers needs host:port, got {address}")
    if int(port) != 0:
        return int(port), None
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host.strip("[]") or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    s = socket.socket(family, kind, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(sockaddr)
    return int(s.getsockname()[1]), s


class _Worker:
    def __init__(self, index: int, config: ServerConfig, log_level: str) -> None:
        import serving

        self.index = index
        root = str(Path(serving.__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(pickle.dumps((config, log_level, os.getpid())))
            self.proc.stdin.close()

    def started(self) -> bool:
        """Block until the worker listens (True) or exits (False)."""
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().startswith(b"listening on port ")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def describe(self) -> str:
        return f"worker {self.index} (pid {self.proc.pid})"


def serve_workers(
    config: ServerConfig,
    workers: int,
    on_started: Callable[[int], Any] | None = None,
    log_level: str = "INFO",
) -> int:
    """Run ``workers`` server processes on ``config.address`` until SIGTERM/SIGINT;
    returns the exit code (0: every worker stopped cleanly)."""
    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)  # fail here once
    port, held = _reserve(config.address)
    stopping = threading.Event()
    pool: list[_Worker] = []

    def stop(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            log.info("signal received: stopping %d workers", len(pool))
            for w in pool:
                w.signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(workers):
            if stopping.is_set():
                break
            pool.append(_Worker(i, worker_config(config, i, port), log_level))
        ready = all([w.started() for w in pool])
        if held is not None:
            held.close()
        if ready and not stopping.is_set():
            if on_started is not None:
                on_started(port)
            log.info("%d workers serving on port %d: pids %s", workers, port,
                     [w.proc.pid for w in pool])  # fmt: skip
        return _supervise(pool, stopping, config.grace_s)
    finally:
        if held is not None:
            held.close()
        for w in pool:  # never leave a worker behind
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _supervise(pool: list[_Worker], stopping: threading.Event, grace_s: float) -> int:
    """Wait for a stop signal or a worker's death; then stop every worker."""
    failed = None
    while not stopping.is_set():
        failed = next((w for w in pool if w.proc.poll() is not None), None)
        if failed is not None:
            log.error("%s exited with code %s; stopping the others", failed.describe(),
                      failed.proc.returncode)  # fmt: skip
            break
        stopping.wait(0.2)
    for w in pool:
        w.signal(signal.SIGTERM)
    code = 0 if failed is None else 1
    for w in pool:
        try:
            rc = w.proc.wait(grace_s + STOP_SLACK_S)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in time; killed", w.describe())
            w.proc.kill()
            w.proc.wait()
            code = 1
            continue
        if rc not in (0, -signal.SIGTERM) and w is not failed:
            log.error("%s stopped with code %s", w.describe(), rc)
            code = 1
    return code


def worker_main() -> int:
    """Entry point of a worker process (see :data:`_WORKER`)."""
    config, log_level, parent = pickle.load(sys.stdin.buffer)
    with contextlib.suppress(OSError, AttributeError):  # Linux: die with the parent
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl
        return 1
    logging.basicConfig(
        level=log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[w{config.worker}]: %(message)s",
    )
    logging.getLogger("feast").setLevel(logging.WARNING)
    try:
        return serve(config, on_started=lambda port: print(f"listening on port {port}", flush=True))
    except (BindError, ValueError) as exc:
        print(f"skewless serve: worker {config.worker}: {exc}", file=sys.stderr)
        return 2
