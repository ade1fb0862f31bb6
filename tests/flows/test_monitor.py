"""``skewless monitor`` over a prediction log written by the server's own writer: a
no-drift log, the same traffic with the simulator's amount shift and new country from
day D, labels with their horizon, and the command line's outputs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.reference import REFERENCE
from flows.artifacts import read_artifacts
from flows.labels import write_labels
from flows.monitor import MonitorConfig, log_columns, monitor, read_log
from flows.profiles import read_profile
from flows.sim_drift import DriftScenario, apply_drift
from flows.sim_labels import simulate_labels
from flows.simulate import SimulationConfig, simulate
from skewless.cli import main
from tests.flows.monitor_support import DAY_MS, features_of, split_at, train_on, write_log

CFG = SimulationConfig(events=80_000, cards=2_000, merchants=200, days=12.0)
START = 1767225600000  # CFG.start, 2026-01-01
TRAIN_DAYS, D = 7, 9.0
SCENARIO = DriftScenario(day=D, amount_factor=2.0, new_country="KE", new_country_share=0.1)
AMOUNT_FREE = ("card_txn_count_10m", "card_txn_count_1h", "card_txn_count_24h",
               "merchant_txn_count_1h", "merchant_txn_count_24h", "card_seconds_since_last",
               "hour_of_day_utc")  # fmt: skip
AMOUNT = ("amount", "card_amount_max_24h")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("monitor")
    base = simulate(CFG)
    drifted = apply_drift(base, CFG, SCENARIO)
    cut = START + TRAIN_DAYS * DAY_MS
    train, serve = split_at(features_of(REFERENCE, base), "event_time", cut)
    version_dir = train_on(REFERENCE, train, tmp)
    art = read_artifacts(version_dir, REFERENCE.fingerprint())
    write_log(REFERENCE, serve, art, tmp / "log")
    _, serve_drift = split_at(features_of(REFERENCE, drifted), "event_time", cut)
    write_log(REFERENCE, serve_drift, art, tmp / "log_drift")
    labels = simulate_labels(base, REFERENCE, seed=7)
    write_labels(labels, tmp / "labels.parquet")
    profile = read_profile(version_dir)
    cols = log_columns(REFERENCE, profile, True)
    runs = {
        name: monitor(read_log(tmp / name, cols), profile, REFERENCE, art.version)
        for name in ("log", "log_drift")
    }
    return {"tmp": tmp, "art": art, "profile": profile, "labels": labels, "runs": runs}


def _after_d(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    d = datetime.fromtimestamp((START + D * DAY_MS) / 1000, UTC).isoformat(timespec="seconds")
    return [w for w in windows if w["start"] >= d]


def test_amount_shift_alerts_on_amount_features_only(world: dict[str, Any]) -> None:
    clean, drift = world["runs"]["log"], world["runs"]["log_drift"]
    assert len(clean["windows"]) == len(drift["windows"]) == 5 * 24
    judged = [w for w in _after_d(drift["windows"]) if w["judged"]]
    assert judged
    assert all(w["psi"]["amount"] >= 0.25 for w in judged)
    next_day = [w for w in judged if w["start"] >= "2026-01-11"]  # 24 h windows full of it
    for name in AMOUNT:
        assert all(w["psi"][name] >= 0.25 for w in next_day), name
    alerts = [a for a in drift["alerts"] if a["level"] == "alert" and a["kind"] == "psi"]
    first = min(a["start"] for a in alerts if a["subject"] == "amount")
    assert first <= judged[1]["start"]  # within 2 judged windows of day D
    # features that do not read the amount see exactly the same traffic
    for c, d in zip(clean["windows"], drift["windows"], strict=True):
        for name in AMOUNT_FREE:
            assert c["psi"][name] == d["psi"][name], name
    clean_alerts = {(a["start"], a["subject"]) for a in clean["alerts"]}
    for a in drift["alerts"]:
        if a["subject"] in AMOUNT_FREE:
            assert (a["start"], a["subject"]) in clean_alerts


def test_new_country_raises_the_unseen_share(world: dict[str, Any]) -> None:
    clean, drift = world["runs"]["log"], world["runs"]["log_drift"]
    assert all(w["unseen"]["country"] == 0.0 for w in clean["windows"])
    before = [w for w in drift["windows"] if w not in _after_d(drift["windows"])]
    assert all(w["unseen"]["country"] == 0.0 for w in before)
    after = [w["unseen"]["country"] for w in _after_d(drift["windows"]) if w["judged"]]
    assert 0.03 < float(np.mean(after)) < 0.2
    assert all(w["unseen"]["currency"] == 0.0 for w in drift["windows"])
    assert any(a["subject"] == "country" and a["level"] == "alert" for a in drift["alerts"])


def test_quality_counts_only_predictions_past_the_label_horizon(world: dict[str, Any]) -> None:
    tmp, profile, art = world["tmp"], world["profile"], world["art"]
    log_table = read_log(tmp / "log", log_columns(REFERENCE, profile, True))
    as_of = START + 11 * DAY_MS
    cfg = MonitorConfig(horizon_ms=2 * DAY_MS, as_of_ms=as_of)
    got = monitor(log_table, profile, REFERENCE, art.version, cfg, world["labels"])
    total = got["quality_total"]
    t = pa.compute.cast(log_table.column("event_time"), pa.int64()).to_numpy()
    assert total["rows"] == int(np.sum(t <= as_of - 2 * DAY_MS))
    assert total["due_before"] == "2026-01-10T00:00:00+00:00"
    # labels arriving after as_of change nothing; the fraud among due rows is what
    # the labels said by then (chargebacks take days: most of it is not known yet)
    late = world["labels"].filter(
        pa.compute.greater(pa.compute.cast(world["labels"].column("label_time"), pa.int64()), as_of)
    )
    known = world["labels"].filter(
        pa.compute.less_equal(
            pa.compute.cast(world["labels"].column("label_time"), pa.int64()), as_of
        )
    )
    assert late.num_rows > 0
    again = monitor(log_table, profile, REFERENCE, art.version, cfg, known)
    assert again["quality_total"] == total
    due_t = np.sort(t[t <= as_of - 2 * DAY_MS])
    for q in got["quality"]:  # rolling 7 d windows, one per day, over due rows only
        lo, hi = (datetime.fromisoformat(q[k]).timestamp() * 1000 for k in ("start", "end"))
        assert hi - lo == 7 * DAY_MS
        assert q["rows"] == int(np.sum((due_t >= lo) & (due_t < hi)))
    assert got["quality"][-1]["end"] == "2026-01-10T00:00:00+00:00"
    assert 0.0 <= total["pr_auc"] <= 1.0 and total["test_pr_auc"] == profile["metrics"]["pr_auc"]


def test_cli_writes_json_html_and_plots(world: dict[str, Any], tmp_path: Path) -> None:
    tmp = world["tmp"]
    bad = tmp_path / "labels.parquet"
    labels = world["labels"]
    pq.write_table(
        pa.concat_tables(
            [
                labels,
                pa.table(
                    {
                        "transaction_id": [""],
                        "label": [True],
                        "label_time": labels.column("label_time")[:1],
                    }
                ),
            ]
        ),
        bad,
    )
    out = tmp_path / "report"
    argv = ["monitor", "--predictions", str(tmp / "log_drift"), "--labels", str(bad),
            "--out", str(out), "--registry", str(tmp / "registry"), "--label-horizon", "1d"]  # fmt: skip
    assert main(argv) == 0
    assert main([*argv, "--fail-on-alert"]) == 1
    result = json.loads((out / "monitor.json").read_text())
    assert result["summary"]["alerts"] == sum(a["level"] == "alert" for a in result["alerts"])
    assert result["quality"] and result["config"]["label_horizon"] == DAY_MS
    assert pq.read_table(out / "labels.rejects.parquet").column("reason").to_pylist() == [
        "transaction_id: missing or length outside 1..64"
    ]
    page = (out / "report.html").read_text()
    for png in ("psi.png", "score.png", "unseen.png", "quality.png"):
        assert f'src="{png}"' in page
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_line(world: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    tmp = world["tmp"]
    shard = sorted((tmp / "log").glob("predictions-*.parquet"))[0]
    broken = tmp_path / "log"
    broken.mkdir()
    pq.write_table(pq.read_table(shard).drop_columns(["f_amount"]), broken / shard.name)
    argv = ["monitor", "--predictions", str(broken), "--out", str(tmp_path / "o"),
            "--registry", str(tmp / "registry")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lacks column(s) f_amount" in err
    assert main([*argv[:2], str(tmp_path / "nothing"), *argv[3:]]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_only_the_monitored_versions_rows_count(world: dict[str, Any], tmp_path: Path) -> None:
    import dataclasses

    from tests.flows.monitor_support import features_of

    art, profile = world["art"], world["profile"]
    rows = features_of(REFERENCE, simulate(CFG)).slice(70_000, 2_000)
    write_log(REFERENCE, rows.slice(0, 1_500), art, tmp_path / "log")
    other = dataclasses.replace(art, version="v0009")
    write_log(REFERENCE, rows.slice(1_500), other, tmp_path / "log")
    log_table = read_log(tmp_path / "log", log_columns(REFERENCE, profile, False))
    mine = monitor(log_table, profile, REFERENCE, art.version)
    assert mine["rows"] == 1_500 and mine["versions_in_log"] == {art.version: 1_500, "v0009": 500}
    every = monitor(log_table, profile, REFERENCE, art.version, MonitorConfig(all_versions=True))
    assert every["rows"] == 2_000
    with pytest.raises(
        ValueError, match=r"no row was scored by v0042 \(versions in the log: v0001"
    ):
        monitor(log_table, profile, REFERENCE, "v0042")
