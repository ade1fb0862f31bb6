"""The serve bench's processes: our server and the gRPC floor as subprocesses, a Redis
for them, and waiting until a server answers SERVING."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "scripts" / "services.sh"

#: our server as a process (prometheus_client imported before feast: see interceptors)
OURS = """
import json, sys
import prometheus_client
from serving.server import ServerConfig, serve
from serving.workers import serve_workers
from pathlib import Path
c = json.loads(sys.argv[1])
cfg = ServerConfig(registry_dir=Path(c["registry"]), redis_url=c["redis_url"],
                   address="127.0.0.1:0", prediction_log_dir=Path(c["predictions"]),
                   max_batch_size=c["max_batch"], grace_s=1.0,
                   store_timeout_s=2.0)  # a loaded shared machine stalls Redis beyond 0.25 s
started = lambda port: print(f"listening on port {port}", flush=True)
if c.get("workers", 1) > 1:
    sys.exit(serve_workers(cfg, c["workers"], started, "WARNING"))
serve(cfg, on_started=started)
"""

#: the gRPC floor: the same grpc.aio server and interceptors, a Score that does nothing and a
#: ScoreBatch that returns a fixed response of the request's length (the request read into
#: validated events as ours reads it: natively, or strictly parsed where ours falls back)
#: (argv[1], if given: a port to share with SO_REUSEPORT, 0 for a new one)
FLOOR = """
import asyncio, sys
from grpc import aio
from serving._proto.skewless.v1 import scorer_pb2 as pb, scorer_pb2_grpc as pb_grpc
from serving.interceptors import interceptors
from serving.servicer import add_to_server
from bench.serve_batch import FloorScoreBatch

class Floor(FloorScoreBatch, pb_grpc.ScorerServicer):
    async def Score(self, request, context):
        return pb.ScoreResponse(transaction_id=request.transaction.transaction_id)

async def main():
    share = sys.argv[1] if len(sys.argv) > 1 else None
    options = [("grpc.so_reuseport", 0 if share is None else 1)]
    server = aio.server(interceptors=interceptors("", None), options=options)
    floor = Floor()
    add_to_server(floor, server, {"ScoreBatch": floor.score_batch_bytes})
    port = server.add_insecure_port(f"127.0.0.1:{share or 0}")
    await server.start()
    print(f"listening on port {port}", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    out = subprocess.run(
        ["bash", str(SERVICES), "redis-start", str(workdir)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    address = out.stdout.strip().splitlines()[-1]
    try:
        yield f"redis://{address}/0"
    finally:
        subprocess.run(["bash", str(SERVICES), "redis-stop", str(workdir)], timeout=60, check=False)


def other_checkout(tree: Path | str) -> list[str]:
    """The start of an argv running Python on the checkout ``tree`` (``-c`` code follows):
    ``-P``, or ``-c`` would put the working directory (this repo, where servers start) on
    ``sys.path`` before ``PYTHONPATH``, and the "other" checkout would be this one."""
    return ["env", f"PYTHONPATH={tree}", sys.executable, "-P"]


@contextlib.contextmanager
def server_process(argv: list[str], log: Path, timeout: float = 180.0) -> Iterator[tuple[int, int]]:
    """A server process; yields (pid, port) once it printed its port."""
    with log.open("w") as err:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on port "):
            raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
        yield proc.pid, int(line.split()[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_serving(address: str, timeout: float = 180.0, fresh: bool = False) -> None:
    """Until ``address`` is SERVING; ``fresh``: over a new TCP connection (with
    ``--workers``, each connection reaches one worker)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    opts = [("grpc.use_local_subchannel_pool", 1)] if fresh else []
    with grpc.insecure_channel(address, options=opts) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    return
            time.sleep(0.1)
    raise TimeoutError(f"{address}: not SERVING after {timeout:.0f} s")


def rss_mb(pid: int) -> float:
    import psutil

    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
