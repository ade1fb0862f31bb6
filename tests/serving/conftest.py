"""Serving fixtures: a registered synthetic model, a populated embedded (SQLite) Feast
store, and a real ``grpc.aio`` scoring server on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from features.reference import REFERENCE, Event
from features.store import StoreConfig, open_store
from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc
from serving.server import ScoringServer, ServerConfig
from serving.testing import fold_states, publish_synthetic_model, write_states

#: 2026-01-01T00:00:00Z
T0 = 1_767_225_600_000
MIN = 60_000
HOUR = 60 * MIN


def ev(txid: str, card: int, merchant: int, amount: float, t: int, **kw: Any) -> Event:
    return Event(txid, card, merchant, amount, kw.get("currency", "EUR"), "FR", 5411, t)


#: the known history of the shared store: card 1 busy recently, card 2 idle for 3 h
HISTORY = (
    [ev(f"c1-{i}", 1, 10, 10.0 + i, T0 + 10 * HOUR + i * MIN) for i in range(8)]
    + [ev(f"c2-{i}", 2, 10, 100.0 * (i + 1), T0 + 7 * HOUR + i * MIN) for i in range(3)]
    + [ev(f"m11-{i}", 3 + i, 11, 5.0, T0 + 9 * HOUR + i * MIN) for i in range(5)]
)
#: "now" for the tests: 5 min after card 1's last event, 3 h after card 2's
NOW = T0 + 10 * HOUR + 12 * MIN


@pytest.fixture(scope="session")
def model_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reg = tmp_path_factory.mktemp("registry")
    publish_synthetic_model(reg, seed=1, fs=REFERENCE)
    return reg


@pytest.fixture(scope="session")
def feast_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Feast SQLite repo holding HISTORY (built once; tests copy it)."""
    d = tmp_path_factory.mktemp("feast")
    store = open_store(StoreConfig(workdir=d), REFERENCE)
    write_states(store, fold_states(HISTORY, REFERENCE), REFERENCE)
    store.close()
    return d


@pytest.fixture
def feast_dir(feast_master: Path, tmp_path: Path) -> Path:
    d = tmp_path / "feast"
    shutil.copytree(feast_master, d)
    return d


@pytest.fixture
def registry(model_registry: Path, tmp_path: Path) -> Path:
    """A private copy of the registry (tests move aliases)."""
    d = tmp_path / "registry"
    shutil.copytree(model_registry, d)
    return d


class RunningServer:
    """A ScoringServer on its own event-loop thread, with a sync client channel."""

    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = ScoringServer(config, **kwargs)
        self.port = self.run(self.server.start())
        self.address = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.ScorerStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self._stopped = False

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def health(self, service: str = "") -> str:
        req = health_pb2.HealthCheckRequest(service=service)
        status = self.health_stub.Check(req, timeout=5).status
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    def wait_health(self, want: str, timeout: float = 30.0) -> float:
        """Poll until health is ``want``; returns the seconds it took."""
        start = time.monotonic()
        while True:
            got = self.health()
            if got == want:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"health stayed {got}, wanted {want} within {timeout}s")
            time.sleep(0.05)

    def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.channel.close()
        self.run(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def base_config(registry: Path, feast_dir: Path) -> ServerConfig:
    return ServerConfig(
        registry_dir=registry,
        feast_dir=feast_dir,
        address="127.0.0.1:0",
        reload_interval_s=0.2,
        max_batch_size=50,
    )


@pytest.fixture
def start_server() -> Iterator[Callable[..., RunningServer]]:
    servers: list[RunningServer] = []

    def start(config: ServerConfig, ready: bool = True, **kwargs: Any) -> RunningServer:
        s = RunningServer(config, **kwargs)
        servers.append(s)
        if ready:
            s.wait_health("SERVING")
        return s

    yield start
    for s in servers:
        with contextlib.suppress(Exception):
            s.stop(0)


@pytest.fixture
def server(start_server: Callable[..., RunningServer], base_config: ServerConfig) -> RunningServer:
    return start_server(base_config)


@pytest.fixture
def authed_server(
    start_server: Callable[..., RunningServer], base_config: ServerConfig
) -> RunningServer:
    return start_server(replace(base_config, auth_token="s3cret"))
