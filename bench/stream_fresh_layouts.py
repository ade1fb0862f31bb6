"""Stream freshness of both state layouts (``--state-layout``), alternated in one run,
at one or more rates; a new topic per run, each summarized (``bench/stream_fresh.py``).

    python -m bench.stream_fresh_layouts --rate 5000 --rate 20000 --rounds 2

Kafka and Redis from ``--bootstrap``/``--redis-url`` or ``SKEWLESS_KAFKA_BOOTSTRAP`` /
``SKEWLESS_REDIS_URL`` (``scripts/services.sh up DIR`` writes them to ``DIR/env``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.stream import _fresh, _simulated, freshness
from bench.stream_fresh import LAYOUTS, summary


def layouts(
    bootstrap: str, redis_url: str, rates: list[float], seconds: float, layouts: list[str],
    work: Path, rounds: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """Freshness of each ``--state-layout`` at each rate, the layouts alternated within
    each round (a shared machine's load moves between runs); a new topic per run."""
    out: dict[str, Any] = {}
    for rate in rates:
        table = _simulated(int(rate * seconds), days=1.0, seed=6)
        for _ in range(rounds):
            for layout in layouts:
                got = freshness(bootstrap, _fresh(redis_url), table, work, rate,
                                ("--state-layout", layout))  # fmt: skip
                out.setdefault(f"{layout}@{int(rate)}/s", []).append(summary(got))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stream_fresh_layouts", description=__doc__
    )
    parser.add_argument("--rate", type=float, action="append", help="events/s (repeatable)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--state-layout", choices=(*LAYOUTS, "both"), default="both")
    parser.add_argument("--bootstrap", default=os.environ.get("SKEWLESS_KAFKA_BOOTSTRAP", ""))
    parser.add_argument("--redis-url", default=os.environ.get("SKEWLESS_REDIS_URL", ""))
    args = parser.parse_args(argv)
    if not (args.bootstrap and args.redis_url):
        parser.error("--bootstrap/--redis-url: a Kafka broker and a Redis server are needed "
                     "(scripts/services.sh up DIR writes DIR/env)")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="skewless-bench-fresh-"))
    chosen = list(LAYOUTS) if args.state_layout == "both" else [args.state_layout]
    got = layouts(args.bootstrap, args.redis_url, args.rate or [5000.0], args.seconds, chosen,
                  work, args.rounds)  # fmt: skip
    print(json.dumps(got, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
