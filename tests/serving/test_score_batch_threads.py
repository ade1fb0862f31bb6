"""``ScoreBatch`` calls in flight are scored on two threads at once (one batch's Redis
read overlaps another's compute: serving.server.SCORE_BATCH_THREADS), and each call gets
exactly the answer it gets alone, on the real Redis store; every row is logged once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import event_transaction
from serving.server import SCORE_BATCH_THREADS, ServerConfig
from serving.servicer import INLINE_BATCH
from tests.serving.conftest import NOW, RunningServer, ev
from tests.serving.test_redis import OFFSET, populate

pytestmark = pytest.mark.integration

CALLS, SIZE = 8, INLINE_BATCH + 8  # above INLINE_BATCH: scored on the worker threads


def _request(k: int) -> pb.ScoreBatchRequest:
    events = [
        ev(f"t{k}-{i}", OFFSET + 1 + (i + k) % 5, OFFSET + 10 + (i * k) % 3, 3.0 + i + k,
           NOW - (i * 7 + k) * 1000)
        for i in range(SIZE)
    ]  # fmt: skip
    return pb.ScoreBatchRequest(
        transactions=[event_transaction(e) for e in events], include_features=True
    )


def test_batches_in_flight_overlap_and_answer_as_alone(
    redis_url: str,
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
    tmp_path: Path,
) -> None:
    assert SCORE_BATCH_THREADS == 2
    populate(redis_url)
    log_dir = tmp_path / "predictions"
    s = start_server(replace(base_config, redis_url=redis_url, prediction_log_dir=log_dir))
    requests = [_request(k) for k in range(CALLS)]
    alone = [s.stub.ScoreBatch(r, timeout=10).SerializeToString() for r in requests]

    scorer = s.server.scorer
    score_columns = scorer.score_columns
    lock, inside, most = threading.Lock(), [0], [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.02)  # hold the thread, as a slow Redis read would
            return score_columns(*args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    scorer.score_columns = counted  # type: ignore[method-assign]
    try:
        futures = [s.stub.ScoreBatch.future(r, timeout=10) for r in requests]
        together = [f.result().SerializeToString() for f in futures]
    finally:
        del scorer.score_columns
    assert most[0] == SCORE_BATCH_THREADS  # two batches scored at once, never more
    assert together == alone
    s.stop()
    logged = pq.read_table(sorted(log_dir.glob("predictions-*.parquet")))
    logged = logged.column("transaction_id").to_pylist()
    ids = [t.transaction_id for r in requests for t in r.transactions]
    assert sorted(logged) == sorted(ids * 2)  # each call's rows once: alone, then together
