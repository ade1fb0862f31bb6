"""Inputs, outputs and metrics of the streaming flow.

Config objects (the sinks, the replay source) do no I/O when built; a sink's ``build()``
opens connections, and its partition writes one batch per call.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from features.definitions import FeatureSet
from features.store import OnlineRow, OnlineStore, StoreConfig, open_store

log = logging.getLogger("skewless.stream")


class _Metrics:
    def __init__(self) -> None:
        self.events_in = Counter("skewless_stream_events_in", "valid events decoded")
        self.dead_letters = Counter(
            "skewless_stream_dead_letters", "invalid messages sent to the DLQ"
        )
        self.late = Counter(
            "skewless_stream_late", "events too late for an entity (each decides)", ["entity"]
        )
        self.duplicates = Counter(
            "skewless_stream_duplicates", "duplicate event ids an entity ignored", ["entity"]
        )
        self.rows = Counter(
            "skewless_stream_rows_written", "entity rows written to the online store"
        )
        self.retries = Counter("skewless_stream_store_retries", "online store writes retried")
        self.key_mismatches = Counter(
            "skewless_stream_key_mismatches",
            "Kafka messages whose key is not the primary entity's id (or no key)",
        )
        self.redis_losses = Counter(
            "skewless_stream_redis_data_lost",
            "times a worker found Redis without its marker (restart, flush, failover)",
        )
        self.states_rewritten = Counter(
            "skewless_stream_states_rewritten", "held entity states rewritten after a loss"
        )
        self.held = Gauge(
            "skewless_stream_entities_held", "entity states the workers hold in memory"
        )
        self.evicted = Counter(
            "skewless_stream_entities_evicted", "entity states dropped after --evict-after idle"
        )
        self.returned = Counter(
            "skewless_stream_entities_returned", "evicted entities read back when they returned"
        )
        self.write_seconds = Histogram(
            "skewless_stream_sink_write_seconds", "one batched online-store write",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )  # fmt: skip
        self.freshness = Histogram(
            "skewless_stream_freshness_seconds", "event produced -> readable in the online store",
            # 10 ms steps up to 100 ms, 25 ms to 250: fine enough to tell the targets apart
            buckets=(0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.125,
                     0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10, 30),
        )  # fmt: skip


METRICS = _Metrics()


#: Below this many amounts a Python loop beats numpy's fixed cost (a tailing stream's
#: writes carry ~20-60 rows; 7.7 against 10.2 µs for 30 amounts, even at ~50)
SMALL_OBSERVE = 48


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for each amount, in one pass (the sink observes one
    freshness per written row; per-call ``observe`` was ~5% of the flow's CPU)."""
    if not len(amounts):
        return
    bounds = histogram._upper_bounds  # same rule as observe: first bucket with a <= bound
    histogram._sum.inc(float(sum(amounts)))  # in order, as observe adds them
    if len(amounts) < SMALL_OBSERVE:
        hits: dict[int, int] = {}
        for x in amounts:
            i = bisect_left(bounds, x)
            hits[i] = hits.get(i, 0) + 1
        buckets = histogram._buckets
        for i, c in hits.items():
            buckets[i].inc(c)
        return
    a = np.asarray(amounts, dtype=np.float64)
    counts = np.bincount(np.searchsorted(bounds, a, side="left"), minlength=len(bounds))
    for bucket, c in zip(histogram._buckets, counts.tolist(), strict=False):
        if c:
            bucket.inc(c)


_served: set[int] = set()


def serve_metrics(port: int) -> None:
    """Prometheus endpoint on 127.0.0.1:port (once per process)."""
    if port not in _served:
        start_http_server(port, addr="127.0.0.1")
        _served.add(port)


@dataclass(frozen=True)
class DeadLetter:
    """An invalid message: its original bytes and Kafka key, why, and where it was read."""

    raw: bytes
    reason: str
    where: dict[str, Any] = field(default_factory=dict)
    key: bytes | None = None

    def to_json(self) -> str:
        try:
            text, enc = self.raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, enc = self.raw.hex(), "hex"
        return json.dumps({"reason": self.reason, "raw": text, "encoding": enc, **self.where})


# -- stopping --------------------------------------------------------------------------

_stop = threading.Event()


def request_stop() -> None:
    """Ends every input partition at its next batch (Ctrl-C, SIGTERM): the flow then
    finishes the batches it holds, writes them and returns, as at the end of the input."""
    _stop.set()


def clear_stop() -> None:
    _stop.clear()


def stop_requested() -> bool:
    return _stop.is_set()


class _StoppablePartition(StatefulSourcePartition[Any, Any]):
    def __init__(self, part: StatefulSourcePartition[Any, Any]) -> None:
        self.part = part

    def next_batch(self) -> Any:
        if _stop.is_set():
            raise StopIteration
        return self.part.next_batch()

    def next_awake(self) -> datetime | None:
        return self.part.next_awake()

    def snapshot(self) -> Any:
        return self.part.snapshot()

    def close(self) -> None:
        self.part.close()


class StoppableSource(FixedPartitionedSource[Any, Any]):
    """``source`` whose partitions end when :func:`request_stop` is called (one flag check
    per batch)."""

    def __init__(self, source: FixedPartitionedSource[Any, Any]) -> None:
        self.source = source

    def list_parts(self) -> list[str]:
        return self.source.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        return _StoppablePartition(self.source.build_part(step_id, for_part, resume_state))


# -- the flow's items ------------------------------------------------------------------


class Ingested(NamedTuple):
    """A valid event, its id's hash, its original bytes and Kafka key, and when it entered
    the system (Kafka timestamp or read time, ms). A named tuple: one is made per event, in
    0.2 µs against 0.8 µs for a frozen dataclass."""

    event: Any
    produced_ms: int
    #: the event id's hash (``features.layout.txid_hash``): once here, not per entity
    txid: int
    raw: bytes = b""
    key: bytes | None = None


class RowOut(NamedTuple):
    """An entity's new online row (the newest Kafka timestamp it includes: freshness)."""

    entity: str
    row: OnlineRow
    produced_ms: int


class LateOut(NamedTuple):
    """An event too late for ``entity`` (it may still count for the others)."""

    item: Ingested
    entity: str


# -- online store --------------------------------------------------------------------


_stores: dict[tuple[StoreConfig, str], OnlineStore] = {}
_stores_lock = threading.Lock()


_fingerprints: dict[int, tuple[FeatureSet, str]] = {}  # id -> (the set, kept alive; its hash)


def store_for(cfg: StoreConfig, fs: FeatureSet) -> OnlineStore:
    """One connection per process, config and definitions (Bytewax workers are threads).
    The definitions' fingerprint is computed once per set: the prefetch asks for the store
    on each of its reads, and hashing the spec each time was ~1.5% of a tailing stream's
    CPU (a set is immutable once loaded)."""
    with _stores_lock:
        known = _fingerprints.get(id(fs))
        if known is None or known[0] is not fs:
            known = _fingerprints[id(fs)] = (fs, fs.fingerprint())
        key = (cfg, known[1])
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = open_store(cfg, fs)
        return store


# -- files ---------------------------------------------------------------------------


class _JsonlPartition(StatelessSinkPartition[Any]):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = path.open("a", encoding="utf-8")

    def write_batch(self, items: list[Any]) -> None:
        for item in items:
            self.f.write(item.to_json() + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class JsonlSink(DynamicSink[Any]):
    """Appends ``item.to_json()`` lines to ``<prefix>-<worker>.jsonl``."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonlPartition:
        return _JsonlPartition(self.prefix.with_name(f"{self.prefix.name}-{worker_index}.jsonl"))


@dataclass(frozen=True)
class ReplayMessage:
    value: bytes
    row: int
    produced_ms: int


def _rfc3339(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def table_to_messages(table: pa.Table) -> list[bytes]:
    """Events table -> the JSON messages a producer sends (timestamps as RFC 3339)."""
    cols = [c for c in table.column_names if c not in ("row",)]
    t = table.select(cols)
    times = [f.name for f in t.schema if pa.types.is_timestamp(f.type)]
    for name in times:
        ms = pc.cast(pc.cast(t.column(name), pa.timestamp("ms", tz="UTC")), pa.int64())
        t = t.set_column(t.schema.get_field_index(name), name, ms)
    out = []
    for rec in t.to_pylist():
        for name in times:
            if rec[name] is not None:
                rec[name] = _rfc3339(rec[name])
        out.append(json.dumps(rec, separators=(",", ":")).encode())
    return out


class _ReplayPartition(StatefulSourcePartition[ReplayMessage, int]):
    def __init__(self, path: Path, batch_size: int, resume: int | None) -> None:
        self.table = pq.read_table(path)
        self.pos = resume or 0
        self.batch_size = batch_size
        self.total = self.table.num_rows

    def next_batch(self) -> list[ReplayMessage]:
        if self.pos >= self.total:
            raise StopIteration
        table = self.table.slice(self.pos, self.batch_size)
        now = int(time.time() * 1000)
        msgs = [ReplayMessage(m, self.pos + i, now) for i, m in enumerate(table_to_messages(table))]
        self.pos += len(msgs)
        return msgs

    def snapshot(self) -> int:
        return self.pos


class ParquetReplaySource(FixedPartitionedSource[ReplayMessage, int]):
    """Replays an events Parquet file as JSON messages, in file order (one partition;
    resumable by row position)."""

    def __init__(self, path: Path, batch_size: int = 1000) -> None:
        self.path, self.batch_size = path, batch_size

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ReplayPartition:
        return _ReplayPartition(self.path, self.batch_size, resume_state)
