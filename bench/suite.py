"""``skewless bench``: run the suites, print one JSON document (each figure beside its
baseline from the same run, as a ratio)."""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from typing import Any

from features.settings import Settings

SUITES = ("backfill", "stream", "serve", "monitor", "memory")


def run_suites(args: argparse.Namespace, settings: Settings) -> int:
    results: dict[str, Any] = {
        "when": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
    }
    for name in args.suites or SUITES:
        start = time.perf_counter()
        if name == "backfill":
            from bench import backfill

            results[name] = backfill.run(events=args.events)
        elif name == "stream":
            from bench import stream

            results[name] = stream.run(
                events=min(args.events, 200_000),
                bootstrap=settings.kafka_bootstrap,
                redis_base=settings.redis_url,
            )
        elif name == "serve":
            from bench import serve

            results[name] = serve.run()
        elif name == "monitor":
            from bench import monitor

            results[name] = monitor.run(rows=args.events)
        elif name == "detection":  # on request only: alerts on drift scenarios, not speed
            from bench import detection

            results[name] = detection.run()
        elif name == "memory":
            from bench import memory

            results[name] = memory.run()
        results[name]["suite_seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
