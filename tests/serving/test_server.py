"""Every RPC against a real grpc.aio server on loopback (embedded SQLite Feast store)."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from features.reference import REFERENCE
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import event_transaction, ms_timestamp
from serving.server import ServerConfig
from serving.testing import publish_synthetic_model
from tests.serving.conftest import HOUR, MIN, NOW, T0, RunningServer, ev


def tx(**overrides: Any) -> pb.Transaction:
    t = event_transaction(ev("q1", 1, 10, 50.0, NOW))
    for k, v in overrides.items():
        if v is None:
            t.ClearField(k)
        elif k == "event_time":
            t.event_time.CopyFrom(v)
        else:
            setattr(t, k, v)
    return t


def feats(resp: pb.ScoreResponse) -> dict[str, float | None]:
    return {f.name: None if f.missing else f.value for f in resp.features}


def test_score(server: RunningServer) -> None:
    resp = server.stub.Score(pb.ScoreRequest(transaction=tx(), include_features=True), timeout=5)
    assert resp.transaction_id == "q1" and resp.model_version == "v0001"
    assert 0.0 <= resp.score <= 1.0 and resp.decision == (resp.score >= resp.threshold)
    f = feats(resp)
    assert (f["card_txn_count_10m"], f["card_txn_count_1h"], f["card_seconds_since_last"]) == (
        6.0, 8.0, 300.0,
    )  # fmt: skip
    assert f["amount_to_card_mean_7d"] == 50.0 / 13.5
    assert [(e.entity, e.entity_id, e.found, e.age_ms) for e in resp.entities] == [
        ("card", 1, True, 5 * MIN),
        ("merchant", 10, True, 5 * MIN),
    ]
    assert resp.entities[0].newest_event_time.ToMilliseconds() == T0 + 10 * HOUR + 7 * MIN
    lean = server.stub.Score(pb.ScoreRequest(transaction=tx()), timeout=5)
    assert (lean.score, len(lean.features), len(lean.entities)) == (resp.score, 0, 0)


def test_score_unknown_card_warns(server: RunningServer) -> None:
    resp = server.stub.Score(pb.ScoreRequest(transaction=tx(card_id=777)), timeout=5)
    assert list(resp.warnings) == [
        "card_id 777: no card state in the online store; scored with empty-window values"
    ]


def test_score_batch_matches_score(server: RunningServer) -> None:
    txs = [tx(transaction_id=f"b{i}", card_id=1 + i % 3, amount=5.0 + i) for i in range(40)]
    batch = server.stub.ScoreBatch(
        pb.ScoreBatchRequest(transactions=txs, include_features=True), timeout=10
    )
    singles = [server.stub.Score(pb.ScoreRequest(transaction=t), timeout=5) for t in txs]
    assert [r.transaction_id for r in batch.responses] == [f"b{i}" for i in range(40)]
    assert [r.score for r in batch.responses] == [r.score for r in singles]
    assert all(len(r.features) == 15 for r in batch.responses)
    assert server.stub.ScoreBatch(pb.ScoreBatchRequest(), timeout=5).responses == []


def test_score_stream(server: RunningServer) -> None:
    reqs = [
        pb.ScoreRequest(transaction=tx(transaction_id=f"s{i}", card_id=1 + i % 2)) for i in range(6)
    ]
    out = list(server.stub.ScoreStream(iter(reqs), timeout=10))
    assert [r.transaction_id for r in out] == [f"s{i}" for i in range(6)]
    single = server.stub.Score(reqs[3], timeout=5)
    assert out[3].score == single.score


def test_get_features(server: RunningServer) -> None:
    resp = server.stub.GetFeatures(
        pb.GetFeaturesRequest(entity="card", entity_id=2, at=ms_timestamp(NOW)), timeout=5
    )
    f = {x.name: None if x.missing else x.value for x in resp.features}
    assert f == {
        "card_txn_count_10m": 0.0, "card_txn_count_1h": 0.0, "card_txn_count_24h": 3.0,
        "card_amount_sum_1h": 0.0, "card_amount_sum_24h": 600.0, "card_amount_max_24h": 300.0,
        "card_amount_mean_7d": 200.0, "card_amount_std_7d": pytest.approx(81.64965809277261),
        "card_seconds_since_last": 11400.0,
    }  # fmt: skip
    assert (resp.state.found, resp.state.age_ms) == (True, 3 * HOUR + 10 * MIN)
    empty = server.stub.GetFeatures(
        pb.GetFeaturesRequest(entity="merchant", entity_id=99, at=ms_timestamp(NOW)), timeout=5
    )
    assert not empty.state.found and [x.missing for x in empty.features] == [False, False, True]


INVALID, PRECONDITION = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
BAD_SCORE = [
    ("negative amount", tx(amount=-5.0), INVALID,
     "transaction.amount: -5.0 must be finite, > 0 and <= 10000000"),
    ("nan amount", tx(amount=float("nan")), INVALID,
     "transaction.amount: nan must be finite, > 0 and <= 10000000"),
    ("missing amount", tx(amount=None), INVALID, "transaction.amount: missing"),
    ("bad currency", tx(currency="eur"), INVALID,
     "transaction.currency: 'eur' is not 3 upper-case letters"),
    ("bad country", tx(country="FRA"), INVALID,
     "transaction.country: 'FRA' is not 2 upper-case letters"),
    ("missing event_time", tx(event_time=None), INVALID, "transaction.event_time: missing"),
    ("event_time before 2000", tx(event_time=ms_timestamp(631152000000)), INVALID,
     "transaction.event_time: 631152000000 ms is outside 2000-01-01..2100-01-01"),
    ("transaction_id too long", tx(transaction_id="x" * 65), INVALID,
     "transaction.transaction_id: length 65 is outside 1..64"),
    ("empty transaction_id", tx(transaction_id=""), INVALID,
     "transaction.transaction_id: length 0 is outside 1..64"),
    ("missing card_id", tx(card_id=None), INVALID, "transaction.card_id: missing"),
    ("negative merchant_id", tx(merchant_id=-1), INVALID,
     "transaction.merchant_id: -1 is outside 0..9223372036854775807"),
    ("mcc too large", tx(mcc=12000), INVALID, "transaction.mcc: 12000 is outside 0..9999"),
    ("too old for the state", tx(event_time=ms_timestamp(T0 + 8 * HOUR)), PRECONDITION,
     "transaction.event_time: 1767254400000 is more than 3600000 ms before the newest card "
     "event in state (1767262020000); it cannot be answered exactly"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "transaction", "code", "message"), BAD_SCORE, ids=[c[0] for c in BAD_SCORE]
)
def test_score_rejects(
    server: RunningServer, case: str, transaction: pb.Transaction, code: Any, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        server.stub.Score(pb.ScoreRequest(transaction=transaction), timeout=5)
    assert (info.value.code(), info.value.details()) == (code, message)


def test_score_rejects_missing_transaction(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        server.stub.Score(pb.ScoreRequest(), timeout=5)
    assert (info.value.code(), info.value.details()) == (INVALID, "transaction: missing")


BAD_OTHER: list[tuple[str, Callable[[RunningServer], Any], Any, str]] = [
    ("batch too large",
     lambda s: s.stub.ScoreBatch(pb.ScoreBatchRequest(transactions=[tx()] * 51), timeout=5),
     INVALID, "transactions: 51 exceeds the maximum batch size 50"),
    ("batch item invalid",
     lambda s: s.stub.ScoreBatch(
         pb.ScoreBatchRequest(transactions=[tx(), tx(), tx(amount=-1.0)]), timeout=5),
     INVALID, "transactions[2].amount: -1.0 must be finite, > 0 and <= 10000000"),
    ("batch item too old",
     lambda s: s.stub.ScoreBatch(pb.ScoreBatchRequest(
         transactions=[tx(), tx(event_time=ms_timestamp(T0 + 8 * HOUR))]), timeout=5),
     PRECONDITION, "transactions[1].event_time: 1767254400000 is more than 3600000 ms before "
     "the newest card event in state (1767262020000); it cannot be answered exactly"),
    ("stream message invalid",
     lambda s: list(s.stub.ScoreStream(iter([pb.ScoreRequest(transaction=tx()),
                                             pb.ScoreRequest(transaction=tx(currency="E"))]),
                                       timeout=5)),
     INVALID, "message 1: transaction.currency: 'E' is not 3 upper-case letters"),
    ("features: unknown entity",
     lambda s: s.stub.GetFeatures(
         pb.GetFeaturesRequest(entity="shop", entity_id=1, at=ms_timestamp(NOW)), timeout=5),
     INVALID, "entity: 'shop' is not one of card, merchant"),
    ("features: missing at",
     lambda s: s.stub.GetFeatures(pb.GetFeaturesRequest(entity="card", entity_id=1), timeout=5),
     INVALID, "at: missing"),
    ("features: negative entity_id",
     lambda s: s.stub.GetFeatures(
         pb.GetFeaturesRequest(entity="card", entity_id=-3, at=ms_timestamp(NOW)), timeout=5),
     INVALID, "entity_id: -3 is negative"),
    ("features: at too old",
     lambda s: s.stub.GetFeatures(
         pb.GetFeaturesRequest(entity="card", entity_id=1, at=ms_timestamp(T0)), timeout=5),
     PRECONDITION, "at: 1767225600000 is more than 3600000 ms before the newest card event in "
     "state (1767262020000); it cannot be answered exactly"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "call", "code", "message"), BAD_OTHER, ids=[c[0] for c in BAD_OTHER]
)
def test_other_rpcs_reject(
    server: RunningServer, case: str, call: Callable[[RunningServer], Any], code: Any, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(server)
    assert (info.value.code(), info.value.details()) == (code, message)
    server.stub.Score(pb.ScoreRequest(transaction=tx()), timeout=5)  # still serving


def test_message_size_limit(
    start_server: Callable[..., RunningServer], base_config: ServerConfig
) -> None:
    s = start_server(replace(base_config, max_message_bytes=4096, max_batch_size=1000))
    with pytest.raises(grpc.RpcError) as info:
        s.stub.ScoreBatch(pb.ScoreBatchRequest(transactions=[tx()] * 200), timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_deadline_is_honoured(server: RunningServer) -> None:
    txs = [tx(transaction_id=f"d{i}", card_id=i) for i in range(50)]
    with pytest.raises(grpc.RpcError) as info:
        server.stub.ScoreBatch(pb.ScoreBatchRequest(transactions=txs), timeout=0.0005)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    server.stub.Score(pb.ScoreRequest(transaction=tx()), timeout=5)


AUTH = [("missing", None), ("wrong", "Bearer nope"), ("not bearer", "s3cret")]


@pytest.mark.parametrize(("case", "header"), AUTH, ids=[a[0] for a in AUTH])
def test_auth_refuses(authed_server: RunningServer, case: str, header: str | None) -> None:
    md = [] if header is None else [("authorization", header)]
    for call in (
        lambda: authed_server.stub.Score(pb.ScoreRequest(transaction=tx()), metadata=md, timeout=5),
        lambda: list(authed_server.stub.ScoreStream(iter([pb.ScoreRequest(transaction=tx())]),
                                                    metadata=md, timeout=5)),
    ):  # fmt: skip
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details().startswith("authorization: missing or wrong bearer token")


def test_auth_accepts_the_token(authed_server: RunningServer) -> None:
    md = [("authorization", "Bearer s3cret")]
    resp = authed_server.stub.Score(pb.ScoreRequest(transaction=tx()), metadata=md, timeout=5)
    assert resp.model_version == "v0001"
    assert authed_server.health() == "SERVING"  # health needs no token


def test_health_waits_for_a_model(
    start_server: Callable[..., RunningServer], base_config: ServerConfig, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-registry"
    s = start_server(replace(base_config, registry_dir=empty), ready=False)
    time.sleep(0.5)
    assert s.health() == s.health("skewless.v1.Scorer") == "NOT_SERVING"
    with pytest.raises(grpc.RpcError) as info:
        s.stub.Score(pb.ScoreRequest(transaction=tx()), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "model: no model is loaded yet"
    publish_synthetic_model(empty, seed=3, fs=REFERENCE)
    assert s.wait_health("SERVING", timeout=10) < 10
    assert s.health("skewless.v1.Scorer") == "SERVING"
    assert s.stub.Score(pb.ScoreRequest(transaction=tx()), timeout=5).model_version == "v0001"


def test_reflection_lists_the_service(server: RunningServer) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    [resp] = list(
        stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
    )
    names = {s.name for s in resp.list_services_response.service}
    assert {"skewless.v1.Scorer", "grpc.health.v1.Health"} <= names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_endpoint(
    start_server: Callable[..., RunningServer], base_config: ServerConfig
) -> None:
    port = _free_port()
    s = start_server(replace(base_config, metrics_port=port))
    for _ in range(3):
        s.stub.Score(pb.ScoreRequest(transaction=tx()), timeout=5)
    with pytest.raises(grpc.RpcError):
        s.stub.Score(pb.ScoreRequest(transaction=tx(amount=-1.0)), timeout=5)
    # the outermost interceptor counts an RPC after its status has gone out (an abort sends
    # it first), so the client can see the error a moment before the counter moves
    want = 'skewless_grpc_server_handled_total{code="INVALID_ARGUMENT",method="Score"} 1.0'
    deadline = time.monotonic() + 5
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = text.decode()
        if want in text or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert 'skewless_grpc_server_handled_total{code="OK",method="Score"} 3.0' in text
    assert 'skewless_grpc_server_handled_total{code="INVALID_ARGUMENT",method="Score"} 1.0' in text
    assert 'skewless_grpc_server_handling_seconds_count{method="Score"} 4.0' in text
    assert 'skewless_model_info{version="v0001"} 1.0' in text
    assert "skewless_serving 1.0" in text


def test_server_config_repr_masks_the_redis_password_and_the_token(tmp_path: Path) -> None:
    cfg = ServerConfig(tmp_path, redis_url="rediss://u:s3cret@127.0.0.1:6380/0", auth_token="tok")
    text = repr(cfg)
    assert "s3cret" not in text and "tok'" not in text and "rediss://u:***@127.0.0.1:6380/0" in text
