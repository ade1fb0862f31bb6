"""Parquet files written apart, stitched: the bytes ``write_table`` makes of their tables
in one file, over the column types the backfill writes (and a few more), many row groups
and many columns (the footer's long list and field headers), and an empty table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.backfill import parquet_options
from flows.parquet_stitch import decode, encode, footer, stitch


def _table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    cols = {
        "id": pa.array(rng.integers(-(2**62), 2**62, n)),
        "x": pa.array(x),
        "s": pa.array([f"k{i % 7}" for i in range(n)]),
        "b": pa.array(rng.random(n) < 0.5),
        "blob": pa.array([bytes([i % 256]) * (i % 5) for i in range(n)], pa.binary()),
        "t": pa.array(rng.integers(0, 2**41, n)).cast(pa.timestamp("ms", tz="UTC")),
        "maybe": pa.array([None if i % 3 else float(i) for i in range(n)], pa.float64()),
        **{f"f{i}": pa.array(rng.random(n), pa.float32()) for i in range(20)},
    }
    return pa.table(cols).replace_schema_metadata({"origin": "test"})


def _pieces(t: pa.Table, rows: int, d: Path) -> list[Path]:
    out = []
    for k, at in enumerate(range(0, max(t.num_rows, 1), rows)):
        p = d / f"piece-{k}.parquet"
        pq.write_table(t.slice(at, rows), p, **parquet_options(t.schema))
        out.append(p)
    return out


@pytest.mark.parametrize(("n", "rows"), [(500, 25), (100, 100), (1, 1), (0, 10)])
def test_stitched_pieces_are_the_one_file(tmp_path: Path, n: int, rows: int) -> None:
    t = _table(n)
    pq.write_table(t, tmp_path / "whole.parquet", row_group_size=rows, **parquet_options(t.schema))
    stitch(_pieces(t, rows, tmp_path), tmp_path / "stitched.parquet")
    whole = (tmp_path / "whole.parquet").read_bytes()
    assert (tmp_path / "stitched.parquet").read_bytes() == whole
    got = pq.read_table(tmp_path / "stitched.parquet")
    assert got.drop_columns(["x"]).equals(t.drop_columns(["x"]))  # x: NaN != NaN


def test_footer_round_trips_and_offsets_move(tmp_path: Path) -> None:
    t = _table(60, 1)
    pieces = _pieces(t, 20, tmp_path)
    fields, end = footer(pieces[0])
    assert decode(encode(fields)) == fields
    stitch(pieces, tmp_path / "s.parquet")
    meta = pq.ParquetFile(tmp_path / "s.parquet").metadata
    starts = [meta.row_group(g).column(0).data_page_offset for g in range(3)]
    assert starts[0] == 4 and starts[1] == end  # the second piece's pages follow the first's


def test_not_a_parquet_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="not a Parquet file"):
        stitch([tmp_path / "x.parquet"], tmp_path / "out.parquet")
