"""The distributed backfill's last step, as tasks: each output row group merged from the
partitions' sorted outputs and encoded as a Parquet file of its own, which
:func:`flows.parquet_stitch.stitch` joins into the single-process job's file
(:mod:`flows.backfill_dask`).

* :func:`feature_piece`: rows ``[lo, hi)`` of ``features.parquet``: the spine's rows (the
  valid first copies, or the spine file's rows) beside every entity's features at them,
  taken from the partitions' outputs (each sorted by original row), with the request-time
  features, laid out by :func:`flows.backfill.feature_table`.
* :func:`feast_piece`: rows ``[lo, hi)`` of one entity's Feast table in key order, from
  the partitions' tables (each sorted by key, then time; a key lives in one partition).
  Where row ``lo`` falls in each partition comes from binary searches on the memory-mapped
  key columns, so no task reads more than its own rows.
* :func:`late_piece` and :func:`rows_piece`: the late rows of one split piece, and rows
  ``[lo, hi)`` of pieces laid end to end (rejects, late rows).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.plan import compile_plan
from flows.backfill import _ms, feature_table, parquet_options
from flows.backfill_part import ROW, load_fs, read_arrow

#: one piece of a row range: (Arrow file, first row, end row) within that file
Segment = tuple[str, int, int]


def segments(counts: list[int], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """Rows ``[lo, hi)`` of pieces of ``counts`` rows laid end to end, as (piece, first
    row, end row) per piece they touch.

    >>> segments([3, 0, 4], 2, 6)
    [(0, 2, 3), (2, 0, 3)]
    """
    out, start = [], 0
    for k, n in enumerate(counts):
        a, b = max(lo - start, 0), min(hi - start, n)
        if a < b:
            out.append((k, a, b))
        start += n
    return out


def write_piece(table: pa.Table, out: str) -> None:
    """One row group, encoded as ``pyarrow.parquet.write_table`` encodes it in the whole."""
    pq.write_table(table.combine_chunks(), out, **parquet_options(table.schema))


def _gather(pieces: list[Segment], drop: list[np.ndarray] | None = None) -> pa.Table:
    parts = []
    for i, (path, a, b) in enumerate(pieces):
        t = read_arrow(path)
        if drop is not None and len(drop[i]):
            t = t.filter(pa.array(~np.isin(t.column("row").to_numpy(), drop[i])))
        parts.append(t.slice(a, b - a))
    return pa.concat_tables(parts)


def rows_piece(pieces: list[Segment], out: str) -> dict[str, Any]:
    """A Dask task: the rows of ``pieces`` (Arrow files) as one Parquet row group."""
    start = time.thread_time()
    t = _gather(pieces)
    write_piece(t, out)
    return {"rows": t.num_rows, "cpu": time.thread_time() - start}


def late_piece(valid: str, names: list[str], late: list[np.ndarray], out: str) -> dict[str, Any]:
    """A Dask task: the valid rows of one split piece too late for some entity (``late``:
    each entity's late original rows in this piece), ``late_for`` naming which."""
    start = time.thread_time()
    t = read_arrow(valid)
    at = t.column("row").to_numpy()
    flags = [np.isin(at, rows) for rows in late]
    late_any = np.logical_or.reduce(flags) if flags else np.zeros(len(at), bool)
    who = np.stack(flags, axis=1)[late_any] if flags else np.zeros((0, 0), bool)
    labels = np.array(names, object)
    t = t.filter(pa.array(late_any)).append_column(
        "late_for", pa.array([",".join(labels[r]) for r in who], pa.string())
    )
    with pa.OSFile(out, "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t)
    return {"rows": t.num_rows, "cpu": time.thread_time() - start}


def _columns(path: str, name: str) -> tuple[pa.ipc.RecordBatchFileReader, list[np.ndarray]]:
    """A sorted output file and its ``name`` column per batch, memory-mapped (no copy)."""
    reader = pa.ipc.open_file(pa.memory_map(path))
    cols = [reader.get_batch(i).column(name).to_numpy() for i in range(reader.num_record_batches)]
    return reader, cols


def _count(cols: list[np.ndarray], value: int, side: Any) -> int:
    return sum(int(np.searchsorted(c, value, side)) for c in cols)


def _slice(reader: pa.ipc.RecordBatchFileReader, a: int, b: int) -> pa.Table:
    """Rows ``[a, b)`` of a file of batches, reading only the batches they are in."""
    parts, start = [], 0
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        lo, hi = max(a - start, 0), min(b - start, batch.num_rows)
        if lo < hi:
            parts.append(batch.slice(lo, hi - lo))
        start += batch.num_rows
    return pa.Table.from_batches(parts, reader.schema)


def key_positions(keys: list[list[np.ndarray]], x: int) -> list[int]:
    """Where row ``x`` of the files' union in key order falls in each file (``keys``: per
    file, its sorted key column per batch; a key's rows all in one file).

    >>> key_positions([[np.array([1, 1, 4])], [np.array([2, 3])]], 3)
    [2, 1]
    """
    sizes = [sum(len(c) for c in f) for f in keys]
    if x <= 0 or x >= sum(sizes):
        return [0 if x <= 0 else n for n in sizes]
    lo = min(int(c[0]) for f in keys for c in f if len(c))
    hi = max(int(c[-1]) for f in keys for c in f if len(c))
    while lo < hi:  # the key of row x: the smallest with more than x rows up to it
        mid = (lo + hi) // 2
        if sum(_count(f, mid, "right") for f in keys) > x:
            hi = mid
        else:
            lo = mid + 1
    below = [_count(f, lo, "left") for f in keys]
    upto = [_count(f, lo, "right") for f in keys]
    extra = x - sum(below)
    return [min(u, b + extra) for b, u in zip(below, upto, strict=True)]


def feast_piece(paths: list[str], key: str, lo: int, hi: int, out: str) -> dict[str, Any]:
    """A Dask task: rows ``[lo, hi)`` of an entity's Feast table, from its partitions'."""
    start = time.thread_time()
    files = [_columns(p, key) for p in paths]
    keys = [cols for _, cols in files]
    a, b = key_positions(keys, lo), key_positions(keys, hi)
    t = pa.concat_tables([_slice(r, i, j) for (r, _), i, j in zip(files, a, b, strict=True)])
    order = np.argsort(t.column(key).to_numpy(), kind="stable")  # file order within a key
    write_piece(t.take(pa.array(order)), out)
    return {"rows": t.num_rows, "cpu": time.thread_time() - start}


def _spine_rows(spine: str, lo: int, hi: int) -> pa.Table:
    """Rows ``[lo, hi)`` of the spine file, reading only the row groups they are in."""
    pf = pq.ParquetFile(spine)
    groups, start, first = [], 0, None
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if start < hi and start + n > lo:
            groups.append(g)
            first = start if first is None else first
        start += n
    if not groups:
        return pf.schema_arrow.empty_table()
    return pf.read_row_groups(groups).slice(lo - (first or 0), hi - lo)


def _values_at(paths: list[str], at: np.ndarray) -> dict[str, np.ndarray]:
    """An entity's features at the original rows ``at`` (sorted), from its partitions'
    outputs (each sorted by original row)."""
    parts, schema = [], None
    for p in paths:
        reader, rows = _columns(p, ROW)
        schema = reader.schema
        if len(at):
            i, j = _count(rows, int(at[0]), "left"), _count(rows, int(at[-1]), "right")
            parts.append(_slice(reader, i, j))
    assert schema is not None
    t = pa.concat_tables(parts) if parts else schema.empty_table()
    row = t.column(ROW).to_numpy()
    order = np.argsort(row, kind="stable")
    pick = order[np.searchsorted(row[order], at)] if len(at) else order[:0]
    if not np.array_equal(row[pick], at):
        raise RuntimeError("backfill: a partition output lacks some rows")
    return {c: t.column(c).to_numpy()[pick] for c in t.column_names if c != ROW}


def feature_piece(
    fs_blob: bytes,
    outs: dict[str, list[str]],
    spine: str | list[Segment],
    drop: list[np.ndarray] | None,
    lo: int,
    hi: int,
    out: str,
) -> dict[str, Any]:
    """A Dask task: rows ``[lo, hi)`` of ``features.parquet``. ``spine``: the spine file,
    or the valid pieces' segments holding these rows (``drop``: the duplicate rows to
    leave out of each)."""
    start = time.thread_time()
    fs = load_fs(fs_blob)
    if isinstance(spine, str):
        table, at = _spine_rows(spine, lo, hi), np.arange(lo, hi, dtype=np.int64)
    else:
        table = _gather(spine, drop)
        at = table.column("row").to_numpy()
    values: dict[str, np.ndarray] = {}
    for e in compile_plan(fs).entities:
        values.update(_values_at(outs[e.name], at))
    time_col = fs.schema.event_time
    q_t = _ms(table.column(time_col), time_col)
    write_piece(feature_table(fs, compile_plan(fs), table, q_t, values), out)
    return {"rows": table.num_rows, "cpu": time.thread_time() - start}
