"""The Bytewax floor: the stream's flow shape doing nothing, over the drain's topic.

``per-event``: KafkaSource -> key_on card and key_on merchant (two keyed steps, as the
flow) -> ``stateful_batch`` per key that keeps nothing -> an output that discards. Its
events/s bounds any flow with one Bytewax item per event per entity on this machine.
``thin``: the same with :class:`flows.stream_source.ThinKafkaSource` (one item per poll,
split into per-event items). ``batched``: the thin source's batches grouped per shard of
keys (one item per shard and poll, no per-event items). The keys are the message key (the
card) and a cheap second key, so that only Bytewax's own cost is measured.

Each variant runs in a fresh process (``python -m bench.stream_floor VARIANT BROKERS
TOPIC``), one worker, and prints its JSON: events, seconds (wall, after the flow is
built) and CPU seconds of the process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

VARIANTS = ("per-event", "thin", "batched")
SHARDS = 16  # keyed items per poll in ``batched``
ROOT = Path(__file__).resolve().parents[1]


def _flow(variant: str, brokers: str, topic: str, batch_size: int) -> Any:
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.dataflow import Dataflow
    from bytewax.operators import StatefulBatchLogic
    from bytewax.testing import TestingSink

    from flows.stream_source import ThinKafkaSource

    class Nothing(StatefulBatchLogic[Any, Any, Any]):  # keeps and emits nothing
        def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
            return [], StatefulBatchLogic.RETAIN

        def snapshot(self) -> Any:
            return None

    counted: list[int] = []
    flow = Dataflow("floor")
    cls = KafkaSource if variant == "per-event" else ThinKafkaSource
    src = cls([brokers], [topic], False, batch_size=batch_size, raise_on_errors=False,
              add_config={"fetch.wait.max.ms": "20"})  # fmt: skip
    msgs: Any = op.input("in", flow, src)
    pairs: Any
    if variant == "per-event":
        pairs = op.map("kv", msgs, lambda m: (m.key or b"", m.offset))
    else:
        pairs = op.flat_map("kv", msgs, lambda b: zip(b.keys, b.offsets, strict=True))
    if variant == "batched":

        def shards(b: Any, i: int) -> list[tuple[str, list[Any]]]:
            groups: dict[int, list[Any]] = {}
            for k in b.keys if i == 0 else b.offsets:
                groups.setdefault(hash(k) % SHARDS, []).append(k)
            return [(str(s), g) for s, g in groups.items()]

        keyed: list[Any] = [op.flat_map(f"shard{i}", msgs, partial(shards, i=i)) for i in (0, 1)]
    else:
        keyed = [
            op.key_on("key0", pairs, lambda p: p[0].decode()),
            op.key_on("key1", pairs, lambda p: str(p[1] % 667)),
        ]
    outs = [op.stateful_batch(f"step{i}", k, lambda _: Nothing()) for i, k in enumerate(keyed)]
    op.output("out", op.merge("all", *outs), TestingSink(counted))
    return flow


def _child(variant: str, brokers: str, topic: str, batch_size: int) -> dict[str, Any]:
    from bytewax.testing import run_main

    flow = _flow(variant, brokers, topic, batch_size)
    c, w = time.process_time(), time.perf_counter()
    run_main(flow)
    return {"variant": variant, "seconds": time.perf_counter() - w,
            "cpu_seconds": time.process_time() - c}  # fmt: skip


def run(variant: str, brokers: str, topic: str, events: int, batch_size: int) -> dict[str, Any]:
    """One variant in a fresh process: its events/s (wall and per CPU second)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.stream_floor", variant, brokers, topic, str(batch_size)],
        cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"floor {variant} failed: {done.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["events_per_s"] = round(events / max(out["seconds"], 1e-9))
    out["events_per_cpu_s"] = round(events / max(out["cpu_seconds"], 1e-9))
    out["seconds"], out["cpu_seconds"] = round(out["seconds"], 2), round(out["cpu_seconds"], 2)
    return out


if __name__ == "__main__":
    v, b, t, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    print(json.dumps(_child(v, b, t, size)))
