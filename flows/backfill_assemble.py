"""The distributed backfill's last step, in this process and in bounded memory: the
partitions' features merged back into spine order beside the spine's columns, with the
request-time features, as :func:`flows.backfill.compute_features` lays them out, and the
rows too late for some entity, in file order (:mod:`flows.backfill_dask`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from features.definitions import FeatureSet
from features.plan import compile_plan
from flows.backfill import BackfillReport, _ms, feature_table
from flows.backfill_part import ROW
from flows.backfill_split import AlignedWriter, merged, parquet_batches


class _Take:
    """The next ``n`` rows of a stream of tables."""

    def __init__(self, stream: Iterator[pa.Table]) -> None:
        self.stream = stream
        self.buf: pa.Table | None = None

    def __call__(self, n: int) -> pa.Table:
        parts: list[pa.Table] = [self.buf] if self.buf is not None else []
        have = sum(t.num_rows for t in parts)
        while have < n:
            t = next(self.stream)
            parts.append(t)
            have += t.num_rows
        whole = pa.concat_tables(parts)
        self.buf = whole.slice(n)
        return whole.slice(0, n)


def assemble(
    fs: FeatureSet,
    valid: Iterator[pa.Table],
    out_dir: Path,
    spine_path: Path | None,
    outs: dict[str, list[Path]],
    dropped: dict[str, dict[str, np.ndarray]],
    report: BackfillReport,
    rows: int,
) -> None:
    """features.parquet and late.parquet, batch by batch in file (spine) order."""
    plan = compile_plan(fs)
    names = [e.name for e in plan.entities]
    takes = {n: _Take(merged([Path(f"{o}-features.arrow") for o in outs[n]], ROW)) for n in names}
    features = AlignedWriter(out_dir / "features.parquet")
    late_out = AlignedWriter(out_dir / "late.parquet")
    dups = dropped[fs.primary.name]["duplicate_rows"]
    source = parquet_batches(spine_path, "spine", rows) if spine_path else valid
    done = 0
    for chunk in source:
        values: dict[str, np.ndarray] = {}
        want = np.arange(done, done + chunk.num_rows) if spine_path else None
        at = chunk.column("row").to_numpy() if want is None else want
        for n in names:
            t = takes[n](chunk.num_rows)
            if not np.array_equal(t.column(ROW).to_numpy(), at):
                raise RuntimeError(f"backfill: partition outputs of {n} out of order")
            values.update({c: t.column(c).to_numpy() for c in t.column_names if c != ROW})
        done += chunk.num_rows
        spine = chunk
        if spine_path is None:
            late_out.write(_late(chunk, names, dropped, report))
            first = ~np.isin(at, dups)
            if not first.all():
                spine = chunk.filter(pa.array(first))
                values = {k: v[first] for k, v in values.items()}
        report.spine_rows += spine.num_rows
        features.write(_feature_table(fs, spine, values))
    features.close()
    if spine_path is not None:  # late rows in file order, from the valid rows
        for chunk in valid:
            late_out.write(_late(chunk, names, dropped, report))
    late_out.close()


def _late(
    valid: pa.Table,
    names: list[str],
    dropped: dict[str, dict[str, np.ndarray]],
    report: BackfillReport,
) -> pa.Table:
    """The valid rows too late for some entity, with ``late_for`` naming which."""
    at = valid.column("row").to_numpy()
    late = [np.isin(at, dropped[n]["late_rows"]) for n in names]
    late_any = np.logical_or.reduce(late)
    report.late += int(late_any.sum())
    who = np.stack(late, axis=1)[late_any]
    labels = np.array(names, object)
    return valid.filter(pa.array(late_any)).append_column(
        "late_for", pa.array([",".join(labels[r]) for r in who], pa.string())
    )


def _feature_table(fs: FeatureSet, spine: pa.Table, values: dict[str, np.ndarray]) -> pa.Table:
    """As :func:`flows.backfill.compute_features` lays it out, from the window values."""
    time_col = fs.schema.event_time
    return feature_table(fs, compile_plan(fs), spine, _ms(spine.column(time_col), time_col), values)
