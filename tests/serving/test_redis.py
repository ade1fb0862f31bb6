"""The server on the real Redis online store (started by scripts/services.sh): same
values as the embedded store, UNAVAILABLE within ~1 s when Redis goes away, health
following the store."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import grpc
import pytest

from features.reference import REFERENCE, Event
from features.store import StoreConfig, open_store
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import event_transaction
from serving.server import ServerConfig
from serving.testing import fold_states, write_states
from tests.service_fixtures import RedisServer
from tests.serving.conftest import HISTORY, MIN, NOW, RunningServer, ev

pytestmark = pytest.mark.integration

#: ids far from anything other tests write into the shared Redis
OFFSET = 900_000_000_000


def shifted(e: Event) -> Event:
    return ev(
        e.transaction_id, e.card_id + OFFSET, e.merchant_id + OFFSET, e.amount, e.event_time_ms
    )


def populate(url: str) -> None:
    store = open_store(StoreConfig(redis_url=url), REFERENCE)
    write_states(store, fold_states([shifted(e) for e in HISTORY], REFERENCE), REFERENCE)
    store.close()


def request(card: int = 1) -> pb.ScoreRequest:
    e = ev("r1", card + OFFSET, 10 + OFFSET, 50.0, NOW)
    return pb.ScoreRequest(transaction=event_transaction(e), include_features=True)


def test_redis_store_gives_the_same_features(
    redis_url: str,
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
    server: RunningServer,
) -> None:
    populate(redis_url)
    on_redis = start_server(replace(base_config, redis_url=redis_url))
    a = on_redis.stub.Score(request(), timeout=5)
    embedded = ev("r1", 1, 10, 50.0, NOW)
    b = server.stub.Score(
        pb.ScoreRequest(transaction=event_transaction(embedded), include_features=True), timeout=5
    )
    assert [(f.name, f.value, f.missing) for f in a.features] == [
        (f.name, f.value, f.missing) for f in b.features
    ]
    assert a.score == b.score
    assert [(s.found, s.age_ms) for s in a.entities] == [(True, 5 * MIN), (True, 5 * MIN)]


def test_store_unreachable_is_unavailable_fast_and_health_follows(
    redis_server: RedisServer,
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
) -> None:
    populate(redis_server.url)
    s = start_server(replace(base_config, redis_url=redis_server.url, reload_interval_s=0.2))
    assert s.stub.Score(request(), timeout=5).entities[0].found
    with redis_server.stopped():
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            s.stub.Score(request(), timeout=5)
        elapsed = time.monotonic() - started
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details().startswith(
            f"online store: Redis at {redis_server.url} is unreachable"
        )
        assert elapsed < 1.0
        assert s.wait_health("NOT_SERVING", timeout=5) < 5
    assert s.wait_health("SERVING", timeout=10) < 10
    populate(redis_server.url)  # Redis runs without persistence
    assert s.stub.Score(request(), timeout=5).entities[0].found


def test_health_waits_for_the_store(
    redis_server: RedisServer,
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
) -> None:
    with redis_server.stopped():
        s = start_server(replace(base_config, redis_url=redis_server.url), ready=False)
        time.sleep(0.5)
        assert s.health() == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as info:
            s.stub.Score(request(), timeout=5)
        assert (info.value.code(), info.value.details()) == (
            grpc.StatusCode.UNAVAILABLE, "store: the online store is not connected yet",
        )  # fmt: skip
    assert s.wait_health("SERVING", timeout=15) < 15
    assert s.stub.Score(request(), timeout=5).model_version == "v0001"
