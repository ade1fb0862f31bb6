"""The backfill's Parquet options (docs/perf-plan.md, session 8): what each column type gets,
and the values read back unchanged."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows import backfill_write
from flows.backfill_write import parquet_options, write_in_groups


def test_options_by_column_type(tmp_path: Path) -> None:
    n = 50_000
    rng = np.random.default_rng(3)
    x = rng.normal(size=n)
    x[::7] = np.nan
    t = pa.table(
        {
            "card_id": pa.array(rng.integers(0, 500, n)),
            "event_time": pa.array(np.sort(rng.integers(0, 10**12, n))).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "currency": pa.array(rng.choice(["EUR", "USD"], n)),
            "mean": pa.array(x),
            "state": pa.array([b"s%d" % i if i % 9 == 0 else None for i in range(n)]),
        }
    )
    pq.write_table(t, tmp_path / "t.parquet", **parquet_options(t.schema))
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0)
    col = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    for name in ("card_id", "event_time"):  # delta-encoded, uncompressed, with statistics
        assert "DELTA_BINARY_PACKED" in col[name].encodings
        assert col[name].compression == "UNCOMPRESSED" and col[name].is_stats_set
    assert col["currency"].compression == "SNAPPY" and col["currency"].has_dictionary_page
    assert col["currency"].is_stats_set  # strings (ids, passthrough columns) keep theirs
    for name in ("mean", "state"):  # plain, uncompressed, no statistics
        assert col[name].compression == "UNCOMPRESSED" and not col[name].is_stats_set
    back = pq.read_table(tmp_path / "t.parquet")
    assert back.schema.equals(t.schema)
    for name in t.column_names:
        a, b = back.column(name).combine_chunks(), t.column(name).combine_chunks()
        if pa.types.is_floating(a.type):  # NaN bits included
            a, b = a.view(pa.int64()), b.view(pa.int64())
        assert a.equals(b), name


def test_pages_are_not_capped_at_20k_rows(tmp_path: Path) -> None:
    """pyarrow 26 caps a page at 20,000 rows besides its 1 MB; the cap tripled the pages
    (and the write time) of the job's 8-byte columns. Every page adds a header and its
    levels, so one page per 800 KB column is the smaller chunk."""
    t = pa.table({"x": pa.array(np.arange(100_000, dtype=np.float64))})

    def chunk_bytes(**extra: object) -> int:
        pq.write_table(t, tmp_path / "t.parquet", **{**parquet_options(t.schema), **extra})
        meta = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0).column(0)
        return int(meta.total_uncompressed_size)

    ours, capped = chunk_bytes(), chunk_bytes(max_rows_per_page=20_000)
    assert ours < capped
    assert ours < 800_000 + 64  # one page: values, one header, one run of levels


def test_a_file_is_joined_by_its_last_row_group_task(tmp_path: Path) -> None:
    t = pa.table({"x": list(range(10)), "s": [str(i % 3) for i in range(10)]})
    pq.write_table(t, tmp_path / "whole.parquet", row_group_size=4, **parquet_options(t.schema))
    out = tmp_path / "groups.parquet"
    with ThreadPoolExecutor(2) as pool:
        pending = write_in_groups(pool, t, out, row_group=4)
    # every task has run, finish() not yet called: the file is whole, its parts gone
    assert pending.joined
    assert sorted(p.name for p in tmp_path.iterdir()) == ["groups.parquet", "whole.parquet"]
    assert out.read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    pending.finish()
    assert out.read_bytes() == (tmp_path / "whole.parquet").read_bytes()


def test_a_failed_row_group_fails_finish_and_leaves_no_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = pa.table({"x": list(range(10))})
    write = backfill_write.write

    def failing(table: pa.Table, path: Path, row_group: int | None = None) -> None:
        write(table, path, row_group)
        if path.name.endswith(".part1"):
            raise OSError("disk full")

    monkeypatch.setattr(backfill_write, "write", failing)
    with ThreadPoolExecutor(2) as pool:
        pending = write_in_groups(pool, t, tmp_path / "out.parquet", row_group=4)
    with pytest.raises(OSError, match="disk full"):
        pending.finish()
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]
