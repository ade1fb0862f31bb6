"""The distributed backfill's outputs, planned and stitched in the driver: every output
row group becomes a task of :mod:`flows.backfill_assemble` (rows ``[lo, hi)`` of one
file), and each finished row group is appended to its file at once
(:class:`flows.parquet_stitch.Stitcher`, in order), so that when the last task ends only
its own row group is left to copy, and the footers to write (:mod:`flows.backfill_dask`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from features.definitions import FeatureSet
from features.feast_objects import offline_table_name
from flows.backfill_assemble import (
    Segment,
    feast_piece,
    feature_piece,
    late_piece,
    rows_piece,
    segments,
)
from flows.parquet_stitch import Stitcher


class Pieces:
    """The split tasks' pieces (one per row group of the events): where each starts in
    the file, its valid and rejected rows, and its files."""

    def __init__(self, tmp: Path, starts: list[int], counts: list[dict[str, Any]]) -> None:
        self.tmp, self.starts = tmp, starts
        self.valid = [c["valid"] for c in counts]
        self.rejected = [c["events"] - c["valid"] for c in counts]

    def path(self, kind: str, k: int) -> str:
        return str(self.tmp / kind / f"{k:06d}.arrow")

    def by_piece(self, rows: np.ndarray) -> list[np.ndarray]:
        """Sorted original rows, cut into each piece's."""
        cuts = np.searchsorted(rows, [*self.starts, np.iinfo(np.int64).max])
        return [rows[cuts[k] : cuts[k + 1]] for k in range(len(self.starts))]

    def segments(self, kind: str, counts: list[int], lo: int, hi: int) -> list[Segment]:
        """Rows ``[lo, hi)`` of the ``kind`` pieces of ``counts`` rows laid end to end (the
        first piece's empty slice when there are none: it gives the schema)."""
        found = segments(counts, lo, hi) or [(0, 0, 0)]
        return [(self.path(kind, k), a, b) for k, a, b in found]


def row_groups(total: int, size: int) -> list[tuple[int, int]]:
    """Output row groups as ``write_table`` cuts them (an empty file: one empty group).

    >>> row_groups(5, 2), row_groups(0, 2)
    ([(0, 2), (2, 4), (4, 5)], [(0, 0)])
    """
    return [(lo, min(lo + size, total)) for lo in range(0, total, size)] or [(0, 0)]


@dataclass
class Assembled:
    spine_rows: int
    late: int
    cpu: float  # the tasks' CPU seconds
    tail_seconds: float  # from the last task's end to the files closed


class _Files:
    """The output files: row-group files appended as they finish, in order."""

    def __init__(self, out_dir: Path, tmp: Path) -> None:
        self.out_dir, self.tmp = out_dir, tmp
        self.pieces: dict[str, list[Path]] = {}
        self.ready: dict[str, set[int]] = {}
        self.stitchers: dict[str, Stitcher] = {}

    def piece(self, name: str) -> tuple[str, int]:
        k = len(self.pieces.setdefault(name, []))
        self.pieces[name].append(self.tmp / f"{name.replace('/', '-')}-{k:06d}.parquet")
        return name, k

    def done(self, name: str, k: int) -> None:
        """Row group ``k`` of ``name`` is written: append every one now in order."""
        ready = self.ready.setdefault(name, set())
        ready.add(k)
        if name not in self.stitchers:
            self.stitchers[name] = Stitcher(self.out_dir / name)
        s = self.stitchers[name]
        while s.count in ready:
            ready.discard(s.count)
            s.add(self.pieces[name][s.count])

    def close(self) -> None:
        for s in self.stitchers.values():
            s.close()

    def discard(self) -> None:
        for s in self.stitchers.values():
            s.discard()


def assemble(
    client: Any,
    fs: FeatureSet,
    blob: bytes,
    pieces: Pieces,
    outs: dict[str, list[str]],
    feast_rows: dict[str, int],
    dropped: dict[str, dict[str, np.ndarray]],
    spine_path: Path | None,
    row_group: int,
    out_dir: Path,
) -> Assembled:
    """Every output row group as a task (late rows first: their counts size late.parquet),
    stitched into ``out_dir`` as they finish."""
    from distributed import as_completed

    names, asm = list(outs), pieces.tmp / "asm"
    (asm / "late").mkdir(parents=True)
    late_pieces = Pieces(asm, pieces.starts, [])
    late_by = [pieces.by_piece(dropped[n]["late_rows"]) for n in names]
    late = [
        client.submit(late_piece, pieces.path("valid", k), names, [rows[k] for rows in late_by],
                      late_pieces.path("late", k), pure=False)
        for k in range(len(pieces.starts))
    ]  # fmt: skip
    files = _Files(out_dir, asm)
    where: dict[str, tuple[str, int]] = {}
    running = as_completed()

    def task(name: str, fn: Any, *args: Any) -> None:
        at = files.piece(name)
        future = client.submit(fn, *args, str(files.pieces[name][at[1]]), pure=False)
        where[future.key] = at
        running.add(future)

    dups = pieces.by_piece(dropped[fs.primary.name]["duplicate_rows"])
    firsts = [v - len(d) for v, d in zip(pieces.valid, dups, strict=True)]
    total = pq.ParquetFile(spine_path).metadata.num_rows if spine_path else sum(firsts)
    features = {n: [f"{o}-features.arrow" for o in outs[n]] for n in names}
    for lo, hi in row_groups(total, row_group):
        if spine_path:
            task("features.parquet", feature_piece, blob, features, str(spine_path), None, lo, hi)
            continue
        segs = segments(firsts, lo, hi) or [(0, 0, 0)]
        src = [(pieces.path("valid", k), a, b) for k, a, b in segs]
        task("features.parquet", feature_piece, blob, features, src, [dups[k] for k, _, _ in segs],
             lo, hi)  # fmt: skip
    for e in fs.entities:
        tables = [f"{o}-feast.arrow" for o in outs[e.name]]
        for lo, hi in row_groups(feast_rows[e.name], row_group):
            task(f"feast/{offline_table_name(e)}", feast_piece, tables, e.join_key, lo, hi)
    for lo, hi in row_groups(sum(pieces.rejected), row_group):
        task("rejects.parquet", rows_piece, pieces.segments("rejects", pieces.rejected, lo, hi))
    late_done = client.gather(late)
    late_counts = [r["rows"] for r in late_done]
    for lo, hi in row_groups(sum(late_counts), row_group):
        task("late.parquet", rows_piece, late_pieces.segments("late", late_counts, lo, hi))
    cpu, last = sum(r["cpu"] for r in late_done), time.perf_counter()
    try:
        for future in running:
            cpu += future.result()["cpu"]
            last = time.perf_counter()
            files.done(*where[future.key])
        files.close()
    except BaseException:
        files.discard()
        raise
    return Assembled(total, sum(late_counts), cpu, time.perf_counter() - last)
