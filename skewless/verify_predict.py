"""The ``verify`` check that ``skewless predict`` equals ``Score``.

Every logged prediction is rescored by :func:`flows.predict.score_spine` (the backfill's
features at the event's time, the logged model version's predictor) and compared with the
score the server returned, as exact floats. A difference means the served features differ
from the backfill's (see the per-feature report beside it) or the predictor does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from features.definitions import FeatureSet
from flows.backfill import AcceptedEvents


@dataclass
class PredictCheck:
    compared: int = 0
    mismatches: int = 0
    max_abs_diff: float = 0.0
    versions: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_predict(
    fs: FeatureSet, log: pa.Table, events: AcceptedEvents, registry: Path
) -> PredictCheck:
    """``predict``'s score for every logged row vs the logged score (bit equality)."""
    from flows.artifacts import read_artifacts
    from flows.predict import score_spine
    from flows.registry import resolve

    out = PredictCheck()
    if not log.num_rows:
        return out
    spine = log.select([n for n in fs.schema.names if n in log.column_names])
    logged = np.asarray(log.column("score").to_numpy(), dtype=np.float64)
    versions = np.array(log.column("model_version").to_pylist(), dtype=object)
    ids = log.column(fs.schema.event_id).to_pylist()
    for version in sorted(set(versions.tolist())):
        rows = np.flatnonzero(versions == version)
        model = read_artifacts(resolve(registry, version), fs.fingerprint())
        got = score_spine(fs, spine.take(pa.array(rows)), events, model)
        diff = np.abs(got - logged[rows])
        bad = np.flatnonzero(got != logged[rows])
        out.versions.append(version)
        out.compared += len(rows)
        out.mismatches += len(bad)
        out.max_abs_diff = max(out.max_abs_diff, float(diff.max(initial=0.0)))
        for i in bad[: 5 - len(out.examples)]:
            out.examples.append(
                {fs.schema.event_id: ids[rows[i]], "version": version,
                 "served": float(logged[rows[i]]), "predict": float(got[i])}
            )  # fmt: skip
    return out
