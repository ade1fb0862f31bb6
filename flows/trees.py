"""The native tree predictor: XGBoost's own scores, bit for bit, without XGBoost's cost.

``skewless_native.TreeEnsemble`` (``native/src/trees.rs``) evaluates the booster's trees
from its JSON model exactly as XGBoost's CPU predictor does (float32 features, ``<``
splits, default directions for NaN, the float32 margin summed in tree order from the
intercept, the logistic transform through the C library's ``expf``). A row costs the same
whether it comes alone (``Score``) or in a batch (``ScoreBatch``, ``skewless predict``),
and the answer is the one training evaluated.

:func:`native_trees` builds it when it can and *checks* it before anyone uses it: probe
rows made of the model's own split values (each exactly, one float32 step either side,
NaN) are scored by both, and any bit that differs refuses the native path. What it cannot
evaluate (categorical splits, several classes, other objectives, ``dart``) or any
failed check returns the reason instead, and the caller keeps ONNX Runtime: never wrong
numbers, one log line naming why.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger("skewless.model")

#: probe rows scored by both XGBoost and the native predictor at load
PROBE_ROWS = 256


def probe_rows(model_json: bytes, n_features: int, rows: int = PROBE_ROWS) -> np.ndarray:
    """Rows (float64, NaN = missing) whose values sit on the model's split values, one
    float32 step below or above them, or are missing: where a predictor that compared,
    rounded or defaulted differently from XGBoost would take the other branch."""
    trees = json.loads(model_json)["learner"]["gradient_booster"]["model"]["trees"]
    per_feature: list[list[float]] = [[] for _ in range(n_features)]
    for t in trees:
        for left, f, c in zip(
            t["left_children"], t["split_indices"], t["split_conditions"], strict=True
        ):
            if left != -1 and 0 <= f < n_features:
                per_feature[f].append(c)
    rng = np.random.default_rng(14)
    X = np.full((rows, n_features), np.nan)
    for j, values in enumerate(per_feature):
        if not values:
            X[:, j] = rng.normal(size=rows)
            continue
        split = np.asarray(values, dtype=np.float32)[rng.integers(len(values), size=rows)]
        step = rng.integers(-1, 2, size=rows).astype(np.float32)
        near = np.nextafter(split, np.where(step < 0, -np.inf, np.inf).astype(np.float32))
        near = np.where(step == 0, split, near).astype(np.float64)
        X[:, j] = np.where(rng.random(rows) < 0.15, np.nan, near)
    return X


def native_trees(booster: Any, n_features: int) -> tuple[Any | None, str]:
    """``(TreeEnsemble, "")`` when the native predictor gives XGBoost's bits on this model,
    else ``(None, why)``."""
    try:
        import skewless_native as native
    except ImportError:
        return None, "the native core (skewless_native) is not installed"
    if not hasattr(native, "TreeEnsemble"):
        return None, "this build of the native core has no TreeEnsemble"
    try:
        raw = bytes(booster.save_raw(raw_format="json"))
        trees = native.TreeEnsemble(raw, n_features)
        X = probe_rows(raw, n_features)
    except (ValueError, KeyError, TypeError) as exc:
        return None, str(exc)
    want = np.asarray(booster.inplace_predict(X), dtype=np.float32)
    got = np.empty(len(X), dtype=np.float64)
    trees.predict_into(X, got)
    if want.shape != got.shape or not np.array_equal(
        got.astype(np.float32).view(np.uint32), want.view(np.uint32)
    ):
        return None, "its scores differ from XGBoost's on the load-time probe rows"
    return trees, ""


def native_probability(trees: Any, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """P per row of ``X`` ((n, F), NaN = missing) from a :func:`native_trees` predictor:
    XGBoost's float32 answer, as float64."""
    x = np.ascontiguousarray(X, dtype=np.float64)
    out = np.empty(x.shape[0], dtype=np.float64)
    trees.predict_into(x, out)
    return out
