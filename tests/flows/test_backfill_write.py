"""The backfill's Parquet options (docs/perf-plan.md, session 8): what each column type gets,
and the values read back unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flows.backfill_write import parquet_options


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
