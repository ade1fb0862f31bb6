"""``skewless monitor``: flags, and the run that ties the log, labels, profile and report.

>>> import argparse
>>> p = argparse.ArgumentParser(prog="skewless"); sub = p.add_subparsers(dest="command")
>>> add_cli(sub, lambda name: lambda fn: fn)
>>> a = p.parse_args(["monitor", "--out", "m", "--window", "2h"]); (a.window, a.label_horizon)
('2h', '30d')
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace, Any], int]


def add_cli(
    sub: argparse._SubParsersAction, command: Callable[[str], Callable[[Handler], Handler]]
) -> None:
    m = sub.add_parser(
        "monitor", help="drift and quality over the prediction log and labels: JSON + HTML"
    )
    m.add_argument(
        "--predictions", type=Path, help="prediction log dir (default <data-dir>/predictions)"
    )
    src = m.add_mutually_exclusive_group()
    src.add_argument("--labels", type=Path, help="labels Parquet ({event id, label, label_time})")
    src.add_argument(
        "--labels-from-kafka", action="store_true",
        help="read <topic>.labels (SKEWLESS_KAFKA_BOOTSTRAP) into <out>/labels.parquet first",
    )  # fmt: skip
    m.add_argument("--out", type=Path, required=True, help="folder for monitor.json, report.html")
    m.add_argument("--registry", type=Path, help="default: SKEWLESS_REGISTRY_DIR")
    m.add_argument("--model", help="alias or version to monitor (default SKEWLESS_MODEL_ALIAS)")
    m.add_argument("--window", default="1h", help="drift window of event time (1h)")
    m.add_argument("--quality-window", default="7d", help="rolling quality window (7d)")
    m.add_argument("--quality-step", default="1d", help="one quality window per (1d)")
    m.add_argument("--label-horizon", default="30d", help="labels are due after this (30d)")
    m.add_argument("--as-of", help="RFC 3339: labels known at (default: newest logged event)")
    m.add_argument("--min-rows", type=int, default=300, help="rows for a window to warn")
    m.add_argument(
        "--persist", type=int, default=2, help="consecutive windows at the alert level to alert"
    )
    m.add_argument("--pr-auc-margin", type=float, default=0.2, help="below test PR-AUC by")
    m.add_argument(
        "--all-versions", action="store_true", help="every logged row, not only --model's"
    )
    m.add_argument("--fail-on-alert", action="store_true", help="exit 1 when anything alerts")
    command("monitor")(run)


def run(args: argparse.Namespace, settings: Any) -> int:
    from datetime import datetime

    from features.loader import load_definitions
    from flows.drift import Thresholds
    from flows.labels import read_labels, write_labels
    from flows.monitor import MonitorConfig, duration_ms, log_columns, monitor, read_log
    from flows.monitor_report import write_report
    from flows.profiles import read_profile
    from flows.registry import read_metadata, resolve

    fs = load_definitions(settings.definitions)
    version_dir = resolve(
        args.registry or settings.registry_dir, args.model or settings.model_alias
    )
    version = read_metadata(version_dir)["version"]
    profile = read_profile(version_dir)
    as_of = None
    if args.as_of:
        dt = datetime.fromisoformat(args.as_of)
        if dt.tzinfo is None:
            raise ValueError(f"--as-of: {args.as_of!r} needs an offset (e.g. Z)")
        as_of = int(dt.timestamp() * 1000)
    cfg = MonitorConfig(
        window_ms=duration_ms(args.window), quality_window_ms=duration_ms(args.quality_window),
        quality_step_ms=duration_ms(args.quality_step),
        horizon_ms=duration_ms(args.label_horizon), as_of_ms=as_of, all_versions=args.all_versions,
        thresholds=Thresholds(
            min_rows=args.min_rows, persist=args.persist, pr_auc_margin=args.pr_auc_margin
        ),
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    labels = None
    if args.labels_from_kafka:
        if not settings.kafka_bootstrap:
            raise ConnectionError(
                "monitor: Kafka is not configured; start a broker with "
                "`scripts/services.sh kafka-start DIR` and set SKEWLESS_KAFKA_BOOTSTRAP"
            )
        from flows.labels_kafka import sync_labels

        path = args.out / "labels.parquet"
        report = sync_labels(fs, settings.kafka_bootstrap, settings.topic, path)
        print(f"labels: {report.to_json()}", file=sys.stderr)
        labels = read_labels(fs, path)[0]
    elif args.labels:
        labels, rejects = read_labels(fs, args.labels)
        if rejects.num_rows:
            write_labels(rejects, args.out / "labels.rejects.parquet")
            print(
                f"labels: {rejects.num_rows:,} invalid rows set aside in "
                f"{args.out / 'labels.rejects.parquet'} (with the reason)",
                file=sys.stderr,
            )
    pred_dir = args.predictions or settings.data_dir / "predictions"
    log_table = read_log(pred_dir, log_columns(fs, profile, labels is not None))
    result = monitor(log_table, profile, fs, version, cfg, labels)
    (args.out / "monitor.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    page = write_report(args.out, result)
    s = result["summary"]
    print(
        f"monitor {version}: {result['rows']:,} predictions, {s['windows']} windows, "
        f"{s['alerts']} alerts, {s['warnings']} warnings -> {args.out / 'monitor.json'}, {page}"
    )
    return 1 if args.fail_on_alert and s["alerts"] else 0
