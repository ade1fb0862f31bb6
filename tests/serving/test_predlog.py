"""The prediction log: Parquet files every N rows and on shutdown (embedded), JSON on
``<topic>.predictions`` (Kafka, integration)."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from features.plan import compile_plan
from features.reference import REFERENCE
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import event_transaction
from serving.predlog import KafkaPredictionLog, ParquetPredictionLog
from serving.scorer import ScoreResult
from serving.server import ServerConfig
from tests.serving.conftest import NOW, RunningServer, ev


def test_parquet_log_of_a_real_server(
    start_server: Callable[..., RunningServer], base_config: ServerConfig, tmp_path: Path
) -> None:
    log_dir = tmp_path / "predictions"
    s = start_server(replace(base_config, prediction_log_dir=log_dir, prediction_flush_rows=5))
    txs = [event_transaction(ev(f"p{i}", 1 + i % 3, 10, 2.0 + i, NOW + i)) for i in range(12)]
    singles = [s.stub.Score(pb.ScoreRequest(transaction=t), timeout=5) for t in txs[:4]]
    batch = s.stub.ScoreBatch(pb.ScoreBatchRequest(transactions=txs[4:]), timeout=5)
    start = time.monotonic()  # 12 rows >= 5: a flush happens without waiting for shutdown
    while not list(log_dir.glob("predictions-*.parquet")):
        assert time.monotonic() - start < 10, "no flush after flush_rows rows"
        time.sleep(0.02)
    s.stop()
    files = sorted(log_dir.glob("predictions-*.parquet"))
    assert files[0].name == "predictions-000000.parquet"
    t = pq.read_table(files)
    assert t.column("transaction_id").to_pylist() == [f"p{i}" for i in range(12)]
    responses = [*singles, *batch.responses]
    assert t.column("score").to_pylist() == [r.score for r in responses]
    assert set(t.column("model_version").to_pylist()) == {"v0001"}
    assert t.column("event_time").type == t.column("scored_at").type
    # the exact vector the model saw: card 1 at NOW has 6 events in its 10 min window
    assert t.column("f_card_txn_count_10m").to_pylist()[0] == 6.0
    assert [n for n in t.column_names if n.startswith("f_")] == [
        f"f_{n}" for n in REFERENCE.feature_names
    ]


def test_numbering_continues_after_a_restart(tmp_path: Path) -> None:
    (tmp_path / "predictions-000007.parquet").write_bytes(b"")
    log = ParquetPredictionLog(tmp_path, compile_plan(REFERENCE), flush_rows=1)
    e = ev("n1", 1, 10, 1.0, NOW)
    r = ScoreResult("n1", 0.5, True, 0.5, "v0001", ("amount",), [1.0], (), ())
    log([e], [r])
    log.close()
    assert (tmp_path / "predictions-000008.parquet").exists()


def test_shards_number_their_own_files(tmp_path: Path) -> None:
    """``serve --workers``: one shard per process in one directory, none overwriting."""
    (tmp_path / "predictions-000007.parquet").write_bytes(b"")
    (tmp_path / "predictions-w1-000003.parquet").write_bytes(b"")
    plan = compile_plan(REFERENCE)
    r = ScoreResult("s1", 0.5, True, 0.5, "v0001", ("amount",), [1.0], (), ())
    for shard in ("w0", "w1"):
        log = ParquetPredictionLog(tmp_path, plan, flush_rows=1, shard=shard).start()
        log([ev(f"s-{shard}", 1, 10, 2.0, NOW)], [r])
        log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "predictions-000007.parquet",
        "predictions-w0-000000.parquet",
        "predictions-w1-000003.parquet",
        "predictions-w1-000004.parquet",
    ]
    t = pq.read_table(tmp_path / "predictions-w0-000000.parquet")
    assert t.column("transaction_id").to_pylist() == ["s-w0"]
    with pytest.raises(ValueError, match=r"^shard: must be a letter"):
        ParquetPredictionLog(tmp_path, plan, shard="../x")


@pytest.mark.integration
def test_kafka_log(kafka_bootstrap: str) -> None:
    from confluent_kafka import Consumer

    topic = f"sk-{uuid.uuid4().hex[:10]}"
    plan = compile_plan(REFERENCE)
    log = KafkaPredictionLog(
        kafka_bootstrap, topic, plan, flush_rows=2, flush_interval_s=0.1
    ).start()
    names = ("card_txn_count_10m", "amount_to_card_mean_7d")
    results = [
        ScoreResult(f"k{i}", 0.25 * i, i >= 2, 0.5, "v0003", names, [float(i), math.nan], (), ())
        for i in range(3)
    ]
    events = [ev(f"k{i}", 40 + i, 10, 3.0, NOW) for i in range(3)]
    log(events, results)
    log.close()
    consumer = Consumer({
        "bootstrap.servers": kafka_bootstrap, "group.id": topic, "auto.offset.reset": "earliest",
    })  # fmt: skip
    consumer.subscribe([f"{topic}.predictions"])
    got: list[tuple[bytes | None, dict[str, Any]]] = []
    deadline = time.monotonic() + 30
    while len(got) < 3 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append((msg.key(), json.loads(msg.value() or b"null")))
    consumer.close()
    assert [k for k, _ in got] == [b"40", b"41", b"42"]
    first = got[0][1]
    assert first["transaction_id"] == "k0" and first["model_version"] == "v0003"
    assert first["features"] == {"card_txn_count_10m": 0.0, "amount_to_card_mean_7d": None}
    assert first["event_time"] == NOW and isinstance(first["scored_at"], int)


NAMES = tuple(REFERENCE.feature_names)


def _batch(prefix: str, n: int) -> tuple[list[Any], list[ScoreResult], np.ndarray]:
    """A scored batch as the scorer hands it over: events, results and the model input."""
    X = np.arange(n * len(NAMES), dtype=np.float64).reshape(n, len(NAMES))
    X[0, 3] = math.nan
    rows = X.tolist()
    events = [ev(f"{prefix}{k}", 1 + k % 3, 10, 2.0 + k, NOW + k) for k in range(n)]
    results = [
        ScoreResult(e.transaction_id, k / n, k / n >= 0.5, 0.5, "v0002", NAMES, rows[k], (), ())
        for k, e in enumerate(events)
    ]
    return events, results, X


def test_a_batch_is_queued_as_its_columns(tmp_path: Path) -> None:
    """The request path keeps the scorer's matrix as it is, and no per-row result object."""
    log = ParquetPredictionLog(tmp_path, compile_plan(REFERENCE))
    events, results, X = _batch("c", 4)
    log(events, results, X)
    [entry] = log._buf
    assert entry.X is X
    assert entry.columns["score"] == (0.0, 0.25, 0.5, 0.75)
    assert not any(isinstance(v, ScoreResult) for col in entry.columns.values() for v in col)
    assert "features" not in entry.columns  # the matrix is the features
    log.close()
    t = pq.read_table(sorted(tmp_path.glob("predictions-*.parquet")))
    assert t.column("f_" + NAMES[1]).to_pylist() == X[:, 1].tolist()
    assert t.column("f_" + NAMES[3]).to_pylist()[0] is None  # NaN = missing = null


def test_singles_and_batches_share_one_file(tmp_path: Path) -> None:
    log = ParquetPredictionLog(tmp_path, compile_plan(REFERENCE))
    events, results, X = _batch("m", 3)
    log(events[:1], results[:1])  # Score: no matrix, the result's features
    log(events[1:], results[1:], X[1:])
    log.close()
    t = pq.read_table(sorted(tmp_path.glob("predictions-*.parquet")))
    assert t.column("transaction_id").to_pylist() == ["m0", "m1", "m2"]
    got = np.array([t.column(f"f_{n}").to_pylist() for n in NAMES], dtype=np.float64).T
    np.testing.assert_array_equal(got, X)


class _Gated(ParquetPredictionLog):
    """A log whose writes wait for a gate: a writer that cannot keep up."""

    gate = threading.Event()
    writing = threading.Event()

    def _write(self, entries: list[Any]) -> int:
        self.writing.set()
        self.gate.wait(30)
        return super()._write(entries)


def test_a_full_queue_blocks_the_caller_and_loses_nothing(tmp_path: Path) -> None:
    log = _Gated(tmp_path, compile_plan(REFERENCE), flush_rows=2, max_pending_rows=2)
    log.gate, log.writing = threading.Event(), threading.Event()
    log.start()
    events, results, X = _batch("q", 6)
    log(events[:2], results[:2], X[:2])  # taken by the writer, which then waits
    assert log.writing.wait(30)
    log(events[2:4], results[2:4], X[2:4])  # queued: the queue is now full
    caller = threading.Thread(target=log, args=(events[4:], results[4:], X[4:]))
    caller.start()
    deadline = time.monotonic() + 30
    while log.blocked_calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.blocked_calls == 1 and caller.is_alive()  # blocked, not dropped
    log.gate.set()
    caller.join(30)
    log.close()
    t = pq.read_table(sorted(tmp_path.glob("predictions-*.parquet")))
    assert sorted(t.column("transaction_id").to_pylist()) == [f"q{k}" for k in range(6)]
    assert log.rows_written == 6 and log.blocked_s > 0
    with pytest.raises(ValueError, match=r"^max_pending_rows: must be >= flush_rows \(5\)"):
        ParquetPredictionLog(tmp_path, compile_plan(REFERENCE), flush_rows=5, max_pending_rows=4)


def test_close_writes_every_row_exactly_once(tmp_path: Path) -> None:
    """Many callers while the writer runs, then shutdown: every row once, none twice."""
    log = ParquetPredictionLog(
        tmp_path, compile_plan(REFERENCE), flush_rows=50, max_pending_rows=100
    ).start()

    def caller(c: int) -> None:
        for b in range(20):
            events, results, X = _batch(f"x{c}-{b}-", 7)
            log(events, results, X)

    threads = [threading.Thread(target=caller, args=(c,)) for c in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    log.close()
    ids = pq.read_table(sorted(tmp_path.glob("predictions-*.parquet"))).column("transaction_id")
    expected = [f"x{c}-{b}-{k}" for c in range(4) for b in range(20) for k in range(7)]
    assert sorted(ids.to_pylist()) == sorted(expected)
    assert log.rows_written == len(expected) and log.errors == 0


def test_the_queue_counters_are_prometheus_metrics(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    log = ParquetPredictionLog(tmp_path, compile_plan(REFERENCE))
    log.register(registry)
    events, results, X = _batch("g", 3)
    log(events, results, X)
    p = "skewless_prediction_log_"
    assert registry.get_sample_value(f"{p}pending_rows") == 3
    log.close()
    assert registry.get_sample_value(f"{p}pending_rows") == 0
    assert registry.get_sample_value(f"{p}rows_written_total") == 3
    assert registry.get_sample_value(f"{p}blocked_calls_total") == 0
    assert registry.get_sample_value(f"{p}write_errors_total") == 0


def test_rows_scored_after_close_are_still_written(tmp_path: Path) -> None:
    log = ParquetPredictionLog(tmp_path, compile_plan(REFERENCE)).start()
    log.close()
    events, results, X = _batch("late", 2)
    log(events, results, X)
    t = pq.read_table(sorted(tmp_path.glob("predictions-*.parquet")))
    assert t.column("transaction_id").to_pylist() == ["late0", "late1"]
