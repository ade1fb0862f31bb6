"""Stream benchmark: Kafka -> Bytewax -> Redis (Feast layout), against a naive flow.

* throughput: N events already in a one-partition topic, one worker, time to drain it
  (``skewless stream --no-tail``), less the same command's time on an empty topic (process
  start and stop, ~1 s, reported apart; the figure with it is reported too);
* baseline, same run: a naive flow that calls ``FeatureStore.push`` once per event (the
  SDK path Feast documents for streaming), on a bounded sample;
* freshness (``bench/stream_fresh.py``): events produced at a fixed rate while the flow
  tails the topic; per event, Kafka timestamp -> its row written, hop by hop, beside the
  sink's own histogram; at 5,000/s and 4x that, in both state layouts (``--state-layout``),
  alternated, with the stream's CPU per event while tailing and its writes per poll;
* engine (``bench/stream_engine.py``): the drain's events through the native core's
  ``update_rows`` alone, routed as the flow routes them, in one thread: CPU µs per event
  beside the drain's, and its update / finalize / encode split per entity.

The headline figures (throughput, workers, freshness) are the default command's, i.e.
``--state-layout auto`` without ``-r``: the sharded layout; the entity layout is measured
beside it (``sharded``, ``freshness_entity``).
"""

from __future__ import annotations

import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from bench import (
    stream_cores,
    stream_engine,
    stream_floor,
    stream_fresh,
    stream_shard,
    stream_stages,
)
from features.layout import compile_layouts
from features.reference import REFERENCE
from flows.produce import produce_messages
from flows.simulate import SimulationConfig, simulate
from flows.stream_io import table_to_messages

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _simulated(events: int, days: float, seed: int) -> pa.Table:
    """Simulated events at the bench's density: 30 per card, 300 per merchant."""
    return simulate(
        SimulationConfig(
            events=events,
            cards=max(events // 30, 10),
            merchants=max(events // 300, 5),
            days=days,
            seed=seed,
        )
    )


def _pairs(table: pa.Table) -> list[tuple[bytes | None, bytes]]:
    cards = (str(c).encode() for c in table.column("card_id").to_pylist())
    return list(zip(cards, table_to_messages(table), strict=True))


def _topic(bootstrap: str, name: str, partitions: int = 1) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(60)
    return name


def _env(
    bootstrap: str, redis_url: str, topic: str, data_dir: Path, metrics_port: int = 0
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    env.update(
        SKEWLESS_KAFKA_BOOTSTRAP=bootstrap, SKEWLESS_REDIS_URL=redis_url, SKEWLESS_TOPIC=topic,
        SKEWLESS_DATA_DIR=str(data_dir), SKEWLESS_METRICS_PORT=str(metrics_port),
    )  # fmt: skip
    return env


def _drain(
    bootstrap: str, redis_url: str, topic: str, work: Path, *args: str
) -> tuple[float, float]:
    """Wall and CPU seconds of ``skewless stream --no-tail ARGS`` over what the topic holds
    (CPU: the process's user + system time, all its threads)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "skewless", "stream", "--no-tail", *args],
        cwd=ROOT, env=_env(bootstrap, redis_url, topic, work), capture_output=True, text=True,
        timeout=1800,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"stream failed: {done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def _fresh(redis_url: str) -> str:
    """The database emptied (a drain over states left by another would read them)."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


def throughput(
    bootstrap: str, redis_url: str, table: pa.Table, work: Path, rounds: int = 3
) -> dict[str, Any]:
    """Drain a topic holding ``table``; the same command on an empty topic, in the same
    run, gives the process start and stop cost, reported apart. Baseline, same run: the
    same drain through Bytewax's own KafkaSource (``--kafka-source bytewax``). The two
    alternate for ``rounds`` rounds; each figure is the median over them (a shared
    machine's load moves single runs by 2x)."""
    topic = _topic(bootstrap, f"bench-tp-{int(time.time() * 1000)}")
    report = produce_messages(bootstrap, topic, _pairs(table))
    assert report.failed == 0, report
    empty = _topic(bootstrap, f"bench-empty-{int(time.time() * 1000)}")
    n = table.num_rows
    variants = {"thin": (), "bytewax_source": ("--kafka-source", "bytewax")}
    runs: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    for _ in range(rounds):
        for name, args in variants.items():
            start_wall, start_cpu = _drain(bootstrap, _fresh(redis_url), empty, work, *args)
            wall, cpu = _drain(bootstrap, _fresh(redis_url), topic, work, *args)
            runs[name].append((wall, start_wall, cpu - start_cpu))
    out: dict[str, Any] = {"events": n, "topic": topic, "rounds": rounds}
    for name, got in runs.items():
        wall, start = statistics.median(r[0] for r in got), statistics.median(r[1] for r in got)
        after = statistics.median(r[0] - r[1] for r in got)
        cpu = statistics.median(r[2] for r in got)
        out[name] = {
            "seconds": round(wall, 2),
            "events_per_s": round(n / wall),
            "start_stop_seconds": round(start, 2),
            "events_per_s_after_start": round(n / max(after, 1e-9)),
            "cpu_us_per_event_after_start": round(cpu / n * 1e6, 2),
            "load_average_1m": round(os.getloadavg()[0], 1),
        }
    out.update(out["thin"])
    out["ratio_thin_vs_bytewax_source"] = round(
        out["bytewax_source"]["cpu_us_per_event_after_start"]
        / max(out["thin"]["cpu_us_per_event_after_start"], 1e-9),
        2,
    )
    return out


def workers(bootstrap: str, redis_url: str, table: pa.Table, work: Path) -> dict[str, Any]:
    """A two-partition topic drained by 1 worker, 2 workers (threads of one process) and
    a 2-process cluster (one worker each): events/s after start, and the ratio to 1."""
    topic = _topic(bootstrap, f"bench-w2-{int(time.time() * 1000)}", partitions=2)
    report = produce_messages(bootstrap, topic, _pairs(table))
    assert report.failed == 0, report
    empty = _topic(bootstrap, f"bench-w2e-{int(time.time() * 1000)}", partitions=2)
    n, out = table.num_rows, {}
    for name, args in (("w1", ()), ("w2", ("-w", "2"))):
        start, _ = _drain(bootstrap, _fresh(redis_url), empty, work, *args)
        wall, cpu = _drain(bootstrap, _fresh(redis_url), topic, work, *args)
        out[name] = {"events_per_s_after_start": round(n / max(wall - start, 1e-9)),
                     "process_cpu_per_wall": round(cpu / wall, 2)}  # fmt: skip
    start = _cluster(bootstrap, _fresh(redis_url), empty, work)
    wall = _cluster(bootstrap, _fresh(redis_url), topic, work)
    out["two_processes"] = {"events_per_s_after_start": round(n / max(wall - start, 1e-9))}
    base = out["w1"]["events_per_s_after_start"]
    for name in ("w2", "two_processes"):
        out[name]["ratio_vs_1_worker"] = round(out[name]["events_per_s_after_start"] / base, 2)
    # the cores of each component over a drain, and what the machine's cores allow a
    # second worker (bench/stream_cores.py; docs/perf-plan.md, "Stream", section 10)
    out["where_the_cores_go"] = stream_cores.sampled(
        lambda: _env(bootstrap, _fresh(redis_url), topic, work), bootstrap, redis_url, work
    )
    return out


def _cluster(
    bootstrap: str, redis_url: str, topic: str, work: Path, args: tuple[str, ...] = ()
) -> float:
    """Wall seconds of a 2-process ``skewless stream --no-tail -i 0/1`` cluster."""
    addresses = ";".join(f"127.0.0.1:{_free_port()}" for _ in range(2))
    env = _env(bootstrap, redis_url, topic, work)
    cmd = [sys.executable, "-m", "skewless", "stream", "--no-tail", *args, "-a", addresses]
    start = time.perf_counter()
    procs = [
        subprocess.Popen([*cmd, "-i", str(i)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode:
            raise RuntimeError(
                f"stream cluster ({' '.join(args) or 'default layout'}) failed: {err[-2000:]}"
            )
    return time.perf_counter() - start


def stage_table(bootstrap: str, topic: str, redis_url: str, work: Path) -> dict[str, Any]:
    """µs of CPU per event by stage (``bench/stream_stages.py``), in this process."""
    return stream_stages.stages(REFERENCE, bootstrap, topic, redis_url, work / "stages", 5000)


def naive_push(redis_url: str, table: pa.Table, work: Path, limit: int) -> dict[str, Any]:
    """Per event: engine update, then ``FeatureStore.push`` of the entity's features."""
    import pandas as pd

    from features.feast_objects import bootstrap_field, push_name, state_field
    from features.native import NativeLayout
    from features.store import StoreConfig, open_feature_store

    store = open_feature_store(StoreConfig(redis_url, work / "naive-feast"), REFERENCE)
    layouts = {name: NativeLayout(layout) for name, layout in compile_layouts(REFERENCE).items()}
    states: dict[tuple[str, int], Any] = {}
    rows = table.slice(0, limit).to_pylist()
    start = time.perf_counter()
    for r in rows:
        ts = int(r["event_time"].timestamp() * 1000)
        for e in REFERENCE.entities:
            layout = layouts[e.name]
            key = (e.name, r[e.join_key])
            state = states.setdefault(key, layout.new_state())
            layout.update(state, ts, (r["amount"],))
            values: dict[str, Any] = dict(zip(layout.names, layout.as_of_last(state), strict=True))
            values[state_field(e)] = values[bootstrap_field(e)] = layout.encode(state)
            df = pd.DataFrame(
                [{e.join_key: r[e.join_key], "event_timestamp": r["event_time"], **values}]
            )
            store.push(push_name(e), df)
    wall = time.perf_counter() - start
    return {
        "events": len(rows),
        "seconds": round(wall, 2),
        "events_per_s": round(len(rows) / wall, 1),
    }


def freshness(
    bootstrap: str,
    redis_url: str,
    table: pa.Table,
    work: Path,
    rate: float,
    args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``table`` produced at ``rate`` into a new topic a tailing stream reads
    (``bench/stream_fresh.py``: per event p50/p95/p99 and each hop)."""
    topic = _topic(bootstrap, f"bench-fresh-{int(time.time() * 1000)}")
    port = _free_port()
    env = _env(bootstrap, redis_url, topic, work, port)
    return stream_fresh.run(bootstrap, topic, env, port, _pairs(table), work, rate, args)


#: what ``skewless stream`` runs without ``-r`` (``--state-layout auto``): the headline figures
DEFAULT_LAYOUT = "sharded"


def run(
    events: int = 100_000,
    rate: float = 5000.0,
    fresh_seconds: float = 10.0,
    naive_events: int = 300,
    bootstrap: str = "",
    redis_base: str = "",
) -> dict[str, Any]:
    """Uses the given Kafka and Redis (settings), or starts both itself."""
    work = Path(tempfile.mkdtemp(prefix="skewless-bench-stream-"))
    started = False
    if not (bootstrap and redis_base):
        subprocess.run(
            [str(ROOT / "scripts" / "services.sh"), "up", str(work / "svc")],
            check=True,
            capture_output=True,
        )
        env = dict(
            line.strip().split("=", 1)
            for line in (work / "svc" / "env").read_text().splitlines()
            if line
        )
        bootstrap, redis_base, started = (
            env["SKEWLESS_KAFKA_BOOTSTRAP"],
            env["SKEWLESS_REDIS_URL"],
            True,
        )
    base = redis_base.rsplit("/", 1)[0]
    try:
        table = _simulated(events, days=10.0, seed=5)
        ours = throughput(bootstrap, f"{base}/11", table, work)
        per_stage = stage_table(bootstrap, ours["topic"], _fresh(f"{base}/14"), work)
        engine = stream_engine.measure(REFERENCE, table, rounds=2)  # the native core alone
        floor = {v: stream_floor.run(v, bootstrap, ours["topic"], events, 5000)
                 for v in stream_floor.VARIANTS}  # fmt: skip
        scaling = (
            workers(bootstrap, f"{base}/11", table, work)
            if len(os.sched_getaffinity(0)) > 1
            else {}
        )
        me = sys.modules[__name__]
        sharded = stream_shard.run(me, bootstrap, f"{base}/11", table, ours["topic"], work)
        naive = naive_push(f"{base}/12", table, work, naive_events)
        fresh_table = _simulated(int(rate * fresh_seconds), days=1.0, seed=6)
        fast_table = _simulated(int(4 * rate * fresh_seconds), days=1.0, seed=7)
        by_layout: dict[str, dict[str, Any]] = {}
        for t, r in ((fresh_table, rate), (fast_table, 4 * rate)):
            for layout in stream_fresh.LAYOUTS:  # alternated at each rate
                by_layout.setdefault(layout, {})[f"{int(r)}/s"] = freshness(
                    bootstrap, _fresh(f"{base}/13"), t, work, r, ("--state-layout", layout)
                )
        fresh, fresh_fast = by_layout[DEFAULT_LAYOUT].values()
        drain_cpu = ours["cpu_us_per_event_after_start"]
        for f in (fresh, fresh_fast):  # the same run's drain beside it
            stream_fresh.beside_drain(f, ours["events_per_s_after_start"], drain_cpu)
        return {
            "throughput_events_per_s_per_worker": ours["events_per_s_after_start"],
            "throughput_events_per_s_incl_process_start": ours["events_per_s"],
            "throughput_target": 100_000,
            "baseline_bytewax_source_events_per_s": ours["bytewax_source"][
                "events_per_s_after_start"
            ],
            "ratio_thin_vs_bytewax_source_cpu": ours["ratio_thin_vs_bytewax_source"],
            "baseline_naive_push_events_per_s": naive["events_per_s"],
            "ratio_vs_naive_push": round(
                ours["events_per_s_after_start"] / max(naive["events_per_s"], 1e-9), 1
            ),
            "drain_cpu_us_per_event": drain_cpu,
            # the same run's events through update_rows alone (bench/stream_engine.py)
            "engine_us_per_event": engine["cpu_us_per_event"],
            "engine": engine,
            "per_stage_cpu_us_per_event": per_stage,
            "bytewax_floor": floor,
            "bytewax_floor_cpu_us_per_event": {
                v: round(1e6 / max(f["events_per_cpu_s"], 1), 2) for v, f in floor.items()
            },
            "ratio_drain_cpu_vs_per_event_floor": round(
                drain_cpu * floor["per-event"]["events_per_cpu_s"] / 1e6, 2
            ),
            "workers": scaling,
            "sharded": sharded,  # --state-layout sharded vs entity (bench/stream_shard.py)
            "throughput_detail": ours,
            "naive_detail": naive,
            "freshness": fresh,
            "freshness_target_p99_ms": 100,
            "freshness_4x_rate": fresh_fast,
            "freshness_4x_rate_target_p99_ms": 250,
            "freshness_layout": DEFAULT_LAYOUT,
            "freshness_entity": by_layout["entity"],
            "freshness_by_layout": {  # p50/p99, CPU per event while tailing, writes per poll
                layout: {r: stream_fresh.summary(f) for r, f in got.items()}
                for layout, got in by_layout.items()
            },
        }
    finally:
        if started:
            subprocess.run(
                [str(ROOT / "scripts" / "services.sh"), "down", str(work / "svc")],
                capture_output=True,
            )
