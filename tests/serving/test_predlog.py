"""The prediction log: Parquet files every N rows and on shutdown (embedded), JSON on
``<topic>.predictions`` (Kafka, integration)."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

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
