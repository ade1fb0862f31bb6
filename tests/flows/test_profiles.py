"""The training profile stored with each model version: recomputed from the features
file, covered by the metadata's sha256, byte-identical for the same data and seed."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.loader import load_definitions
from features.reference import REFERENCE
from flows.profiles import PROFILE_FILE, bin_index, categorical_fields, read_profile
from flows.registry import read_metadata, sha256_file
from flows.train import TrainConfig, train_model
from tests.flows.test_train import write_features

CFG = TrainConfig(max_rounds=60, early_stopping_rounds=20, learning_rate=0.2)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_features(tmp_path_factory.mktemp("features") / "features.parquet", 12_000)


@pytest.fixture(scope="module")
def trained(features: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    reg = tmp_path_factory.mktemp("reg")
    return train_model(features, reg, REFERENCE, CFG, out=lambda s: None)


def test_categorical_fields_come_from_the_definitions() -> None:
    assert categorical_fields(REFERENCE) == ["currency", "country", "mcc"]
    clicks = load_definitions(str(REPO / "examples" / "clickstream" / "definitions.py"))
    assert categorical_fields(clicks) == ["position", "device"]


def test_profile_is_stored_hashed_and_reproducible(
    trained: Any, features: Path, tmp_path: Path
) -> None:
    d = trained.version_dir
    meta = read_metadata(d)
    assert meta["artifacts"]["sha256"][PROFILE_FILE] == sha256_file(d / PROFILE_FILE)
    again = train_model(features, tmp_path, REFERENCE, CFG, promote=False, out=lambda s: None)
    assert (again.version_dir / PROFILE_FILE).read_bytes() == (d / PROFILE_FILE).read_bytes()


def test_profile_matches_the_holdout_rows(trained: Any, features: Path) -> None:
    profile = read_profile(trained.version_dir)
    meta = trained.metadata
    holdout_start = datetime.fromisoformat(meta["splits"]["valid"]["start"])
    table = pq.read_table(features)
    ts = pc.cast(table.column("event_time"), pa.timestamp("ms", tz="UTC"))
    rows = table.filter(pc.greater_equal(ts, pa.scalar(holdout_start, ts.type)))
    assert profile["rows"] == rows.num_rows
    assert profile["rows"] == meta["splits"]["valid"]["rows"] + meta["splits"]["test"]["rows"]
    assert profile["metrics"] == meta["metrics"]["test"]
    assert profile["threshold"] == meta["threshold"]
    assert set(profile["features"]) == set(meta["feature_names"])
    for name, p in profile["features"].items():
        x = pc.cast(rows.column(name), pa.float64()).to_numpy(zero_copy_only=False)
        assert p["missing"] == pytest.approx(np.isnan(x).mean(), abs=1e-12)
        edges = np.array(p["edges"])
        present = x[~np.isnan(x)]
        if present.size:
            assert edges[0] >= present.min() and edges[-1] <= present.max()
            counts = np.bincount(bin_index(edges, present), minlength=len(edges) + 1)
            np.testing.assert_allclose(p["fractions"], counts / present.size, atol=1e-12)
        by_hour = np.array(p["by_hour"])
        assert by_hour.shape == (24, len(edges) + 2) and by_hour.sum() == rows.num_rows
    for field in ("currency", "country", "mcc"):
        got = profile["categorical"][field]
        values = [str(v) for v in rows.column(field).to_pylist()]
        expected = {v: values.count(v) / len(values) for v in set(values)}
        assert got["values"] == pytest.approx(expected) and got["complete"]
    score = profile["score"]
    assert sum(score["histogram"]["counts"]) == rows.num_rows
    assert np.array(score["by_hour"]).sum() == rows.num_rows
    json.dumps(profile, allow_nan=False)  # strict JSON
