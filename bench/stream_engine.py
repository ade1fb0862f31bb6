"""The stream engine's own update and row on the drain's real workload.

The bench stream's events (``bench.stream._simulated``: 200k events, 10 days, seed 5),
parsed by the stream's decoder, 5,000 per poll, routed by the flow's shard router
(``flows.stream_shard.ShardRouter``), then per entity and touched shard one
``skewless_native.update_rows`` call, as the sharded layout's step makes it, in this
thread, without Bytewax, Kafka or Redis:

* ``cpu_us_per_event``: this thread's CPU time in ``update_rows`` over the run, per
  event (both entities: what the drain's engine costs per event);
* ``phases`` (``skewless_native.update_rows_timed``, a second run over fresh states):
  per entity, update µs per event, finalize and encode µs per row (the row's as-of-last
  values, then the state bytes with their compaction), wall clock inside the native
  code, and rows per event.

Runs alternate the two for ``rounds`` rounds; each figure is the median.
``python -m bench.stream_engine [--events N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import pyarrow as pa

from features.definitions import FeatureSet
from features.native import native
from features.plan import compile_plan
from features.reference import REFERENCE
from flows.stream_decode import Decoder
from flows.stream_entity import _EntityContext
from flows.stream_io import Ingested, table_to_messages
from flows.stream_shard import Group, ShardRouter
from flows.stream_source import KafkaBatch

POLL = 5000  # the thin source's batch in a drain


def polls(fs: FeatureSet, table: pa.Table, poll: int = POLL) -> list[list[Ingested]]:
    """The table's events as the stream decodes them, one list per poll."""
    plan = compile_plan(fs)
    decoder = Decoder(plan)
    msgs = table_to_messages(table)
    out: list[list[Ingested]] = []
    for lo in range(0, len(msgs), poll):
        values = msgs[lo : lo + poll]
        n = len(values)
        batch = KafkaBatch(0, list(range(lo, lo + n)), [None] * n, values, [1] * n)
        out.append([x for x in decoder([batch]) if type(x) is Ingested])
    return out


def routed(fs: FeatureSet, work: list[list[Ingested]]) -> list[list[Group]]:
    """Per poll, per touched shard of each entity: ``(entity, {entity_id: [events]})``,
    the flow's router's groups."""
    plan = compile_plan(fs)
    keys = [(e.name, plan.entity(e.name).key) for e in plan.entities]
    positions = [fs.schema.position(e.join_key) for e in plan.entities]
    router = ShardRouter(keys, positions)
    return [[group for _, group in router(items)] for items in work]


def _contexts(fs: FeatureSet) -> dict[str, _EntityContext]:
    plan = compile_plan(fs)
    return {e.name: _EntityContext(plan, e.name, None) for e in plan.entities}


def run_once(fs: FeatureSet, groups: list[list[Group]], timed: bool) -> dict[str, Any]:
    """One pass over fresh states: thread CPU seconds in the engine calls, and with
    ``timed`` the phases' nanoseconds per entity."""
    ctxs = _contexts(fs)
    states: dict[str, dict[int, Any]] = {name: {} for name in ctxs}
    call: Any = native.update_rows_timed if timed else native.update_rows
    phases = {name: [0, 0, 0, 0, 0] for name in ctxs}  # events, rows, update, finalize, encode
    cpu = 0.0
    for poll in groups:
        for entity, by_id in poll:
            ctx, held = ctxs[entity], states[entity]
            new = ctx.core.new_state
            sts = [held.get(i) or held.setdefault(i, new()) for i in by_id]
            batches = list(by_id.values())
            c = time.thread_time()
            got = call(ctx.core, sts, batches, ctx.time_pos, ctx.value_pos)
            cpu += time.thread_time() - c
            if timed:
                p = phases[entity]
                for k, v in enumerate(got):
                    p[k] += v
    return {"cpu_s": cpu, "phases": phases if timed else None}


def measure(fs: FeatureSet, table: pa.Table, rounds: int = 3, poll: int = POLL) -> dict[str, Any]:
    """The engine over ``table``'s events as the drain routes them (``poll`` per poll),
    ``rounds`` alternated rounds of the plain call and the timed one; medians."""
    groups = routed(fs, polls(fs, table, poll))
    events = sum(len(by_id[i]) for poll in groups for _, by_id in poll for i in by_id)
    n = table.num_rows
    plain: list[float] = []
    timed: list[dict[str, list[int]]] = []
    has_timed = hasattr(native, "update_rows_timed")
    for _ in range(rounds):
        plain.append(run_once(fs, groups, timed=False)["cpu_s"])
        if has_timed:
            timed.append(run_once(fs, groups, timed=True)["phases"])
    out: dict[str, Any] = {
        "events": n,
        "entity_events": events,
        "rounds": rounds,
        "poll": poll,
        "cpu_us_per_event": round(statistics.median(plain) / n * 1e6, 2),
        "cpu_us_per_event_rounds": [round(c / n * 1e6, 2) for c in plain],
    }
    if timed:
        out["phases"] = {name: _phases(n, [t[name] for t in timed]) for name in timed[0]}
        out["phases_us_per_event"] = round(
            sum(p["us_per_event"] for p in out["phases"].values()), 2
        )
    return out


def _phases(n: int, got: list[list[int]]) -> dict[str, float]:
    """Medians over rounds: update per entity event, finalize and encode per row."""

    def med(k: int, per: int) -> float:
        return statistics.median(g[k] for g in got) / 1e3 / max(per, 1)

    events, rows = got[0][0], got[0][1]
    update, finalize, encode = med(2, events), med(3, rows), med(4, rows)
    return {
        "events": events,
        "rows": rows,
        "rows_per_event": round(rows / max(events, 1), 3),
        "update_us_per_event": round(update, 3),
        "finalize_us_per_row": round(finalize, 3),
        "encode_us_per_row": round(encode, 3),
        "us_per_event": round((update * events + (finalize + encode) * rows) / n, 3),
    }


def main() -> None:
    from bench.stream import _simulated

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    table = _simulated(args.events, days=10.0, seed=5)
    print(json.dumps(measure(REFERENCE, table, args.rounds), indent=2))


if __name__ == "__main__":
    main()
