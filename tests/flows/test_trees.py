"""The native tree predictor (flows.trees, native/src/trees.rs) gives XGBoost's own bits.

Property: tiny XGBoost models trained here on random data with NaNs (depths, rounds,
intercepts, objectives varied), scored on random rows whose values sit exactly on the
model's split values, one float32 step beside them, or are missing: every probability is
bit-identical (float32 bits) to ``Booster.predict`` and ``inplace_predict``, for float64
and float32 input, one row alone and in a batch. Models it cannot evaluate are refused with
the reason, and a refused model is scored by ONNX with one log line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skewless_native as native
import xgboost as xgb

from features.reference import REFERENCE
from flows import artifacts
from flows.registry import resolve
from flows.trees import native_probability, native_trees, probe_rows
from serving.testing import publish_synthetic_model


def _bits(p: Any) -> np.ndarray:
    return np.asarray(p, dtype=np.float64).astype(np.float32).view(np.uint32)


def _train(seed: int, objective: str = "binary:logistic") -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, f = int(rng.integers(50, 400)), int(rng.integers(1, 8))
    X = rng.normal(size=(n, f)) * rng.choice([1e-3, 1.0, 1e4])
    X[rng.random(X.shape) < rng.uniform(0, 0.4)] = np.nan
    y = np.nan_to_num(X[:, 0]) + rng.normal(size=n) * X[:, 0].std(where=~np.isnan(X[:, 0])) > 0
    params: dict[str, Any] = {
        "objective": objective,
        "max_depth": int(rng.integers(1, 8)),
        "eta": float(rng.uniform(0.05, 1.0)),
        "nthread": 1,
        "seed": seed,
        "max_bin": int(rng.choice([4, 16, 256])),  # few bins: many rows on a split value
    }
    if seed % 3 == 1:
        params["base_score"] = float(rng.uniform(0.001, 0.999))
    rounds = int(rng.integers(1, 40))
    return xgb.train(params, xgb.DMatrix(X, y.astype(float)), rounds), X


def _rows(booster: xgb.Booster, X: np.ndarray, seed: int) -> np.ndarray:
    """Training rows, probe rows on the split values, and rows of mixed extremes."""
    rng = np.random.default_rng(seed + 1000)
    probe = probe_rows(bytes(booster.save_raw("json")), X.shape[1], rows=300)
    extremes = [np.nan, 0.0, -0.0, 1e-45, -1e30, 1e30, 3.4e38, 1e39, np.inf, -np.inf]
    wild = rng.choice(extremes, size=(20, X.shape[1]))  # 1e39: infinite as float32
    return np.concatenate([X, probe, wild])


def _assert_xgboost_bits(booster: xgb.Booster, X: np.ndarray) -> None:
    trees, why = native_trees(booster, X.shape[1])
    assert trees is not None, why
    got = native_probability(trees, X)
    want = booster.inplace_predict(X)
    assert np.array_equal(_bits(got), want.view(np.uint32))
    with np.errstate(over="ignore"):  # 1e39 -> inf, as XGBoost casts it
        x32 = X.astype(np.float32)
    finite = ~np.isinf(x32).any(axis=1)  # a DMatrix refuses infinities; inplace takes them
    by_dmatrix = booster.predict(xgb.DMatrix(X[finite]))
    assert np.array_equal(_bits(got[finite]), by_dmatrix.view(np.uint32))
    out32 = np.empty(len(X), dtype=np.float32)
    trees.predict_into_f32(x32, out32)
    assert np.array_equal(out32.view(np.uint32), want.view(np.uint32))
    alone = np.concatenate([native_probability(trees, X[i : i + 1]) for i in range(len(X))])
    assert alone.tobytes() == got.tobytes()


@pytest.mark.parametrize("seed", range(24))
def test_random_models_give_xgboosts_bits(seed: int) -> None:
    booster, X = _train(seed, "reg:logistic" if seed % 8 == 5 else "binary:logistic")
    _assert_xgboost_bits(booster, _rows(booster, X, seed))


@pytest.mark.parametrize("leaf", [-100.0, -88.0, 40.0, 100.0, 1e30])
def test_saturated_margins_give_xgboosts_bits(leaf: float) -> None:
    """Leaves scaled so the margin reaches where ``expf`` overflows or the sigmoid rounds to
    0 or 1: the edited model loaded back into XGBoost is the reference."""
    booster, X = _train(2)
    model = json.loads(booster.save_raw("json"))
    for t in model["learner"]["gradient_booster"]["model"]["trees"]:
        t["split_conditions"] = [
            leaf * (1 if c >= 0 else -1) if left == -1 else c
            for left, c in zip(t["left_children"], t["split_conditions"], strict=True)
        ]
    edited = xgb.Booster(model_file=bytearray(json.dumps(model).encode()))
    _assert_xgboost_bits(edited, _rows(edited, X, 2))


def _refusal(params: dict[str, Any], **dmatrix: Any) -> str:
    rng = np.random.default_rng(0)
    X = rng.integers(0, 3, size=(120, 3)).astype(float)
    y = rng.integers(0, 3 if "num_class" in params else 2, size=120).astype(float)
    booster = xgb.train(params | {"nthread": 1}, xgb.DMatrix(X, y, **dmatrix), 3)
    trees, why = native_trees(booster, 3)
    assert trees is None
    return why


def test_what_it_cannot_evaluate_is_refused_with_the_reason() -> None:
    assert "multi:softprob" in _refusal({"objective": "multi:softprob", "num_class": 3})
    assert "reg:squarederror" in _refusal({"objective": "reg:squarederror"})
    assert "dart" in _refusal({"objective": "binary:logistic", "booster": "dart"})
    why = _refusal(
        {"objective": "binary:logistic", "tree_method": "hist"},
        feature_types=["c", "q", "q"], enable_categorical=True,
    )  # fmt: skip
    assert "categorical" in why
    with pytest.raises(ValueError, match="not an XGBoost JSON model"):
        native.TreeEnsemble(b"{", 3)
    booster, _ = _train(0)
    with pytest.raises(ValueError, match="out of range"):  # a split on a feature past F
        native.TreeEnsemble(bytes(booster.save_raw("json")), 0)


def test_wrong_shapes_are_refused() -> None:
    booster, X = _train(3)
    trees, _ = native_trees(booster, X.shape[1])
    assert trees is not None
    with pytest.raises(ValueError, match="not 2 rows"):
        trees.predict_into(np.zeros(3 * X.shape[1]), np.zeros(2))
    with pytest.raises(ValueError, match="contiguous"):
        trees.predict_into(np.zeros((4, 2 * X.shape[1]))[:, ::2], np.zeros(4))


def test_a_refused_model_is_scored_by_onnx_with_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    version = publish_synthetic_model(tmp_path / "reg", rounds=5, fs=REFERENCE)
    vdir, fp = resolve(tmp_path / "reg", version), REFERENCE.fingerprint()
    X = probe_rows(b'{"learner": {"gradient_booster": {"model": {"trees": []}}}}', 15, 50)
    native_model = artifacts.read_artifacts(vdir, fp)
    assert native_model.predictor == "native" and not caplog.records
    assert np.array_equal(_bits(native_model.predict(X)), _bits(native_model.predict_reference(X)))
    onnx = artifacts.read_artifacts(vdir, fp, predictor="onnx")
    assert onnx.predictor == "onnx" and onnx.trees is None and not caplog.records
    monkeypatch.setattr(artifacts, "native_trees", lambda b, n: (None, "objective x:y"))
    with caplog.at_level(logging.WARNING, logger="skewless.model"):
        fallback = artifacts.read_artifacts(vdir, fp)
    assert fallback.predictor == "onnx"
    assert [r.getMessage() for r in caplog.records] == [
        f"model {version} ({vdir}): scoring with ONNX Runtime, not the native predictor: "
        "objective x:y"
    ]
    assert fallback.predict(X).tobytes() == onnx.predict(X).tobytes()
    with pytest.raises(ValueError, match="predictor: 'tl2' is not 'native' or 'onnx'"):
        artifacts.read_artifacts(vdir, fp, predictor="tl2")
