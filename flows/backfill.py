"""The backfill job: events Parquet -> point-in-time features, Feast offline tables, end states.

``DIR/features.parquet``
    one row per spine row: the spine's columns, then every feature by name.
``DIR/feast/<entity>_features_as_of_last_event.parquet``
    Feast's offline source: one row per (entity, event time) with the features as of
    just after that event; the entity's last row also carries its engine state, so
    ``feast materialize`` bootstraps the online store (R4).
``DIR/rejects.parquet``, ``DIR/late.parquet``, ``DIR/summary.json``
    what was not used, and why; nothing is dropped silently.

Each entity's events are sorted once (:class:`features.backfill.EventIndex`) and that
index serves the spine's features, the Feast tables and the end states.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.backfill import EventIndex, accept, maybe_repeated
from features.definitions import Entity, FeatureSet
from features.feast_objects import (
    TIMESTAMP_FIELD,
    bootstrap_field,
    offline_table_name,
    state_field,
)
from features.layout import compile_layouts
from features.plan import Plan, compile_plan
from features.schema import SchemaError
from features.state_build import build_states
from flows.progress import Stages

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BackfillReport:
    events: int = 0
    rejected: int = 0
    #: valid rows that repeat an event id of the same primary (Kafka key) entity
    duplicates: int = 0
    #: valid first copies too late for at least one entity (``late.parquet`` names which)
    late: int = 0
    #: valid first copies the primary entity counts
    accepted: int = 0
    spine_rows: int = 0
    entities: dict[str, int] = field(default_factory=dict)
    #: per entity: accepted, duplicates and late rows (each entity decides on its own events)
    by_entity: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _ms(col: pa.ChunkedArray, name: str) -> np.ndarray:
    t = col.type
    if pa.types.is_timestamp(t):
        if t.tz is None:
            raise SchemaError(f"column '{name}': timestamp without a time zone; store UTC")
        return pc.cast(pc.cast(col, pa.timestamp("ms", tz="UTC")), pa.int64()).to_numpy()
    if pa.types.is_integer(t):
        return pc.cast(col, pa.int64()).to_numpy()
    raise SchemaError(f"column '{name}': expected a UTC timestamp or epoch ms, found {t}")


@dataclass(frozen=True)
class EntityEvents:
    """One entity's accepted events as columns, in file order (``txids``: Arrow strings)."""

    ts: np.ndarray
    keys: np.ndarray
    fields: dict[str, np.ndarray]
    txids: Any

    def index(self) -> EventIndex:
        return EventIndex(self.keys, self.ts, self.fields)


@dataclass(frozen=True)
class AcceptedEvents:
    """Each entity's accepted events (every entity decides duplicates and lateness itself)."""

    by_entity: dict[str, EntityEvents]

    def index(self, entity: str) -> EventIndex:
        return self.by_entity[entity].index()


def load_events(
    fs: FeatureSet, table: pa.Table, report: BackfillReport
) -> tuple[pa.Table, AcceptedEvents, pa.Table, pa.Table]:
    """Validate, then per entity dedup and route too-late events, in file order.

    Returns (valid first copies of the primary entity, accepted events, rejects, late rows
    with ``late_for``: the entities that dropped them). The entities share the rows whose
    id may repeat (found once) as their dedup candidates, and decide in parallel."""
    plan = compile_plan(fs)
    report.events = table.num_rows
    valid, rejects = plan.validator.validate_table(table)
    report.rejected = rejects.num_rows
    ts = pc.cast(valid.column(fs.schema.event_time), pa.int64()).to_numpy()
    txids = valid.column(fs.schema.event_id).combine_chunks()
    candidates = maybe_repeated(txids)
    n = valid.num_rows
    columns: dict[str, np.ndarray] = {}
    for e in plan.entities:
        columns[e.join_key] = valid.column(e.join_key).to_numpy()
        for f in e.fields:
            if f not in columns:
                columns[f] = valid.column(f).to_numpy(zero_copy_only=False).astype(np.float64)

    def one(e: Any) -> tuple[Any, EntityEvents]:
        keys = columns[e.join_key]
        acc = accept(e.layout.lateness_ms, keys, txids, ts, candidates)
        everyone = bool(acc.accepted.all())

        def take(a: np.ndarray) -> np.ndarray:
            return a if everyone else a[acc.accepted]

        events = EntityEvents(
            ts=take(ts),
            keys=take(keys),
            fields={f: take(columns[f]) for f in e.fields},
            txids=txids if everyone else txids.filter(pa.array(acc.accepted)),
        )
        return acc, events

    decided = each(one, plan.entities)
    by_entity: dict[str, EntityEvents] = {}
    late_for: list[np.ndarray] = []
    primary_dup = np.zeros(n, dtype=bool)
    for e, (acc, events) in zip(plan.entities, decided, strict=True):
        report.by_entity[e.name] = {
            "accepted": int(acc.accepted.sum()),
            "duplicates": int(acc.duplicate.sum()),
            "late": int(acc.late.sum()),
        }
        late_for.append(acc.late)
        if e.entity == fs.primary:
            primary_dup = acc.duplicate
        by_entity[e.name] = events
    report.duplicates = int(primary_dup.sum())
    report.accepted = report.by_entity[fs.primary.name]["accepted"]
    late_any = np.logical_or.reduce(late_for) if late_for else np.zeros(n, dtype=bool)
    report.late = int(late_any.sum())
    late = valid.filter(pa.array(late_any))
    late = late.append_column("late_for", _late_for([e.name for e in plan.entities], late_for))
    first = valid if not report.duplicates else valid.filter(pa.array(~primary_dup))
    return first, AcceptedEvents(by_entity), rejects, late


def _late_for(names: list[str], late_for: list[np.ndarray]) -> pa.Array:
    """Per late row, the entities it was too late for (comma-joined, definition order):
    one bit per entity, then each distinct set of bits spelled once."""
    if not late_for:
        return pa.array([], pa.string())
    late_any = np.logical_or.reduce(late_for)
    code = np.zeros(int(late_any.sum()), np.int64)
    for bit, late in enumerate(late_for):
        code |= late[late_any].astype(np.int64) << bit
    sets, at = np.unique(code, return_inverse=True)
    text = [",".join(n for b, n in enumerate(names) if int(c) >> b & 1) for c in sets.tolist()]
    return pa.array(text, pa.string()).take(pa.array(at.astype(np.int64)))


def compute_features(
    fs: FeatureSet,
    spine: pa.Table,
    events: AcceptedEvents,
    indexes: dict[str, EventIndex] | None = None,
) -> pa.Table:
    """The spine's columns plus every feature (window, then request-time) per row. A
    request feature is computed when the spine holds every event field it reads."""
    plan = compile_plan(fs)
    time_col = fs.schema.event_time
    for e in fs.entities:
        if e.join_key not in spine.column_names:
            raise SchemaError(f"column '{e.join_key}': missing from the spine")
    if time_col not in spine.column_names:
        raise SchemaError(f"column '{time_col}': missing from the spine")
    q_t = _ms(spine.column(time_col), time_col)

    def one(e: Entity) -> dict[str, np.ndarray]:
        index = indexes[e.name] if indexes else events.index(e.name)
        q_keys = pc.cast(spine.column(e.join_key), pa.int64()).to_numpy(zero_copy_only=False)
        return index.features(fs, e.name, q_keys, q_t)

    values: dict[str, np.ndarray] = {}
    for v in each(one, fs.entities):
        values.update(v)
    return feature_table(fs, plan, spine, q_t, values)


def feature_table(
    fs: FeatureSet, plan: Plan, spine: pa.Table, q_t: np.ndarray, values: dict[str, np.ndarray]
) -> pa.Table:
    """The spine's columns, then every feature in definition order: the window values
    given, then the request features computed from them, the spine and its times ``q_t``
    (the single-process and the Dask backfill lay out their output here)."""
    time_col = fs.schema.event_time

    def column(name: str) -> np.ndarray | None:
        if name in values:
            return values[name]
        if name == time_col:
            return q_t
        if name in spine.column_names:
            return spine.column(name).to_numpy(zero_copy_only=False)
        return None

    values = {**values, **plan.request_many(column, spine.num_rows)}
    names = [n for n in fs.feature_names if n in values and n not in spine.column_names]
    return pa.Table.from_arrays(
        [*spine.columns, *(pa.array(values[n]) for n in names)], [*spine.column_names, *names]
    )


# -- end states --------------------------------------------------------------------------


def end_states(
    fs: FeatureSet, events: AcceptedEvents, indexes: dict[str, EventIndex] | None = None
) -> dict[str, dict[int, bytes]]:
    """Each entity's engine state after all its accepted events, as codec bytes.

    Built directly from the sorted events: the state after any replay holds exactly the
    events its retention keeps (raw events, tiles per level bucket, ids), so tiles are
    group-bys and their exact sums come from integer digits. The bytes are identical to
    replaying the events through the reference engine (tested)."""
    layouts = compile_layouts(fs)

    def one(e: Entity) -> dict[int, bytes]:
        index = indexes[e.name] if indexes else events.index(e.name)
        blobs = build_states(layouts[e.name], index, events.by_entity[e.name].txids)
        return dict(zip(index.uniq.tolist(), blobs, strict=True))

    return dict(zip([e.name for e in fs.entities], each(one, fs.entities), strict=True))


# -- Feast tables and the job ------------------------------------------------------------


def feast_tables(
    fs: FeatureSet,
    events: AcceptedEvents,
    states: dict[str, dict[int, bytes]],
    indexes: dict[str, EventIndex] | None = None,
) -> dict[str, pa.Table]:
    """Per entity: one row per (entity, event time) with the as-of-last-event features; the
    last row of each entity carries its state bytes."""

    def one(e: Entity) -> pa.Table:
        index = indexes[e.name] if indexes else events.index(e.name)
        keys, ts, last, vals = index.features_after_events(fs, e.name)
        blobs = pa.array([states[e.name][k] for k in keys[last].tolist()], pa.binary())
        at = pa.array(np.cumsum(last) - 1, mask=~last)
        cols = {
            e.join_key: pa.array(keys, pa.int64()),
            TIMESTAMP_FIELD: pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            **{name: pa.array(v) for name, v in vals.items()},
            state_field(e): blobs.take(at),
            bootstrap_field(e): blobs.take(at),
        }
        return pa.table(cols)

    return dict(zip([e.name for e in fs.entities], each(one, fs.entities), strict=True))


def each(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``fn`` over ``items`` on as many threads as cores: numpy and Arrow release the GIL
    in their heavy loops, so entities (and output files) proceed in parallel."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet with dictionary pages only for strings: on numeric columns they cost more
    time than they save space. (The distributed backfill writes with the same options.)"""
    return {"use_dictionary": [f.name for f in schema if pa.types.is_string(f.type)]}


def _write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, **parquet_options(table.schema))


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """numpy asks the kernel for transparent huge pages on large arrays; under the usual
    THP defrag policy (``madvise``) such a fault may compact memory synchronously, which
    on the reference machine doubled the time of the numpy-heavy stages. Off for the
    job, restored after."""
    toggle = getattr(getattr(np, "_core", None), "multiarray", None)
    set_madvise = getattr(toggle, "_set_madvise_hugepage", None)
    if set_madvise is None:
        yield
        return
    before = set_madvise(False)
    try:
        yield
    finally:
        set_madvise(before)


def run_backfill(
    fs: FeatureSet, events_path: Path, out_dir: Path, spine_path: Path | None = None
) -> BackfillReport:
    """The whole job; see the module docstring for what lands in ``out_dir``."""
    with small_pages():
        return _run(fs, events_path, out_dir, spine_path)


def _run(
    fs: FeatureSet, events_path: Path, out_dir: Path, spine_path: Path | None
) -> BackfillReport:
    report = BackfillReport()
    clock = time.perf_counter()
    stages = Stages("backfill", _STAGES)

    def lap(name: str, detail: str = "") -> None:
        nonlocal clock
        now = time.perf_counter()
        report.seconds[name] = round(now - clock, 3)
        stages.done(name, now - clock, detail)
        clock = now

    from flows.inputs import read_parquet

    table = read_parquet(events_path, "events")
    lap("read", f"{table.num_rows:,} events")
    valid, events, rejects, late = load_events(fs, table, report)
    lap("validate_dedup_late", f"{report.rejected:,} rejected, {report.late:,} late")
    spine = read_parquet(spine_path, "spine") if spine_path else valid
    report.spine_rows = spine.num_rows
    names = [e.name for e in fs.entities]
    indexes = dict(zip(names, each(events.index, names), strict=True))
    features = compute_features(fs, spine, events, indexes)
    lap("features", f"{spine.num_rows:,} rows")
    states = end_states(fs, events, indexes)
    report.entities = {name: len(s) for name, s in states.items()}
    lap("end_states")
    offline = feast_tables(fs, events, states, indexes)
    lap("feast_tables")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "feast").mkdir(exist_ok=True)
    files = [(features, "features.parquet"), (rejects, "rejects.parquet"), (late, "late.parquet")]
    files += [(offline[e.name], f"feast/{offline_table_name(e)}") for e in fs.entities]
    each(lambda f: _write(f[0], out_dir / f[1]), files)
    lap("write")
    stages.close()
    (out_dir / "summary.json").write_text(report.to_json())
    return report


_STAGES = ("read", "validate_dedup_late", "features", "end_states", "feast_tables", "write")
