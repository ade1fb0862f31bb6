"""The training job: no leakage across time splits, determinism, ONNX parity, lineage.

Data: a small default-shaped simulation run through the real backfill functions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb

from features.reference import REFERENCE, REQUEST_FEATURES
from features.settings import Settings
from flows import train as train_mod
from flows.artifacts import read_artifacts
from flows.backfill import BackfillReport, compute_features, load_events
from flows.dataset import load_dataset, time_split
from flows.metrics import (
    at_threshold,
    average_precision,
    brier,
    log_loss,
    roc_auc,
    summary,
    threshold_at_fpr,
)
from flows.models_cli import add_cli as add_models_cli
from flows.registry import RegistryError, aliases, read_metadata, versions
from flows.simulate import SimulationConfig, simulate
from flows.tracking import log_mlflow
from flows.train import TrainConfig, add_cli, train_model

CFG = TrainConfig(max_rounds=300, early_stopping_rounds=30, learning_rate=0.1)
PNG = b"\x89PNG\r\n\x1a\n"


def write_features(path: Path, events: int = 20_000) -> Path:
    table = simulate(SimulationConfig(events=events, cards=500, merchants=60, days=10.0))
    valid, accepted, _, _ = load_events(REFERENCE, table, BackfillReport())
    pq.write_table(compute_features(REFERENCE, valid, accepted), path)
    return path


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_features(tmp_path_factory.mktemp("features") / "features.parquet")


@pytest.fixture(scope="module")
def trained(features: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[str]]:
    printed: list[str] = []
    result = train_model(
        features, tmp_path_factory.mktemp("reg"), REFERENCE, CFG, out=printed.append
    )
    return result, printed


def test_time_split_has_no_leakage(features: Path) -> None:
    data = load_dataset(features, REFERENCE)
    train, valid, test = time_split(data.ts, 0.7, 0.15)
    assert (train.start, train.stop, valid.stop, test.stop) == (
        0,
        valid.start,
        test.start,
        len(data.ts),
    )
    # every row of a later split is strictly newer than every row of an earlier one
    assert data.ts[train.start : train.stop].max() < data.ts[valid.start : valid.stop].min()
    assert data.ts[valid.start : valid.stop].max() < data.ts[test.start : test.stop].min()
    assert [s.stop - s.start for s in (train, valid, test)] == [14_000, 3_000, 3_000]


def test_time_split_keeps_ties_together_and_refuses_empty_splits() -> None:
    # the 30% cut lands inside the run of 3s: all of them go to validation
    splits = time_split(np.array([1, 2, 3, 3, 3, 3, 4, 5, 6, 7]), 0.3, 0.3)
    assert [(s.name, s.start, s.stop) for s in splits] == [
        ("train", 0, 2),
        ("valid", 2, 6),
        ("test", 6, 10),
    ]
    with pytest.raises(
        ValueError, match=r"^split 'train': no rows \(10 rows in all\); use more data$"
    ):
        time_split(np.array([5, 5, 5, 5, 5, 5, 5, 5, 9, 9]), 0.5, 0.3)
    with pytest.raises(ValueError, match=r"^ts: must be sorted$"):
        time_split(np.array([2, 1, 3]), 0.3, 0.3)


def test_load_dataset_orders_by_time_whatever_the_file_order(
    features: Path, tmp_path: Path
) -> None:
    table = pq.read_table(features)
    shuffled = table.take(np.random.default_rng(3).permutation(table.num_rows))
    pq.write_table(shuffled, tmp_path / "shuffled.parquet")
    a, b = load_dataset(features, REFERENCE), load_dataset(tmp_path / "shuffled.parquet", REFERENCE)
    assert np.all(np.diff(b.ts) >= 0)
    np.testing.assert_array_equal(a.ts, b.ts)
    assert (a.y.sum(), b.y.sum()) == (table.column("is_fraud").to_numpy().sum(),) * 2
    assert a.X.dtype == np.float64 and a.X.shape == (20_000, len(REFERENCE.feature_names))
    # missing values stay NaN (XGBoost's native missing), e.g. a card's first transaction
    j = REFERENCE.feature_names.index("card_seconds_since_last")
    assert (
        np.isnan(a.X[:, j]).sum()
        == pa.compute.sum(pa.compute.is_nan(table.column("card_seconds_since_last"))).as_py()
    )


def test_load_dataset_refuses_a_file_from_other_definitions(features: Path, tmp_path: Path) -> None:
    pq.write_table(
        pq.read_table(features).drop_columns(["card_txn_count_1h"]), tmp_path / "old.parquet"
    )
    with pytest.raises(
        ValueError, match=r"lacks column\(s\) card_txn_count_1h; rerun `skewless backfill`$"
    ):
        load_dataset(tmp_path / "old.parquet", REFERENCE)
    t = pq.read_table(features)
    pq.write_table(
        t.replace_schema_metadata({"skewless.fingerprint": "0000"}), tmp_path / "fp.parquet"
    )
    with pytest.raises(
        ValueError, match=r"built with definitions 0000, running ones are [0-9a-f]{16}"
    ):
        load_dataset(tmp_path / "fp.parquet", REFERENCE)


def test_metadata_is_complete(trained: tuple[Any, list[str]], features: Path) -> None:
    result, _ = trained
    meta = read_metadata(result.version_dir)
    assert result.version == meta["version"] == "v0001"
    assert {
        "version", "feature_names", "fingerprint", "data_fingerprint", "splits", "params", "seed",
        "metrics", "threshold", "libraries", "git_commit", "parity_max_abs_diff", "onnx_input_name",
        "artifacts", "ablation", "config", "best_iteration", "threshold_rule", "feature_importance",
    } <= set(meta)  # fmt: skip
    assert meta["feature_names"] == list(REFERENCE.feature_names)
    assert meta["fingerprint"] == REFERENCE.fingerprint()
    assert meta["data_fingerprint"] == hashlib.sha256(features.read_bytes()).hexdigest()
    assert meta["seed"] == meta["params"]["seed"] == 7 and meta["params"]["nthread"] == 1
    assert meta["onnx_input_name"] == "features"
    assert meta["libraries"]["xgboost"] == xgb.__version__
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", meta["git_commit"])
    assert sorted(meta["artifacts"]["sha256"]) == [
        "calibration.png",
        "feature_importance.png",
        "model.json",
        "model.onnx",
        "pr.png",
        "profile.json",
        "roc.png",
    ]
    for png in ("roc.png", "pr.png", "feature_importance.png", "calibration.png"):
        assert (result.version_dir / png).read_bytes()[:8] == PNG
    splits = meta["splits"]
    assert [splits[s]["rows"] for s in ("train", "valid", "test")] == [14_000, 3_000, 3_000]
    assert (
        splits["train"]["end"] < splits["valid"]["start"]
        and splits["valid"]["end"] < splits["test"]["start"]
    )
    data = load_dataset(features, REFERENCE)
    assert sum(s["positives"] for s in splits.values()) == int(data.y.sum())
    first = datetime.fromtimestamp(data.ts[0] / 1000, UTC).isoformat(timespec="milliseconds")
    last = datetime.fromtimestamp(data.ts[-1] / 1000, UTC).isoformat(timespec="milliseconds")
    assert (splits["train"]["start"], splits["test"]["end"]) == (first, last)
    assert meta["best_iteration"] < CFG.max_rounds
    booster = xgb.Booster(model_file=str(result.version_dir / "model.json"))
    assert booster.num_boosted_rounds() == meta["best_iteration"] + 1
    assert booster.feature_names == list(REFERENCE.feature_names)
    assert json.loads((result.version_dir / "model.json").read_text())["learner"]["objective"][
        "name"
    ] == ("binary:logistic")


def test_metrics_threshold_and_ablation_recompute_from_the_artifacts(
    trained: tuple[Any, list[str]], features: Path
) -> None:
    result, printed = trained
    meta = result.metadata
    model = read_artifacts(result.version_dir, REFERENCE.fingerprint())
    data = load_dataset(features, REFERENCE)
    _, valid, test = time_split(data.ts, CFG.train_fraction, CFG.valid_fraction)
    p_va = model.predict_reference(data.X[valid.start : valid.stop])
    p_te = model.predict_reference(data.X[test.start : test.stop])
    y_va, y_te = data.y[valid.start : valid.stop], data.y[test.start : test.stop]
    assert meta["threshold"] == threshold_at_fpr(y_va, p_va, 0.01)
    assert at_threshold(y_va, p_va, meta["threshold"])["fpr"] <= 0.01
    assert meta["metrics"]["test"] == summary(y_te, p_te, meta["threshold"])
    assert meta["ablation"]["all_features"] == {
        k: meta["metrics"]["test"][k] for k in ("roc_auc", "pr_auc")
    }
    assert meta["ablation"]["request_features"] == list(REQUEST_FEATURES)
    # the window features must lift PR-AUC clearly on simulated fraud
    assert meta["ablation"]["pr_auc_lift"] > 0.2
    assert meta["ablation"]["all_features"]["pr_auc"] > 0.6
    text = printed[0]
    assert text.startswith("trained v0001 -> alias 'production': best iteration ")
    req = meta["ablation"]["request_only"]
    assert f"  {'request-time only (3)':<34} {req['roc_auc']:>8.4f} {req['pr_auc']:>8.4f}" in text
    assert f"  {'pr_auc':<16} {meta['metrics']['test']['pr_auc']:>9.4f}" in text


def test_onnx_parity_is_measured_and_stored(trained: tuple[Any, list[str]], features: Path) -> None:
    result, _ = trained
    model = read_artifacts(result.version_dir, REFERENCE.fingerprint(), predictor="onnx")
    data = load_dataset(features, REFERENCE)
    test = time_split(data.ts, CFG.train_fraction, CFG.valid_fraction)[2]
    x = data.X[test.start : test.stop]
    diff = float(np.max(np.abs(model.predict(x) - model.predict_reference(x))))
    assert diff == result.metadata["parity_max_abs_diff"]  # ONNX, the fallback predictor
    assert 0.0 <= diff <= 1e-5
    # what serves it: the native predictor, XGBoost's own scores exactly
    served = read_artifacts(result.version_dir, REFERENCE.fingerprint())
    assert served.predictor == "native"
    assert served.predict(x).tobytes() == served.predict_reference(x).tobytes()


def test_refuses_to_publish_without_parity(
    features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_mod, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(
        ValueError,
        match=r"^parity: ONNX differs from XGBoost by .* on test \(tolerance -1.0\); not publ",
    ):
        train_model(features, tmp_path, REFERENCE, TrainConfig(max_rounds=5), out=lambda s: None)
    assert versions(tmp_path) == [] and aliases(tmp_path) == {}


def test_same_data_and_seed_give_identical_models(
    trained: tuple[Any, list[str]], features: Path, tmp_path: Path
) -> None:
    first, _ = trained
    again = train_model(features, tmp_path / "a", REFERENCE, CFG, promote=False, out=lambda s: None)
    for name in ("model.json", "model.onnx"):
        assert (again.version_dir / name).read_bytes() == (first.version_dir / name).read_bytes()
    for key in (
        "metrics",
        "threshold",
        "ablation",
        "best_iteration",
        "parity_max_abs_diff",
        "feature_importance",
    ):
        assert again.metadata[key] == first.metadata[key]
    assert aliases(tmp_path / "a") == {}  # --no-promote
    other = train_model(
        features,
        tmp_path / "b",
        REFERENCE,
        TrainConfig(**{**CFG.__dict__, "seed": 8}),
        out=lambda s: None,
    )
    assert (other.version_dir / "model.json").read_bytes() != (
        first.version_dir / "model.json"
    ).read_bytes()


def test_mlflow_missing_fails_before_training(
    features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(
        ValueError, match=r"mlflow is not installed; pip install 'skewless\[mlflow\]'"
    ):
        train_model(
            features, tmp_path, REFERENCE, CFG, mlflow_uri="file:///tmp/mlruns", out=lambda s: None
        )
    assert versions(tmp_path) == []


class _Recorder:
    """Stands in for the mlflow module: records what the run would log."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        if name == "start_run":
            return self._start_run
        return lambda *a, **k: self.calls.append((name, a[0] if a else k))

    def _start_run(self, run_name: str) -> Any:
        self.calls.append(("start_run", run_name))
        rec = self

        class Run:
            info = argparse.Namespace(run_id="r1")

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                rec.calls.append(("end_run", None))

        return Run()


def test_mlflow_logging_carries_params_metrics_lineage_and_artifacts(
    trained: tuple[Any, list[str]],
) -> None:
    result, _ = trained
    rec = _Recorder()
    assert log_mlflow(rec, "file:///mlruns", result.version_dir, result.metadata) == "r1"  # type: ignore[arg-type]
    calls = dict(rec.calls)
    assert [c[0] for c in rec.calls] == [
        "set_tracking_uri", "set_experiment", "start_run", "log_params", "log_metrics", "set_tags",
        "log_artifacts", "end_run",
    ]  # fmt: skip
    assert calls["set_tracking_uri"] == "file:///mlruns" and calls["start_run"] == "v0001"
    assert calls["log_params"]["seed"] == 7 and calls["log_params"]["eta"] == 0.1
    assert calls["log_metrics"]["test.pr_auc"] == result.metadata["metrics"]["test"]["pr_auc"]
    assert (
        calls["log_metrics"]["ablation.request_only.pr_auc"]
        == result.metadata["ablation"]["request_only"]["pr_auc"]
    )
    assert calls["set_tags"]["skewless.fingerprint"] == REFERENCE.fingerprint()
    assert calls["log_artifacts"] == str(result.version_dir)


def test_cli_train_list_promote(
    features: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handlers: dict[str, Any] = {}

    def command(name: str) -> Any:
        return lambda fn: handlers.setdefault(name, fn)

    parser = argparse.ArgumentParser(prog="skewless")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub, command)
    add_models_cli(sub, command)
    settings = Settings(registry_dir=tmp_path / "reg")

    def run(*argv: str) -> int:
        args = parser.parse_args(argv)
        return int(handlers[args.command](args, settings))

    assert run("train", "--features", str(features), "--max-rounds", "40") == 0
    assert run("train", "--features", str(features), "--max-rounds", "30", "--no-promote") == 0
    assert aliases(tmp_path / "reg") == {"production": "v0001"}
    assert run("models", "promote", "v0002") == 0
    assert aliases(tmp_path / "reg") == {"production": "v0002"}
    capsys.readouterr()
    assert run("models", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "version",
        "aliases",
        "created",
        "test",
        "pr_auc",
        "roc_auc",
        "threshold",
        "status",
    ]
    assert [(ln.split()[0], ln.split()[1], ln.split()[-1]) for ln in lines[1:]] == [
        ("v0001", "-", "ok"),
        ("v0002", "production", "ok"),
    ]
    (tmp_path / "reg" / "versions" / "v0001" / "model.json").write_text("{}")
    with pytest.raises(
        RegistryError, match=r"artifact model.json in .*v0001 does not match its sha256$"
    ):
        run("models", "promote", "v0001", "--alias", "canary")
    assert aliases(tmp_path / "reg") == {"production": "v0002"}
    with pytest.raises(RegistryError, match=r"^version: v0009 is not in "):
        run("models", "promote", "v0009")
    # v0001 is corrupt now: rolling production back to it is refused, nothing moves
    with pytest.raises(RegistryError, match=r"does not match its sha256$"):
        run("models", "rollback")
    assert aliases(tmp_path / "reg") == {"production": "v0002"}
    # the tracking URI also comes from the environment; without mlflow the run stops early
    monkeypatch.setenv("SKEWLESS_MLFLOW_URI", "file:///tmp/mlruns")
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ValueError, match=r"pip install 'skewless\[mlflow\]'"):
        run("train", "--features", str(features))
    assert versions(tmp_path / "reg") == ["v0001", "v0002"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn_definitions(seed: int) -> None:
    import sklearn.metrics as skm  # a dev dependency: the reference definitions

    rng = np.random.default_rng(seed)
    y = (rng.random(5_000) < 0.02).astype(float)
    # rounded scores: plenty of ties, as a tree ensemble produces
    p = np.round(np.clip(0.3 * y + rng.beta(1, 20, 5_000), 0, 1), 3)
    assert roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), rel=1e-12)
    assert average_precision(y, p) == pytest.approx(skm.average_precision_score(y, p), rel=1e-12)
    assert log_loss(y, p) == pytest.approx(skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), rel=1e-12)
    assert brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), rel=1e-12)


def test_threshold_spends_exactly_the_fpr_budget() -> None:
    y = np.array([0] * 200 + [1] * 5, dtype=float)
    p = np.r_[np.linspace(0.0, 0.5, 200), [0.3, 0.49, 0.6, 0.7, 0.8]]
    # 1% of 200 negatives = 2 false positives allowed: the two highest legit scores;
    # the fraud at 0.49 sits just below the second one and is missed
    t = threshold_at_fpr(y, p, 0.01)
    assert t == p[198]
    assert at_threshold(y, p, t) == {"flagged": 5, "precision": 0.6, "recall": 0.6, "fpr": 0.01}
    # a budget smaller than one negative flags only what scores above every legit row
    assert threshold_at_fpr(y, p, 0.001) == 0.6
    # ties: a score shared by a fraud and a legit row is all-or-nothing
    assert threshold_at_fpr(
        np.array([0.0, 1.0, 0.0]), np.array([0.9, 0.9, 0.1]), 0.0
    ) == np.nextafter(0.9, 1)
