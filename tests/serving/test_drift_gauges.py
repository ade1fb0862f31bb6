"""Rolling drift gauges: flows.drift's PSI over the served model's profile, from a bounded
buffer filled by the scorer's sink, exported to Prometheus by a real server."""

from __future__ import annotations

import json
import math
import socket
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from features.reference import REFERENCE
from flows.drift import Windows, binned_drift
from flows.profiles import FORMAT, binned, hour_of_day, write_profile
from flows.registry import resolve
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import event_transaction
from serving.drift_gauges import DriftGauges, tee
from serving.model import LoadedModel, load_model
from serving.scorer import ScoreResult
from serving.server import ServerConfig
from serving.testing import synthetic_training_data
from tests.serving.conftest import NOW, RunningServer, ev

NAMES = tuple(REFERENCE.feature_names)


def add_profile(version_dir: Path, rows: int = 3_000) -> np.ndarray:
    """Write a profile.json of synthetic training-like rows (all at NOW's hour)."""
    X, _ = synthetic_training_data(NAMES, rows=rows, seed=11)
    hours = hour_of_day(np.full(rows, NOW))
    scores = np.random.default_rng(3).random(rows)
    profile = {
        "format": FORMAT,
        "features": {n: binned(X[:, j], hours) for j, n in enumerate(NAMES)},
        "score": binned(scores, hours),
        "categorical": {},
    }
    write_profile(version_dir, profile)
    return X


@pytest.fixture
def model(registry: Path) -> LoadedModel:
    version_dir = resolve(registry, "production")
    add_profile(version_dir)
    return load_model(version_dir, REFERENCE.fingerprint())


def _results(X: np.ndarray, version: str = "v0001") -> list[ScoreResult]:
    return [
        ScoreResult(f"t{i}", 0.5, True, 0.5, version, NAMES, row.tolist(), (), ())
        for i, row in enumerate(X)
    ]


def test_psi_is_flows_drift_psi_and_finds_the_shifted_feature(model: LoadedModel) -> None:
    gauges = DriftGauges(lambda: model, lambda e: NOW, CollectorRegistry(), min_rows=300)
    X, _ = synthetic_training_data(NAMES, rows=2_000, seed=5)  # same law, other rows
    shifted = X.copy()
    shifted[:, 2] = shifted[:, 2] * 3 + 10  # one feature drifts
    res = _results(shifted)
    for k in range(0, len(res), 50):  # calls of 50, as coalesced batches arrive
        gauges([None] * len(res[k : k + 50]), res[k : k + 50])
    gauges([None] * 10, _results(X[:10], version="v0009"))  # a canary's rows: not counted
    out = gauges.update()
    assert gauges.rows._value.get() == 2_000
    w = Windows.of(np.full(2_000, NOW), 1 << 62)
    profile = json.loads((model.path / "profile.json").read_text())
    for j, n in enumerate(NAMES):
        want = float(binned_drift(shifted[:, j], profile["features"][n], w)["psi"][0])
        assert out[n] == pytest.approx(want)
        assert gauges.psi.labels(n)._value.get() == pytest.approx(want)
    assert out[NAMES[2]] > 0.25  # alert level
    assert max(v for n, v in out.items() if n not in (NAMES[2], "score")) < 0.1  # quiet


def test_bounded_window_and_too_few_rows(model: LoadedModel) -> None:
    gauges = DriftGauges(lambda: model, lambda e: NOW, CollectorRegistry(), window_rows=500)
    X, _ = synthetic_training_data(NAMES, rows=200, seed=5)
    gauges([None] * 200, _results(X))
    assert all(math.isnan(v) for v in gauges.update().values())  # 200 < min_rows 300
    for _ in range(5):
        gauges([None] * 200, _results(X))
    gauges.update()
    assert gauges.rows._value.get() == 500  # the window keeps the last 500 rows only


def test_no_profile_leaves_nan(registry: Path) -> None:
    model = load_model(resolve(registry, "production"), REFERENCE.fingerprint())
    gauges = DriftGauges(lambda: model, lambda e: NOW, CollectorRegistry(), min_rows=1)
    X, _ = synthetic_training_data(NAMES, rows=20, seed=5)
    gauges([None] * 20, _results(X))
    assert all(math.isnan(v) for v in gauges.update().values())


def test_tee_calls_each_sink() -> None:
    seen: list[str] = []
    sink = tee(None, lambda e, r, X=None: seen.append("a"), lambda e, r, X=None: seen.append("b"))
    sink((), ())
    assert seen == ["a", "b"] and tee(None) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_exports_the_gauges(
    start_server: Callable[..., RunningServer], base_config: ServerConfig, model: LoadedModel
) -> None:
    port = _free_port()
    s = start_server(
        replace(base_config, metrics_port=port, drift_interval_s=0.1, max_batch_size=400)
    )
    evs = [ev(f"d{i}", 1000 + i, 10, 5.0 + i, NOW + i) for i in range(400)]
    s.stub.ScoreBatch(
        pb.ScoreBatchRequest(transactions=[event_transaction(e) for e in evs]), timeout=10
    )

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    start = time.monotonic()
    while "skewless_drift_window_rows 400.0" not in (text := scrape()):
        assert time.monotonic() - start < 15, text[-2000:]
        time.sleep(0.1)
    lines = [ln for ln in text.splitlines() if ln.startswith("skewless_drift_psi{")]
    assert len(lines) == len(NAMES)
    assert all(math.isfinite(float(ln.rsplit(" ", 1)[1])) for ln in lines)
    assert "skewless_drift_score_psi" in text
