"""``skewless retrain``: a challenger trained on what labels say now, promoted only by the gate.

One run, at an injectable ``now``:

1. the events up to ``now`` are the feature history; the rows are the valid events older
   than ``now - horizon`` (their labels are due), labelled by the labels known at ``now``
   (latest ``label_time`` wins; a due event without a label is legit, :mod:`flows.labels`);
   the events' own label column is never read;
2. the backfill computes their point-in-time features; the newest ``eval_window`` of rows
   is the out-of-time window, everything before it trains the challenger
   (:func:`flows.train.train_model`, registered without moving the alias);
3. champion (the alias) and challenger score the same window with their own predictors
   and thresholds; :mod:`flows.gate` decides; the alias moves only when it passes;
4. the decision record (both models' metrics, the window, every trigger and gate reason)
   is written as ``retrain-decision.json`` in the challenger's version directory and as
   ``decisions/<now>.json`` in the registry (the trigger log).

Triggers (:func:`triggers`): ``every`` since the last decision, an alert in a monitor
document, or ``min_new_labels`` labels arrived since the last decision (or since the
champion's newest training row). No trigger configured: run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.definitions import FeatureSet
from flows.artifacts import ModelArtifacts, read_artifacts
from flows.backfill import BackfillReport, compute_features, load_events
from flows.gate import Gate, judge
from flows.labels import LABEL_TIME, join, outcome, read_labels
from flows.metrics import summary
from flows.predict import feature_matrix
from flows.registry import RegistryError, aliases, resolve, set_alias
from flows.train import TrainConfig, train_model

DAY_MS = 86_400_000
DECISION = "retrain-decision.json"


@dataclass(frozen=True)
class RetrainConfig:
    horizon_ms: int = 30 * DAY_MS
    eval_window_ms: int = 3 * DAY_MS
    gate: Gate = field(default_factory=Gate)
    train: TrainConfig = field(default_factory=TrainConfig)
    alias: str = "production"


@dataclass(frozen=True)
class Triggers:
    every_ms: int | None = None
    monitor_json: Path | None = None
    min_new_labels: int | None = None


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def parse_time(text: str) -> int:
    """``--now``: epoch ms or RFC 3339 with an offset -> epoch ms.

    >>> parse_time("2026-01-02T00:00:00Z"), parse_time("1767312000000")
    (1767312000000, 1767312000000)
    """
    if text.strip().lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--now: {text!r} is not epoch ms or RFC 3339") from None
    if dt.tzinfo is None:
        raise ValueError(f"--now: {text!r} has no time zone offset (add Z for UTC)")
    return int(dt.timestamp() * 1000)


def _ms(col: Any) -> np.ndarray:
    if pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.timestamp("ms", tz="UTC"))
    return np.asarray(pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False))


def last_decision(registry: Path) -> dict[str, Any] | None:
    d = registry / "decisions"
    files = sorted(d.glob("*.json")) if d.is_dir() else []
    return json.loads(files[-1].read_text()) if files else None


def triggers(
    fs: FeatureSet, registry: Path, labels_path: Path, now_ms: int, cfg: Triggers, alias: str
) -> tuple[bool, list[str]]:
    """(fire, reasons): whether any configured trigger fires at ``now_ms``, and why (not)."""
    if cfg.every_ms is None and cfg.monitor_json is None and cfg.min_new_labels is None:
        return True, ["manual: no trigger configured"]
    last = last_decision(registry)
    last_ms = parse_time(last["now"]) if last else None
    reasons, fire = [], False
    if cfg.every_ms is not None:
        due = last_ms is None or now_ms - last_ms >= cfg.every_ms
        since = "no previous decision" if last_ms is None else f"last decision {iso(last_ms)}"
        reasons.append(f"every: {'due' if due else 'not due'} ({since})")
        fire |= due
    if cfg.monitor_json is not None:
        try:
            doc = json.loads(Path(cfg.monitor_json).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--on-alert: cannot read {cfg.monitor_json} ({exc})") from None
        hits = [a for a in doc.get("alerts", []) if a.get("level") == "alert"]
        what = ", ".join(sorted({f"{a['kind']} {a['subject']}" for a in hits})[:5])
        reasons.append(
            f"on-alert: {len(hits)} alert(s) in {cfg.monitor_json}{': ' + what if hits else ''}"
        )
        fire |= bool(hits)
    if cfg.min_new_labels is not None:
        since_ms = last_ms
        if since_ms is None:
            try:
                meta = read_artifacts(resolve(registry, alias), fs.fingerprint()).metadata
                since_ms = parse_time(meta["splits"]["test"]["end"])
            except (RegistryError, KeyError):
                since_ms = None
        labels, _ = read_labels(fs, labels_path)
        t = _ms(labels.column(LABEL_TIME))
        new = int(((t <= now_ms) & (t > (since_ms if since_ms is not None else -(2**62)))).sum())
        ok = new >= cfg.min_new_labels
        reasons.append(
            f"min-new-labels: {new} label(s) since "
            f"{iso(since_ms) if since_ms is not None else 'ever'} {'>=' if ok else '<'} "
            f"{cfg.min_new_labels}"
        )
        fire |= ok
    return fire, reasons


def _metrics(model: ModelArtifacts, table: pa.Table, y: np.ndarray) -> dict[str, Any]:
    p = model.predict(feature_matrix(model, table))
    s = summary(y, p, model.threshold)
    s.pop("reliability_diagram", None)
    return {"version": model.version, "threshold": model.threshold, **s}


def retrain(
    fs: FeatureSet,
    events_path: Path,
    labels_path: Path,
    registry: Path,
    now_ms: int,
    work_dir: Path,
    cfg: RetrainConfig = RetrainConfig(),
    reasons: list[str] | None = None,
) -> dict[str, Any]:
    """One retraining run (see the module docstring); returns the decision record."""
    if fs.label is None:
        raise ValueError(f"label: the definitions (project {fs.project}) name no label column")
    if not Path(events_path).is_file():
        raise FileNotFoundError(f"events: {events_path} does not exist")
    events = pq.read_table(events_path)
    history = events.filter(pa.array(_ms(events.column(fs.schema.event_time)) <= now_ms))
    first, accepted, _, _ = load_events(fs, history, BackfillReport())
    cutoff = now_ms - cfg.horizon_ms
    rows = first.filter(pa.array(_ms(first.column(fs.schema.event_time)) <= cutoff))
    labels, rejected = read_labels(fs, labels_path)
    y_all = outcome(join(rows, labels, now_ms))
    spine = rows.select([n for n in fs.schema.names if n != fs.label])
    spine = spine.append_column(fs.label, pa.array(y_all.astype(bool)))
    feats = compute_features(fs, spine, accepted)
    t = _ms(feats.column(fs.schema.event_time))
    start = cutoff - cfg.eval_window_ms
    train_rows, window = feats.filter(pa.array(t < start)), feats.filter(pa.array(t >= start))
    y = y_all[t >= start]
    if not window.num_rows:
        raise ValueError(
            f"eval window: no labelled events in {iso(start)} .. {iso(cutoff)} "
            "(now - horizon); give a later --now or a shorter --horizon"
        )
    champion_version = aliases(registry).get(cfg.alias)
    champion = (  # first: a champion serving would refuse stops the run before training
        read_artifacts(resolve(registry, champion_version), fs.fingerprint())
        if champion_version
        else None
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    train_path = work_dir / f"train-features-{now_ms}.parquet"
    pq.write_table(train_rows, train_path)
    result = train_model(
        train_path, registry, fs, cfg.train, promote=False, alias=cfg.alias, out=lambda _: None
    )
    challenger = read_artifacts(result.version_dir, fs.fingerprint())
    m_chall = _metrics(challenger, window, y)
    m_champ = _metrics(champion, window, y) if champion is not None else None
    verdict = judge(cfg.gate, m_champ, m_chall)
    if verdict.promote:
        set_alias(registry, cfg.alias, challenger.version)
    record = {
        "now": iso(now_ms),
        "alias": cfg.alias,
        "triggers": reasons or [],
        "data": {
            "events": str(events_path),
            "labels": str(labels_path),
            "labels_rejected": rejected.num_rows,
            "horizon_cutoff": iso(cutoff),
            "train_rows": train_rows.num_rows,
            "train_positives": int(y_all[t < start].sum()),
        },
        "window": {
            "start": iso(start),
            "end": iso(cutoff),
            "rows": window.num_rows,
            "positives": int(y.sum()),
        },
        "champion": m_champ,
        "challenger": m_chall,
        "gate": {**asdict(cfg.gate), **verdict.to_dict()},
        "promoted": verdict.promote,
        "decision": (
            f"promoted {challenger.version} to {cfg.alias}"
            + (f" (was {champion_version})" if champion_version else "")
            if verdict.promote
            else f"kept {champion_version}: " + "; ".join(verdict.failed)
        ),
    }
    text = json.dumps(record, indent=2, sort_keys=True, default=float)
    (result.version_dir / DECISION).write_text(text)
    (registry / "decisions").mkdir(exist_ok=True)
    stamp = iso(now_ms).replace(":", "").replace("+0000", "Z")
    (registry / "decisions" / f"{stamp}-{challenger.version}.json").write_text(text)
    return record


Handler = Callable[[argparse.Namespace, Any], int]


def add_cli(
    sub: argparse._SubParsersAction, command: Callable[[str], Callable[[Handler], Handler]]
) -> None:
    """Add ``skewless retrain``.

    >>> p = argparse.ArgumentParser(prog="skewless"); sub = p.add_subparsers(dest="command")
    >>> add_cli(sub, lambda name: lambda fn: fn)
    >>> a = p.parse_args(["retrain", "--events", "e", "--labels", "l", "--min-new-labels", "5"])
    >>> (a.min_new_labels, a.horizon, a.min_gain)
    (5, '30d', 0.0)
    """
    g, t = Gate(), TrainConfig()
    r = sub.add_parser("retrain", help="challenger vs champion, gated promotion, decision record")
    r.add_argument("--events", type=Path, required=True, help="events Parquet (the history)")
    r.add_argument("--labels", type=Path, required=True, help="labels Parquet")
    r.add_argument("--registry", type=Path, help="default: SKEWLESS_REGISTRY_DIR")
    r.add_argument("--alias", help="the champion's alias (default: SKEWLESS_MODEL_ALIAS)")
    r.add_argument("--now", help="RFC 3339 or epoch ms (default: the clock)")
    r.add_argument("--horizon", default="30d", help="label horizon: rows older than now - this")
    r.add_argument("--eval-window", default="3d", help="the newest labelled span, held out")
    r.add_argument("--every", help="loop: retrain every DURATION since the last decision")
    r.add_argument("--max-runs", type=int, help="with --every: stop after this many checks")
    r.add_argument("--on-alert", type=Path, metavar="MONITOR_JSON", help="run on an alert in it")
    r.add_argument("--min-new-labels", type=int, help="run when this many labels arrived")
    r.add_argument("--min-gain", type=float, default=g.min_gain, help="PR-AUC gain required")
    r.add_argument("--ece-margin", type=float, default=g.ece_margin, help="ECE may worsen by")
    r.add_argument("--min-positives", type=int, default=g.min_positives)
    r.add_argument("--max-rounds", type=int, default=t.max_rounds)
    r.add_argument("--seed", type=int, default=t.seed)
    r.add_argument("--work-dir", type=Path, help="training files (default: <data-dir>/retrain)")
    command("retrain")(_retrain_command)


def _retrain_command(args: argparse.Namespace, settings: Any) -> int:
    from features.loader import load_definitions
    from flows.monitor import duration_ms

    fs = load_definitions(settings.definitions)
    registry = args.registry or settings.registry_dir
    alias = args.alias or settings.model_alias
    cfg = RetrainConfig(
        horizon_ms=duration_ms(args.horizon), eval_window_ms=duration_ms(args.eval_window),
        gate=Gate(args.min_gain, args.ece_margin, args.min_positives),
        train=TrainConfig(seed=args.seed, max_rounds=args.max_rounds), alias=alias,
    )  # fmt: skip
    trig = Triggers(
        duration_ms(args.every) if args.every else None, args.on_alert, args.min_new_labels
    )
    work = args.work_dir or settings.data_dir / "retrain"
    runs = 0
    while True:
        now = parse_time(args.now) if args.now else int(time.time() * 1000)
        fire, reasons = triggers(fs, registry, args.labels, now, trig, alias)
        if fire:
            record = retrain(fs, args.events, args.labels, registry, now, work, cfg, reasons)
            print(json.dumps(record, indent=2, sort_keys=True, default=float))
        else:
            print(json.dumps({"now": iso(now), "ran": False, "triggers": reasons}, indent=2))
        runs += 1
        if trig.every_ms is None or args.now or (args.max_runs and runs >= args.max_runs):
            return 0
        time.sleep(trig.every_ms / 1000)
