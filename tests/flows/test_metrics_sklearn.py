"""flows.metrics now delegates ranking curves, areas, log loss and Brier to scikit-learn:
the numbers must be the ones the hand-written numpy versions gave (kept below, frozen, as
the reference), on arrays with ties, tiny and large. Plus the parts that stay hand-written:
the exact threshold rule and the reliability bins (and why calibration_curve does not do).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from flows import metrics as m

# ---- the hand-written versions as they were (flows/metrics.py before scikit-learn)


def _old_counts(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order], p[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
    tps = np.cumsum(ys)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps, fps, ps[last_of_tie]


def old_roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tps, fps, thr = _old_counts(y, p)
    pos, neg = y.sum(), len(y) - y.sum()
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[np.inf, thr]


def old_roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, _ = old_roc_curve(y, p)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def old_pr_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tps, fps, thr = _old_counts(y, p)
    return tps / (tps + fps), tps / y.sum(), thr


def old_average_precision(y: np.ndarray, p: np.ndarray) -> float:
    precision, recall, _ = old_pr_curve(y, p)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def old_log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-15) -> float:
    pc = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(pc) + (1.0 - y) * np.log1p(-pc)))


def old_brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def old_threshold_at_fpr(y: np.ndarray, p: np.ndarray, budget: float) -> float:
    _, fps, thr = _old_counts(y, p)
    neg = len(y) - y.sum()
    ok = np.flatnonzero(fps <= np.floor(budget * neg + 1e-9))
    if len(ok) == 0:
        return float(np.nextafter(thr[0], np.inf))
    return float(thr[ok[-1]])


# ---- the arrays: hand cases with ties, and fraud-like data (1-2% positives, tree-like ties)


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    cases = [
        ("doc", np.array([0, 0, 1, 1.0]), np.array([0.1, 0.4, 0.35, 0.8])),
        ("ties across classes", np.array([0, 1, 0, 1, 1, 0.0]), np.array([0.5, 0.5, 0.5, 0.2, 0.9, 0.2])),
        ("all scores tied", np.array([0, 1, 0, 0.0]), np.full(4, 0.3)),
        ("scores at 0 and 1", np.array([1, 0, 1, 0, 0.0]), np.array([0.0, 1.0, 1.0, 0.0, 0.25])),
    ]  # fmt: skip
    for seed, n in ((0, 200), (1, 5_000), (2, 60_000)):
        rng = np.random.default_rng(seed)
        # calibrated: y ~ Bernoulli(p), p mostly near 0, a few near 1 (mean 1.5%);
        # float32 probabilities, as XGBoost/ONNX give them; rounding adds many ties
        p = rng.beta(0.15, 10, n).astype(np.float32).astype(np.float64)
        y = (rng.random(n) < p).astype(np.float64)
        y[:2] = [1.0, 0.0]
        cases.append((f"fraud-like n={n}", y, p))
        cases.append((f"fraud-like rounded n={n}", y, np.round(p, 3)))
    return cases


CASES = _cases()
IDS = [c[0] for c in CASES]
#: scalars may differ in the last bits (another summation order), never more
ULPS = 4


def _close(got: float, want: float) -> None:
    assert abs(got - want) <= ULPS * np.spacing(max(abs(want), np.finfo(float).tiny)), (got, want)


@pytest.mark.parametrize(("name", "y", "p"), CASES, ids=IDS)
def test_curves_are_the_hand_written_ones_exactly(name: str, y: np.ndarray, p: np.ndarray) -> None:
    for got, want in zip(m.roc_curve(y, p), old_roc_curve(y, p), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(m.pr_curve(y, p), old_pr_curve(y, p), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("name", "y", "p"), CASES, ids=IDS)
def test_scalars_are_the_hand_written_ones_within_a_few_ulp(
    name: str, y: np.ndarray, p: np.ndarray
) -> None:
    _close(m.roc_auc(y, p), old_roc_auc(y, p))
    _close(m.average_precision(y, p), old_average_precision(y, p))
    _close(m.log_loss(y, p), old_log_loss(y, p))
    _close(m.brier(y, p), old_brier(y, p))


@pytest.mark.parametrize(("name", "y", "p"), CASES, ids=IDS)
@pytest.mark.parametrize("budget", [0.0, 0.001, 0.01, 0.2, 0.5])
def test_threshold_rule_is_unchanged(
    name: str, y: np.ndarray, p: np.ndarray, budget: float
) -> None:
    assert m.threshold_at_fpr(y, p, budget) == old_threshold_at_fpr(y, p, budget)


def test_log_loss_keeps_its_own_clip() -> None:
    """scikit-learn alone clips at 2.2e-16: a fraud scored exactly 0 would cost 36.0, not 34.5."""
    y, p = np.array([1.0, 0.0]), np.array([0.0, 0.0])
    assert m.log_loss(y, p) == pytest.approx(-np.log(1e-15) / 2, rel=1e-12)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="labels: ROC needs both classes"):
        m.roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="labels: precision-recall needs positives"):
        m.average_precision([0, 0], [0.2, 0.3])
    with pytest.raises(ValueError, match="strategy: one of count, expected"):
        m.reliability([0, 1], [0.2, 0.3], strategy="width")


def test_reliability_expected_bins_spread_a_rare_class() -> None:
    """Equal-count bins put most bins at 0 observed (the old log-axis plot); bins of equal
    expected positives each hold about the same number of positives and reach the top."""
    y, p = CASES[-2][1], CASES[-2][2]  # 1.5% positives, 60k rows
    count = m.reliability(y, p, 10, "count")["bins"]
    expected = m.reliability(y, p, 10, "expected")["bins"]
    positives = int(y.sum())
    # half the equal-count diagram sits at "0 and 0": < 1% of the positives in 5 bins
    assert sum(b["positives"] for b in count[:5]) < 0.01 * positives
    assert all(0.05 * positives <= b["positives"] <= 0.15 * positives for b in expected)
    assert sum(b["count"] for b in expected) == len(y)
    assert sum(b["positives"] for b in expected) == positives
    sums = [b["mean_p"] * b["count"] for b in expected]
    # every bin but the last holds 1/10 of the expected positives, within one row's score
    assert max(abs(s - p.sum() / 10) for s in sums[:-1]) <= 1.0
    assert [b["mean_p"] for b in expected] == sorted(b["mean_p"] for b in expected)
    assert expected[-1]["mean_p"] > 2 * count[-1]["mean_p"]  # the top is resolved


def test_calibration_curve_cannot_replace_reliability() -> None:
    """On untied scores scikit-learn's quantile bins give our equal-count numbers, but it
    returns no counts, and tied scores merge its bins (3 bins asked 5 here)."""
    rng = np.random.default_rng(3)
    y, p = (rng.random(1_000) < 0.05).astype(float), rng.random(1_000)
    ours = m.reliability(y, p, 10)["bins"]
    rate, mean_p = calibration_curve(y, p, n_bins=10, strategy="quantile")
    np.testing.assert_allclose([b["mean_p"] for b in ours], mean_p, rtol=1e-12)
    np.testing.assert_allclose([b["rate"] for b in ours], rate, rtol=1e-12)
    y = np.array([0, 0, 0, 0, 0, 0, 1, 0, 1, 1.0])
    p = np.array([0, 0, 0, 0, 0, 0, 0.1, 0.2, 0.8, 0.9])
    assert len(calibration_curve(y, p, n_bins=5, strategy="quantile")[0]) == 3
    assert [b["count"] for b in m.reliability(y, p, 5)["bins"]] == [2, 2, 2, 2, 2]


def test_the_cli_does_not_import_scikit_learn_to_start() -> None:
    """`skewless train` builds its parser through flows.train -> flows.metrics (other
    commands no longer import it: skewless/cli_lazy.py); importing sklearn.metrics there
    cost ~1.9 s per command (--help: 0.6 s -> 2.5 s)."""
    code = (
        "import contextlib, io, sys\nfrom skewless.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['train', '--help'])\n"
        "print('flows.metrics' in sys.modules, 'sklearn' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["True", "False"], done.stdout + done.stderr
