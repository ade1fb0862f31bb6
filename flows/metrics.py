"""Binary-classifier metrics: ranking, operating point and calibration.

Ranking curves, areas, log loss and Brier score are scikit-learn's (``sklearn.metrics``):
the numbers the hand-written versions gave, to the last bit or within a few ulp (pinned by
tests/flows/test_metrics_sklearn.py on arrays with ties). Three things stay here, for
reasons: the threshold rule counts false positives exactly (a budget is a whole number of
negatives), the confusion summary at a threshold is three sums, and the reliability bins
carry their row counts and support equal-expected-positive bins, which
``sklearn.calibration.calibration_curve`` neither returns nor offers (its quantile bins
also merge when scores tie, so the number of bins moves).

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


def _skm() -> Any:
    """``sklearn.metrics``, imported on first use: importing it costs ~1.9 s, and the CLI
    imports this module (through ``flows.train``) for every command, ``--help`` included."""
    import sklearn.metrics

    return sklearn.metrics


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


def _both_classes(y: FloatArray, what: str) -> None:
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError(f"labels: {what} needs both classes")


def roc_curve(y: ArrayLike, p: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(fpr, tpr, thresholds)`` at every distinct score (none dropped), starting at
    (0, 0) with threshold +inf."""
    ya, pa = _yp(y, p)
    _both_classes(ya, "ROC")
    fpr, tpr, thr = _skm().roc_curve(ya, pa, drop_intermediate=False)
    return fpr, tpr, thr


def roc_auc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve (trapezoids; ties count one half)."""
    ya, pa = _yp(y, p)
    _both_classes(ya, "ROC")
    return float(_skm().roc_auc_score(ya, pa))


def pr_curve(y: ArrayLike, p: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(precision, recall, thresholds)`` at each distinct score, highest first
    (scikit-learn's curve reversed, without its closing (recall 0, precision 1) point)."""
    ya, pa = _yp(y, p)
    if ya.sum() == 0:
        raise ValueError("labels: precision-recall needs positives")
    precision, recall, thr = _skm().precision_recall_curve(ya, pa)
    return precision[-2::-1], recall[-2::-1], thr[::-1]


def average_precision(y: ArrayLike, p: ArrayLike) -> float:
    """PR-AUC as average precision: sum of precision weighted by each recall step
    (no interpolation, so it is not optimistic on imbalanced data)."""
    ya, pa = _yp(y, p)
    if ya.sum() == 0:
        raise ValueError("labels: precision-recall needs positives")
    return float(_skm().average_precision_score(ya, pa))


def log_loss(y: ArrayLike, p: ArrayLike, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood, probabilities clipped to ``[eps, 1 - eps]`` (here:
    scikit-learn clips at the float64 epsilon, 2.2e-16, and has no ``eps`` any more).

    >>> round(log_loss([1, 0], [0.9, 0.2]), 6)
    0.164252
    """
    ya, pa = _yp(y, p)
    return float(_skm().log_loss(ya, np.clip(pa, eps, 1.0 - eps), labels=[0.0, 1.0]))


def brier(y: ArrayLike, p: ArrayLike) -> float:
    """Mean squared error of the probabilities.

    >>> round(brier([1, 0], [0.9, 0.2]), 12)
    0.025
    """
    ya, pa = _yp(y, p)
    return float(_skm().brier_score_loss(ya, pa, pos_label=1.0))


#: how :func:`reliability` cuts the sorted scores into bins
BIN_STRATEGIES = ("count", "expected")


def reliability(
    y: ArrayLike, p: ArrayLike, bins: int = 10, strategy: str = "count"
) -> dict[str, Any]:
    """Calibration summary on bins of the sorted score, never on equal-width bins (they
    would put nearly every row of a 1%-positive problem into the first one).

    ``strategy="count"``: bins of equal row counts (quantiles of the score); the expected
    calibration error ``sum(count / n * |mean_p - rate|)`` is computed on these.
    ``strategy="expected"``: bins of equal expected positives (equal sums of ``p``), for a
    reliability diagram of a rare class: with ~1% positives, 8 of 10 equal-count bins hold
    no positive at all, while equal-expected bins spread from the bulk near 0 to the few
    rows scored near 1, each bin with about the same number of positives to estimate its
    rate from. Returns the per-bin mean prediction, observed positive rate, row count and
    positive count.

    >>> r = reliability([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], bins=2)
    >>> [(round(b["mean_p"], 6), b["rate"], b["count"]) for b in r["bins"]], round(r["ece"], 6)
    ([(0.15, 0.0, 2), (0.8, 1.0, 2)], 0.175)
    >>> r = reliability([0, 0, 0, 0, 1, 1], [0.1, 0.1, 0.1, 0.1, 0.6, 0.9], 2, "expected")
    >>> [(b["count"], b["positives"]) for b in r["bins"]]
    [(5, 1), (1, 1)]
    """
    if strategy not in BIN_STRATEGIES:
        raise ValueError(f"strategy: one of {', '.join(BIN_STRATEGIES)}, got {strategy!r}")
    ya, pa = _yp(y, p)
    order = np.argsort(pa, kind="stable")
    cum = np.cumsum(pa[order])
    if strategy == "count" or not len(cum) or cum[-1] <= 0.0:
        groups = np.array_split(order, min(bins, len(pa)))
    else:
        cuts = np.searchsorted(cum, cum[-1] * np.arange(1, bins) / bins, side="left") + 1
        groups = [g for g in np.split(order, np.unique(np.minimum(cuts, len(cum)))) if len(g)]
    rows = []
    ece = 0.0
    for idx in groups:
        mean_p, rate = float(pa[idx].mean()), float(ya[idx].mean())
        rows.append(
            {"mean_p": mean_p, "rate": rate, "count": len(idx), "positives": int(ya[idx].sum())}
        )
        ece += len(idx) / len(pa) * abs(mean_p - rate)
    return {"strategy": strategy, "bins": rows, "ece": ece}


def threshold_at_fpr(y: ArrayLike, p: ArrayLike, budget: float) -> float:
    """The lowest score ``t`` such that flagging ``p >= t`` keeps the false-positive rate
    within ``budget``: the most recall the budget buys. ``t`` is one of the scores, or just
    above the highest one when even that breaks the budget.
    """
    if not 0.0 <= budget < 1.0:
        raise ValueError(f"budget: must be in [0, 1), got {budget}")
    ya, pa = _yp(y, p)
    thr = np.unique(pa)[::-1]  # each distinct score, highest first
    negatives = np.sort(pa[ya == 0])
    fps = len(negatives) - np.searchsorted(negatives, thr, side="left")  # negatives >= t
    ok = np.flatnonzero(fps <= np.floor(budget * len(negatives) + 1e-9))
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
        "reliability_diagram": reliability(ya, pa, bins, strategy="expected"),
    }
