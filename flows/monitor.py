"""``skewless monitor``: drift and quality over the prediction log and the labels.

Reads the log's Parquet shards (``predictions-*.parquet``, :mod:`serving.predlog`:
every event field under its name, ``score``, ``model_version``, the features as
``f_<name>``), keeps the rows scored by the monitored model version, cuts them into
windows of event time and compares each with the version's training profile
(:mod:`flows.drift`). With labels, predictions older than the label horizon are scored
for quality per (longer) quality window. The result is one JSON document: the
configuration, every window with every statistic, every alert.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.definitions import FeatureSet
from flows.drift import Thresholds, Windows, binned_drift, finite, quality, unseen_share
from flows.labels import due, join, outcome
from flows.profiles import categorical_fields

SCORE, VERSION = "score", "model_version"
_SHARD = re.compile(r"^predictions-\d+\.parquet$")
_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_MS = pa.timestamp("ms", tz="UTC")


def duration_ms(text: str) -> int:
    """``90s``, ``15m``, ``1h``, ``30d`` -> milliseconds.

    >>> duration_ms("1h"), duration_ms("30d")
    (3600000, 2592000000)
    """
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"duration: {text!r} is not like 90s, 15m, 1h or 30d")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class MonitorConfig:
    window_ms: int = 3_600_000
    #: quality is judged over rolling windows of this length, one every step: a day's
    #: PR-AUC swings with that day's mix of fraud patterns (0.33 to 0.90 on a no-drift
    #: simulation), a week's does not
    quality_window_ms: int = 7 * 86_400_000
    quality_step_ms: int = 86_400_000
    horizon_ms: int = 30 * 86_400_000
    #: labels known at, and the "now" of the horizon (None: the newest event in the log)
    as_of_ms: int | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    #: monitor every logged row, not only those of the profiled version
    all_versions: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window_ms, "quality_window": self.quality_window_ms,
            "quality_step": self.quality_step_ms,
            "label_horizon": self.horizon_ms, "as_of": self.as_of_ms,
            "all_versions": self.all_versions, "thresholds": self.thresholds.to_dict(),
        }  # fmt: skip


def shards(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"predictions: {directory} is not a directory")
    found = sorted(p for p in directory.iterdir() if _SHARD.match(p.name))
    if not found:
        raise FileNotFoundError(f"predictions: no predictions-*.parquet in {directory}")
    return found


def read_log(directory: Path, columns: list[str]) -> pa.Table:
    """The needed columns of every shard (a shard lacking one is refused, naming it)."""
    tables = []
    for path in shards(directory):
        names = pq.read_schema(path).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"predictions: {path} lacks column(s) {', '.join(missing)}")
        tables.append(pq.read_table(path, columns=columns))
    return pa.concat_tables(tables, promote_options="permissive")


def log_columns(fs: FeatureSet, profile: dict[str, Any], with_labels: bool) -> list[str]:
    cats = [c for c in categorical_fields(fs) if c in profile["categorical"]]
    ident = [fs.schema.event_id] if with_labels else []
    feats = [f"f_{n}" for n in profile["features"]]
    return [fs.schema.event_time, *ident, SCORE, VERSION, *feats, *cats]


def _ms(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.cast(pc.cast(col, _MS), pa.int64()).to_numpy(zero_copy_only=False))


def _score_quantiles(score: np.ndarray, w: Windows) -> dict[str, np.ndarray]:
    by_score = np.argsort(score, kind="stable")  # then by window (a radix sort): no lexsort
    order = by_score[np.argsort(w.index[by_score], kind="stable")]
    s = score[order]
    first = np.concatenate([[0], np.cumsum(w.rows)[:-1]])
    out = {f"p{q}": s[first + ((w.rows - 1) * q) // 100] for q in (10, 50, 90, 99)}
    out["mean"] = np.bincount(w.index, score, len(w)) / w.rows
    return out


def monitor(
    log_table: pa.Table,
    profile: dict[str, Any],
    fs: FeatureSet,
    version: str,
    cfg: MonitorConfig = MonitorConfig(),
    labels: pa.Table | None = None,
) -> dict[str, Any]:
    """Every window and alert of ``log_table`` against ``profile`` (see the module doc)."""
    th = cfg.thresholds
    versions = log_table.column(VERSION).combine_chunks()
    counts = pc.value_counts(versions).to_pylist()
    seen = {d["values"]: d["counts"] for d in counts}
    if not cfg.all_versions:
        log_table = log_table.filter(pc.equal(versions, version))
    if log_table.num_rows == 0:
        raise ValueError(
            f"predictions: no row was scored by {version} (versions in the log: "
            f"{', '.join(f'{v} ({n})' for v, n in seen.items())}); pick --model or --all-versions"
        )
    t = _ms(log_table.column(fs.schema.event_time))
    w = Windows.of(t, cfg.window_ms)
    score = log_table.column(SCORE).to_numpy(zero_copy_only=False).astype(np.float64)
    stats: dict[str, dict[str, np.ndarray]] = {
        n: binned_drift(log_table.column(f"f_{n}").to_numpy(zero_copy_only=False), p, w)
        for n, p in profile["features"].items()
    }
    score_stats = binned_drift(score, profile["score"], w)
    unseen = {
        c: unseen_share(log_table.column(c), profile["categorical"][c], w)
        for c in profile["categorical"]
        if c in log_table.column_names
    }
    quant = _score_quantiles(score, w)
    windows, alerts = [], []
    streak: dict[tuple[str, str], int] = {}  # consecutive judged windows at the alert level
    for i, start in enumerate(w.starts.tolist()):
        end = start + cfg.window_ms
        judged = bool(w.rows[i] >= th.min_rows)
        row: dict[str, Any] = {
            "start": iso(start), "end": iso(end), "rows": int(w.rows[i]), "judged": judged,
            "psi": {n: finite(s["psi"][i]) for n, s in stats.items()},
            "ks": {n: finite(s["ks"][i]) for n, s in stats.items()},
            "missing": {n: finite(s["missing"][i]) for n, s in stats.items()},
            "score": {"psi": finite(score_stats["psi"][i]), "ks": finite(score_stats["ks"][i]),
                      **{k: finite(v[i]) for k, v in quant.items()}},
            "unseen": {c: finite(u[i]) for c, u in unseen.items()},
        }  # fmt: skip
        windows.append(row)
        if not judged:
            continue
        checks = [("psi", n, s["psi"][i]) for n, s in stats.items()]
        checks.append(("psi", SCORE, score_stats["psi"][i]))
        checks += [("unseen", c, u[i]) for c, u in unseen.items()]
        for kind, subject, value in checks:
            level = th.level(float(value), kind)
            key = (kind, subject)
            streak[key] = streak.get(key, 0) + 1 if level == "alert" else 0
            if level == "alert" and streak[key] < th.persist:
                level = "warn"
            if level:
                limit = getattr(th, f"{kind}_{level}")
                alerts.append(_alert(start, end, kind, subject, float(value), level, limit))
    as_of = cfg.as_of_ms if cfg.as_of_ms is not None else int(t.max())
    result: dict[str, Any] = {
        "version": version,
        "versions_in_log": seen,
        "rows": log_table.num_rows,
        "as_of": iso(as_of),
        "config": cfg.to_dict(),
        "windows": windows,
        "quality": [],
    }
    if labels is not None:
        q, q_alerts = _quality(log_table, t, score, profile, cfg, labels, as_of)
        result["quality"], result["quality_total"] = q
        alerts += q_alerts
    result["alerts"] = sorted(alerts, key=lambda a: (a["start"], a["kind"], a["subject"]))
    result["summary"] = {
        "windows": len(windows),
        "judged": sum(r["judged"] for r in windows),
        "warnings": sum(a["level"] == "warn" for a in alerts),
        "alerts": sum(a["level"] == "alert" for a in alerts),
    }
    return result


def _alert(start: int, end: int, kind: str, subject: str, value: float, level: str,
           limit: float) -> dict[str, Any]:  # fmt: skip
    return {
        "start": iso(start), "end": iso(end), "kind": kind, "subject": subject,
        "value": value, "level": level, "threshold": limit,
    }  # fmt: skip


def _quality(
    log_table: pa.Table,
    t: np.ndarray,
    score: np.ndarray,
    profile: dict[str, Any],
    cfg: MonitorConfig,
    labels: pa.Table,
    as_of: int,
) -> tuple[tuple[list[dict[str, Any]], dict[str, Any]], list[dict[str, Any]]]:
    th = cfg.thresholds
    ident = labels.column_names[0]
    joined = join(log_table.select([ident]), labels, as_of)
    mask = due(t, as_of, cfg.horizon_ms)
    y = outcome(joined)[mask]
    p, tm = score[mask], t[mask]
    threshold = float(profile["threshold"])
    test_pr_auc = float(profile["metrics"]["pr_auc"])
    floor = test_pr_auc - th.pr_auc_margin
    rows, alerts = [], []
    order = np.argsort(-p, kind="stable")  # once: every window takes its rows in this order
    y, p, tm = y[order], p[order], tm[order]
    step, length = cfg.quality_step_ms, cfg.quality_window_ms
    # rolling windows [end - length, end), one per step that holds due rows
    for end in (np.unique(tm // step) + 1) * step if len(tm) else []:
        start = int(end) - length
        sel = (tm >= start) & (tm < end)
        q = {k: finite(v) if isinstance(v, float) else v
             for k, v in quality(y[sel], p[sel], threshold, ordered=True).items()}  # fmt: skip
        rows.append({"start": iso(start), "end": iso(int(end)), **q})
        pr = q["pr_auc"]
        if pr is not None and int(q["positives"] or 0) >= th.min_positives and pr < floor:
            alerts.append(_alert(start, int(end), "pr_auc", "model", pr, "alert", floor))
    total = {
        k: finite(v) if isinstance(v, float) else v
        for k, v in quality(y, p, threshold, ordered=True).items()
    }
    total |= {
        "test_pr_auc": test_pr_auc,
        "alert_below": floor,
        "due_before": iso(as_of - cfg.horizon_ms),
    }
    return (rows, total), alerts
