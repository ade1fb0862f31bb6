"""The training profile: what the model's inputs and scores looked like, stored with it.

Drift is measured against this (:mod:`flows.drift`). It is computed on the holdout rows
(validation + test): the newest rows of the training data, past the windows' warm-up
(a 7-day mean is missing for every card on day one of the history, never in serving),
scored out of sample like serving traffic. It holds, per feature and for the score,
decile edges, bin fractions and the missing rate, overall and per UTC hour of day (so
a window of night traffic is compared with night traffic); for categorical event fields
the values seen and their frequencies; a score histogram; the test metrics and the
threshold. Written as ``profile.json`` (sorted keys, no clock) into the version
directory, so its sha256 is in the metadata and the same data and seed give the same
bytes.

>>> rng = np.random.default_rng(0)
>>> p = binned(np.r_[rng.normal(size=1000), [np.nan] * 10], np.zeros(1010, np.int64))
>>> len(p["edges"]), round(p["missing"], 4), round(sum(p["fractions"]), 9)
(9, 0.0099, 1.0)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.definitions import FeatureSet
from features.schema import FieldType
from flows.dataset import Dataset

PROFILE_FILE = "profile.json"
FORMAT = 1
#: categorical fields with more values than this keep the most frequent (``complete``
#: false): an unseen-value share would be meaningless for them
MAX_CATEGORIES = 1_000
HOURS = 24
_MS_PER_HOUR = 3_600_000


def hour_of_day(ts_ms: np.ndarray) -> np.ndarray:
    """UTC hour of day (0..23) of epoch-ms times."""
    return ((np.asarray(ts_ms, dtype=np.int64) // _MS_PER_HOUR) % HOURS).astype(np.int64)


def bin_index(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bin of each value: ``k`` interior edges give bins ``0..k``
    (``(-inf, e1), [e1, e2), ..., [ek, inf)``), missing values go to bin ``k + 1``."""
    b = np.searchsorted(edges, x, side="right")
    b[np.isnan(x)] = len(edges) + 1
    return b


def binned(x: np.ndarray, hours: np.ndarray, quantiles: int = 10) -> dict[str, Any]:
    """Decile edges (unique), the fractions of the present values per bin, the missing
    rate, and the same bin counts per hour of day (the last bin is missing)."""
    x = np.asarray(x, dtype=np.float64)
    present = x[~np.isnan(x)]
    if present.size:
        q = np.quantile(present, np.arange(1, quantiles) / quantiles)
        edges = np.unique(q)
    else:
        edges = np.array([], dtype=np.float64)
    b = bin_index(edges, x)
    nbins = len(edges) + 2
    by_hour = np.zeros((HOURS, nbins), dtype=np.int64)
    np.add.at(by_hour, (hours, b), 1)
    counts = by_hour.sum(axis=0)
    n_present = int(counts[:-1].sum())
    return {
        "edges": [float(e) for e in edges],
        "fractions": [float(c / n_present) if n_present else 0.0 for c in counts[:-1]],
        "missing": float(counts[-1] / x.size) if x.size else 0.0,
        "rows": int(x.size),
        "by_hour": by_hour.tolist(),
    }


def categorical_fields(fs: FeatureSet) -> list[str]:
    """Event fields whose values are categories: strings other than the event id, and
    integers that are neither an entity key nor the label (reference set: currency,
    country, mcc)."""
    keys = {e.join_key for e in fs.entities}
    out = []
    for f in fs.schema.fields:
        if f.name in (fs.schema.event_id, fs.label) or f.name in keys:
            continue
        if f.type is FieldType.STRING or f.type is FieldType.INT64:
            out.append(f.name)
    return out


def categories(values: pa.ChunkedArray | pa.Array) -> dict[str, Any]:
    """Values (as strings) and their frequencies, most frequent first (ties by value).

    >>> categories(pa.array(["FR", "US", "FR", None]))
    {'values': {'FR': 0.5, 'US': 0.25}, 'null': 0.25, 'rows': 4, 'complete': True}
    """
    n = len(values)
    counts = pc.value_counts(pc.cast(values, pa.string()))
    pairs = [(v, c) for v, c in zip(*counts.flatten(), strict=True) if v.is_valid]
    nulls = values.null_count
    ordered = sorted(((v.as_py(), int(c.as_py())) for v, c in pairs), key=lambda t: (-t[1], t[0]))
    kept = ordered[:MAX_CATEGORIES]
    return {
        "values": {v: c / n for v, c in kept},
        "null": nulls / n if n else 0.0,
        "rows": n,
        "complete": len(kept) == len(ordered),
    }


def score_histogram(scores: np.ndarray, bins: int = 20) -> dict[str, Any]:
    counts, edges = np.histogram(np.asarray(scores, dtype=np.float64), bins=bins, range=(0, 1))
    return {"edges": [float(e) for e in edges], "counts": counts.tolist()}


def build_profile(
    fs: FeatureSet,
    features_path: Path,
    data: Dataset,
    holdout_start: int,
    scores: np.ndarray,
    test_metrics: dict[str, Any],
    threshold: float,
) -> dict[str, Any]:
    """The profile of ``data``'s rows from ``holdout_start`` on (``scores``: the model's
    scores of exactly those rows, in ``data`` order)."""
    ts = data.ts[holdout_start:]
    if len(scores) != len(ts):
        raise ValueError(f"scores: {len(scores)} for {len(ts)} holdout rows")
    hours = hour_of_day(ts)
    X = data.X[holdout_start:]
    features = {n: binned(X[:, j], hours) for j, n in enumerate(data.feature_names)}
    cut = int(ts[0])
    time_col = fs.schema.event_time
    cats = [c for c in categorical_fields(fs) if c in pq.read_schema(features_path).names]
    table = pq.read_table(features_path, columns=[time_col, *cats])
    ms = pc.cast(pc.cast(table.column(time_col), pa.timestamp("ms", tz="UTC")), pa.int64())
    table = table.filter(pc.greater_equal(ms, cut))
    return {
        "format": FORMAT,
        "rows": len(ts),
        "rows_from": "validation + test (the holdout)",
        "event_time_ms": [cut, int(ts[-1])],
        "features": features,
        "categorical": {c: categories(table.column(c)) for c in cats},
        "score": {**binned(scores, hours), "histogram": score_histogram(scores)},
        "threshold": float(threshold),
        "metrics": test_metrics,
    }


def write_profile(directory: Path, profile: dict[str, Any]) -> Path:
    path = directory / PROFILE_FILE
    path.write_text(json.dumps(profile, sort_keys=True, separators=(",", ":"), allow_nan=False))
    return path


def read_profile(version_dir: Path) -> dict[str, Any]:
    """The profile stored with a model version (a version trained before profiles
    existed has none: retrain it)."""
    path = version_dir / PROFILE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"profile: {path} is missing; {version_dir.name} was trained before profiles "
            "were stored, retrain it with `skewless train`"
        )
    profile: dict[str, Any] = json.loads(path.read_text())
    if profile.get("format") != FORMAT:
        raise ValueError(f"profile: {path} has format {profile.get('format')}, expected {FORMAT}")
    return profile
