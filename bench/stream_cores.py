"""Where the cores go in a stream drain: the stream's worker threads and the rest of its
process, the Kafka broker, Redis, and the rest of the machine, over the drain's own wall
time (from its first poll to its last write: ``bench/stream_trace.py``'s timeline).

``python -m bench.stream_scale`` runs it on a topic of its own.

Each component's CPU seconds are read from ``/proc/PID/stat`` (threads from
``/proc/PID/task/TID/stat``) every 50 ms while the drain runs, interpolated at the window's
ends, and divided by its wall time: ``cores`` is how many of the machine's cores each kept
busy on average. A second worker can add ~1x only if the cores the first one leaves idle
(``machine_idle``) can hold another worker plus the broker's and Redis' share of it.
Linux only (``/proc``).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HZ = os.sysconf("SC_CLK_TCK")


def _ticks(path: str) -> float | None:
    """utime + stime of a ``stat`` file, in seconds (None: gone)."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / HZ


def _comm(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def listener_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` on this machine (by its socket's inode)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{f[9]}]")
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                return pid
        except OSError:
            continue
    return None


def _machine() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine (``/proc/stat``)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks[:8]) - idle) / HZ, idle / HZ


class Sampler:
    """CPU seconds of each component every ``every_s`` while a drain runs: the stream's
    threads (by thread id, with their names), the broker, Redis, the machine."""

    def __init__(self, stream_pid: int, others: dict[str, int], every_s: float = 0.05) -> None:
        self.pid, self.others, self.every_s = stream_pid, others, every_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.names: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        now = time.time()
        got: dict[str, float] = {}
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            tids = []
        for tid in tids:
            t = _ticks(f"/proc/{self.pid}/task/{tid}/stat")
            if t is not None:
                key = f"thread:{tid}"
                got[key] = t
                if key not in self.names:
                    self.names[key] = _comm(self.pid, int(tid))
        for name, pid in self.others.items():
            t = _ticks(f"/proc/{pid}/stat")
            if t is not None:
                got[name] = t
        got["machine_busy"], got["machine_idle"] = _machine()
        self.samples.append((now, got))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, key: str, t: float) -> float | None:
        """``key``'s CPU seconds at wall time ``t`` (linear between the two samples around
        it; a thread that ended keeps its last value)."""
        pts = [(w, s[key]) for w, s in self.samples if key in s]
        if not pts or t < pts[0][0]:
            return pts[0][1] if pts else None
        for (w0, c0), (w1, c1) in itertools.pairwise(pts):
            if w0 <= t <= w1:
                return c0 + (c1 - c0) * (t - w0) / max(w1 - w0, 1e-9)
        return pts[-1][1]


def cores(sampler: Sampler, t0: float, t1: float) -> dict[str, Any]:
    """Each component's cores over ``[t0, t1]``: CPU seconds there / wall seconds."""
    wall = max(t1 - t0, 1e-9)
    keys = sorted({k for _, s in sampler.samples for k in s})
    used = {}
    for k in keys:
        a, b = sampler.at(k, t0), sampler.at(k, t1)
        if a is not None and b is not None:
            used[k] = (b - a) / wall
    threads = {k: v for k, v in used.items() if k.startswith("thread:")}
    top = sorted(threads.items(), key=lambda kv: -kv[1])
    out: dict[str, Any] = {
        "wall_s": round(wall, 3),
        "stream_process": round(sum(threads.values()), 2),
        "stream_threads": {
            f"{sampler.names.get(k, k)} ({k[7:]})": round(v, 2) for k, v in top if v >= 0.01
        },
        **{k: round(v, 2) for k, v in used.items() if not k.startswith(("thread:", "machine_"))},
        "machine_busy": round(used.get("machine_busy", float("nan")), 2),
        "machine_idle": round(used.get("machine_idle", float("nan")), 2),
    }
    mine = out["stream_process"] + sum(
        v for k, v in used.items() if not k.startswith(("thread:", "machine_"))
    )
    out["everything_else"] = round(out["machine_busy"] - mine, 2)
    return out


def drain(
    env: dict[str, str], others: dict[str, int], work: Path, args: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``skewless stream --no-tail ARGS`` under the trace, sampled; cores over the drain."""
    trace = work / f"scale-{time.time_ns()}.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.stream_trace", str(trace), "stream", "--no-tail", *args],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    with Sampler(proc.pid, others) as sampler:
        _, err = proc.communicate(timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"stream failed: {err[-2000:]}")
    doc = json.loads(trace.read_text())
    polls = [p for p in doc["polls"] if p[2] > 0]
    t0, t1 = polls[0][0], max(w[1] for w in doc["writes"])
    out = cores(sampler, t0, t1)
    events = sum(p[2] for p in polls)
    out["events"] = events
    out["events_per_s"] = round(events / max(t1 - t0, 1e-9))
    us = (t1 - t0) / max(events, 1) * 1e6  # wall µs per event
    worker = max(out["stream_threads"].values(), default=0.0)
    out["cpu_us_per_event"] = {
        "stream_process": round(out["stream_process"] * us, 1),
        "busiest_thread": round(worker * us, 1),
        **{k: round(out[k] * us, 1) for k in others if k in out},
    }
    return out


def ceiling(one: dict[str, Any], cores: float) -> dict[str, float]:
    """What ``cores`` allow, from a 1-worker drain's CPU per event: one worker at a full
    core (its thread never waiting for a CPU) and the cores that needs with the broker and
    Redis serving it; the rate all of ``cores`` sustain; and so what a second worker can
    add at most (before any GIL or exchange cost)."""
    per = one["cpu_us_per_event"]
    worker = per["busiest_thread"]
    total = per["stream_process"] + sum(v for k, v in per.items() if k in ("broker", "redis"))
    full = 1e6 / worker
    most = cores * 1e6 / total
    return {
        "one_worker_at_a_full_core_events_per_s": round(full),
        "cores_it_needs_with_broker_and_redis": round(total / worker, 2),
        f"all_{cores:g}_cores_events_per_s": round(most),
        "second_worker_adds_at_most": round(min(most / full, 2.0) - 1, 2),
    }


def services(bootstrap: str, redis_url: str) -> dict[str, int]:
    """The broker's and Redis' process ids, by the ports they listen on (if local)."""
    ports = {
        "broker": int(bootstrap.split(",")[0].rsplit(":", 1)[1]),
        "redis": int(redis_url.split("//")[1].split("/")[0].rsplit("@")[-1].rsplit(":", 1)[1]),
    }
    return {name: pid for name, port in ports.items() if (pid := listener_pid(port))}


def sampled(
    env: Callable[[], dict[str, str]],
    bootstrap: str,
    redis_url: str,
    work: Path,
    workers: tuple[int, ...] = (1, 2),
) -> dict[str, Any]:
    """One sampled drain per worker count (``env()``: the stream's environment, its Redis
    database emptied), and what this machine's cores allow (``bench stream``'s
    ``workers.where_the_cores_go``)."""
    others = services(bootstrap, redis_url)
    out: dict[str, Any] = {f"w{w}": drain(env(), others, work, ("-w", str(w))) for w in workers}
    if "w1" in out:
        out["ceiling"] = ceiling(out["w1"], len(os.sched_getaffinity(0)))
    return out
