"""The prediction log: every scored event's features, score, model version and time.

It is what makes skew *measurable* after the fact: the exact vector the model saw in
serving, joinable on the schema's event id with the backfill's vector for the same event.
Every field of the definitions' schema is logged under its own name, the features as
``f_<name>``.

Off the hot path: a scorer call only appends one entry (its events, results and, for a
batch, the model input matrix as it is) to a bounded queue; a writer thread turns queued
batches into Parquet files a column at a time (embedded mode) or Kafka messages
(:mod:`serving.predlog_writer`: back-pressure instead of loss, every row written on
close). Parquet files
are ``<dir>/predictions-<n>.parquet``, one per flush (every ``flush_rows`` rows, every
``flush_interval_s`` and on close); numbering continues after existing files, so a restart
never overwrites a log. A ``shard`` (one per ``serve --workers`` process) writes
``<dir>/predictions-<shard>-<n>.parquet`` and numbers its own files.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> from features.plan import compile_plan
>>> from features.reference import REFERENCE
>>> log = ParquetPredictionLog(d, compile_plan(REFERENCE)).start()
>>> log.close(); sorted(p.name for p in d.iterdir())   # nothing scored, nothing written
[]
"""

from __future__ import annotations

import json
import logging
import math
import re
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.plan import Plan
from features.schema import EventSchema, FieldType
from serving.predlog_writer import BatchQueue, ScoredBatch
from serving.scorer import ScoreResult

Event = Any
#: columns of the log itself; a schema field may not take one of these names
RESERVED = ("scored_at", "model_version", "score", "decision", "warnings", "shadow_score",
            "shadow_version")  # fmt: skip

log = logging.getLogger("skewless.serving.predlog")


def _rows(entries: list[ScoredBatch]) -> list[tuple[int, Event, ScoreResult]]:
    """Per-row results again (the Kafka log writes one message per row)."""
    rows = []
    for e in entries:
        c = e.columns
        features = e.X.tolist() if e.X is not None else c["features"]
        for k, ev in enumerate(e.events):
            r = ScoreResult(
                c["transaction_id"][k], c["score"][k], c["decision"][k], c["threshold"][k],
                c["model_version"][k], e.feature_names, features[k], (), c["warnings"][k],
                c["shadow_score"][k], c["shadow_version"][k],
            )  # fmt: skip
            rows.append((e.at_ms, ev, r))
    return rows


class ParquetPredictionLog(BatchQueue):
    """Embedded mode: ``<directory>/predictions-[<shard>-]<n>.parquet``, one column per
    feature."""

    def __init__(
        self,
        directory: Path,
        plan: Plan,
        flush_rows: int = 10_000,
        flush_interval_s: float = 60.0,
        shard: str | None = None,
        max_pending_rows: int | None = None,
    ) -> None:
        super().__init__(flush_rows, flush_interval_s, max_pending_rows)
        if shard is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", shard):
            raise ValueError(f"shard: must be a letter then letters, digits or _, got {shard!r}")
        self.schema = _checked(plan.schema)
        self._dictionary = [
            f.name for f in self.schema.fields
            if f.type is FieldType.STRING and f.name != plan.schema.event_id
        ] + ["model_version"]  # fmt: skip
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prefix = "predictions-" if shard is None else f"predictions-{shard}-"
        pattern = re.compile(rf"^{re.escape(self._prefix)}(\d+)\.parquet$")
        taken = [int(m.group(1)) for p in self.directory.iterdir() if (m := pattern.match(p.name))]
        self._next = max(taken, default=-1) + 1

    def _write(self, entries: list[ScoredBatch]) -> int:
        by_names: dict[tuple[str, ...], list[ScoredBatch]] = {}
        for e in entries:  # one scorer call = one model = one feature order
            if e.n:
                by_names.setdefault(e.feature_names, []).append(e)
        n = 0
        for names, group in by_names.items():
            path = self.directory / f"{self._prefix}{self._next:06d}.parquet"
            self._next += 1
            tmp = path.with_name(f".{path.name}.tmp")
            table = _table(self.schema, names, group)
            # dictionaries only where values repeat: on floats and ids they cost 2x the
            # write time for nothing (measured: docs/perf-plan.md)
            pq.write_table(table, tmp, use_dictionary=self._dictionary)
            tmp.rename(path)
            n += table.num_rows
        return n


def _checked(schema: EventSchema) -> EventSchema:
    clash = [n for n in schema.names if n in RESERVED or n.startswith("f_")]
    if clash:
        raise ValueError(f"schema: field(s) {clash} clash with the prediction log's columns")
    return schema


_ARROW = {
    FieldType.INT64: pa.int64(),
    FieldType.FLOAT64: pa.float64(),
    FieldType.STRING: pa.string(),
    FieldType.BOOL: pa.bool_(),
}


def _matrix(e: ScoredBatch, n_features: int) -> np.ndarray:
    """The batch's model input: the scorer's own matrix, or the single rows' features."""
    if e.X is not None:
        return e.X
    return np.array(e.columns["features"], dtype=np.float64).reshape(e.n, n_features)


def _table(schema: EventSchema, names: tuple[str, ...], entries: list[ScoredBatch]) -> pa.Table:
    """One Parquet table from queued batches, a column at a time (same model per call)."""
    at = np.repeat(np.array([e.at_ms for e in entries], dtype=np.int64), [e.n for e in entries])

    def result(name: str) -> list[Any]:
        return list(chain.from_iterable(e.columns[name] for e in entries))

    score, decision = result("score"), result("decision")
    version, warnings = result("model_version"), result("warnings")
    XT = np.ascontiguousarray(np.concatenate([_matrix(e, len(names)) for e in entries]).T)
    shadow_version = result("shadow_version")
    cols: dict[str, pa.Array] = {"scored_at": pa.array(at, pa.int64()).cast(_MS)}
    cols |= _request_columns(schema, entries)
    cols |= {
        "model_version": _strings(version),
        "score": pa.array(score, pa.float64()),
        "decision": pa.array(decision, pa.bool_()),
        "warnings": (
            pa.array(warnings, _WARNINGS) if any(warnings) else _empty_lists(len(warnings))
        ),
    }
    if shadow_version.count(None) != len(shadow_version):  # serve --shadow-alias: both scores
        cols["shadow_score"] = pa.array(result("shadow_score"), pa.float64())
        cols["shadow_version"] = pa.array(shadow_version, pa.string())
    for j, name in enumerate(names):
        cols[f"f_{name}"] = pa.array(XT[j], pa.float64(), from_pandas=True)
    return pa.table(cols)


_MS = pa.timestamp("ms", tz="UTC")
_WARNINGS = pa.list_(pa.string())


def _request_columns(schema: EventSchema, entries: list[ScoredBatch]) -> dict[str, pa.Array]:
    """The schema's fields: wrapped from the native request reader's Arrow buffers where a
    batch has them (nothing per row in Python), else converted from the events' values
    (consecutive such entries at once: ``Score`` queues one event per entry)."""
    parts: list[list[pa.Array]] = [[] for _ in schema.fields]
    plain: list[ScoredBatch] = []

    def convert() -> None:
        if plain:  # events are named tuples: one C-level transpose gives every column
            fields = zip(*chain.from_iterable(e.events for e in plain), strict=True)
            for part, f, values in zip(parts, schema.fields, fields, strict=True):
                part.append(
                    pa.array(values, pa.int64()).cast(_MS)
                    if f.type is FieldType.TIMESTAMP
                    else pa.array(values, _ARROW[f.type])
                )
            plain.clear()

    for e in entries:
        if e.request is None:
            plain.append(e)
            continue
        convert()
        for part, f, (values, valid, data) in zip(parts, schema.fields, e.request, strict=True):
            kind = _MS if f.type is FieldType.TIMESTAMP else _ARROW[f.type]
            buffers = [None if valid is None else pa.py_buffer(valid), pa.py_buffer(values)]
            if data is not None:
                buffers.append(pa.py_buffer(data))
            part.append(pa.Array.from_buffers(kind, e.n, buffers))
    convert()
    return {
        f.name: p[0] if len(p) == 1 else pa.concat_arrays(p)
        for f, p in zip(schema.fields, parts, strict=True)
    }


def _strings(values: list[Any]) -> pa.Array:
    """A string column; one repeated value (a batch's model version) without converting it
    per row."""
    if values and values.count(values[0]) == len(values) and type(values[0]) is str:
        return pa.repeat(pa.scalar(values[0], pa.string()), len(values))
    return pa.array(values, pa.string())


def _empty_lists(n: int) -> pa.Array:
    """``n`` empty warning lists (the usual batch: every entity found)."""
    return pa.ListArray.from_arrays(
        pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()), _WARNINGS
    )


def record(schema: EventSchema, at: int, e: Event, r: ScoreResult) -> dict[str, Any]:
    """One prediction as a JSON-able dict (missing features are null; times epoch ms)."""
    return {
        "scored_at": at,
        **dict(zip(schema.names, e, strict=True)),
        "model_version": r.model_version,
        "score": r.score,
        "decision": r.decision,
        "features": {
            n: None if math.isnan(v) else v
            for n, v in zip(r.feature_names, r.features, strict=True)
        },
        "warnings": list(r.warnings),
        **(
            {"shadow_score": r.shadow_score, "shadow_version": r.shadow_version}
            if r.shadow_version is not None
            else {}
        ),
    }


class KafkaPredictionLog(BatchQueue):
    """Production: JSON messages on ``<topic>.predictions``, keyed by the primary entity."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        plan: Plan,
        flush_rows: int = 1_000,
        flush_interval_s: float = 0.5,
        producer_config: dict[str, Any] | None = None,
        max_pending_rows: int | None = None,
    ) -> None:
        super().__init__(flush_rows, flush_interval_s, max_pending_rows)
        from confluent_kafka import Producer

        self.topic = f"{topic}.predictions"
        self.schema = _checked(plan.schema)
        self.key = plan.primary.key
        config = {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "compression.type": "lz4",
            "enable.idempotence": True,
            **(producer_config or {}),
        }
        self._producer = Producer(config)
        self.delivery_errors = 0

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.delivery_errors += 1
            log.warning("prediction log: delivery to %s failed: %s", self.topic, err)

    def _write(self, entries: list[ScoredBatch]) -> int:
        rows = _rows(entries)
        for at, e, r in rows:
            value = json.dumps(
                record(self.schema, at, e, r), separators=(",", ":"), allow_nan=False
            )
            while True:
                try:
                    self._producer.produce(
                        self.topic, value.encode(), str(self.key(e)).encode(),
                        on_delivery=self._delivered,
                    )  # fmt: skip
                    break
                except BufferError:  # local queue full: let librdkafka drain it
                    self._producer.poll(0.1)
        self._producer.poll(0)
        return len(rows)

    def _close(self) -> None:
        left = self._producer.flush(10)
        if left:
            log.warning(
                "prediction log: %d messages to %s not delivered at close", left, self.topic
            )
