"""Binary-classifier metrics in numpy: ranking, operating point and calibration.

Written here rather than imported from scikit-learn so training carries no extra
dependency; definitions follow scikit-learn's (average precision is the step-wise PR-AUC,
ties share one threshold), and the tests pin them on hand-computed cases.

>>> y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.4, 0.35, 0.8])
>>> roc_auc(y, p), round(average_precision(y, p), 4)
(0.75, 0.8333)
>>> threshold_at_fpr(y, p, budget=0.0)
0.8
>>> at_threshold(y, p, 0.35)
{'flagged': 3, 'precision': 0.6666666666666666, 'recall': 1.0, 'fpr': 0.5}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike


def _yp(y: ArrayLike, p: ArrayLike) -> tuple[FloatArray, FloatArray]:
    ya = np.asarray(y, dtype=np.float64)
    pa = np.asarray(p, dtype=np.float64)
    if ya.shape != pa.shape or ya.ndim != 1:
        raise ValueError(
            f"labels and scores: need two 1-d arrays of one length, got {ya.shape} and {pa.shape}"
        )
    if not np.isin(ya, (0.0, 1.0)).all():
        raise ValueError("labels: must be 0/1")
    return ya, pa


def _curve_counts(y: FloatArray, p: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Cumulative (true positives, false positives) at each distinct score, highest first."""
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order], p[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
    tps = np.cumsum(ys)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps, fps, ps[last_of_tie]


def roc_curve(y: ArrayLike, p: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(fpr, tpr, thresholds)``, starting at (0, 0) with threshold +inf."""
    ya, pa = _yp(y, p)
    tps, fps, thr = _curve_counts(ya, pa)
    pos, neg = ya.sum(), len(ya) - ya.sum()
    if pos == 0 or neg == 0:
        raise ValueError("labels: ROC needs both classes")
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[np.inf, thr]


def roc_auc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve (trapezoids; ties count one half)."""
    fpr, tpr, _ = roc_curve(y, p)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def pr_curve(y: ArrayLike, p: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(precision, recall, thresholds)`` at each distinct score, highest first."""
    ya, pa = _yp(y, p)
    tps, fps, thr = _curve_counts(ya, pa)
    if ya.sum() == 0:
        raise ValueError("labels: precision-recall needs positives")
    return tps / (tps + fps), tps / ya.sum(), thr


def average_precision(y: ArrayLike, p: ArrayLike) -> float:
    """PR-AUC as average precision: sum of precision weighted by each recall step
    (no interpolation, so it is not optimistic on imbalanced data)."""
    precision, recall, _ = pr_curve(y, p)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def log_loss(y: ArrayLike, p: ArrayLike, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood, probabilities clipped to ``[eps, 1 - eps]``.

    >>> round(log_loss([1, 0], [0.9, 0.2]), 6)
    0.164252
    """
    ya, pa = _yp(y, p)
    pc = np.clip(pa, eps, 1.0 - eps)
    return float(-np.mean(ya * np.log(pc) + (1.0 - ya) * np.log1p(-pc)))


def brier(y: ArrayLike, p: ArrayLike) -> float:
    """Mean squared error of the probabilities.

    >>> brier([1, 0], [0.9, 0.2])
    0.025
    """
    ya, pa = _yp(y, p)
    return float(np.mean((pa - ya) ** 2))


def reliability(y: ArrayLike, p: ArrayLike, bins: int = 10) -> dict[str, Any]:
    """Calibration summary on equal-count bins of the score (equal-width bins would put
    nearly every row of a 1%-positive problem into the first bin).

    Returns the per-bin mean prediction, observed positive rate and row count, and the
    expected calibration error ``sum(count / n * |mean_p - rate|)``.

    >>> r = reliability([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], bins=2)
    >>> [(round(b["mean_p"], 6), b["rate"], b["count"]) for b in r["bins"]], round(r["ece"], 6)
    ([(0.15, 0.0, 2), (0.8, 1.0, 2)], 0.175)
    """
    ya, pa = _yp(y, p)
    order = np.argsort(pa, kind="stable")
    rows = []
    ece = 0.0
    for idx in np.array_split(order, min(bins, len(pa))):
        mean_p, rate = float(pa[idx].mean()), float(ya[idx].mean())
        rows.append({"mean_p": mean_p, "rate": rate, "count": len(idx)})
        ece += len(idx) / len(pa) * abs(mean_p - rate)
    return {"bins": rows, "ece": ece}


def threshold_at_fpr(y: ArrayLike, p: ArrayLike, budget: float) -> float:
    """The lowest score ``t`` such that flagging ``p >= t`` keeps the false-positive rate
    within ``budget``: the most recall the budget buys. ``t`` is one of the scores, or just
    above the highest one when even that breaks the budget.
    """
    if not 0.0 <= budget < 1.0:
        raise ValueError(f"budget: must be in [0, 1), got {budget}")
    ya, pa = _yp(y, p)
    _, fps, thr = _curve_counts(ya, pa)
    neg = len(ya) - ya.sum()
    ok = np.flatnonzero(fps <= np.floor(budget * neg + 1e-9))
    if len(ok) == 0:
        return float(np.nextafter(thr[0], np.inf))
    return float(thr[ok[-1]])


def at_threshold(y: ArrayLike, p: ArrayLike, threshold: float) -> dict[str, Any]:
    """Confusion summary of the rule ``p >= threshold`` (precision 0.0 when nothing is flagged)."""
    ya, pa = _yp(y, p)
    flag = pa >= threshold
    tp = float(np.sum(flag & (ya == 1)))
    fp = float(np.sum(flag & (ya == 0)))
    pos, neg = float(ya.sum()), float(len(ya) - ya.sum())
    return {
        "flagged": int(flag.sum()),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / pos if pos else 0.0,
        "fpr": fp / neg if neg else 0.0,
    }


def summary(y: ArrayLike, p: ArrayLike, threshold: float, bins: int = 10) -> dict[str, Any]:
    """Every reported metric of one split, JSON-able."""
    ya, pa = _yp(y, p)
    return {
        "rows": len(ya),
        "positives": int(ya.sum()),
        "roc_auc": roc_auc(ya, pa),
        "pr_auc": average_precision(ya, pa),
        "log_loss": log_loss(ya, pa),
        "brier": brier(ya, pa),
        **{f"{k}_at_threshold": v for k, v in at_threshold(ya, pa, threshold).items()},
        "calibration": reliability(ya, pa, bins),
    }
