"""Where the cores go in stream drains of 1 and 2 workers (``bench/stream_cores.py``), on a
new topic of simulated events:

    python -m bench.stream_scale --events 200000 --workers 1 --workers 2 --rounds 2

Kafka and Redis from ``--bootstrap``/``--redis-url`` or ``SKEWLESS_KAFKA_BOOTSTRAP`` /
``SKEWLESS_REDIS_URL`` (``scripts/services.sh up DIR`` writes them to ``DIR/env``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stream import _env, _fresh, _pairs, _simulated, _topic
from bench.stream_cores import ceiling, drain, services
from flows.produce import produce_messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_scale", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--workers", type=int, action="append", help="-w N (repeatable)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--bootstrap", default=os.environ.get("SKEWLESS_KAFKA_BOOTSTRAP", ""))
    parser.add_argument("--redis-url", default=os.environ.get("SKEWLESS_REDIS_URL", ""))
    args = parser.parse_args(argv)
    if not (args.bootstrap and args.redis_url):
        parser.error("--bootstrap/--redis-url: a Kafka broker and a Redis server are needed "
                     "(scripts/services.sh up DIR writes DIR/env)")  # fmt: skip
    others = services(args.bootstrap, args.redis_url)
    work = Path(tempfile.mkdtemp(prefix="skewless-bench-scale-"))
    topic = _topic(args.bootstrap, f"bench-scale-{int(time.time() * 1000)}", args.partitions)
    report = produce_messages(args.bootstrap, topic, _pairs(_simulated(args.events, 10.0, 5)))
    assert report.failed == 0, report
    got: dict[str, Any] = {"found": others, "partitions": args.partitions,
                           "load_average_1m": [round(os.getloadavg()[0], 1)]}  # fmt: skip
    for _ in range(args.rounds):
        for w in args.workers or [1]:
            env = _env(args.bootstrap, _fresh(args.redis_url), topic, work)
            got.setdefault(f"w{w}", []).append(drain(env, others, work, ("-w", str(w))))
    got["load_average_1m"].append(round(os.getloadavg()[0], 1))
    got["ceiling_on_this_machine"] = [ceiling(one, len(os.sched_getaffinity(0)))
                                      for one in got.get("w1", [])]  # fmt: skip
    print(json.dumps(got, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
