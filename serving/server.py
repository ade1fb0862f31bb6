"""The scoring server: lifecycle around the servicer (``grpc.aio``).

* Health (``grpc.health.v1``) is ``NOT_SERVING`` until the online store answers and a
  model is loaded, then ``SERVING``; it drops back to ``NOT_SERVING`` while the store is
  unreachable, and a background probe restores it. Health never needs the token;
  server reflection (:mod:`serving.reflection`) does unless ``open_reflection``.
* TLS when ``tls_cert``/``tls_key`` are set, mutual TLS with ``tls_client_ca``
  (:mod:`serving.tls`).
* ``reuse_port`` lets several processes share the port (``serve --workers``,
  :mod:`serving.workers`); each then writes its own prediction-log shard ``worker``.
* Models follow the registry alias (:mod:`serving.reload`); a shadow alias, a canary alias
  and the drift gauges run beside it (:mod:`serving.rollout`).
* ``stop()`` (SIGTERM/SIGINT in :func:`serve`) stops accepting calls, lets in-flight ones
  finish within ``grace_s``, flushes the prediction log and closes the store.
* Limits: message size, batch size; the store's socket timeouts are short so an
  unreachable Redis is ``UNAVAILABLE`` in well under a second, not a hang.
* Once ready, the long-lived heap is frozen (``gc.freeze``) so garbage collection never
  rescans it: a full pass over it costs ~100+ ms of event-loop time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prometheus_client  # noqa: F401  # before feast: see serving.interceptors.Metrics
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from features.loader import load_definitions
from features.settings import masked_repr
from features.store import OnlineStore, StoreConfig, StoreUnavailableError, open_store
from features.store.layout import StoreLayoutError
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.coalesce import CoalescingServicer
from serving.interceptors import Metrics, interceptors
from serving.predlog import KafkaPredictionLog, ParquetPredictionLog
from serving.reflection import enable_reflection
from serving.reload import Loader, ModelWatcher
from serving.rollout import Rollout
from serving.scorer import NotReadyError, Scorer
from serving.servicer import add_to_server
from serving.tls import server_credentials

log = logging.getLogger("skewless.serving")

#: threads scoring ``ScoreBatch`` calls (and the server's other blocking work): two, so
#: one batch's Redis read (the socket wait releases the GIL) overlaps another's compute.
#: A/B over gRPC, 1 process, 500 per call, 4 in flight (``bench.serve_batch_ab``, 16
#: alternated pairs): higher in 13, ratio median 1.085; a little lower when both cores
#: are busy (docs/perf-plan.md, ScoreBatch "Session 11"). Each thread has its own Redis
#: connection and buffers (serving.batch_read); the native calls hold no shared scratch.
SCORE_BATCH_THREADS = 2

#: the first-generation GC threshold while serving (Python's: 700); ScoreBatch's GC cost
#: 2.0 -> 0.47 µs per event, a lone Score unmoved (docs/perf-plan.md, "Session 6")
GC_YOUNG: int | None = 10_000

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Scorer"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs; built from :class:`features.settings.Settings` by the
    CLI. Empty ``redis_url`` means the embedded SQLite Feast store in ``feast_dir``."""

    registry_dir: Path
    model_alias: str = "production"
    address: str = "127.0.0.1:50051"
    redis_url: str = ""
    feast_dir: Path = Path("out/feast")
    auth_token: str = field(default="", repr=False)
    metrics_port: int = 0
    max_batch_size: int = 1_000
    max_message_bytes: int = 8 * 1024 * 1024
    grace_s: float = 5.0
    reload_interval_s: float = 1.0
    store_timeout_s: float = 0.25
    #: embedded prediction log directory (None: no Parquet log)
    prediction_log_dir: Path | None = None
    prediction_flush_rows: int = 10_000
    #: Kafka prediction log (``<topic>.predictions``) when a bootstrap is given
    kafka_bootstrap: str = ""
    topic: str = "transactions"
    #: the definitions module or file (empty: the reference fraud set)
    definitions: str = ""
    #: TLS: the server's certificate chain and key (PEM); both or neither
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: mutual TLS: clients must present a certificate signed by this CA
    tls_client_ca: Path | None = None
    #: reflection without the token (health never needs it)
    open_reflection: bool = False
    #: share the port with other processes (SO_REUSEPORT); the caller checked it is free
    reuse_port: bool = False
    #: this process's index among ``serve --workers`` (names its prediction-log shard)
    worker: int | None = None
    #: a second model scoring every request off the response path (both scores logged)
    shadow_alias: str = ""
    #: a model deciding ``canary_fraction`` of the primary entities (hash of the key)
    canary_alias: str = ""
    canary_fraction: float = 0.0
    #: how often the drift gauges are recomputed (with ``metrics_port``)
    drift_interval_s: float = 10.0
    #: ``Score`` reads a typed request natively (bytes in, bytes out)
    native_score: bool = True
    #: the garbage collector's first-generation threshold once serving (None: Python's;
    #: 0 switches automatic collection off, as ``gc.set_threshold`` does)
    gc_young: int | None = GC_YOUNG

    def __repr__(self) -> str:  # logged at start: secrets hidden
        return masked_repr(self)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1, got {self.max_batch_size}")
        if self.grace_s < 0:
            raise ValueError(f"grace_s: must be >= 0, got {self.grace_s}")
        if not 0.0 <= self.canary_fraction <= 1.0:
            raise ValueError(f"canary_fraction: must be in [0, 1], got {self.canary_fraction}")
        if self.canary_fraction and not self.canary_alias:
            raise ValueError("canary_fraction: needs canary_alias (the model it routes to)")


StoreFactory = Callable[[], OnlineStore]


class BindError(OSError):
    """The server cannot listen where it was told (the message names the setting and the
    address; ``skewless serve`` prints it as one line and exits 2)."""


def check_bindable(address: str, setting: str = "address") -> None:
    """Raise :class:`BindError` when every address ``host:port`` resolves to is taken.

    gRPC reports a busy port as a C-core log line plus a ``RuntimeError`` that says only
    "Failed to bind"; a plain socket with the options gRPC sets (``SO_REUSEADDR``, no
    ``SO_REUSEPORT``) tells why, first. Other forms (``unix:``, ``dns:///``) and other
    socket errors are left to gRPC.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError):
        return
    refusals: list[OSError] = []
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(sockaddr)
            return  # gRPC needs one of the resolved addresses
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                return
            refusals.append(exc)
    if refusals:
        reason = (refusals[0].strerror or str(refusals[0])).lower()
        raise BindError(f"{setting}: cannot bind {address}: {reason}")


class ScoringServer:
    """``await start()`` binds and serves (NOT_SERVING until ready); ``await stop()``."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        store_factory: StoreFactory | None = None,
        loader: Loader | None = None,
        scorer: Scorer | None = None,
    ) -> None:
        self.config = config
        self._store_factory = store_factory or self._default_store
        self.metrics = Metrics() if config.metrics_port else None
        self.scorer = scorer or Scorer(load_definitions(config.definitions))
        plan = self.scorer.plan
        self.predictions: ParquetPredictionLog | KafkaPredictionLog | None = None
        if config.kafka_bootstrap:
            self.predictions = KafkaPredictionLog(config.kafka_bootstrap, config.topic, plan)
        elif config.prediction_log_dir is not None:
            self.predictions = ParquetPredictionLog(
                config.prediction_log_dir, plan, flush_rows=config.prediction_flush_rows,
                shard=None if config.worker is None else f"w{config.worker}",
            )  # fmt: skip
        self.rollout = Rollout(config, self.scorer, self.predictions, self.metrics, loader)
        if self.predictions is not None and self.metrics is not None:
            self.predictions.register(self.metrics.registry)
        self.watcher = ModelWatcher(
            config.registry_dir,
            config.model_alias,
            self.scorer.fs.fingerprint(),
            self.scorer.install,
            interval_s=config.reload_interval_s,
            on_outcome=self._on_model,
            **({"loader": loader} if loader is not None else {}),
        )
        self.health = health_aio.HealthServicer()
        self._executor = ThreadPoolExecutor(
            max_workers=SCORE_BATCH_THREADS, thread_name_prefix="score-batch"
        )
        self._server: aio.Server | None = None
        self.servicer: CoalescingServicer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.port = 0

    def _default_store(self) -> OnlineStore:
        c = self.config
        store_cfg = StoreConfig(c.redis_url, c.feast_dir, c.store_timeout_s)
        return open_store(store_cfg, self.scorer.fs)

    def _on_model(self, outcome: str, version: str) -> None:
        if outcome == "loaded" and gc.isenabled():
            gc.freeze()  # the new model's objects too (see _become_ready)
        if self.metrics is None:
            return
        self.metrics.model_reloads.labels(outcome).inc()
        if outcome == "loaded":
            self.metrics.model_loaded(version)

    async def start(self) -> int:
        """Bind, serve and return the port; readiness follows in the background."""
        cfg = self.config
        options = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 1 if cfg.reuse_port else 0),
        ]
        credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        if not cfg.reuse_port:
            check_bindable(cfg.address)
        if self.metrics is not None:
            try:
                self.metrics.serve(cfg.metrics_port)
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
                raise BindError(
                    f"metrics_port: cannot bind 127.0.0.1:{cfg.metrics_port}: {reason}"
                ) from None
        try:
            server = self._grpc_server(options, credentials)
        except BaseException:
            if self.metrics is not None:
                self.metrics.close()
            raise
        await self._set_health(NOT_SERVING)
        await server.start()
        self._server = server
        if self.predictions is not None:
            self.predictions.start()
        self.rollout.start()
        self._tasks.append(asyncio.create_task(self._become_ready(), name="readiness"))
        log.info(
            "scoring server listening on port %d%s (health NOT_SERVING until ready)",
            self.port, "" if credentials is None else " with TLS",
        )  # fmt: skip
        return self.port

    def _grpc_server(self, options: list[tuple[str, Any]], credentials: Any) -> aio.Server:
        """The gRPC server with every service added and the port bound (``self.port``)."""
        cfg = self.config
        chain = interceptors(cfg.auth_token, self.metrics, open_reflection=cfg.open_reflection)
        server = aio.server(interceptors=chain, options=options)
        self.servicer = CoalescingServicer(self.scorer, cfg.max_batch_size, self._executor)
        raw = {"ScoreBatch": self.servicer.score_batch_bytes}
        if self.config.native_score:
            raw["Score"] = self.servicer.score_bytes
        add_to_server(self.servicer, server, raw)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        enable_reflection((SERVICE_NAME, health_name), server)
        try:
            if credentials is None:
                self.port = server.add_insecure_port(cfg.address)
            else:
                self.port = server.add_secure_port(cfg.address, credentials)
        except RuntimeError:  # lost a race with another process after check_bindable
            self.port = 0
        if self.port == 0:
            raise BindError(f"address: cannot bind {cfg.address}")
        return server

    async def _set_health(self, status: Any) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        if self.metrics is not None:
            self.metrics.serving.set(1 if status == SERVING else 0)

    async def _become_ready(self) -> None:
        """Connect the store and load the model (retrying), then SERVING; afterwards watch
        the alias and probe the store while it is failing."""
        loop = asyncio.get_running_loop()
        delay = 0.2
        while self.scorer.store is None:
            try:
                store = await loop.run_in_executor(self._executor, self._store_factory)
                self.scorer.store = store
                await loop.run_in_executor(self._executor, self.scorer.check_store)
            except Exception as exc:  # keep trying: the store may come up later
                self.scorer.store = None
                expected = isinstance(exc, StoreUnavailableError | StoreLayoutError | OSError)
                log.warning(
                    "online store not ready: %s; retrying in %.1fs", exc, delay,
                    exc_info=None if expected else exc,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        while self.scorer.model is None:
            try:
                await loop.run_in_executor(self._executor, self.watcher.poll_once)
            except Exception:  # poll_once refuses bad versions itself; this is a bug path
                log.exception("model: loading failed; retrying")
            if self.scorer.model is None:
                await asyncio.sleep(self.config.reload_interval_s)
        self.watcher.start()
        await loop.run_in_executor(self._executor, self.rollout.ready)
        # Everything loaded so far (feast, xgboost, the model: ~200k objects) lives as long
        # as the process; a full GC pass over it pauses the event loop for ~100+ ms. Frozen
        # objects are never scanned again, which keeps those pauses out of the tail latency.
        gc.collect()
        gc.freeze()
        if self.config.gc_young is not None:
            gc.set_threshold(self.config.gc_young, *gc.get_threshold()[1:])
        await self._set_health(SERVING)
        log.info("ready: serving model %s", self.watcher.version)
        await self._probe_store()

    async def _probe_store(self) -> None:
        """Every ``reload_interval_s``: NOT_SERVING while the store is unreachable."""
        loop = asyncio.get_running_loop()
        healthy = True
        while True:
            await asyncio.sleep(self.config.reload_interval_s)
            try:
                await loop.run_in_executor(self._executor, self.scorer.check_store)
                ok = True
            except (StoreUnavailableError, NotReadyError) as exc:
                ok = False
                if healthy:
                    log.warning("online store unreachable: %s", exc)
            if ok != healthy:
                healthy = ok
                await self._set_health(SERVING if ok else NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, finish in-flight calls within the grace period,
        then flush the prediction log and close the store."""
        grace = self.config.grace_s if grace is None else grace
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.watcher.stop()
        self.rollout.stop_watchers()
        if self._server is not None:
            await self.health.enter_graceful_shutdown()
            await self._server.stop(grace)
            self._server = None
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.rollout.close()
        if self.predictions is not None:
            self.predictions.close()
        if self.scorer.store is not None:
            self.scorer.store.close()
        if self.metrics is not None:
            self.metrics.close()
        log.info("scoring server stopped")

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def _serve(config: ServerConfig, on_started: Callable[[int], Any] | None) -> None:
    server = ScoringServer(config)
    await server.start()
    if on_started is not None:
        on_started(server.port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("signal received: stopping within %.1fs", config.grace_s)
    await server.stop()


def serve(config: ServerConfig, on_started: Callable[[int], Any] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then stop gracefully; returns the exit code."""
    asyncio.run(_serve(config, on_started))
    return 0
