"""Training rows from the backfill output, and the time-based split.

The backfill's ``features.parquet`` is already point-in-time correct (each row's
features come from events strictly before its own time); what remains is to keep the
evaluation honest: rows are ordered by event time and cut into contiguous blocks at
timestamps, so no row of a later split is older than any row of an earlier one and
rows sharing a timestamp never straddle a cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.definitions import FeatureSet


@dataclass(frozen=True)
class Dataset:
    """Training rows ordered by event time: ``X`` float64 (n, F) in ``feature_names``
    order with NaN for missing, ``y`` 0/1, ``ts`` epoch ms."""

    X: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    feature_names: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    name: str
    start: int
    stop: int

    def describe(self, data: Dataset) -> dict[str, Any]:
        ts = data.ts[self.start : self.stop]
        return {
            "rows": self.stop - self.start,
            "positives": int(data.y[self.start : self.stop].sum()),
            "start": _iso(int(ts[0])),
            "end": _iso(int(ts[-1])),
        }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def load_dataset(path: Path, fs: FeatureSet) -> Dataset:
    """Read the backfill's ``features.parquet``: the label, the event time and every
    feature of ``fs`` (refusing a file built from other definitions)."""
    from flows.inputs import read_parquet_schema

    schema = read_parquet_schema(path, "features")
    stored = (schema.metadata or {}).get(b"skewless.fingerprint")
    if stored is not None and stored.decode() != fs.fingerprint():
        raise ValueError(
            f"features: {path} was built with definitions {stored.decode()}, running ones are "
            f"{fs.fingerprint()}; rerun `skewless backfill`"
        )
    names = tuple(fs.feature_names)
    if fs.label is None:
        raise ValueError(f"label: the definitions (project {fs.project}) name no label column")
    label, time_col = fs.label, fs.schema.event_time
    missing = [c for c in (time_col, label, *names) if c not in schema.names]
    if missing:
        raise ValueError(
            f"features: {path} lacks column(s) {', '.join(missing)}; rerun `skewless backfill`"
        )
    table = pq.read_table(path, columns=[time_col, label, *names])
    if table.column(label).null_count:
        raise ValueError(
            f"features: {path} has {table.column(label).null_count} unlabeled rows ({label} null)"
        )
    ts_col = table.column(time_col)
    if pa.types.is_timestamp(ts_col.type):
        ts_col = pc.cast(ts_col, pa.timestamp("ms", tz="UTC"))
    ts = pc.cast(ts_col, pa.int64()).to_numpy()
    order = np.argsort(ts, kind="stable")  # ties keep file order
    X = np.empty((table.num_rows, len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        X[:, j] = pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False)[order]
    y = pc.cast(table.column(label), pa.float64()).to_numpy()[order]
    return Dataset(X=X, y=y, ts=ts[order], feature_names=names)


def time_split(
    ts: np.ndarray, train_fraction: float, valid_fraction: float
) -> tuple[Split, Split, Split]:
    """Contiguous train/validation/test blocks of time-sorted ``ts``, cut at timestamps.

    >>> for s in time_split(np.array([1, 2, 3, 3, 3, 4, 5, 6, 7, 8]), 0.3, 0.3): print(s)
    Split(name='train', start=0, stop=2)
    Split(name='valid', start=2, stop=6)
    Split(name='test', start=6, stop=10)
    """
    n = len(ts)
    if n and np.any(np.diff(ts) < 0):
        raise ValueError("ts: must be sorted")

    def cut(fraction: float) -> int:
        # the first row of the timestamp found at the fraction: ties move to the later split
        return int(np.searchsorted(ts, ts[min(int(n * fraction), n - 1)], "left")) if n else 0

    cut1, cut2 = cut(train_fraction), cut(train_fraction + valid_fraction)
    splits = (Split("train", 0, cut1), Split("valid", cut1, cut2), Split("test", cut2, n))
    for s in splits:
        if s.stop <= s.start:
            raise ValueError(f"split {s.name!r}: no rows ({n} rows in all); use more data")
    return splits
