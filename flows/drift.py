"""Drift and quality per window of event time, against a model's training profile.

Everything is a few numpy passes over whole columns: a row's window and its bin give
one ``bincount`` per feature, so a million logged predictions take about a second
(``skewless bench monitor``).

- **PSI** per feature and for the score: ``sum (a - e) ln(a / e)`` over the profile's
  decile bins plus one bin for missing values, fractions floored at 1e-4. The expected
  fractions ``e`` of a window are the training fractions of each hour of day, mixed by
  the window's own rows per hour: night traffic is compared with night traffic, so
  ``hour_of_day_utc`` and the diurnal counts do not drift every night (hours with fewer
  than ``MIN_HOUR_ROWS`` training rows use the all-day fractions).
- **KS** per feature and for the score: the largest gap between the window's and the
  expected cumulative distribution of the present values, at the decile edges (exact at
  those points; a lower bound of the full KS statistic).
- **Unseen share** per categorical field: rows whose value training never saw.
- **Quality** (labelled, due rows only): precision and recall at the threshold,
  PR-AUC (scikit-learn's average precision, on rows sorted once), calibration (mean
  score vs positive rate, and the expected calibration error over 10 score bins).

>>> levels = Thresholds()
>>> [levels.level(v) for v in (0.05, 0.1, 0.3, float("nan"))]
[None, 'warn', 'alert', None]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.profiles import HOURS, bin_index, hour_of_day

FLOOR = 1e-4
MIN_HOUR_ROWS = 30


@dataclass(frozen=True)
class Thresholds:
    """When a statistic warns and alerts (PSI per DESIGN.md; the others are ours)."""

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    unseen_warn: float = 0.01
    unseen_alert: float = 0.05
    #: PR-AUC alerts below the model's test PR-AUC minus this. Served labels are worse
    #: than the test split's (fraud never reported, reversed chargebacks): on a no-drift
    #: simulation a week's PR-AUC ran 0.64-0.76 against a test PR-AUC of 0.78
    pr_auc_margin: float = 0.2
    #: windows with fewer rows are reported but never warn (PSI of 50 rows is noise)
    min_rows: int = 300
    #: a drift statistic alerts when it is at the alert level in this many consecutive
    #: judged windows (the first ones warn): one window's rows cluster on the few
    #: merchants active that hour, and a promotion lifts their counts for an hour or two
    persist: int = 2
    #: quality windows with fewer positives are reported but never alert
    min_positives: int = 30

    def __post_init__(self) -> None:
        for a, b in (("psi_warn", "psi_alert"), ("unseen_warn", "unseen_alert")):
            if not 0 < getattr(self, a) <= getattr(self, b):
                raise ValueError(f"{a}: must be > 0 and <= {b}")
        if self.min_rows < 1 or self.min_positives < 1 or self.persist < 1:
            raise ValueError("min_rows, min_positives, persist: must be >= 1")

    def level(self, psi: float, kind: str = "psi") -> str | None:
        warn, alert = getattr(self, f"{kind}_warn"), getattr(self, f"{kind}_alert")
        if not psi >= warn:  # NaN never warns
            return None
        return "alert" if psi >= alert else "warn"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Windows:
    """Rows assigned to windows of ``width_ms`` aligned to the epoch; only windows with
    rows are kept (``starts`` ascending, ``index`` per row into ``starts``)."""

    starts: np.ndarray
    width_ms: int
    index: np.ndarray
    rows: np.ndarray
    hours: np.ndarray  # (windows, 24) rows per UTC hour of day

    @classmethod
    def of(cls, event_ms: np.ndarray, width_ms: int) -> Windows:
        if width_ms <= 0:
            raise ValueError(f"window: must be > 0 ms, got {width_ms}")
        raw = np.asarray(event_ms, dtype=np.int64) // width_ms
        starts, index = np.unique(raw, return_inverse=True)
        n = len(starts)
        rows = np.bincount(index, minlength=n)
        hours = np.bincount(index * HOURS + hour_of_day(event_ms), minlength=n * HOURS)
        return cls(starts * width_ms, width_ms, index, rows, hours.reshape(n, HOURS))

    def __len__(self) -> int:
        return len(self.starts)


def _hour_fractions(p: dict[str, Any]) -> np.ndarray:
    """(24, bins) expected fractions per hour of day (all bins, missing last)."""
    by_hour = np.asarray(p["by_hour"], dtype=np.float64)
    total = by_hour.sum(axis=0)
    overall = total / max(total.sum(), 1.0)
    n = by_hour.sum(axis=1, keepdims=True)
    frac = np.divide(by_hour, n, out=np.zeros_like(by_hour), where=n > 0)
    return np.where(n >= MIN_HOUR_ROWS, frac, overall)


def psi_rows(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """PSI of every row of two (windows, bins) fraction matrices, fractions floored.

    >>> round(float(psi_rows(np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]]))[0]), 4)
    0.8789
    """
    a, e = np.maximum(actual, FLOOR), np.maximum(expected, FLOOR)
    return np.sum((a - e) * np.log(a / e), axis=1)


def binned_drift(x: np.ndarray, p: dict[str, Any], w: Windows) -> dict[str, np.ndarray]:
    """PSI, KS and missing rate per window of one column against its profile ``p``."""
    edges = np.asarray(p["edges"], dtype=np.float64)
    nb = len(edges) + 2
    b = bin_index(edges, np.asarray(x, dtype=np.float64))
    counts = np.bincount(w.index * nb + b, minlength=len(w) * nb).reshape(len(w), nb)
    rows = w.rows[:, None].astype(np.float64)
    actual = counts / rows
    expected = (w.hours / rows) @ _hour_fractions(p)
    psi = psi_rows(actual, expected)
    # KS over present values only, at the edges
    a_present, e_present = actual[:, :-1], expected[:, :-1]
    a_sum, e_sum = a_present.sum(axis=1, keepdims=True), e_present.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        a_cdf = np.cumsum(a_present / a_sum, axis=1)[:, :-1]
        e_cdf = np.cumsum(e_present / e_sum, axis=1)[:, :-1]
        gaps = np.abs(a_cdf - e_cdf)
    if gaps.shape[1]:
        ks = np.where(a_sum[:, 0] > 0, np.nanmax(np.where(np.isnan(gaps), 0, gaps), axis=1), np.nan)
    else:
        ks = np.full(len(w), np.nan)
    return {"psi": psi, "ks": ks, "missing": actual[:, -1]}


def unseen_share(values: pa.ChunkedArray | pa.Array, p: dict[str, Any], w: Windows) -> np.ndarray:
    """Share of each window's rows whose value training never saw (NaN: the profile kept
    only the most frequent values, so 'unseen' cannot be told)."""
    if not p.get("complete", True):
        return np.full(len(w), np.nan)
    seen = pa.array(list(p["values"]), pa.string())
    text = pc.cast(values, pa.string())
    known = pc.is_in(text, value_set=seen)
    if p.get("null", 0.0) > 0:
        known = pc.or_(known, pc.is_null(text))
    unseen = ~np.asarray(pc.fill_null(known, False).to_numpy(zero_copy_only=False), dtype=bool)
    return np.bincount(w.index, weights=unseen, minlength=len(w)) / w.rows


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """PR-AUC as scikit-learn's ``average_precision_score`` defines it (held equal by a
    test), for rows already sorted by descending score: the monitor sorts a million
    rows once, then takes each rolling window's rows in that order with a mask, where
    scikit-learn would sort every window again (3 s of the bench's 1M rows).

    >>> round(average_precision(np.array([1, 0, 1, 0.0]), np.array([0.9, 0.6, 0.4, 0.1])), 4)
    0.8333
    """
    pos = float(y.sum())
    if len(y) == 0 or pos == 0 or pos == len(y):
        return math.nan
    last = np.flatnonzero(np.r_[p[1:] != p[:-1], True])  # the last row of each distinct score
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def quality(
    y: np.ndarray, p: np.ndarray, threshold: float, bins: int = 10, ordered: bool = False
) -> dict[str, Any]:
    """Precision, recall at ``threshold``, PR-AUC and calibration of labelled rows
    (``ordered``: the rows are sorted by descending score already).

    >>> q = quality(np.array([0, 0, 1, 1.0]), np.array([0.1, 0.6, 0.4, 0.9]), 0.5)
    >>> q["precision"], q["recall"], round(q["pr_auc"], 4)
    (0.5, 0.5, 0.8333)
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    n, pos = len(y), int(y.sum())
    order = slice(None) if ordered else np.argsort(-p, kind="stable")
    flag = p >= threshold
    flagged = int(flag.sum())
    tp = float(np.sum(flag & (y == 1)))
    out: dict[str, Any] = {
        "rows": n,
        "positives": pos,
        "flagged": flagged,
        "precision": tp / flagged if flagged else math.nan,
        "recall": tp / pos if pos else math.nan,
        "pr_auc": average_precision(y[order], p[order]),
        "mean_score": float(p.mean()) if n else math.nan,
        "positive_rate": pos / n if n else math.nan,
    }
    if n:
        b = np.minimum((p * bins).astype(np.int64), bins - 1)
        count = np.bincount(b, minlength=bins)
        gap = np.abs(np.bincount(b, p, bins) - np.bincount(b, y, bins))
        out["calibration_error"] = float(gap.sum() / n)
        out["calibration_rows"] = count.tolist()
    else:
        out["calibration_error"] = math.nan
    return out


def finite(x: float) -> float | None:
    """JSON-safe: NaN and infinities become None."""
    return float(x) if x is not None and math.isfinite(x) else None
