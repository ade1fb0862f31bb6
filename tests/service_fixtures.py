"""Pytest fixtures that run the real Kafka broker and Redis server (scripts/services.sh).

Register as a plugin, either in tests/conftest.py::

    pytest_plugins = ["tests.service_fixtures"]

or on the command line with ``-p tests.service_fixtures``; ``from tests.service_fixtures
import *`` in a conftest also works (``__all__`` lists the fixtures and classes).

Session fixtures (one broker and one Redis per test session, stopped at the end):

- ``kafka_broker`` -> :class:`KafkaBroker` (``.bootstrap``, ``.stop()``, ``.start()``,
  ``with broker.stopped(): ...``); a restart keeps the port and the data.
- ``kafka_bootstrap`` -> ``"127.0.0.1:PORT"``
- ``redis_server`` -> :class:`RedisServer` (``.url``, ``.host``, ``.port``, ``.stop()``,
  ``.start()``, ``with server.stopped(): ...``); a restart keeps the port (not the data:
  Redis runs without persistence).
- ``redis_url`` -> ``"redis://127.0.0.1:PORT/0"``

Function fixture:

- ``kafka_admin_topic`` -> ``make(partitions=1, prefix="t", config=None) -> str``: creates a
  uniquely named topic with the AdminClient, waits until every partition has a leader,
  and returns its name.

A service that cannot start fails the test (``pytest.fail``) with the script's report:
which service, the end of its log, and how to start it by hand. Nothing is skipped.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "SERVICES_SH",
    "KafkaBroker",
    "RedisClusterNodes",
    "RedisServer",
    "ServiceError",
    "kafka_admin_topic",
    "kafka_bootstrap",
    "kafka_broker",
    "redis_cluster",
    "redis_server",
    "redis_url",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICES_SH = REPO_ROOT / "scripts" / "services.sh"

# Generous: a cold start may first resolve the Kafka jars with Maven (empty ~/.m2).
_START_TIMEOUT_S = float(os.environ.get("SKEWLESS_FIXTURE_START_TIMEOUT", "600"))
_STOP_TIMEOUT_S = 60.0


class ServiceError(RuntimeError):
    """scripts/services.sh failed; the message carries its report."""


def _services(command: str, workdir: Path, timeout: float) -> str:
    """Run ``scripts/services.sh COMMAND WORKDIR``; return the last stdout line."""
    args = ["bash", str(SERVICES_SH), command, str(workdir)]
    try:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr or ""
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        raise ServiceError(
            f"`{' '.join(args)}` did not finish within {timeout:.0f} s\nstderr so far:\n{stderr}"
        ) from exc
    if proc.returncode != 0:
        raise ServiceError(
            f"`{' '.join(args)}` exited with {proc.returncode}\n{proc.stderr.rstrip()}\n"
            f"{proc.stdout.rstrip()}".rstrip()
        )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


class _Service:
    """A service started by scripts/services.sh in its own directory."""

    _start_cmd = ""
    _stop_cmd = ""
    _log_name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.address: str | None = None  # "127.0.0.1:PORT" once started
        self.running = False

    @property
    def host(self) -> str:
        return self._address().rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self._address().rsplit(":", 1)[1])

    def _address(self) -> str:
        if self.address is None:
            raise ServiceError(f"{type(self).__name__} in {self.workdir} was never started")
        return self.address

    def start(self) -> str:
        """Start (or restart, on the same port) and wait until ready. Idempotent."""
        address = _services(self._start_cmd, self.workdir, _START_TIMEOUT_S)
        if self.address is not None and address != self.address:
            raise ServiceError(f"{type(self).__name__} came back on {address}, not {self.address}")
        self.address = address
        self.running = True
        return address

    def stop(self) -> None:
        """Stop it; the port and directory stay reserved for :meth:`start`. Idempotent."""
        _services(self._stop_cmd, self.workdir, _STOP_TIMEOUT_S)
        self.running = False

    @contextlib.contextmanager
    def stopped(self, seconds: float = 0.0) -> Iterator[None]:
        """Stop for the ``with`` block (at least ``seconds``), then start again."""
        began = time.monotonic()
        self.stop()
        try:
            yield
            remaining = seconds - (time.monotonic() - began)
            if remaining > 0:
                time.sleep(remaining)
        finally:
            self.start()

    def log_tail(self, lines: int = 30) -> str:
        log = self.workdir / self._log_name
        if not log.exists():
            return f"(no log at {log})"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}({self.address or '?'}, {state}, {self.workdir})"


class KafkaBroker(_Service):
    """Single-node KRaft Apache Kafka broker on 127.0.0.1."""

    _start_cmd = "kafka-start"
    _stop_cmd = "kafka-stop"
    _log_name = "kafka.log"

    @property
    def bootstrap(self) -> str:
        """``bootstrap.servers`` value, ``"127.0.0.1:PORT"``."""
        return self._address()


class RedisServer(_Service):
    """redis-server on 127.0.0.1, no persistence."""

    _start_cmd = "redis-start"
    _stop_cmd = "redis-stop"
    _log_name = "redis.log"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self._address()}/0"


def _started(service: _Service) -> _Service:
    try:
        service.start()
        return service
    except ServiceError as exc:
        failure = str(exc)
    # Best effort cleanup of a half-started service, then fail loudly (never skip).
    with contextlib.suppress(Exception):
        service.stop()
    pytest.fail(failure, pytrace=False)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    _started(broker)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    _started(server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def _wait_for_leaders(admin: Any, topic: str, partitions: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no metadata"
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
        if md is not None and md.error is None:
            ready = [p for p in md.partitions.values() if p.error is None and p.leader >= 0]
            if len(md.partitions) == partitions and len(ready) == partitions:
                return
            last = f"{len(ready)}/{partitions} partitions with a leader"
        elif md is not None:
            last = str(md.error)
        time.sleep(0.1)
    raise ServiceError(f"topic {topic}: not ready after {timeout:.0f} s ({last})")


@pytest.fixture
def kafka_admin_topic(kafka_bootstrap: str) -> Callable[..., str]:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def make(partitions: int = 1, prefix: str = "t", config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
            operation_timeout=30,
            request_timeout=30,
        )
        futures[name].result(timeout=60)
        _wait_for_leaders(admin, name, partitions, timeout=30)
        return name

    return make


class RedisClusterNodes(_Service):
    """A Redis Cluster on 127.0.0.1: 3 masters and 3 replicas, a 2 s node timeout (a killed
    master fails over in seconds), no persistence. ``start()`` restarts stopped nodes."""

    _start_cmd = "redis-cluster-start"
    _stop_cmd = "redis-cluster-stop"
    _log_name = "n0/redis.log"

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,...,127.0.0.1:P6`` (every node a seed)."""
        return self._address()

    def ports(self) -> list[int]:
        return [
            int(line.split()[0])
            for line in (self.workdir / "ports").read_text().split("\n")
            if line
        ]

    def pid(self, port: int) -> int:
        """The pid of the node on ``port`` (for a ``kill -9``)."""
        i = self.ports().index(port)
        return int((self.workdir / f"n{i}" / "redis.pid").read_text().strip())


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    _started(cluster)
    try:
        yield cluster
    finally:
        cluster.stop()
