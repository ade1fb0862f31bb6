"""The backfill job's input side: validation, then per entity dedup and lateness, decided
in file order as the stream decides them (:func:`load_events`), and what the job reports.

Validation is Arrow compute over whole columns (:meth:`features.validate.Validator.validate_table`);
dedup and lateness (:func:`features.backfill.accept`) are one native pass each over the file
(:mod:`features.dedup`; numpy sorts and prefix maxima without the native core), one entity
per thread: no per-row Python. :func:`read_events` reads the file, its low-cardinality
string columns also as dictionary codes, so their rules run once per distinct value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.backfill import EventIndex, accept
from features.dedup import maybe_repeated
from features.definitions import FeatureSet
from features.plan import compile_plan
from features.schema import EventSchema, FieldType, SchemaError
from flows.inputs import read_parquet

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


#: a string column is read dictionary-encoded when every row group of the file stores it
#: with a dictionary page of at most this many bytes (codes, countries: a few values)
SMALL_DICTIONARY = 64 * 1024


def read_events(
    path: str | Path, schema: EventSchema
) -> tuple[pa.Table, dict[str, pa.ChunkedArray]]:
    """The events file as :func:`flows.inputs.read_parquet` reads it, and its string
    fields that the file dictionary-encodes with a small dictionary (not the event id)
    also as those codes, for :func:`load_events`. Reading the codes and decoding them
    costs less than reading the strings (2M events: 0.21 -> 0.16 CPU-s), and the
    validator checks each distinct value once instead of every row."""
    names = small_dictionaries(Path(path), schema)
    return decode_codes(read_parquet(path, "events", read_dictionary=names or None), names)


def decode_codes(table: pa.Table, names: list[str]) -> tuple[pa.Table, dict[str, pa.ChunkedArray]]:
    """``table`` with its dictionary-encoded string columns among ``names`` decoded (the
    table a plain read gives), and those columns' codes by name."""
    encoded: dict[str, pa.ChunkedArray] = {}
    for name in names:
        i = table.schema.get_field_index(name)
        col = table.column(i) if i >= 0 else None
        if col is None or not pa.types.is_dictionary(col.type):
            continue
        if not pa.types.is_string(col.type.value_type):
            continue
        encoded[name] = col
        field_ = table.schema.field(i).with_type(pa.string())
        table = table.set_column(i, field_, pc.cast(col, pa.string()))
    return table, encoded


def small_dictionaries(path: Path, schema: EventSchema) -> list[str]:
    """The schema's string fields (but the event id) that every row group of the Parquet
    file at ``path`` stores with a dictionary page of at most :data:`SMALL_DICTIONARY`
    bytes; none for a folder, an empty file or one pyarrow cannot open (its read names
    the problem)."""
    wanted = {
        f.name for f in schema.fields if f.type is FieldType.STRING and f.name != schema.event_id
    }
    if not wanted or not path.is_file():
        return []
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowInvalid):
        return []
    if not meta.num_row_groups:
        return []
    first = meta.row_group(0)
    at = {first.column(j).path_in_schema: j for j in range(first.num_columns)}
    names = []
    for name in sorted(wanted & at.keys()):
        for g in range(meta.num_row_groups):
            c = meta.row_group(g).column(at[name])
            if c.physical_type != "BYTE_ARRAY" or not c.has_dictionary_page:
                break
            if c.dictionary_page_offset is None or c.data_page_offset is None:
                break
            if c.data_page_offset - c.dictionary_page_offset > SMALL_DICTIONARY:
                break
        else:
            names.append(name)
    return names


def load_events(
    fs: FeatureSet,
    table: pa.Table,
    report: BackfillReport,
    encoded: Mapping[str, pa.ChunkedArray] | None = None,
) -> tuple[pa.Table, AcceptedEvents, pa.Table, pa.Table]:
    """Validate, then per entity dedup and route too-late events, in file order.

    Returns (valid first copies of the primary entity, accepted events, rejects, late rows
    with ``late_for``: the entities that dropped them). The entities share the rows whose
    id may repeat (found once) as their dedup candidates, and decide in parallel.
    ``encoded``: string columns also as dictionary codes (:func:`read_events`)."""
    plan = compile_plan(fs)
    report.events = table.num_rows
    with ThreadPoolExecutor(1) as side:  # the id scan beside validation (its own core)
        scan = side.submit(_scan, table, fs.schema.event_id)
        valid, rejects = plan.validator.validate_table(table, encoded)
        scanned = scan.result()
    report.rejected = rejects.num_rows
    ts = pc.cast(valid.column(fs.schema.event_time), pa.int64()).to_numpy()
    n = valid.num_rows
    if scanned is not None and not rejects.num_rows:
        txids, candidates = scanned  # the valid rows are the file's rows
    else:
        txids = valid.column(fs.schema.event_id).combine_chunks()
        candidates = maybe_repeated(txids) if scanned is None else _kept(scanned[1], valid)
    columns: dict[str, np.ndarray] = {}
    for e in plan.entities:
        columns[e.join_key] = valid.column(e.join_key).to_numpy()
        for f in e.fields:
            if f not in columns:
                x = valid.column(f).to_numpy(zero_copy_only=False)
                columns[f] = np.asarray(x, np.float64)

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


def _scan(table: pa.Table, name: str) -> tuple[pa.Array, np.ndarray] | None:
    """The file's ids in one array and the rows whose id may repeat among them
    (:func:`maybe_repeated`), before validation has decided which rows count: a valid
    row whose id repeats among the valid rows repeats among the file's rows, so the
    file's candidates cover the valid rows' (:func:`_kept`). None where validation decides
    first (no such string column: it names the problem)."""
    if name not in table.column_names or not pa.types.is_string(table.schema.field(name).type):
        return None
    ids = table.column(name).combine_chunks()
    return ids, maybe_repeated(ids)


def _kept(candidates: np.ndarray, valid: pa.Table) -> np.ndarray:
    """The file's candidate rows as positions among the ``valid`` rows (their ``row``,
    the last column of that name: validation appends it)."""
    rows = valid.column(valid.schema.get_all_field_indices("row")[-1]).to_numpy()
    mark = np.zeros(int(rows.max()) + 1 if len(rows) else 0, bool)
    mark[candidates[candidates < len(mark)]] = True
    return np.flatnonzero(mark[rows])


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


def each(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``fn`` over ``items`` on as many threads as cores: numpy and Arrow release the GIL
    in their heavy loops, so entities (and output files) proceed in parallel."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))
