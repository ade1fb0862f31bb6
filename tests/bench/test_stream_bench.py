"""The stream bench's naive baseline (one ``FeatureStore.push`` per event) runs against the
real Feast SDK on a real Redis: a renamed push source broke it once without a failing test."""

from __future__ import annotations

from pathlib import Path

from bench.stream import naive_push
from flows.simulate import SimulationConfig, simulate


def test_naive_push_baseline_runs(redis_url: str, tmp_path: Path) -> None:
    table = simulate(SimulationConfig(events=40, cards=5, merchants=3, days=1.0))
    out = naive_push(redis_url, table, tmp_path, limit=20)
    assert out["events"] == 20 and out["events_per_s"] > 0, out
