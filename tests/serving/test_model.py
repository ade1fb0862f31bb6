"""Serving's model loader: ONNX == XGBoost, and corrupt or mismatched versions refused."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from features.reference import REFERENCE
from flows.backfill import BackfillReport, compute_features, load_events
from flows.dataset import load_dataset
from flows.registry import RegistryError, sha256_file
from flows.simulate import SimulationConfig, simulate
from flows.train import TrainConfig, train_model
from serving.model import LoadedModel, load_model

FP = REFERENCE.fingerprint()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A small model and the feature matrix it was trained from."""
    d = tmp_path_factory.mktemp("serving-model")
    table = simulate(SimulationConfig(events=20_000, cards=500, merchants=60, days=10.0, seed=11))
    valid, accepted, _, _ = load_events(REFERENCE, table, BackfillReport())
    pq.write_table(compute_features(REFERENCE, valid, accepted), d / "features.parquet")
    cfg = TrainConfig(max_rounds=60, early_stopping_rounds=20, learning_rate=0.1)
    result = train_model(d / "features.parquet", d / "reg", REFERENCE, cfg, out=lambda s: None)
    return result.version_dir, load_dataset(d / "features.parquet", REFERENCE).X


@pytest.fixture()
def copy(trained: tuple[Path, np.ndarray], tmp_path: Path) -> Path:
    """A private copy of the version directory, free to corrupt."""
    dst = tmp_path / "versions" / trained[0].name
    shutil.copytree(trained[0], dst)
    return dst


def test_load_model_exposes_the_version(trained: tuple[Path, np.ndarray]) -> None:
    model = load_model(trained[0], FP)
    meta = json.loads((trained[0] / "metadata.json").read_text())
    assert isinstance(model, LoadedModel)
    assert (model.version, model.fingerprint, model.threshold) == ("v0001", FP, meta["threshold"])
    assert model.feature_names == REFERENCE.feature_names
    assert model.n_features == 15


def test_onnx_matches_xgboost_on_every_row(trained: tuple[Path, np.ndarray]) -> None:
    model = load_model(trained[0], FP)
    X = trained[1]
    assert np.isnan(X).any()  # missing values are part of the parity check
    p, ref = model.predict(X), model.predict_reference(X)
    assert (p.dtype, p.shape, ref.dtype, ref.shape) == (
        np.float64,
        (20_000,),
        np.float64,
        (20_000,),
    )
    assert float(np.max(np.abs(p - ref))) <= 1e-5
    assert np.all((p >= 0.0) & (p <= 1.0))


def test_single_row_path_equals_batch_path(trained: tuple[Path, np.ndarray]) -> None:
    model = load_model(trained[0], FP)
    X = trained[1][:300]
    batch = model.predict(X)
    one = np.array([model.predict(X[i : i + 1])[0] for i in range(len(X))])
    np.testing.assert_array_equal(one, batch)
    assert model.predict_one(X[7]) == batch[7]
    # the returned array is the caller's: a later call does not overwrite it
    first = model.predict(X[:1])
    model.predict(X[1:2])
    assert first[0] == batch[0]


def test_single_row_path_is_thread_safe(trained: tuple[Path, np.ndarray]) -> None:
    model = load_model(trained[0], FP)
    X = trained[1][:2_000]
    expected = model.predict(X)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: model.predict(X[i : i + 1])[0], range(len(X))))
    np.testing.assert_array_equal(np.array(got), expected)


def test_wrong_shape_is_refused(trained: tuple[Path, np.ndarray]) -> None:
    model = load_model(trained[0], FP)
    with pytest.raises(
        ValueError,
        match=r"^X: expected shape \(n, 15\), columns in feature_names order, got \(1, 14\)$",
    ):
        model.predict(np.zeros((1, 14)))
    with pytest.raises(ValueError, match=r"got \(15,\)$"):
        model.predict_reference(np.zeros(15))


def test_flag_is_p_at_least_threshold(trained: tuple[Path, np.ndarray]) -> None:
    model = load_model(trained[0], FP)
    t = model.threshold
    assert model.flag(np.array([t, np.nextafter(t, 0.0), 1.0])).tolist() == [True, False, True]


def test_edited_model_json_is_refused(copy: Path) -> None:
    with (copy / "model.json").open("a") as f:
        f.write(" ")
    with pytest.raises(
        RegistryError, match=r"^model: artifact model.json in .* does not match its sha256$"
    ):
        load_model(copy, FP)


def test_missing_files_are_refused(copy: Path) -> None:
    (copy / "model.onnx").unlink()
    with pytest.raises(RegistryError, match=r"^model: artifact model.onnx is missing from "):
        load_model(copy, FP)
    (copy / "metadata.json").unlink()
    with pytest.raises(
        RegistryError, match=r"metadata.json is missing; .* is not a model version$"
    ):
        load_model(copy, FP)


def test_mismatched_fingerprint_is_refused(copy: Path) -> None:
    with pytest.raises(
        RegistryError,
        match=rf"^model v0001 \(.*\): trained on feature definitions {FP}, but the running "
        r"definitions are 0123456789abcdef; retrain",
    ):
        load_model(copy, "0123456789abcdef")


def _edit_metadata(version_dir: Path, **changes: object) -> None:
    path = version_dir / "metadata.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del meta[key]
    path.write_text(json.dumps(meta))


def test_incomplete_metadata_is_refused(copy: Path) -> None:
    _edit_metadata(copy, threshold=None, onnx_input_name=None)
    with pytest.raises(
        RegistryError, match=r": metadata lacks threshold, onnx_input_name; not written by"
    ):
        load_model(copy, FP)


def test_unverifiable_or_unloadable_artifacts_are_refused(
    copy: Path, trained: tuple[Path, np.ndarray]
) -> None:
    trained_onnx = trained[0] / "model.onnx"
    meta = json.loads((copy / "metadata.json").read_text())
    digests = dict(meta["artifacts"]["sha256"])
    del digests["model.onnx"]
    _edit_metadata(copy, artifacts={"sha256": digests})
    with pytest.raises(
        RegistryError, match=r": model.onnx not recorded in metadata; refusing unverified"
    ):
        load_model(copy, FP)
    # garbage whose digest *is* recorded: caught by the loaders, not by the hash
    (copy / "model.onnx").write_bytes(b"not a model")
    _edit_metadata(
        copy, artifacts={"sha256": {**digests, "model.onnx": sha256_file(copy / "model.onnx")}}
    )
    with pytest.raises(RegistryError, match=r": model.onnx cannot be loaded by onnxruntime"):
        load_model(copy, FP)
    shutil.copy(trained_onnx, copy / "model.onnx")
    (copy / "model.json").write_text("{}")
    _edit_metadata(
        copy,
        artifacts={
            "sha256": {
                **digests,
                "model.onnx": sha256_file(copy / "model.onnx"),
                "model.json": sha256_file(copy / "model.json"),
            }
        },
    )
    with pytest.raises(RegistryError, match=r": model.json is not a readable XGBoost model"):
        load_model(copy, FP)


def test_feature_order_mismatch_is_refused(copy: Path) -> None:
    names = list(REFERENCE.feature_names)
    _edit_metadata(copy, feature_names=names[1:] + names[:1])
    with pytest.raises(
        RegistryError,
        match=r": model.json features \['card_txn_count_10m', .*\] differ from metadata",
    ):
        load_model(copy, FP)
