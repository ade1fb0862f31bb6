"""``Score`` calls in flight together are scored as one batch (one store round trip), with
the answers each would get alone, errors included."""

from __future__ import annotations

import time
from typing import Any

import grpc

from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.coalesce import COLUMNS_FROM
from serving.convert import event_transaction
from tests.serving.conftest import HOUR, NOW, T0, RunningServer, ev


def _requests() -> list[pb.ScoreRequest]:
    events = [ev(f"co{i}", 1 + i % 4, 10 + i % 2, 5.0 + i, NOW - i * 1000) for i in range(31)]
    events.insert(7, ev("old", 1, 10, 5.0, T0 + 8 * HOUR))  # too old for card 1's state
    return [
        pb.ScoreRequest(transaction=event_transaction(e), include_features=True) for e in events
    ]


def test_calls_in_flight_share_a_round_trip_and_get_their_own_answers(
    server: RunningServer,
) -> None:
    store = server.server.scorer.store
    assert store is not None
    reads: list[int] = []
    read_states = store.read_states

    def counted(keys: Any) -> Any:
        reads.append(len(keys))
        time.sleep(0.02)  # a slow store (on the worker thread): the calls in flight overlap
        return read_states(keys)

    reqs = _requests()
    alone: list[Any] = []
    for r in reqs:  # one at a time: each call is a batch of one
        try:
            alone.append(server.stub.Score(r, timeout=10))
        except grpc.RpcError as exc:
            alone.append((exc.code(), exc.details()))
    store.read_states = counted  # type: ignore[method-assign,assignment]
    try:
        futures = [server.stub.Score.future(r, timeout=10) for r in reqs]
        together: list[Any] = []
        for f in futures:
            try:
                together.append(f.result())
            except grpc.RpcError as exc:
                together.append((exc.code(), exc.details()))
    finally:
        del store.read_states
    assert together == alone
    code, details = alone[7]
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("transaction.event_time: ")
    assert len(reads) < len(reqs)  # coalesced: fewer round trips than calls


def test_small_and_large_batches_give_each_call_its_own_answer(server: RunningServer) -> None:
    """Below COLUMNS_FROM a batch is scored one event at a time, from it columnar; both
    give every call what it gets alone, the too-old event's refusal included."""
    servicer = server.server.servicer
    assert servicer is not None
    batch = [
        (servicer.convert.request_event(r), "transaction", None) for r in _requests()
    ]  # 32 events, the one at 7 too old
    alone = [servicer._alone(p, None) for p in batch]  # type: ignore[arg-type]

    def same(got: list[Any]) -> list[Any]:
        return [(ok, v if ok else (type(v), str(v))) for ok, v in got]

    for size in (COLUMNS_FROM - 1, COLUMNS_FROM, len(batch)):
        got: list[Any] = []
        for i in range(0, len(batch), size):
            got += servicer._score(batch[i : i + size], None)  # type: ignore[arg-type]
        assert same(got) == same(alone), size
    assert not alone[7][0] and str(alone[7][1]).startswith("transaction.event_time: ")
