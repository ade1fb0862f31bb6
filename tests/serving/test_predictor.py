"""The predictor choice: every candidate the bench compares answers XGBoost's own scores,
the one serving runs (native) gives XGBoost's bits, and one row the score it gives that
row in a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.serve_inproc import predictor_figures
from features.reference import REFERENCE
from flows.registry import resolve
from serving.model import PREDICTOR, LoadedModel, load_model
from serving.testing import publish_synthetic_model, synthetic_training_data


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    registry = tmp_path_factory.mktemp("predictor") / "registry"
    version = publish_synthetic_model(registry, rounds=40, max_depth=4, fs=REFERENCE)
    return load_model(resolve(registry, version), REFERENCE.fingerprint())


def test_every_candidate_answers_xgboost(model: LoadedModel, tmp_path: Path) -> None:
    X, _ = synthetic_training_data(model.feature_names, rows=600, seed=5)
    assert np.isnan(X).any()
    got = predictor_figures(model, X, tmp_path, batch_size=50, calls=2, seconds=0.5, rounds=1)
    assert got["serving_predictor"] == PREDICTOR == model.predictor == "native"
    candidates = {k: v for k, v in got.items() if isinstance(v, dict)}
    assert {"native", "onnx", "onnx_bound_1row", "xgboost_inplace"} <= set(candidates)
    for name, figures in candidates.items():
        assert figures["max_abs_diff_vs_xgboost"] <= 1e-5, name
        assert figures["one_row"]["calls"] >= 1 and figures["rows_50"]["calls"] >= 1
    # serving gives XGBoost's own bits (what training evaluated), on every row
    for name in ("native", "xgboost_inplace"):
        assert candidates[name]["rows_bit_equal_to_xgboost"] == len(X), name
        assert candidates[name]["equal_to_serving"], name
    assert (
        candidates["onnx"]["equal_to_serving"] == candidates["onnx_bound_1row"]["equal_to_serving"]
    )


def test_one_row_gets_its_batch_score_to_the_bit(model: LoadedModel) -> None:
    """Score (one row, bound buffers) and ScoreBatch (one call) run the same predictor."""
    X, _ = synthetic_training_data(model.feature_names, rows=500, seed=9)
    batch = model.predict(X)
    one = np.array([model.predict(X[i : i + 1])[0] for i in range(len(X))])
    assert one.tobytes() == batch.tobytes()
