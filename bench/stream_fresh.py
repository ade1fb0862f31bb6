"""Stream freshness: produce time -> row readable in the online store, hop by hop.

A tailing ``skewless stream`` (one worker) under ``bench/stream_trace.py``; events are
produced at a fixed rate by a producer that already holds its idempotence id (a warm-up
message first: a long-running producer has one). A message's produce time is its Kafka
timestamp, which librdkafka stamps when ``produce()`` is called (so linger and the
broker's ack count).

Two views of the same run:

* ``per_event``: exact per message, from the trace: Kafka timestamp -> the end of the
  online-store write that followed the decode of its poll (one worker: the flow runs a
  poll's items eagerly on one thread, so the next write after a decode carries its rows);
* ``sink_histogram``: what the flow itself exports (``skewless_stream_freshness_seconds``,
  per written row, the row's newest event), interpolated within its buckets.

``hops``: each hop as a distribution over messages (ms), with the source's poll sizes and
Bytewax's wake-up cadence (the gap between two polls).

Both state layouts alternated in one run, on their own: ``bench/stream_fresh_layouts.py``.
"""

from __future__ import annotations

import bisect
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

HISTOGRAM = "skewless_stream_freshness_seconds"
ROOT = Path(__file__).resolve().parents[1]


def histogram(port: int, name: str = HISTOGRAM) -> list[tuple[float, float]]:
    """A Prometheus histogram's cumulative buckets ``(le, count)`` from the endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="')[1].split('"')[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(out)


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear within the bucket.

    >>> round(quantile([(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)], 0.75), 6)
    0.15
    """
    total = buckets[-1][1]
    if not total:
        return float("nan")
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return prev_le


def _dist(ms: Any) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    if not a.size:
        return {"n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": round(float(p50), 1), "p95": round(float(p95), 1),
            "p99": round(float(p99), 1), "max": round(float(a.max()), 1)}  # fmt: skip


def hops(trace: dict[str, Any]) -> dict[str, Any]:
    """Per message: produce -> polled -> decoded -> write start -> written (ms)."""
    polls, stamps = trace["polls"], trace["stamps"]
    writes = sorted(trace["writes"])
    starts = [w[0] for w in writes]
    polled_at = {k: t1 for _, t1, _, k in polls if k >= 0}
    waits = {k: t1 - t0 for t0, t1, _, k in polls if k >= 0}
    pre = sorted(trace["prefetches"])
    pre_starts = [p[0] for p in pre]
    cols: dict[str, list[Any]] = {k: [] for k in
        ("polled", "poll_call", "decode", "prefetch", "steps", "write", "total")}  # fmt: skip
    unmatched = 0
    for _, d1, ks in trace["decodes"]:
        i = bisect.bisect_left(starts, d1)
        if i == len(writes):
            unmatched += sum(len(stamps[k]) for k in ks if k >= 0)
            continue
        w0, w1, _ = writes[i]
        j = bisect.bisect_left(pre_starts, d1)
        pf = pre[j][1] - pre[j][0] if j < len(pre) and pre[j][1] <= w0 else 0.0
        for k in ks:
            if k < 0:
                continue
            ts = np.asarray(stamps[k], dtype=np.float64)
            n = ts.size
            cols["polled"].append(polled_at[k] * 1000 - ts)
            cols["total"].append(w1 * 1000 - ts)
            each = {"poll_call": waits[k], "decode": d1 - polled_at[k], "prefetch": pf,
                    "steps": w0 - d1 - pf, "write": w1 - w0}  # fmt: skip
            for name, v in each.items():
                cols[name].append(np.full(n, v * 1000))
    out: dict[str, Any] = {name: _dist(np.concatenate(v) if v else []) for name, v in cols.items()}
    sizes = [n for _, _, n, k in polls if k >= 0]
    t_start = [p[0] for p in polls]
    span = (polls[-1][1] - polls[0][0]) if polls else 0.0
    cpu = trace.get("cpu") or []
    if len(cpu) > 1:  # the stream's share of a core while it had rows to write
        (c0, _), (c1, _) = cpu[0], cpu[-1]  # the messages polled in the same span
        span_polls = [k for _, t1, _, k in polls if k >= 0 and c0 <= t1 <= c1]
        n = sum(len(stamps[k]) for k in span_polls)
        out["stream_cpu_us_per_event"] = round((cpu[-1][1] - cpu[0][1]) / max(n, 1) * 1e6, 1)
        # a tailing stream's cost is mostly per poll (docs/perf-plan.md): per non-empty poll
        out["stream_cpu_us_per_poll"] = round(
            (cpu[-1][1] - cpu[0][1]) / max(len(span_polls), 1) * 1e6
        )
        out["stream_cpu_per_wall"] = round(
            (cpu[-1][1] - cpu[0][1]) / max(cpu[-1][0] - cpu[0][0], 1e-9), 2
        )
    sched = trace.get("sched") or []
    if len(sched) == 2 and sched[1][0] > sched[0][0]:  # the worker thread, same span
        (w0, r0, q0), (w1, r1, q1) = sched
        out["worker_thread_share"] = {
            "on_cpu": round((r1 - r0) / (w1 - w0), 2),
            "waiting_for_a_cpu": round((q1 - q0) / (w1 - w0), 2),
        }
    out["pauses"] = pauses(trace, polls[0][0] if polls else 0.0)
    out["polls"] = {
        "non_empty": len(sizes), "empty_per_s": round((len(polls) - len(sizes)) / max(span, 1e-9)),
        "messages_per_poll": _dist(sizes),
        "gap_between_polls_ms": _dist(np.diff(t_start) * 1000 if len(t_start) > 1 else []),
        "writes": len(writes), "rows_per_write": _dist([w[2] for w in writes]),
        "messages_without_a_write_after": unmatched,
    }  # fmt: skip
    return out


def _machine() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far (``/proc/stat``; Linux)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / hz, idle / hz


def pauses(trace: dict[str, Any], since: float) -> dict[str, Any]:
    """The worker's stop-the-world moments after ``since`` (the first poll): CPython's
    collections by generation, and Bytewax's end-of-epoch passes that ask every key
    touched in the epoch for its snapshot (calls less than 50 ms apart: one pass)."""
    out: dict[str, Any] = {}
    for gen in (0, 1, 2):
        ms = [(e - s) * 1000 for s, e, g in trace.get("gcs", []) if g == gen and s >= since]
        if ms:
            out[f"gc_gen{gen}"] = {"count": len(ms), "max_ms": round(max(ms), 1),
                                   "total_ms": round(sum(ms), 1)}  # fmt: skip
    passes: list[list[float]] = []
    for t in (x for x in trace.get("snapshots", []) if x >= since):
        if passes and t - passes[-1][-1] < 0.05:
            passes[-1].append(t)
        else:
            passes.append([t])
    out["snapshot_passes"] = [
        {"at_s": round(p[0] - since, 2), "keys": len(p), "ms": round((p[-1] - p[0]) * 1000, 1)}
        for p in passes
    ]
    return out


def produce_paced(bootstrap: str, topic: str, pairs: list[tuple[bytes | None, bytes]],
                  rate: float) -> dict[str, Any]:  # fmt: skip
    """``pairs`` at ``rate`` per second, in 1 ms slots; each message's produce -> broker
    ack time (librdkafka's ``latency()``)."""
    from confluent_kafka import Producer

    from flows.produce import producer_config

    acks: list[float] = []
    failed = [0]

    def delivered(err: object, msg: Any) -> None:
        if err is None:
            acks.append(msg.latency() * 1000)
        else:
            failed[0] += 1

    producer = Producer(producer_config(bootstrap))
    producer.produce(topic + ".warmup", b"warm-up")  # the idempotence id, before the clock
    producer.flush(60)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start, sent = time.perf_counter(), 0
    while sent < len(pairs):
        due = min(int((time.perf_counter() - start) * rate) + 1, len(pairs))
        for key, value in pairs[sent:due]:
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.01)
        sent = max(sent, due)
        producer.poll(0)
        time.sleep(0.0005)
    seconds = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
    failed[0] += producer.flush(60)
    return {"seconds": round(seconds, 3), "failed": failed[0], "acked_ms": _dist(acks),
            "producer_cpu_per_wall": round(cpu / seconds, 2)}  # fmt: skip


def _counter(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(name + " "))


def _drained(port: int, events: int, deadline_s: float) -> list[tuple[float, float]]:
    """The histogram once the stream decoded every event and its writes stopped (a count
    that merely stood still for a while was once a stream stalled under load)."""
    deadline = time.monotonic() + deadline_s
    while _counter(port, "skewless_stream_events_in_total") < events:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    last = -1.0
    while (count := histogram(port)[-1][1]) != last and time.monotonic() < deadline:
        last = count
        time.sleep(0.3)
    return histogram(port)


def run(
    bootstrap: str,
    topic: str,
    env: dict[str, str],
    port: int,
    pairs: list[tuple[bytes | None, bytes]],
    work: Path,
    rate: float,
    args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``pairs`` produced at ``rate`` into ``topic`` (new, empty) that a tailing stream
    (``skewless stream ARGS``, environment ``env``, metrics on ``port``) reads: p50/p95/p99
    per event, the hops, the sink's own view."""
    trace_path = work / f"fresh-trace-{topic}.json"
    log = (work / "fresh.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.stream_trace", str(trace_path), "stream", *args],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for the endpoint (and so the flow) to be up
            try:
                histogram(port)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("stream did not start") from None
                time.sleep(0.2)
        time.sleep(2.0)  # let the consumer attach to the partition
        load_before = os.getloadavg()[0]
        busy0, idle0 = _machine()
        produced = produce_paced(bootstrap, topic, pairs, rate)
        b = _drained(port, len(pairs), 300)
        busy1, idle1 = _machine()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    trace = json.loads(trace_path.read_text()) if trace_path.exists() else None
    table_of_hops = hops(trace) if trace else {}
    total = table_of_hops.get("total", {})
    return {
        "rate_events_per_s": rate, "events": len(pairs), "args": list(args),
        "produce_seconds": produced["seconds"], "produce_failed": produced["failed"],
        "p50_ms": total.get("p50"), "p95_ms": total.get("p95"), "p99_ms": total.get("p99"),
        "max_ms": total.get("max"),
        "sink_histogram": {
            "rows": int(b[-1][1]),
            **{f"p{q}_ms": round(quantile(b, q / 100) * 1000, 1) for q in (50, 95, 99)},
        },
        "hops_ms": {"produce_to_broker_ack": produced["acked_ms"], **table_of_hops},
        "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        # both cores' share idle while it ran: ~0 means every process queued for a CPU
        "machine_idle_share": round((idle1 - idle0) / max(busy1 - busy0 + idle1 - idle0, 1e-9), 2),
        "producer_cpu_per_wall": produced["producer_cpu_per_wall"],
    }  # fmt: skip


def beside_drain(fresh: dict[str, Any], drain_events_per_s: float, cpu_us: float) -> None:
    """The drain of the same run beside a freshness figure: the produce rate as a share
    of it, and the cores the stream needs at that rate at the drain's CPU per event (a
    floor: small polls cost more per event, ``hops_ms.stream_cpu_us_per_event``)."""
    rate = fresh["rate_events_per_s"]
    fresh["drain_events_per_s_after_start"] = drain_events_per_s
    fresh["rate_vs_drain"] = round(rate / max(drain_events_per_s, 1e-9), 2)
    fresh["stream_cores_needed"] = round(rate * cpu_us / 1e6, 2)


LAYOUTS = ("entity", "sharded")


def summary(fresh: dict[str, Any]) -> dict[str, Any]:
    """The figures compared between layouts and rates: latency, CPU while tailing, writes."""
    hops_ms = fresh.get("hops_ms", {})
    polls = hops_ms.get("polls", {})
    return {
        "p50_ms": fresh["p50_ms"], "p99_ms": fresh["p99_ms"],
        "stream_cpu_us_per_event": hops_ms.get("stream_cpu_us_per_event"),
        "stream_cpu_us_per_poll": hops_ms.get("stream_cpu_us_per_poll"),
        "writes_per_non_empty_poll": round(
            polls.get("writes", 0) / max(polls.get("non_empty", 0), 1), 2),
        "hops_p99_ms": {hop: d.get("p99") for hop, d in hops_ms.items()
                        if isinstance(d, dict) and "n" in d},
        "worker_thread_share": hops_ms.get("worker_thread_share"),
        "load_average_1m": fresh["load_average_1m"],
    }  # fmt: skip
