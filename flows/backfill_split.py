"""The distributed backfill's disk plumbing, all in bounded memory: the events and an
optional spine (one task per row group of each) read in Parquet batches and split by hash
of each entity's key into per-partition files.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.plan import compile_plan
from features.schema import SchemaError
from flows.backfill import _ms
from flows.backfill_events import decode_codes, small_dictionaries
from flows.backfill_part import KEY, ROW, TS, TXID, field_column, load_fs

#: pyarrow's default row group length (``write_table`` without ``row_group_size``)
ROW_GROUP = 1024 * 1024


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Partition per key: a multiplicative hash (spreads sequential ids evenly)."""
    h = (keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)
    return (h % np.uint64(partitions)).astype(np.int64)


class Splitter:
    """Per entity and partition, an open Arrow file (``ROOT/entity/partition/piece.arrow``)
    the rows hashed there are appended to, in file order."""

    def __init__(self, root: Path, names: list[str], partitions: int, piece: int = 0) -> None:
        self.partitions = partitions
        self.paths = {n: [piece_path(root, n, p, piece) for p in range(partitions)] for n in names}
        for n in names:
            for p in range(partitions):
                self.paths[n][p].parent.mkdir(parents=True, exist_ok=True)
        self._writers: dict[tuple[str, int], Any] = {}

    def add(self, name: str, cols: dict[str, Any]) -> None:
        table = pa.table(cols)
        part = partition_of(table.column(KEY).to_numpy(), self.partitions)
        order = np.argsort(part, kind="stable")  # file order within each partition
        cuts = np.searchsorted(part[order], np.arange(self.partitions + 1))
        table = table.take(pa.array(order))
        for p in range(self.partitions):
            w = self._writers.get((name, p))
            if w is None:
                w = pa.ipc.new_file(str(self.paths[name][p]), table.schema)
                self._writers[name, p] = w
            w.write_table(table.slice(cuts[p], cuts[p + 1] - cuts[p]))

    def close(self) -> None:
        for w in self._writers.values():
            w.close()


def piece_path(root: Path, name: str, partition: int, piece: int) -> Path:
    return root / name / str(partition) / f"{piece:06d}.arrow"


def pieces_of(path: Path, what: str = "events") -> list[tuple[int | None, int]]:
    """(row group, its first row) per split task; one task on no row group when empty."""
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowInvalid) as exc:
        raise SchemaError(f"{what}: cannot read {path} as Parquet ({exc})") from None
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    if not sizes:
        return [(None, 0)]
    starts = np.r_[0, np.cumsum(sizes)[:-1]].tolist()
    return list(zip(range(len(sizes)), starts, strict=True))


def _group_batches(pf: pq.ParquetFile, row_group: int | None, rows: int) -> Iterator[pa.Table]:
    """One row group in tables of ``rows`` (one empty table when there is none, so that
    every output file exists, with its schema)."""
    seen = False
    groups = [] if row_group is None else [row_group]
    for b in pf.iter_batches(batch_size=rows, row_groups=groups) if groups else []:
        seen = True
        yield pa.Table.from_batches([b], pf.schema_arrow)
    if not seen:
        yield pf.schema_arrow.empty_table()


def split_piece(
    fs_blob: bytes, events: str, row_group: int | None, offset: int, tmp: str, partitions: int,
    rows: int, piece: int,
) -> dict[str, Any]:  # fmt: skip
    """A Dask task: validate one row group of the events batch by batch; its rejects and
    valid rows to ``tmp/rejects|valid/piece.arrow``, each entity's columns to its
    partitions' ``piece`` files."""
    start = time.thread_time()
    fs = load_fs(fs_blob)
    plan, root = compile_plan(fs), Path(tmp)
    split = Splitter(root / "events", [e.name for e in plan.entities], partitions, piece)
    sinks: dict[str, Any] = {}
    n, n_valid = 0, 0
    # the small-dictionary string columns as codes: read cheaper, validated per value
    codes = small_dictionaries(Path(events), fs.schema)
    pf = pq.ParquetFile(events, read_dictionary=codes or None)
    for batch in _group_batches(pf, row_group, rows):
        table, encoded = decode_codes(batch, codes)
        valid, bad = plan.validator.validate_table(table, encoded)
        valid, bad = _shift_rows(valid, offset + n), _shift_rows(bad, offset + n)
        n += table.num_rows
        n_valid += valid.num_rows
        for kind, t in (("rejects", bad), ("valid", valid)):
            if kind not in sinks:
                (root / kind).mkdir(exist_ok=True)
                sinks[kind] = pa.ipc.new_file(str(root / kind / f"{piece:06d}.arrow"), t.schema)
            sinks[kind].write_table(t)
        ts = pc.cast(valid.column(fs.schema.event_time), pa.int64())
        txids = valid.column(fs.schema.event_id)
        for e in plan.entities:
            cols = {ROW: valid.column("row"), KEY: valid.column(e.join_key), TS: ts, TXID: txids}
            for f in e.fields:
                x = valid.column(f).to_numpy(zero_copy_only=False).astype(np.float64)
                cols[field_column(f)] = x
            split.add(e.name, cols)
    for sink in sinks.values():
        sink.close()
    split.close()
    return {"events": n, "valid": n_valid, "cpu": time.thread_time() - start}


def _shift_rows(table: pa.Table, offset: int) -> pa.Table:
    i = table.schema.get_field_index("row")
    return table.set_column(i, "row", pc.add(table.column(i), pa.scalar(offset, pa.int64())))


def split_spine(
    fs_blob: bytes, spine: str, row_group: int | None, offset: int, tmp: str, partitions: int,
    rows: int, piece: int,
) -> float:  # fmt: skip
    """A Dask task: one row group of the spine, its (row, key, time) per entity to its
    partitions' ``piece`` files under ``tmp/spine`` (features are asked there). Returns
    the task's CPU seconds."""
    start = time.thread_time()
    fs = load_fs(fs_blob)
    split = Splitter(Path(tmp) / "spine", [e.name for e in fs.entities], partitions, piece)
    for table in _group_batches(pq.ParquetFile(spine), row_group, rows):
        for col in [*(e.join_key for e in fs.entities), fs.schema.event_time]:
            if col not in table.column_names:
                raise SchemaError(f"column '{col}': missing from the spine")
        row = pa.array(np.arange(offset, offset + table.num_rows, dtype=np.int64))
        q_t = _ms(table.column(fs.schema.event_time), fs.schema.event_time)
        for e in fs.entities:
            key = pc.cast(table.column(e.join_key), pa.int64())
            split.add(e.name, {ROW: row, KEY: key, TS: q_t})
        offset += table.num_rows
    split.close()
    return time.thread_time() - start
