"""Batch prediction: the backfill's point-in-time features, scored like ``Score`` does.

``Score`` builds a model row from the online state finalized at the event's own time
(events strictly before it count) plus the request-time features, and predicts with the
version's predictor on float32 input (:mod:`flows.trees`: XGBoost's own bits; ONNX for a
model it refuses). :func:`predict_table` builds the same row from the backfill
(:func:`flows.backfill.compute_features`: the same rule, the same request functions) and
calls the same predictor (:meth:`flows.artifacts.ModelArtifacts.predict`, which the
server's ``LoadedModel`` runs for every batch). Either sums a row's trees in the same order
for one row or many, so for the same events and model the scores are bit-equal;
``skewless verify`` checks that against the prediction log.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.definitions import FeatureSet
from flows.artifacts import ModelArtifacts, read_artifacts
from flows.backfill import AcceptedEvents, BackfillReport, compute_features, load_events
from flows.registry import resolve


@dataclass
class PredictReport:
    events: int = 0
    rejected: int = 0
    #: where the invalid events went, with their reasons (none: no file)
    rejects_path: str | None = None
    scored: int = 0
    flagged: int = 0
    model_version: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def feature_matrix(model: ModelArtifacts, features: pa.Table) -> np.ndarray:
    """The model's input (float64, NaN = missing) in its ``feature_names`` order."""
    X = np.empty((features.num_rows, model.n_features), dtype=np.float64)
    for j, name in enumerate(model.feature_names):
        col = pc.cast(features.column(name), pa.float64())
        X[:, j] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    return X


def score_spine(
    fs: FeatureSet, spine: pa.Table, events: AcceptedEvents, model: ModelArtifacts
) -> np.ndarray:
    """P(fraud) per spine row, with features from ``events`` as of each row's time."""
    if not spine.num_rows:
        return np.empty(0, dtype=np.float64)
    return model.predict(feature_matrix(model, compute_features(fs, spine, events)))


def predict_table(
    fs: FeatureSet, events: pa.Table, model: ModelArtifacts, spine: pa.Table | None = None
) -> tuple[pa.Table, PredictReport, pa.Table]:
    """Score ``spine`` (default: the valid events themselves, first copies) with features
    from ``events``. Returns (rows: the event id, event time, score, decision, threshold,
    version; the summary; the invalid events with ``row`` and ``reason``)."""
    report = BackfillReport()
    first, accepted, rejects, _ = load_events(fs, events, report)
    rows = first if spine is None else spine
    p = score_spine(fs, rows, accepted, model)
    schema = fs.schema
    keep = [c for c in (schema.event_id, schema.event_time) if c in rows.column_names]
    out = rows.select(keep)
    for name, values in (
        ("score", pa.array(p, pa.float64())),
        ("decision", pa.array(model.flag(p), pa.bool_())),
        ("threshold", pa.array(np.full(len(p), model.threshold), pa.float64())),
        ("model_version", pa.array([model.version] * len(p), pa.string())),
    ):
        out = out.append_column(name, values)
    summary = PredictReport(
        events=events.num_rows,
        rejected=rejects.num_rows,
        scored=len(p),
        flagged=int(model.flag(p).sum()),
        model_version=model.version,
    )
    return out, summary, rejects


def run_predict(
    fs: FeatureSet,
    events_path: Path,
    out_path: Path,
    registry: Path,
    model_ref: str,
    spine_path: Path | None = None,
) -> PredictReport:
    """``skewless predict``: read, score, write Parquet (invalid events beside it as
    ``<out>.rejects.parquet`` with their reasons); returns the summary."""
    model = read_artifacts(resolve(registry, model_ref), fs.fingerprint())
    if not Path(events_path).is_file():
        raise FileNotFoundError(f"events: {events_path} does not exist")
    events = pq.read_table(events_path)
    spine = pq.read_table(spine_path) if spine_path is not None else None
    table, report, rejects = predict_table(fs, events, model, spine)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_path)
    if rejects.num_rows:  # not scored, not lost
        path = out_path.with_name(f"{out_path.stem}.rejects.parquet")
        pq.write_table(rejects, path)
        report.rejects_path = str(path)
    return report


Handler = Callable[[argparse.Namespace, Any], int]


def add_cli(
    sub: argparse._SubParsersAction, command: Callable[[str], Callable[[Handler], Handler]]
) -> None:
    """Add ``skewless predict``.

    >>> p = argparse.ArgumentParser(prog="skewless"); sub = p.add_subparsers(dest="command")
    >>> add_cli(sub, lambda name: lambda fn: fn)
    >>> a = p.parse_args(["predict", "--events", "e.parquet", "--out", "p.parquet"])
    >>> (a.events.name, a.out.name, a.model)
    ('e.parquet', 'p.parquet', None)
    """
    p = sub.add_parser(
        "predict", help="batch prediction with the backfill's point-in-time features"
    )
    p.add_argument("--events", type=Path, required=True, help="events Parquet (the history)")
    p.add_argument("--out", type=Path, required=True, help="predictions Parquet to write")
    p.add_argument("--spine", type=Path, help="rows to score (default: the events themselves)")
    p.add_argument("--model", help="alias or version (default: SKEWLESS_MODEL_ALIAS)")
    p.add_argument(
        "--registry", type=Path, help="registry directory (default: SKEWLESS_REGISTRY_DIR)"
    )
    command("predict")(_predict_command)


def _predict_command(args: argparse.Namespace, settings: Any) -> int:
    from features.loader import load_definitions

    fs = load_definitions(settings.definitions)
    report = run_predict(
        fs, args.events, args.out, args.registry or settings.registry_dir,
        args.model or settings.model_alias, args.spine,
    )  # fmt: skip
    print(report.to_json())
    return 0
