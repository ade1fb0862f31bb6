"""The maintain loop for other definitions: the click-stream example's profile, labels
(``click_id``, ``purchased``) and monitor, end to end through the command line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from features.loader import load_definitions
from flows.artifacts import read_artifacts
from flows.backfill import run_backfill
from flows.labels import read_labels, write_labels
from flows.profiles import read_profile
from flows.sim_labels import LabelDelays, simulate_labels
from flows.train import TrainConfig, train_model
from skewless.cli import main
from tests.flows.monitor_support import write_log

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "clickstream"


def test_monitor_runs_on_the_clickstream_definitions(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("clicks_gen_monitor", EXAMPLE / "generate.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fs = load_definitions(str(EXAMPLE / "definitions.py"))
    gen.write_events(gen.generate(events=6_000, seed=7), tmp_path / "clicks.parquet")
    run_backfill(fs, tmp_path / "clicks.parquet", tmp_path / "bf")
    features = tmp_path / "bf" / "features.parquet"
    cfg = TrainConfig(max_rounds=40, early_stopping_rounds=10)
    trained = train_model(features, tmp_path / "reg", fs, cfg, out=lambda s: None)
    profile = read_profile(trained.version_dir)
    assert set(profile["categorical"]) == {"position", "device"}
    assert set(profile["features"]) == set(fs.feature_names)
    art = read_artifacts(trained.version_dir, fs.fingerprint())
    table = pq.read_table(features)
    write_log(fs, table, art, tmp_path / "log", chunk=2_000)
    labels = simulate_labels(table, fs, seed=7, delays=LabelDelays(median_days=1.0, min_days=0.1))
    assert labels.column_names == ["click_id", "label", "label_time"]
    write_labels(labels, tmp_path / "labels.parquet")
    assert read_labels(fs, tmp_path / "labels.parquet")[1].num_rows == 0
    out = tmp_path / "monitor"
    argv = ["--definitions", str(EXAMPLE / "definitions.py"), "monitor",
            "--predictions", str(tmp_path / "log"), "--labels", str(tmp_path / "labels.parquet"),
            "--registry", str(tmp_path / "reg"), "--out", str(out), "--label-horizon", "3d",
            "--window", "6h", "--min-rows", "50"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "monitor.json").read_text())
    assert result["rows"] == table.num_rows
    assert set(result["windows"][0]["psi"]) == set(fs.feature_names)
    assert set(result["windows"][0]["unseen"]) == {"position", "device"}
    assert result["quality_total"]["rows"] > 0
    assert result["quality_total"]["positives"] == pytest.approx(
        result["quality_total"]["rows"] * result["quality_total"]["positive_rate"]
    )
