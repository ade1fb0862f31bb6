"""The prediction log's request columns from the native reader's Arrow buffers: the same
table, and the same Parquet bytes, as the columns built from the events' values (the way
the log built every column before), for batches alone and mixed with single-event entries,
shadow scores, warnings and missing (null) fields."""

from __future__ import annotations

import random
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.plan import compile_plan
from features.reference import REFERENCE
from features.schema import FieldType
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import event_transaction
from serving.predlog import ParquetPredictionLog, _table
from serving.predlog_writer import ScoredBatch
from serving.score_types import RequestEvents, ScoreResult, ScoreResults
from serving.scorer import Scorer
from serving.servicer import ScorerServicer
from tests.serving.test_request_native import valid_transactions

PLAN = compile_plan(REFERENCE)
SCHEMA = PLAN.schema
NAMES = tuple(REFERENCE.feature_names)
SERVICER = ScorerServicer(Scorer(REFERENCE), max_batch_size=1000)
_ARROW = {FieldType.INT64: pa.int64(), FieldType.FLOAT64: pa.float64(),
          FieldType.STRING: pa.string(), FieldType.BOOL: pa.bool_()}  # fmt: skip
_MS = pa.timestamp("ms", tz="UTC")


def _reference(entries: list[ScoredBatch]) -> pa.Table:
    """The log's table as it was built before: every column from Python values."""
    at = np.repeat(np.array([e.at_ms for e in entries], dtype=np.int64), [e.n for e in entries])
    events = list(chain.from_iterable(e.events for e in entries))

    def result(name: str) -> list[Any]:
        return list(chain.from_iterable(e.columns[name] for e in entries))

    cols = {"scored_at": pa.array(at, pa.int64()).cast(_MS)}
    for f, values in zip(SCHEMA.fields, zip(*events, strict=True), strict=True):
        cols[f.name] = (
            pa.array(values, pa.int64()).cast(_MS)
            if f.type is FieldType.TIMESTAMP
            else pa.array(values, _ARROW[f.type])
        )
    cols |= {
        "model_version": pa.array(result("model_version"), pa.string()),
        "score": pa.array(result("score"), pa.float64()),
        "decision": pa.array(result("decision"), pa.bool_()),
        "warnings": pa.array(result("warnings"), pa.list_(pa.string())),
    }
    if any(v is not None for v in result("shadow_version")):
        cols["shadow_score"] = pa.array(result("shadow_score"), pa.float64())
        cols["shadow_version"] = pa.array(result("shadow_version"), pa.string())
    X = np.concatenate([e.X if e.X is not None else np.array(e.columns["features"])
                        for e in entries])  # fmt: skip
    for j, name in enumerate(NAMES):
        cols[f"f_{name}"] = pa.array(X[:, j], pa.float64(), from_pandas=True)
    return pa.table(cols)


def _batch(events: list[Any], rng: random.Random, warn: bool) -> tuple[ScoreResults, np.ndarray]:
    """Results as :func:`serving.score_batch._score_columns` builds them (with columns)."""
    n = len(events)
    X = np.array([[rng.choice([rng.random(), float("nan"), -0.0]) for _ in NAMES]
                  for _ in range(n)])  # fmt: skip
    p = [rng.random() for _ in range(n)]
    warnings = [("card 1: no state",) if warn and k % 3 == 0 else () for k in range(n)]
    results = ScoreResults(
        ScoreResult(e.transaction_id, s, s >= 0.5, 0.5, "v0007", NAMES, x, (), w)
        for e, s, x, w in zip(events, p, X.tolist(), warnings, strict=True)
    )
    results.columns = {
        "transaction_id": [e.transaction_id for e in events], "score": p,
        "decision": [s >= 0.5 for s in p], "threshold": [0.5] * n,
        "model_version": ["v0007"] * n, "warnings": warnings,
        "shadow_score": [None] * n, "shadow_version": [None] * n,
    }  # fmt: skip
    return results, X


def _tx(i: int, rng: random.Random) -> pb.Transaction:
    return event_transaction({
        "transaction_id": f"t-{i}-" + "é" * rng.randrange(3), "card_id": rng.randrange(2**40),
        "merchant_id": rng.randrange(100), "amount": rng.uniform(0.01, 1e6),
        "currency": rng.choice(["EUR", "USD"]), "country": rng.choice(["FR", "DE", "JP"]),
        "mcc": rng.randrange(10_000), "event_time": 1_767_225_600_123 + rng.randrange(10**9),
    })  # fmt: skip


def _request(txs: list[pb.Transaction]) -> bytes:
    return pb.ScoreBatchRequest(transactions=txs).SerializeToString()


def _entries(groups: list[list[pb.Transaction]], seed: int) -> list[ScoredBatch]:
    """One entry per group: a batch read natively (with columns), a single event, or a
    shadowed batch (plain results, no columns), in turn."""
    rng, out = random.Random(seed), []
    for k, txs in enumerate(groups):
        events, _, _ = SERVICER.batch_request(_request(txs))
        results, X = _batch(events, rng, warn=k % 2 == 1)
        kind = k % 3
        if kind == 0:
            entry = ScoredBatch.of(events, results, X)
        elif kind == 1:  # Score: one event, its result as the scorer logs it
            entry = ScoredBatch.of((events[0],), (results[0],), None)
        else:  # the shadow's rescored copies: plain lists
            shadowed = [r._replace(shadow_score=0.25, shadow_version="v0008") for r in results]
            entry = ScoredBatch.of(list(events), shadowed, X)
        out.append(entry._replace(at_ms=1_767_258_000_000 + k))
    return out


def test_the_server_reads_a_batch_with_its_columns() -> None:
    txs = [_tx(i, random.Random(i)) for i in range(3)]
    events, _, _ = SERVICER.batch_request(_request(txs))
    assert type(events) is RequestEvents and events.columns is not None
    assert len(events.columns) == len(SCHEMA.fields)
    entry = ScoredBatch.of(events, _batch(events, random.Random(1), False)[0], None)
    assert entry.request is events.columns


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(valid_transactions(), min_size=1, max_size=20), min_size=1, max_size=6),
    st.integers(0, 2**16),
)
def test_native_request_columns_give_the_same_table(
    groups: list[list[pb.Transaction]], seed: int
) -> None:
    entries = _entries(groups, seed)
    got, want = _table(SCHEMA, NAMES, entries), _reference(entries)
    assert got.schema == want.schema
    for name in want.column_names:
        assert got.column(name).equals(want.column(name)), name


def test_the_parquet_file_is_byte_for_byte_the_same(tmp_path: Path) -> None:
    """Batches of 500 (nulls in ``is_fraud``, which a Transaction never carries), a single
    event and a shadowed batch between them: the log's file equals one written from the
    values as before, byte for byte."""
    rng = random.Random(5)
    groups = [[_tx(k * 500 + i, rng) for i in range(500)] for k in range(4)]
    entries = _entries(groups, 11)
    assert [e.request is not None for e in entries] == [True, False, False, True]
    log = ParquetPredictionLog(tmp_path / "log", PLAN)
    assert log._write(entries) == sum(e.n for e in entries)
    pq.write_table(_reference(entries), tmp_path / "want.parquet", use_dictionary=log._dictionary)
    got = (tmp_path / "log" / "predictions-000000.parquet").read_bytes()
    assert got == (tmp_path / "want.parquet").read_bytes()
    t = pq.read_table(tmp_path / "log")
    assert t.column("is_fraud").null_count == t.num_rows
    assert t.column("shadow_version").to_pylist().count("v0008") == 500
