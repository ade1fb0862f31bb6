"""``skewless retrain``: the gate promotes a challenger that is better on the same
out-of-time window and keeps a champion that is better, with the reasons on record.

Worlds from the simulator (20 days, seed 7) with its chargeback labels; "now" is fixed
(day 50, horizon 30 d, so the rows are days 0-20 and the window days 16-20).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.loader import load_definitions
from flows.backfill import run_backfill
from flows.labels import write_labels
from flows.registry import aliases
from flows.retrain import DAY_MS, DECISION, iso
from flows.sim_drift import DriftScenario, apply_drift
from flows.sim_labels import simulate_labels
from flows.simulate import SimulationConfig, simulate, write_events
from flows.train import TrainConfig, train_model
from skewless.cli import main

CFG = SimulationConfig(events=40_000, cards=1500, merchants=150, days=20.0, seed=7)


@dataclass(frozen=True)
class World:
    events: Path
    labels: Path
    registry: Path  # the champion (v0001), trained on days [0, champion_days) with true labels
    start: int


def _world(d: Path, new_fraud: float, champion_days: float) -> World:
    fs = load_definitions(None)
    d.mkdir(parents=True)
    t = simulate(CFG)
    if new_fraud:
        t = apply_drift(t, CFG, DriftScenario(day=10, new_fraud_share=new_fraud))
    write_events(t, d / "events.parquet")
    write_labels(simulate_labels(t, fs, seed=7), d / "labels.parquet")
    ms = pc.cast(pc.cast(t.column("event_time"), pa.timestamp("ms", tz="UTC")), pa.int64())
    start = int(pc.min(ms).as_py())
    early = t.filter(pc.less(ms, start + int(champion_days * DAY_MS)))
    pq.write_table(early, d / "early.parquet")
    run_backfill(fs, d / "early.parquet", d / "bf")
    train_model(
        d / "bf" / "features.parquet", d / "registry", fs, TrainConfig(max_rounds=200),
        out=lambda _: None,
    )  # fmt: skip
    return World(d / "events.parquet", d / "labels.parquet", d / "registry", start)


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A new fraud pattern (2% of traffic) from day 10; the champion saw days 0-10."""
    return _world(tmp_path_factory.mktemp("w") / "drift", 0.02, 10)


@pytest.fixture(scope="module")
def steady(tmp_path_factory: pytest.TempPathFactory) -> World:
    """No drift; the champion saw days 0-16 with every true label (served labels lack the
    fraud never reported), so a challenger on served labels is worse."""
    return _world(tmp_path_factory.mktemp("w") / "steady", 0.0, 16)


def _retrain(w: World, tmp: Path, *extra: str) -> tuple[int, Path]:
    reg = tmp / "registry"
    shutil.copytree(w.registry, reg)
    now = iso(w.start + 50 * DAY_MS)
    argv = ["--data-dir", str(tmp), "retrain", "--events", str(w.events),
            "--labels", str(w.labels), "--registry", str(reg), "--now", now,
            "--eval-window", "4d", "--max-rounds", "200", *extra]  # fmt: skip
    return main(argv), reg


def _record(reg: Path, version: str) -> dict:
    return json.loads((reg / "versions" / version / DECISION).read_text())


def test_better_challenger_is_promoted(drifted: World, tmp_path: Path) -> None:
    code, reg = _retrain(drifted, tmp_path)
    assert code == 0
    assert aliases(reg)["production"] == "v0002"
    rec = _record(reg, "v0002")
    assert rec["promoted"] is True and rec["gate"]["failed"] == []
    assert rec["decision"] == "promoted v0002 to production (was v0001)"
    champ, chall = rec["champion"], rec["challenger"]
    assert (champ["version"], chall["version"]) == ("v0001", "v0002")
    assert champ["rows"] == chall["rows"] == rec["window"]["rows"] > 5000  # the same window
    assert chall["pr_auc"] > champ["pr_auc"] + 0.2  # it learned the new pattern
    assert rec["window"]["end"] == iso(drifted.start + 20 * DAY_MS)
    assert [p.name for p in (reg / "decisions").iterdir()] == [
        f"{rec['now'].replace(':', '').replace('+0000', 'Z')}-v0002.json"
    ]


def test_worse_challenger_is_not_promoted(steady: World, tmp_path: Path) -> None:
    code, reg = _retrain(steady, tmp_path)
    assert code == 0
    assert aliases(reg)["production"] == "v0001"  # kept
    rec = _record(reg, "v0002")
    assert rec["promoted"] is False
    champ, chall = rec["champion"]["pr_auc"], rec["challenger"]["pr_auc"]
    assert chall < champ
    assert rec["gate"]["failed"] == [
        f"pr_auc: challenger {chall:.4f} < champion {champ:.4f} + min_gain 0.0000"
    ]
    assert rec["decision"].startswith("kept v0001: pr_auc: challenger")
    # a tolerance on the gate lets the same challenger through
    code, reg2 = _retrain(steady, tmp_path / "tolerant", "--min-gain", "-0.1")
    assert code == 0 and aliases(reg2)["production"] == "v0002"


def test_triggers(steady: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monitor = tmp_path / "monitor.json"
    monitor.write_text(
        json.dumps({"alerts": [{"level": "warn", "kind": "psi", "subject": "amount"}]})
    )
    code, reg = _retrain(
        steady, tmp_path / "a", "--on-alert", str(monitor), "--min-new-labels", "10000000"
    )
    assert code == 0 and not (reg / "versions" / "v0002").exists()  # nothing fired
    out = json.loads(capsys.readouterr().out)
    assert out["ran"] is False
    assert out["triggers"][0] == f"on-alert: 0 alert(s) in {monitor}"
    assert out["triggers"][1].startswith("min-new-labels: ")
    assert out["triggers"][1].endswith("< 10000000")

    monitor.write_text(
        json.dumps({"alerts": [{"level": "alert", "kind": "pr_auc", "subject": "model"}]})
    )
    code, reg = _retrain(steady, tmp_path / "b", "--on-alert", str(monitor))
    assert code == 0
    rec = _record(reg, "v0002")
    assert rec["triggers"] == [f"on-alert: 1 alert(s) in {monitor}: pr_auc model"]

    capsys.readouterr()
    now = iso(steady.start + 50 * DAY_MS)
    base = ["--data-dir", str(tmp_path), "retrain", "--events", str(steady.events),
            "--labels", str(steady.labels), "--registry", str(reg), "--every", "7d"]  # fmt: skip
    assert main([*base, "--now", now]) == 0  # a decision was made at `now`: not due
    out = json.loads(capsys.readouterr().out)
    assert (out["ran"], out["triggers"]) == (False, [f"every: not due (last decision {now})"])
    later = ["--now", iso(steady.start + 57 * DAY_MS), "--horizon", "37d", "--max-rounds", "50"]
    assert main([*base, *later]) == 0  # 7 days later: due (same rows: the horizon is longer)
    assert (reg / "versions" / "v0003" / DECISION).exists()
