"""The shard-batched state layout against the entity layout (``--state-layout``).

* drain: the throughput topic (one partition) drained by ``skewless stream --no-tail``
  in each layout, alternated for ``rounds`` rounds, each less the same command on an
  empty topic (process start); CPU µs per event (the process's user + system time over
  the drain) and events/s after start, median and best;
* per stage: ``bench/stream_stages.py`` with the shard router and shard logics;
* workers_entity: a two-partition topic drained in the entity layout by 1 worker, 2
  workers (``-w 2``, threads) and a 2-process cluster (``-i 0/1``): events/s after start
  and the ratio to 1 worker (the default layout's are the suite's ``workers``).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

SHARDED = ("--state-layout", "sharded")
ENTITY = ("--state-layout", "entity")  # explicit: the default (auto) is sharded without -r


def drain(
    h: Any, bootstrap: str, redis_url: str, topic: str, n: int, work: Path, rounds: int = 3
) -> dict[str, Any]:
    """Entity vs sharded layout over ``topic`` (``n`` events), alternated."""
    _drain, _fresh, _topic = h._drain, h._fresh, h._topic
    empty = _topic(bootstrap, f"bench-sh-empty-{int(time.time() * 1000)}")
    variants: dict[str, tuple[str, ...]] = {"entity": ENTITY, "sharded": SHARDED}
    runs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for _ in range(rounds):
        for name, args in variants.items():
            start_wall, start_cpu = _drain(bootstrap, _fresh(redis_url), empty, work, *args)
            wall, cpu = _drain(bootstrap, _fresh(redis_url), topic, work, *args)
            runs[name].append((max(wall - start_wall, 1e-9), max(cpu - start_cpu, 1e-9)))
    out: dict[str, Any] = {"events": n, "rounds": rounds}
    for name, got in runs.items():
        rates = [n / w for w, _ in got]
        out[name] = {
            "cpu_us_per_event_after_start": round(
                statistics.median(c for _, c in got) / n * 1e6, 2
            ),
            "events_per_s_after_start": round(statistics.median(rates)),
            "events_per_s_after_start_best": round(max(rates)),
        }
    cpu = {name: statistics.median(c for _, c in got) for name, got in runs.items()}
    out["ratio_cpu_entity_vs_sharded"] = round(cpu["entity"] / cpu["sharded"], 2)
    out["load_average_1m"] = round(os.getloadavg()[0], 1)
    return out


def workers(
    h: Any, bootstrap: str, redis_url: str, table: pa.Table, work: Path, layout: tuple[str, ...]
) -> dict[str, Any]:
    """One layout on a two-partition topic: 1 worker, ``-w 2``, 2 processes (the default
    layout's are ``bench.stream.workers``: the headline)."""
    from flows.produce import produce_messages

    _drain, _fresh, _pairs, _topic = h._drain, h._fresh, h._pairs, h._topic

    stamp = int(time.time() * 1000)
    topic = _topic(bootstrap, f"bench-sh-w2-{stamp}", partitions=2)
    report = produce_messages(bootstrap, topic, _pairs(table))
    assert report.failed == 0, report
    empty = _topic(bootstrap, f"bench-sh-w2e-{stamp}", partitions=2)
    n, out = table.num_rows, dict[str, Any]()
    for name, args in (("w1", layout), ("w2", (*layout, "-w", "2"))):
        start, _ = _drain(bootstrap, _fresh(redis_url), empty, work, *args)
        wall, cpu = _drain(bootstrap, _fresh(redis_url), topic, work, *args)
        out[name] = {"events_per_s_after_start": round(n / max(wall - start, 1e-9)),
                     "process_cpu_per_wall": round(cpu / wall, 2)}  # fmt: skip
    start = h._cluster(bootstrap, _fresh(redis_url), empty, work, layout)
    wall = h._cluster(bootstrap, _fresh(redis_url), topic, work, layout)
    out["two_processes"] = {"events_per_s_after_start": round(n / max(wall - start, 1e-9))}
    base = out["w1"]["events_per_s_after_start"]
    for name in ("w2", "two_processes"):
        out[name]["ratio_vs_1_worker"] = round(out[name]["events_per_s_after_start"] / base, 2)
    out["load_average_1m"] = round(os.getloadavg()[0], 1)
    return out


def stage_table(bootstrap: str, topic: str, redis_url: str, work: Path) -> dict[str, Any]:
    """µs of CPU per event by stage in the sharded layout (``bench/stream_stages.py``)."""
    from bench.stream_stages import stages
    from features.reference import REFERENCE

    return stages(
        REFERENCE, bootstrap, topic, redis_url, work / "stages-sharded", 5000, sharded=True
    )


def run(
    h: Any, bootstrap: str, redis_url: str, table: pa.Table, topic: str, work: Path
) -> dict[str, Any]:
    """What ``skewless bench stream`` reports under ``sharded``; ``h``: the module
    ``bench.stream`` (its drain helpers, passed in: no import cycle)."""
    out: dict[str, Any] = {
        "drain": drain(h, bootstrap, redis_url, topic, table.num_rows, work),
        "per_stage_cpu_us_per_event": stage_table(bootstrap, topic, h._fresh(redis_url), work),
    }
    if len(os.sched_getaffinity(0)) > 1:
        out["workers_entity"] = workers(h, bootstrap, redis_url, table, work, ENTITY)
    return out
