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
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.backfill import EventIndex
from features.definitions import Entity, FeatureSet, Op
from features.feast_objects import offline_table_name
from features.plan import Plan, compile_plan
from features.schema import SchemaError
from flows.backfill_events import (
    AcceptedEvents,
    BackfillReport,
    EntityEvents,
    _ms,
    each,
    load_events,
    read_events,
)
from flows.backfill_feast import (
    EndStates,
    end_states,
    entity_state,
    feast_table,
    feast_tables,
)
from flows.backfill_write import PendingFile, parquet_options, write_in_groups
from flows.progress import Stages

__all__ = [
    "AcceptedEvents",
    "BackfillReport",
    "EntityEvents",
    "_ms",
    "compute_features",
    "each",
    "end_states",
    "feast_tables",
    "feature_table",
    "load_events",
    "parquet_options",
    "read_events",
    "run_backfill",
    "small_pages",
]


def compute_features(
    fs: FeatureSet,
    spine: pa.Table,
    events: AcceptedEvents,
    indexes: dict[str, EventIndex] | None = None,
) -> pa.Table:
    """The spine's columns plus every feature (window, then request-time) per row. A
    request feature is computed when the spine holds every event field it reads."""
    q_t = spine_times(fs, spine)

    def one(e: Entity) -> dict[str, np.ndarray]:
        index = indexes[e.name] if indexes else events.index(e.name)
        return entity_features(fs, e, index, spine, q_t)

    values: dict[str, np.ndarray] = {}
    for v in each(one, fs.entities):
        values.update(v)
    return feature_table(fs, compile_plan(fs), spine, q_t, values)


def spine_times(fs: FeatureSet, spine: pa.Table) -> np.ndarray:
    """The spine's times in epoch ms, once its entity keys and time column are checked."""
    time_col = fs.schema.event_time
    for e in fs.entities:
        if e.join_key not in spine.column_names:
            raise SchemaError(f"column '{e.join_key}': missing from the spine")
    if time_col not in spine.column_names:
        raise SchemaError(f"column '{time_col}': missing from the spine")
    return _ms(spine.column(time_col), time_col)


def entity_features(
    fs: FeatureSet, e: Entity, index: EventIndex, spine: pa.Table, q_t: np.ndarray
) -> dict[str, np.ndarray]:
    """``e``'s window features at every spine row."""
    q_keys = pc.cast(spine.column(e.join_key), pa.int64()).to_numpy(zero_copy_only=False)
    return index.features(fs, e.name, q_keys, q_t)


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


# -- writing and the job ----------------------------------------------------------------


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


def _index(fs: FeatureSet, events: AcceptedEvents, e: Entity) -> EventIndex:
    """``e``'s index, with the prefix sums its features and states share made up front."""
    index = events.index(e.name)
    squares = {a.field for a in fs.for_entity(e) if a.op is Op.STD}
    for f in {a.field for a in fs.for_entity(e) if a.field is not None}:
        index.moments(f, f in squares)
    return index


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

    table, encoded = read_events(events_path, fs.schema)
    lap("read", f"{table.num_rows:,} events")
    valid, events, rejects, late = load_events(fs, table, report, encoded)
    del table, encoded
    lap("validate_dedup_late", f"{report.rejected:,} rejected, {report.late:,} late")
    spine = read_parquet(spine_path, "spine") if spine_path else valid
    report.spine_rows = spine.num_rows
    q_t = spine_times(fs, spine)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "feast").mkdir(exist_ok=True)
    # Each file is written (Arrow, off the GIL) while the next stages compute. The
    # entities' steps are tasks on as many threads as cores, each waiting only on tasks
    # queued before it, so the big entity's steps spread over both cores.
    with ThreadPoolExecutor(2) as writer, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        written: list[PendingFile] = [
            write_in_groups(writer, t, out_dir / name)
            for t, name in ((rejects, "rejects.parquet"), (late, "late.parquet"))
        ]
        ents = list(fs.entities)
        index = {e.name: pool.submit(_index, fs, events, e) for e in ents}

        def features_of(e: Entity) -> dict[str, np.ndarray]:
            return entity_features(fs, e, index[e.name].result(), spine, q_t)

        def state_of(e: Entity) -> EndStates:
            return entity_state(fs, e, index[e.name].result(), events.by_entity[e.name].txids)

        def table_of(e: Entity) -> pa.Table:
            feats[e.name].result()  # its pass over the events left the window starts
            return feast_table(fs, e, index[e.name].result(), states[e.name].result())

        feats = {e.name: pool.submit(features_of, e) for e in ents}
        states = {e.name: pool.submit(state_of, e) for e in ents}
        tables = {e.name: pool.submit(table_of, e) for e in ents}
        values: dict[str, np.ndarray] = {}
        for e in ents:
            values.update(feats[e.name].result())
        features = feature_table(fs, compile_plan(fs), spine, q_t, values)
        written.append(write_in_groups(writer, features, out_dir / "features.parquet"))
        del features, values
        lap("features", f"{report.spine_rows:,} rows")
        report.entities = {e.name: len(states[e.name].result().keys) for e in ents}
        lap("end_states")
        entity_of = {tables[e.name]: e for e in ents}
        for done in as_completed(entity_of):  # the first built is the first written
            path = out_dir / "feast" / offline_table_name(entity_of[done])
            written.append(write_in_groups(writer, done.result(), path))
        lap("feast_tables")
        for pending in written:  # each file joined by its last row group's task
            pending.finish()
    lap("write")
    stages.close()
    (out_dir / "summary.json").write_text(report.to_json())
    return report


_STAGES = ("read", "validate_dedup_late", "features", "end_states", "feast_tables", "write")
