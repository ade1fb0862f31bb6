"""A trained model and a prediction log written by the server's own log writer
(:class:`serving.predlog.ParquetPredictionLog`), for the monitor's tests and bench."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.definitions import FeatureSet
from features.plan import compile_plan
from features.schema import FieldType
from flows.artifacts import ModelArtifacts
from flows.backfill import BackfillReport, compute_features, load_events
from flows.simulate import SimulationConfig, simulate
from flows.train import TrainConfig, train_model
from serving.predlog import ParquetPredictionLog
from serving.scorer import ScoreResult

DAY_MS = 86_400_000
MS = pa.timestamp("ms", tz="UTC")
CFG = TrainConfig(max_rounds=80, early_stopping_rounds=20, learning_rate=0.2)


def features_of(fs: FeatureSet, events: pa.Table) -> pa.Table:
    valid, accepted, _, _ = load_events(fs, events, BackfillReport())
    return compute_features(fs, valid, accepted)


def split_at(table: pa.Table, time_col: str, cut_ms: int) -> tuple[pa.Table, pa.Table]:
    ms = pc.cast(pc.cast(table.column(time_col), MS), pa.int64())
    return table.filter(pc.less(ms, cut_ms)), table.filter(pc.greater_equal(ms, cut_ms))


def train_on(fs: FeatureSet, features: pa.Table, tmp: Path) -> Path:
    """Train on ``features``; the version directory."""
    path = tmp / "train_features.parquet"
    pq.write_table(features, path)
    return train_model(path, tmp / "registry", fs, CFG, out=lambda s: None).version_dir


def write_log(
    fs: FeatureSet,
    features: pa.Table,
    art: ModelArtifacts,
    directory: Path,
    chunk: int = 10_000,
) -> int:
    """Score ``features`` rows with ``art`` and log them as the server does."""
    names = art.feature_names
    X = np.column_stack(
        [pc.cast(features.column(n), pa.float64()).to_numpy(zero_copy_only=False) for n in names]
    )
    p = art.predict(X)
    cols = []
    for f in fs.schema.fields:
        col = features.column(f.name)
        if f.type is FieldType.TIMESTAMP:
            col = pc.cast(pc.cast(col, MS), pa.int64())
        cols.append(col.to_pylist())
    record = fs.schema.record
    events = [record._make(v) for v in zip(*cols, strict=True)]
    ident = fs.schema.event_id
    ids = features.column(ident).to_pylist()
    results = [
        ScoreResult(ids[i], float(p[i]), bool(p[i] >= art.threshold), art.threshold,
                    art.version, names, X[i].tolist(), (), ())
        for i in range(len(ids))
    ]  # fmt: skip
    log = ParquetPredictionLog(directory, compile_plan(fs), flush_rows=chunk)
    for i in range(0, len(events), chunk):
        log(events[i : i + chunk], results[i : i + chunk])
        log.flush()
    log.close()
    return len(events)


def scenario_events(days: float = 14.0, events: int = 100_000, seed: int = 7) -> pa.Table:
    return simulate(
        SimulationConfig(events=events, cards=2_000, merchants=200, days=days, seed=seed)
    )
