"""``skewless stream`` with a timeline of each hop, for the freshness bench.

``python -m bench.stream_trace OUT.json [skewless args...]`` runs the CLI after wrapping
four calls on the worker thread with wall-clock stamps (``time.time()``, the clock Kafka's
producer stamps messages with): each poll of the thin source (its messages' Kafka
timestamps), the decode step, the prefetch step and each online-store write. Nothing in
the flow changes; the wrappers cost a few µs per batch, not per event. At exit the
timeline goes to OUT.json; ``bench/stream_fresh.py`` turns it into a per-hop table.
"""

from __future__ import annotations

import gc
import importlib
import json
import resource
import runpy
import sys
import threading
import time
from pathlib import Path
from typing import Any

from flows import stream_decode, stream_prefetch, stream_sink, stream_source

_lock = threading.Lock()
#: (start, end, message count, index into STAMPS or -1) per poll, empty ones too
POLLS: list[tuple[float, float, int, int]] = []
STAMPS: list[list[int]] = []  # the Kafka timestamps (ms) of each non-empty poll
DECODES: list[tuple[float, float, list[int]]] = []  # (start, end, polls it decoded)
PREFETCHES: list[tuple[float, float]] = []
WRITES: list[tuple[float, float, int]] = []  # (start, end, rows written)
CPU: list[tuple[float, float]] = []  # (wall, process CPU seconds) after every 32nd write
#: the worker thread's (wall, on-CPU s, run-queue wait s) at its first and a late write
SCHED: list[tuple[float, float, float]] = []
_poll_of: dict[int, int] = {}  # id(KafkaBatch) -> its poll (until decoded)
GCS: list[tuple[float, float, int]] = []  # (start, end, generation) of each collection
SNAPSHOTS: list[float] = []  # when Bytewax asked an entity logic for its snapshot


def _wrap_poll(inner: Any) -> Any:
    def next_batch(self: Any) -> list[Any]:
        t0 = time.time()
        out = inner(self)
        t1 = time.time()
        batches = [b for b in out if type(b) is stream_source.KafkaBatch]
        with _lock:
            for b in batches:
                _poll_of[id(b)] = len(STAMPS)
                STAMPS.append(list(b.timestamps))
            POLLS.append((t0, t1, sum(len(b) for b in batches), len(STAMPS) - 1 if batches else -1))
        return out

    return next_batch


def _wrap_decode(inner: Any) -> Any:
    def call(self: Any, msgs: list[Any]) -> Any:
        t0 = time.time()
        out = inner(self, msgs)
        with _lock:
            polls = [_poll_of.pop(id(m), -1) for m in msgs if type(m) is stream_source.KafkaBatch]
            DECODES.append((t0, time.time(), polls))
        return out

    return call


def _wrap_timed(inner: Any, into: list[Any]) -> Any:
    def call(self: Any, items: list[Any]) -> Any:
        t0 = time.time()
        out = inner(self, items)
        into.append((t0, time.time()))
        return out

    return call


def _rows(items: list[Any]) -> int:
    """Rows among a write's items: one per row, or a list of them (one per shard)."""
    return sum(
        len(i) if isinstance(i, list) else 1
        for i in items
        if isinstance(i, list) or hasattr(i, "produced_ms")
    )


def _wrap_build(inner: Any) -> Any:
    def build(self: Any, *args: Any) -> Any:
        part = inner(self, *args)
        write = part.write_batch

        def write_batch(items: list[Any]) -> None:
            t0 = time.time()
            write(items)
            rows = _rows(items)
            if rows:  # not a lone tick
                t1 = time.time()
                WRITES.append((t0, t1, rows))
                if len(WRITES) % 32 == 1:  # reading /proc per write was ~1.4% of the run
                    CPU.append((t1, _cpu()))
                    SCHED[1:] = [(t1, *_schedstat())]
                    if len(SCHED) == 1:
                        SCHED.insert(0, SCHED[0])

        part.write_batch = write_batch
        return part

    return build


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        GCS.append((time.time(), 0.0, info["generation"]))
    elif GCS:
        start, _, gen = GCS[-1]
        GCS[-1] = (start, time.time(), gen)


def _wrap_snapshot(inner: Any) -> Any:
    def snapshot(self: Any) -> Any:
        SNAPSHOTS.append(time.time())
        return inner(self)

    return snapshot


def install() -> None:
    """The wrappers, on the classes the flow is built from."""
    gc.callbacks.append(_on_gc)
    patched = set()
    for module, name in (("flows.stream_entity", "EntityLogic"), ("flows.stream", "EntityLogic"),
                         ("flows.stream_shard", "ShardLogic")):  # fmt: skip
        try:  # the epoch's snapshot pass: whichever logic classes the flow has
            logic = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if logic is not None and logic not in patched:
            logic.snapshot = _wrap_snapshot(logic.snapshot)
            patched.add(logic)
    part = stream_source._ThinPartition
    part.next_batch = _wrap_poll(part.next_batch)  # type: ignore[method-assign]
    dec = stream_decode.Decoder
    dec.__call__ = _wrap_decode(dec.__call__)  # type: ignore[method-assign]
    # the sharded layout's decode and prefetch (one native call per poll decodes and groups;
    # when it falls back it calls the decoder above, whose record then names no poll)
    dec.routed = _wrap_decode(dec.routed)  # type: ignore[method-assign]
    pre = stream_prefetch.Prefetch
    pre.__call__ = _wrap_timed(pre.__call__, PREFETCHES)  # type: ignore[method-assign]
    pre.routed = _wrap_timed(pre.routed, PREFETCHES)  # type: ignore[method-assign]
    sink = stream_sink.OnlineStoreSink
    sink.build = _wrap_build(sink.build)  # type: ignore[method-assign]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _schedstat() -> tuple[float, float]:
    """This thread's seconds on a CPU and waiting in the run queue for one (Linux)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
            run, wait, _ = f.read().split()
        return int(run) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return float("nan"), float("nan")


def dump(path: Path) -> None:
    """The timeline, and the process's CPU seconds from its first to its last poll."""
    with _lock:
        cpu = [(t, c) for t, c in CPU if POLLS and POLLS[0][0] <= t]
        doc = {"polls": POLLS, "stamps": STAMPS, "decodes": DECODES,
               "prefetches": PREFETCHES, "writes": WRITES, "cpu": cpu, "sched": SCHED,
               "gcs": GCS, "snapshots": SNAPSHOTS}  # fmt: skip
        path.write_text(json.dumps(doc))


def main(argv: list[str]) -> int:
    """Runs ``python -m skewless ARGS`` in this process (the command, not an import of
    the command line's code: the bench stays beside it, not above it)."""
    out = Path(argv[0])
    install()
    sys.argv = ["skewless", *argv[1:]]
    try:
        runpy.run_module("skewless", run_name="__main__", alter_sys=True)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    finally:
        dump(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
