"""Drift statistics against brute force written from DESIGN.md's formulas."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from flows.drift import FLOOR, Thresholds, Windows, binned_drift, psi_rows, unseen_share
from flows.profiles import binned, categories

HOUR = 3_600_000


def _psi(a: np.ndarray, e: np.ndarray) -> float:
    a, e = np.maximum(a, 1e-4), np.maximum(e, 1e-4)
    return float(sum((ai - ei) * np.log(ai / ei) for ai, ei in zip(a, e, strict=True)))


def test_psi_is_the_design_formula_with_floored_fractions() -> None:
    a = np.array([[0.2, 0.3, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]])
    e = np.array([[0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]])
    got = psi_rows(a, e)
    assert got[0] == pytest.approx(_psi(a[0], e[0]), rel=1e-12)
    assert got[1] == 0.0
    assert FLOOR == 1e-4


def test_the_training_rows_themselves_do_not_drift() -> None:
    rng = np.random.default_rng(1)
    t = np.sort(rng.integers(0, 48 * HOUR, 5_000))
    x = rng.lognormal(3, 1, t.size) * (1 + (t // HOUR % 24 > 12))  # diurnal
    x[rng.random(t.size) < 0.05] = np.nan
    profile = binned(x, (t // HOUR) % 24)
    w = Windows.of(np.zeros(t.size, np.int64) + (t // HOUR % 24) * HOUR, 24 * HOUR)
    # one window holding exactly the training rows: expected == actual
    one = Windows.of(np.zeros(t.size, np.int64), 24 * HOUR)
    one = Windows(one.starts, one.width_ms, one.index, one.rows, w.hours)
    s = binned_drift(x, profile, one)
    assert s["psi"][0] == pytest.approx(0.0, abs=1e-12)
    assert s["ks"][0] == pytest.approx(0.0, abs=1e-12)
    assert s["missing"][0] == pytest.approx(np.isnan(x).mean())


def test_psi_and_ks_of_a_shift_match_brute_force() -> None:
    rng = np.random.default_rng(2)
    train = rng.normal(0, 1, 20_000)
    profile = binned(train, np.zeros(train.size, np.int64))
    serve = rng.normal(0.5, 1, 3_000)
    serve[:30] = np.nan
    w = Windows.of(np.full(serve.size, 5), HOUR)  # hour 0, like the training rows
    s = binned_drift(serve, profile, w)
    edges = np.array(profile["edges"])
    bins = np.concatenate([[-np.inf], edges, [np.inf]])
    present = serve[~np.isnan(serve)]
    a = np.r_[np.histogram(present, bins)[0], 30] / serve.size  # [e_i, e_i+1) like searchsorted
    e = np.r_[np.array(profile["fractions"]) * (1 - profile["missing"]), profile["missing"]]
    assert s["psi"][0] == pytest.approx(_psi(a, e), rel=1e-9)
    assert s["psi"][0] > 0.25
    cdf_a = np.cumsum(a[:-1]) / a[:-1].sum()
    cdf_e = np.cumsum(e[:-1]) / e[:-1].sum()
    assert s["ks"][0] == pytest.approx(np.max(np.abs(cdf_a - cdf_e)[:-1]), rel=1e-12)
    # the ECDF gap at the edges is a lower bound of the full two-sample KS statistic
    from scipy.stats import ks_2samp

    assert s["ks"][0] <= ks_2samp(present, train).statistic + 1e-12


def test_night_traffic_is_compared_with_night_traffic() -> None:
    hours = np.repeat(np.arange(24), 200)
    x = hours.astype(np.float64)  # hour_of_day_utc itself
    profile = binned(x, hours)
    night = np.full(300, 3.0)
    w = Windows.of(np.full(300, 3 * HOUR), HOUR)
    assert binned_drift(night, profile, w)["psi"][0] == pytest.approx(0.0, abs=1e-12)


def test_windows_are_epoch_aligned_and_keep_only_windows_with_rows() -> None:
    t = np.array([5 * HOUR + 1, 5 * HOUR + 2, 9 * HOUR, 9 * HOUR + HOUR - 1])
    w = Windows.of(t, HOUR)
    assert w.starts.tolist() == [5 * HOUR, 9 * HOUR]
    assert w.rows.tolist() == [2, 2] and w.index.tolist() == [0, 0, 1, 1]
    assert w.hours[0, 5] == 2 and w.hours[1, 9] == 2


def test_unseen_share_counts_values_training_never_saw() -> None:
    profile = categories(pa.array(["FR", "US", "FR"]))
    values = pa.array(["FR", "KE", "US", "KE", None, "FR"])
    w = Windows.of(np.array([0, 0, 0, HOUR, HOUR, HOUR]), HOUR)
    assert unseen_share(values, profile, w).tolist() == [1 / 3, 2 / 3]
    ints = categories(pa.array([5411, 5812]))
    got = unseen_share(pa.array([5411, 7995]), ints, Windows.of(np.array([0, 0]), HOUR))
    assert got.tolist() == [0.5]


def test_thresholds_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="psi_warn"):
        Thresholds(psi_warn=0.3, psi_alert=0.25)
    assert Thresholds().level(0.05, "unseen") == "alert"


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_equals_scikit_learn(seed: int) -> None:
    from sklearn.metrics import average_precision_score

    from flows.drift import average_precision, quality

    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 3_000))
    y = (rng.random(n) < rng.uniform(0.01, 0.5)).astype(np.float64)
    p = np.round(rng.random(n), int(rng.integers(1, 4)))  # many ties
    if 0 < y.sum() < n:
        want = average_precision_score(y, p)
        order = np.argsort(-p, kind="stable")
        assert average_precision(y[order], p[order]) == pytest.approx(want, rel=1e-12)
        assert quality(y, p, 0.5)["pr_auc"] == pytest.approx(want, rel=1e-12)
    else:
        assert np.isnan(quality(y, p, 0.5)["pr_auc"])


def test_score_quantiles_per_window_are_numpys() -> None:
    from flows.monitor import _score_quantiles

    rng = np.random.default_rng(3)
    t = rng.integers(0, 10 * HOUR, 5_000)
    score = rng.random(5_000)
    w = Windows.of(t, HOUR)
    got = _score_quantiles(score, w)
    for i in range(len(w)):
        s = np.sort(score[w.index == i])
        assert got["p50"][i] == s[(len(s) - 1) * 50 // 100]
        assert got["p99"][i] == s[(len(s) - 1) * 99 // 100]
        assert got["mean"][i] == pytest.approx(s.mean(), rel=1e-12)
