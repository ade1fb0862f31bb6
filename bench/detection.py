"""Detection power of ``skewless monitor`` on the simulator's drift scenarios
(``skewless bench detection``; not in the default suites: it measures alerts, not speed).

The simulator at its default density (5,000 cards, 500 merchants) over 35 days; a model
trained on days 0-21 (identical in every scenario: drift starts on day D = 28); days
21-35 of each scenario scored by it, logged in the server's layout and monitored with the
default settings; labels from the simulator, all known (as of day 70, horizon 5 days).

For each scenario: the alerts per subject (first alert time, count), the drift alerts on
features that do not read the amount, the mean unseen country share after D, the rolling
PR-AUC before and after D and the first PR-AUC alert.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DAY_MS = 86_400_000
SCENARIOS: dict[str, dict[str, Any]] = {
    "no_drift": {},
    "amount_x2": {"amount_factor": 2.0},
    "new_country": {"new_country": "KE", "new_country_share": 0.1},
    "new_fraud_pattern": {"new_fraud_share": 0.01},
}
AMOUNT_FREE = ("card_txn_count_10m", "card_txn_count_1h", "card_txn_count_24h",
               "merchant_txn_count_1h", "merchant_txn_count_24h", "card_seconds_since_last",
               "hour_of_day_utc")  # fmt: skip


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def run(events: int = 300_000, seed: int = 7, day: float = 28.0) -> dict[str, Any]:
    from bench.monitor import _write_log
    from features.reference import REFERENCE as FS
    from features.schema import epoch_ms
    from flows.artifacts import read_artifacts
    from flows.backfill import BackfillReport, compute_features, load_events
    from flows.monitor import MonitorConfig, log_columns, monitor, read_log
    from flows.profiles import read_profile
    from flows.sim_drift import DriftScenario, apply_drift
    from flows.sim_labels import simulate_labels
    from flows.simulate import SimulationConfig, simulate
    from flows.train import train_model

    cfg = SimulationConfig(events=events, cards=5_000, merchants=500, days=35.0, seed=seed)
    start = epoch_ms(cfg.start)
    cut, d_ms = start + 21 * DAY_MS, start + int(day * DAY_MS)

    def features(table: pa.Table) -> pa.Table:
        valid, accepted, _, _ = load_events(FS, table, BackfillReport())
        return compute_features(FS, valid, accepted)

    def split(table: pa.Table) -> tuple[pa.Table, pa.Table]:
        ms = pc.cast(pc.cast(table.column("event_time"), pa.timestamp("ms", tz="UTC")), pa.int64())
        return table.filter(pc.less(ms, cut)), table.filter(pc.greater_equal(ms, cut))

    base = simulate(cfg)
    out: dict[str, Any] = {"events": events, "drift_day": _iso(d_ms), "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="bench-detection-") as tmp_dir:
        tmp = Path(tmp_dir)
        import pyarrow.parquet as pq

        train, _ = split(features(base))
        pq.write_table(train, tmp / "train.parquet")
        trained = train_model(tmp / "train.parquet", tmp / "registry", FS, out=lambda s: None)
        art = read_artifacts(trained.version_dir, FS.fingerprint())
        profile = read_profile(trained.version_dir)
        mcfg = MonitorConfig(horizon_ms=5 * DAY_MS, as_of_ms=start + 70 * DAY_MS)
        for name, kwargs in SCENARIOS.items():
            events_s = apply_drift(base, cfg, DriftScenario(day=day, **kwargs)) if kwargs else base
            _, serve = split(features(events_s))
            X = np.column_stack(
                [pc.cast(serve.column(n), pa.float64()).to_numpy(zero_copy_only=False)
                 for n in art.feature_names]
            )  # fmt: skip
            log_dir = tmp / name
            _write_log(serve, art.predict(X), art.feature_names, art.version, art.threshold,
                       FS, log_dir)  # fmt: skip
            result = monitor(
                read_log(log_dir, log_columns(FS, profile, True)), profile, FS, art.version,
                mcfg, simulate_labels(events_s, FS, seed),
            )  # fmt: skip
            out["scenarios"][name] = _summary(result, _iso(d_ms))
        out["test_pr_auc"] = profile["metrics"]["pr_auc"]
    return out


def _summary(result: dict[str, Any], d: str) -> dict[str, Any]:
    alerts = [a for a in result["alerts"] if a["level"] == "alert"]
    by_subject: dict[str, dict[str, Any]] = {}
    for a in alerts:
        s = by_subject.setdefault(a["subject"], {"first": a["start"], "count": 0})
        s["count"] += 1
    after = [w for w in result["windows"] if w["start"] >= d and w["judged"]]
    pr = [(q["end"], q["pr_auc"]) for q in result["quality"] if q["positives"] >= 30]
    return {
        "windows": result["summary"]["windows"],
        "judged": result["summary"]["judged"],
        "alerts": len(alerts),
        "warnings": result["summary"]["warnings"],
        "alerts_by_subject": by_subject,
        "amount_free_alerts": sum(a["subject"] in AMOUNT_FREE for a in alerts),
        "first_judged_windows_after_d": [
            {
                "start": w["start"],
                "psi_amount": w["psi"]["amount"],
                "unseen_country": w["unseen"]["country"],
            }
            for w in after[:2]
        ],
        "unseen_country_after_d": float(np.mean([w["unseen"]["country"] for w in after]))
        if after
        else None,
        "pr_auc_before_d": [round(v, 3) for e, v in pr if e <= d and v is not None],
        "pr_auc_after_d": [round(v, 3) for e, v in pr if e > d and v is not None],
    }
