"""The prediction log: every scored event's features, score, model version and time.

It is what makes skew *measurable* after the fact: the exact vector the model saw in
serving, joinable on the schema's event id with the backfill's vector for the same event.
Every field of the definitions' schema is logged under its own name, the features as
``f_<name>``.

Off the hot path: a scorer call only appends one tuple to a buffer; a background thread
turns buffered rows into Parquet files (embedded mode) or Kafka messages. Parquet files
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
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.plan import Plan
from features.schema import EventSchema, FieldType
from serving.scorer import ScoreResult

Event = Any
#: columns of the log itself; a schema field may not take one of these names
RESERVED = ("scored_at", "model_version", "score", "decision", "warnings", "shadow_score",
            "shadow_version")  # fmt: skip

log = logging.getLogger("skewless.serving.predlog")

_Entry = tuple[int, Sequence[Event], Sequence[ScoreResult]]


class _Buffered:
    """Buffer + background flusher; subclasses implement :meth:`_write`."""

    def __init__(self, flush_rows: int = 10_000, flush_interval_s: float = 60.0) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows: must be >= 1, got {flush_rows}")
        self.flush_rows, self.flush_interval_s = flush_rows, flush_interval_s
        self._buf: deque[_Entry] = deque()
        self._pending = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rows_written = 0
        self.errors = 0

    def __call__(self, events: Sequence[Event], results: Sequence[ScoreResult]) -> None:
        """The scorer's sink: O(1), never blocks on I/O."""
        self._buf.append((time.time_ns() // 1_000_000, events, results))
        self._pending += len(results)
        if self._pending >= self.flush_rows:
            self._wake.set()

    def start(self) -> _Buffered:
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        entries: list[_Entry] = []
        while self._buf:
            entries.append(self._buf.popleft())
        if not entries:
            return
        self._pending = max(self._pending - sum(len(r) for _, _, r in entries), 0)
        try:
            self.rows_written += self._write(entries)
        except Exception:  # the log must never take the server down
            self.errors += 1
            log.exception("prediction log: write failed; %d entries dropped", len(entries))

    def close(self) -> None:
        """Stop the thread and flush what is buffered."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()
        self._close()

    def _write(self, entries: list[_Entry]) -> int:
        raise NotImplementedError

    def _close(self) -> None:
        pass


def _rows(entries: list[_Entry]) -> list[tuple[int, Event, ScoreResult]]:
    return [
        (at, e, r) for at, events, results in entries for e, r in zip(events, results, strict=True)
    ]


class ParquetPredictionLog(_Buffered):
    """Embedded mode: ``<directory>/predictions-[<shard>-]<n>.parquet``, one column per
    feature."""

    def __init__(
        self,
        directory: Path,
        plan: Plan,
        flush_rows: int = 10_000,
        flush_interval_s: float = 60.0,
        shard: str | None = None,
    ) -> None:
        super().__init__(flush_rows, flush_interval_s)
        if shard is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", shard):
            raise ValueError(f"shard: must be a letter then letters, digits or _, got {shard!r}")
        self.schema = _checked(plan.schema)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prefix = "predictions-" if shard is None else f"predictions-{shard}-"
        pattern = re.compile(rf"^{re.escape(self._prefix)}(\d+)\.parquet$")
        taken = [int(m.group(1)) for p in self.directory.iterdir() if (m := pattern.match(p.name))]
        self._next = max(taken, default=-1) + 1

    def _write(self, entries: list[_Entry]) -> int:
        rows = _rows(entries)
        by_names: dict[tuple[str, ...], list[tuple[int, Event, ScoreResult]]] = {}
        for row in rows:
            by_names.setdefault(row[2].feature_names, []).append(row)
        for names, group in by_names.items():
            path = self.directory / f"{self._prefix}{self._next:06d}.parquet"
            self._next += 1
            tmp = path.with_name(f".{path.name}.tmp")
            pq.write_table(_table(self.schema, names, group), tmp)
            tmp.rename(path)
        return len(rows)


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


def _table(
    schema: EventSchema, names: tuple[str, ...], rows: list[tuple[int, Event, ScoreResult]]
) -> pa.Table:
    ms = pa.timestamp("ms", tz="UTC")
    at, events, results = zip(*rows, strict=True)
    # events and results are named tuples: one C-level transpose gives every column
    fields = zip(*events, strict=True)
    _, score, decision, _, version, _, features, _, warnings, shadow, shadow_version = zip(
        *results, strict=True
    )
    X = np.array(features, dtype=np.float64).reshape(len(rows), len(names))
    cols: dict[str, pa.Array] = {"scored_at": pa.array(at, pa.int64()).cast(ms)}
    for f, values in zip(schema.fields, fields, strict=True):
        if f.type is FieldType.TIMESTAMP:
            cols[f.name] = pa.array(values, pa.int64()).cast(ms)
        else:
            cols[f.name] = pa.array(values, _ARROW[f.type])
    cols |= {
        "model_version": pa.array(version, pa.string()),
        "score": pa.array(score, pa.float64()),
        "decision": pa.array(decision, pa.bool_()),
        "warnings": pa.array(warnings, pa.list_(pa.string())),
    }
    if any(v is not None for v in shadow_version):  # serve --shadow-alias: both scores
        cols["shadow_score"] = pa.array(shadow, pa.float64())
        cols["shadow_version"] = pa.array(shadow_version, pa.string())
    for j, name in enumerate(names):
        cols[f"f_{name}"] = pa.array(X[:, j], pa.float64(), from_pandas=True)
    return pa.table(cols)


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


class KafkaPredictionLog(_Buffered):
    """Production: JSON messages on ``<topic>.predictions``, keyed by the primary entity."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        plan: Plan,
        flush_rows: int = 1_000,
        flush_interval_s: float = 0.5,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(flush_rows, flush_interval_s)
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

    def _write(self, entries: list[_Entry]) -> int:
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
