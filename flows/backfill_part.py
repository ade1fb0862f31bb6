"""One partition of the distributed backfill: the single-process kernel on one hash
partition of one entity's events, run as a Dask task (:mod:`flows.backfill_dask`).

A partition file holds, for every valid event whose entity key hashes to it, in file
order: the original row (``__row``), the key, the event time, the event id and the
entity's numeric fields. Acceptance (dedup, lateness) runs on it in file order, exactly as
:func:`flows.backfill.load_events` does on the whole file, since it only compares events of
the same key.

The one kernel decision that is *not* local to a key is how window sums are made exact:
:func:`features.range_folds.moments_prefix` picks the digit width from the entity's event
count and the scale and digit count from the exponents of all its values, and the float
rounding of a window sum depends on that split. So partitions run in two passes:
:func:`accept_stats` reports each partition's count and exponent range, the driver merges
them (:func:`merge_stats`) and :func:`run_partition` builds every index with the digits
the whole file would have had. The output is then identical bit for bit.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pyarrow as pa

from features.backfill import EventIndex, accept
from features.definitions import FeatureSet
from features.feast_objects import TIMESTAMP_FIELD, bootstrap_field, state_field
from features.native import compile_core
from features.plan import EntityPlan, compile_plan
from features.range_folds import _MAX_DIGITS, Digits, Moments, _prefix
from features.state_build import build_states
from flows.backfill import small_pages

ROW, KEY, TS, TXID = "__row", "__key", "__ts", "__txid"


def field_column(name: str) -> str:
    return f"__f_{name}"


# The intermediate files are Arrow IPC: written and read (memory-mapped) about 10x faster
# than Parquet here, and they never leave the job.


def write_arrow(path: str | Path, table: pa.Table, rows: int | None = None) -> None:
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table, max_chunksize=rows)


def read_arrow(path: str | Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def arrow_batches(path: str | Path) -> Iterator[pa.Table]:
    """The file's batches as tables; one empty table (its schema) when it has none."""
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    for i in range(reader.num_record_batches):
        yield pa.Table.from_batches([reader.get_batch(i)], reader.schema)
    if not reader.num_record_batches:
        yield reader.schema.empty_table()


_LOADED: dict[bytes, FeatureSet] = {}


def load_fs(blob: bytes) -> FeatureSet:
    """The pickled definitions, unpickled once per worker (their plan compiles once)."""
    digest = hashlib.sha1(blob).digest()
    if digest not in _LOADED:
        _LOADED[digest] = cloudpickle.loads(blob)
    return _LOADED[digest]


@dataclass(frozen=True)
class Spread:
    """What :func:`features.range_folds.digits` reads of an array: finite, its smallest
    value, the exponent range of its non-zero magnitudes (``lo > hi``: all zero)."""

    finite: bool = True
    smallest: float = np.inf
    lo: int = 10_000
    hi: int = -10_000

    @staticmethod
    def of(x: np.ndarray) -> Spread:
        ax = np.abs(x)
        nz = ax[ax != 0]
        finite = bool(np.isfinite(x).all())
        if not finite or not len(nz):
            return Spread(finite, float(x.min()) if len(x) else np.inf)
        _, ex = np.frexp(nz)
        return Spread(True, float(x.min()), int(ex.min()), int(ex.max()))

    def merge(self, other: Spread) -> Spread:
        return Spread(
            self.finite and other.finite,
            min(self.smallest, other.smallest),
            min(self.lo, other.lo),
            max(self.hi, other.hi),
        )


@dataclass(frozen=True)
class DigitPlan:
    """The digits the whole file would use: (scale, count) or None (not representable)."""

    scale: int
    count: int


def _digit_plan(s: Spread, width: int) -> DigitPlan | None:
    """:func:`features.range_folds.digits` (scale not forced) on the merged spread."""
    if not s.finite:
        return None
    if s.lo > s.hi:
        return DigitPlan(0, 1)
    k = 53 - s.lo
    count = max(1, -(-(s.hi + k) // width))
    if count > _MAX_DIGITS or s.lo < -900 or s.hi > 900:
        return None
    return DigitPlan(k, count)


@dataclass(frozen=True)
class FieldPlan:
    """:func:`features.range_folds.moments_prefix` decided for the whole file."""

    width: int
    d1: DigitPlan | None
    d2: DigitPlan | None


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, FieldPlan]:
    """Per field, the moments plan of all partitions' accepted events together."""
    n = sum(p["n"] for p in parts)
    width = min(52, 62 - max(n, 1).bit_length())
    out = {}
    for f in parts[0]["spread"] if parts else []:
        s1 = s2 = Spread()
        for p in parts:
            s1, s2 = s1.merge(p["spread"][f][0]), s2.merge(p["spread"][f][1])
        d1 = _digit_plan(s1, width) if not n or s1.smallest >= 0 else None
        out[f] = FieldPlan(width, d1, _digit_plan(s2, width))
    return out


def _digits(x: np.ndarray, width: int, plan: DigitPlan) -> Digits:
    """``digits(x, width)`` with the whole file's scale and digit count (same loop)."""
    rest = np.ldexp(np.abs(x), plan.scale)
    parts = []
    for _ in range(plan.count - 1):
        q = np.floor(rest * 2.0**-width)
        parts.append((rest - q * 2.0**width).astype(np.int64))
        rest = q
    parts.append(rest.astype(np.int64))
    if (x < 0).any():
        parts = [np.where(x < 0, -p, p) for p in parts]
    return Digits(parts, plan.scale, width)


class PlannedIndex(EventIndex):
    """An :class:`EventIndex` whose exact prefix sums use the whole file's digits."""

    def __init__(self, keys: Any, ts: Any, fields: dict[str, np.ndarray], plans: Any) -> None:
        super().__init__(keys, ts, fields)
        self._plans: dict[str, FieldPlan] = plans

    def moments(self, field: str, squares: bool) -> Moments | None:
        full = self._memo.get((field, True))
        if full is not None:
            return full
        if (field, squares) not in self._memo:
            self._memo[field, squares] = self._planned(field, squares)
        return self._memo[field, squares]

    def _planned(self, field: str, squares: bool) -> Moments | None:
        p, x = self._plans[field], self.values[field]
        if p.d1 is None:
            return None
        if squares and (p.d2 is None or max(p.d1.scale, p.d2.scale) > 1000):
            return None
        d1 = _digits(x, p.width, p.d1)
        d2 = _digits(x * x, p.width, p.d2) if squares and p.d2 else None
        return Moments(
            _prefix(d1.parts), _prefix(d2.parts) if d2 else None, d1.scale,
            d2.scale if d2 else 0, p.width,
        )  # fmt: skip


def prepare(blob: bytes) -> None:
    """Unpickle and compile the definitions on a worker ahead of its first task, and run
    the kernel once on two events (Arrow compute initializes lazily, ~0.5 s)."""
    fs = load_fs(blob)
    keys, ts, ids = np.array([1, 1]), np.array([0, 1]), pa.array(["a", "b"])
    for e in compile_plan(fs).entities:
        compile_core(e.layout)
        accept(e.layout.lateness_ms, keys, ids, ts)
        index = EventIndex(keys, ts, {f: np.ones(2) for f in e.fields})
        index.features(fs, e.name, keys, ts + 1)
        build_states(e.layout, index, ids)


def _entity(fs: FeatureSet, name: str) -> EntityPlan:
    return next(e for e in compile_plan(fs).entities if e.name == name)


def _accepted(fs: FeatureSet, name: str, paths: list[str]) -> tuple[EntityPlan, pa.Table, Any]:
    """The partition's pieces in file order, and their acceptance."""
    e, t = _entity(fs, name), pa.concat_tables([read_arrow(p) for p in paths])
    txids = t.column(TXID).combine_chunks()
    acc = accept(e.layout.lateness_ms, t.column(KEY).to_numpy(), txids, t.column(TS).to_numpy())
    return e, t, acc


def accept_stats(fs_blob: bytes, name: str, paths: list[str]) -> dict[str, Any]:
    """Pass 1: acceptance counts, the rows dropped (duplicates, too late) and the spread
    of every field (and its squares) over the accepted events."""
    start = time.thread_time()
    fs = load_fs(fs_blob)
    with small_pages():
        e, t, acc = _accepted(fs, name, paths)
    rows = t.column(ROW).to_numpy()
    spread = {}
    for f in e.fields:
        x = t.column(field_column(f)).to_numpy()[acc.accepted]
        spread[f] = (Spread.of(x), Spread.of(x * x))
    return {
        "n": int(acc.accepted.sum()),
        "duplicate_rows": rows[acc.duplicate],
        "late_rows": rows[acc.late],
        "spread": spread,
        "cpu": time.thread_time() - start,
    }


def run_partition(
    fs_blob: bytes,
    name: str,
    paths: list[str],
    queries: list[str] | None,
    out: str,
    plans: dict[str, FieldPlan],
    rows: int,
) -> dict[str, Any]:
    """Pass 2: this partition's features at its query rows (``out``-features.arrow, by
    ``__row``) and its Feast table with end states (``out``-feast.arrow, by key, time).
    Returns the number of entities, of Feast table rows and the task's CPU seconds."""
    start = time.thread_time()
    with small_pages():
        n, feast_rows = _run_partition(load_fs(fs_blob), name, paths, queries, out, plans, rows)
    return {"entities": n, "feast_rows": feast_rows, "cpu": time.thread_time() - start}


def _run_partition(
    fs: FeatureSet,
    name: str,
    paths: list[str],
    queries: list[str] | None,
    out: str,
    plans: dict[str, FieldPlan],
    rows: int,
) -> tuple[int, int]:
    e, t, acc = _accepted(fs, name, paths)
    sel = pa.array(acc.accepted)
    ok = t.filter(sel)
    fields = {f: ok.column(field_column(f)).to_numpy() for f in e.fields}
    index = PlannedIndex(ok.column(KEY).to_numpy(), ok.column(TS).to_numpy(), fields, plans)
    q = pa.concat_tables([read_arrow(x) for x in queries]) if queries else t
    values = index.features(fs, name, q.column(KEY).to_numpy(), q.column(TS).to_numpy())
    feats = pa.table({ROW: q.column(ROW), **{k: pa.array(v) for k, v in values.items()}})
    write_arrow(f"{out}-features.arrow", feats, rows)

    blobs_list = build_states(e.layout, index, ok.column(TXID).combine_chunks())
    keys, ts, last, vals = index.features_after_events(fs, name)
    blobs = pa.array(blobs_list, pa.binary())
    at = pa.array(np.cumsum(last) - 1, mask=~last)
    cols = {
        e.join_key: pa.array(keys, pa.int64()),
        TIMESTAMP_FIELD: pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        **{n: pa.array(v) for n, v in vals.items()},
        state_field(e.entity): blobs.take(at),
        bootstrap_field(e.entity): blobs.take(at),
    }
    write_arrow(f"{out}-feast.arrow", pa.table(cols), rows)
    return len(index.uniq), len(keys)
