"""``Score`` on the real Redis store: a call alone takes the direct path (no worker
thread, no blocking store read on the event loop); calls in flight share awaited reads
and each gets the answer it would get alone (the values ``ScoreBatch`` gives too); every
scored call is in the prediction log exactly once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pyarrow.parquet as pq
import pytest
import redis

from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import event_transaction
from serving.server import ServerConfig
from tests.serving.conftest import HOUR, NOW, T0, RunningServer, ev
from tests.serving.test_redis import OFFSET, populate

pytestmark = pytest.mark.integration


def _requests(tag: str) -> list[pb.ScoreRequest]:
    events = [
        ev(f"{tag}{i}", OFFSET + 1 + i % 4, OFFSET + 10 + i % 2, 5.0 + i, NOW - i * 1000)
        for i in range(31)
    ]
    events.insert(7, ev(f"{tag}old", OFFSET + 1, OFFSET + 10, 5.0, T0 + 8 * HOUR))  # too old
    return [
        pb.ScoreRequest(transaction=event_transaction(e), include_features=True) for e in events
    ]


def _answers(calls: list[Any]) -> list[Any]:
    out: list[Any] = []
    for call in calls:
        try:
            out.append(call() if callable(call) else call.result())
        except grpc.RpcError as exc:
            out.append((exc.code(), exc.details()))
    return out


def test_direct_path_batches_and_log(
    redis_url: str,
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
    tmp_path: Path,
) -> None:
    populate(redis_url)
    log_dir = tmp_path / "predictions"
    config = replace(base_config, redis_url=redis_url, prediction_log_dir=log_dir)
    s = start_server(replace(config, store_timeout_s=2.0))  # the pause below, on a busy box
    servicer, store = s.server.servicer, s.server.scorer.store
    assert servicer is not None and store is not None
    blocking_reads_on_loop: list[int] = []
    read_states = store.read_states

    def counted(keys: Any, *args: Any) -> Any:
        if threading.current_thread() is s.thread:
            blocking_reads_on_loop.append(len(keys))
        return read_states(keys, *args)

    submitted: list[str] = []
    executor = s.server._executor
    submit = executor.submit

    def counted_submit(fn: Any, *args: Any, **kwargs: Any) -> Any:
        submitted.append(getattr(fn, "__name__", repr(fn)))
        return submit(fn, *args, **kwargs)

    store.read_states = counted  # type: ignore[method-assign]
    executor.submit = counted_submit  # type: ignore[method-assign]
    try:
        # one at a time: each call is a batch of one, scored in its own handler
        alone_reqs = _requests("a")
        alone = _answers([lambda r=r: s.stub.Score(r, timeout=10) for r in alone_reqs])
        assert (servicer.batches, servicer.batched_events) == (len(alone_reqs), len(alone_reqs))
        assert blocking_reads_on_loop == []
        assert set(submitted) <= {"check_store"}  # the health probe's, never a Score's

        # all in flight at once, while Redis holds its answers (CLIENT PAUSE: a slow store),
        # so that they do overlap: fewer batches than calls, the same answers
        together_reqs = _requests("b")
        redis.Redis.from_url(redis_url).client_pause(50)
        futures = [s.stub.Score.future(r, timeout=10) for r in together_reqs]
        together = _answers(futures)
        assert servicer.batches - len(alone_reqs) < len(together_reqs)
        assert blocking_reads_on_loop == []
    finally:
        del store.read_states
        del executor.submit
    code, details = alone[7]
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("transaction.event_time: ")

    def strip(a: Any) -> Any:
        return a if isinstance(a, tuple) else a.SerializeToString()

    def renamed(resp: Any) -> Any:
        if isinstance(resp, tuple):
            return resp
        r = pb.ScoreResponse()
        r.CopyFrom(resp)
        r.transaction_id = "b" + r.transaction_id[1:]
        return r.SerializeToString()

    assert [renamed(a) for a in alone] == [strip(b) for b in together]
    valid = [r for i, r in enumerate(together_reqs) if i != 7]
    batch = s.stub.ScoreBatch(
        pb.ScoreBatchRequest(transactions=[r.transaction for r in valid]), timeout=10
    )
    assert [r.score for r in batch.responses] == [b.score for i, b in enumerate(together) if i != 7]

    s.stop()  # flushes the prediction log
    logged = pq.read_table(sorted(log_dir.glob("predictions-*.parquet")))
    ids = logged.column("transaction_id").to_pylist()
    scored = [r.transaction.transaction_id for i, r in enumerate(alone_reqs + together_reqs)
              if i % len(alone_reqs) != 7]  # fmt: skip
    batch_ids = [r.transaction.transaction_id for r in valid]
    assert sorted(ids) == sorted(scored + batch_ids)  # each scored call once, none refused


def test_a_refused_call_leaves_the_read_connection_in_step(
    redis_url: str, start_server: Callable[..., RunningServer], base_config: ServerConfig
) -> None:
    """The direct path sends the read before validating the request: a request refused
    after its read went out must still take that read's replies off the connection, or
    the next call would get another card's states."""
    populate(redis_url)
    s = start_server(replace(base_config, redis_url=redis_url))
    good = _requests("c")[0]  # card OFFSET + 1
    first = s.stub.Score(good, timeout=10)
    bad = pb.ScoreRequest()
    bad.CopyFrom(good)
    bad.transaction.card_id = OFFSET + 2  # another card's read goes out first
    bad.transaction.amount = -1.0
    with pytest.raises(grpc.RpcError) as info:
        s.stub.Score(bad, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("transaction.amount: ")
    assert s.stub.Score(good, timeout=10) == first
