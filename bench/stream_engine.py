"""The stream engine's own update and row on the drain's real workload.

The bench stream's events (``bench.stream._simulated``: 200k events, 10 days, seed 5),
5,000 per poll, keyed by card id as the bench topic's messages are, decoded and grouped by
the sharded layout's decoder (``Decoder.routed``: each ``(entity, id)`` group an ``Events``
view of the poll's columns, what the flow's step hands the engine), then per entity and
touched shard one ``skewless_native.update_rows`` call, as the sharded layout's step makes
it, in this thread, without Bytewax, Kafka or Redis:

* ``cpu_us_per_event``: this thread's CPU time in ``update_rows`` over the run, per
  event (both entities: what the drain's engine costs per event);
* ``phases``, per entity, from passes over fresh states cut after a phase
  (``skewless_native.update_rows_upto``; thread CPU time, each pass evolving the states
  as ``update_rows`` does): update µs per event (with the compaction a row's encode
  does), finalize µs per row (the row's as-of-last values), encode µs per row (the state
  bytes), and ``glue_us_per_event``: reading the items and building the results.

The passes alternate for ``rounds`` rounds; each figure is from the medians (and the
least) of the rounds. ``python -m bench.stream_engine [--events N] [--rounds R]``.
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
from flows.stream_io import table_to_messages
from flows.stream_shard import Group, ShardRouter
from flows.stream_source import KafkaBatch

POLL = 5000  # the thin source's batch in a drain


def polls(fs: FeatureSet, table: pa.Table, poll: int = POLL) -> list[list[KafkaBatch]]:
    """The table's messages as the thin source hands them to the decoder, one poll each,
    keyed by card id (``bench.stream._pairs``: the drain's key check passes)."""
    msgs = table_to_messages(table)
    keys: list[bytes | None] = [
        str(c).encode() for c in table.column(fs.primary.join_key).to_pylist()
    ]
    out: list[list[KafkaBatch]] = []
    for lo in range(0, len(msgs), poll):
        values = msgs[lo : lo + poll]
        n = len(values)
        out.append([KafkaBatch(0, list(range(lo, lo + n)), keys[lo : lo + n], values, [1] * n)])
    return out


def routed(fs: FeatureSet, work: list[list[KafkaBatch]]) -> list[list[Group]]:
    """Per poll, per touched shard of each entity: ``(entity, {entity_id: events})`` as
    the flow's decoder groups them (``Decoder.routed``, the key check on): the events an
    ``Events`` view of the poll's columns where the native core has ``decode_groups``,
    as ``update_rows`` reads them in the stream (section 14, docs/perf-plan.md)."""
    plan = compile_plan(fs)
    keys = [(e.name, plan.entity(e.name).key) for e in plan.entities]
    positions = [fs.schema.position(e.join_key) for e in plan.entities]
    decoder = Decoder(plan, check_keys=True, router=ShardRouter(keys, positions))
    return [[group for _, group in decoder.routed(msgs).routed] for msgs in work]


def _contexts(fs: FeatureSet) -> dict[str, _EntityContext]:
    plan = compile_plan(fs)
    return {e.name: _EntityContext(plan, e.name, None) for e in plan.entities}


CUTS = ("update", "finalize", "row", "update_rows")  # update_rows_upto 1, 2, 3; the call
#: None on a native core built before it (then only the whole call is measured)
_UPTO: Any = getattr(native, "update_rows_upto", None)


def run_once(fs: FeatureSet, groups: list[list[Group]], cut: str) -> dict[str, list[float]]:
    """One pass over fresh states to ``cut``: per entity ``[events, rows, cpu seconds]``."""
    ctxs = _contexts(fs)
    states: dict[str, dict[int, Any]] = {name: {} for name in ctxs}
    phase = CUTS.index(cut) + 1
    out = {name: [0.0, 0.0, 0.0] for name in ctxs}
    for poll in groups:
        for entity, by_id in poll:
            ctx, held = ctxs[entity], states[entity]
            new = ctx.core.new_state
            sts = [held.get(i) or held.setdefault(i, new()) for i in by_id]
            batches = list(by_id.values())
            args = (ctx.core, sts, batches, ctx.time_pos, ctx.value_pos)
            c = time.thread_time()
            if phase == 4:
                got = native.update_rows(*args)
                cpu = time.thread_time() - c
                events = sum(len(b) for b in batches)
                rows = sum(1 for g in got if g[4] is not None)
            else:
                events, rows = _UPTO(*args, phase)
                cpu = time.thread_time() - c
            o = out[entity]
            o[0], o[1], o[2] = o[0] + events, o[1] + rows, o[2] + cpu
    return out


def measure(fs: FeatureSet, table: pa.Table, rounds: int = 3, poll: int = POLL) -> dict[str, Any]:
    """The engine over ``table``'s events as the drain routes them (``poll`` per poll),
    ``rounds`` rounds of the passes alternated; medians."""
    groups = routed(fs, polls(fs, table, poll))
    cuts = CUTS if _UPTO is not None else CUTS[-1:]
    got: dict[str, list[dict[str, list[float]]]] = {c: [] for c in cuts}
    for _ in range(rounds):
        for cut in cuts:
            got[cut].append(run_once(fs, groups, cut))
    n = table.num_rows
    calls = [sum(e[2] for e in r.values()) for r in got["update_rows"]]
    first = got["update_rows"][0]
    out: dict[str, Any] = {
        "events": n,
        "entity_events": int(sum(e[0] for e in first.values())),
        "rounds": rounds,
        "poll": poll,
        "cpu_us_per_event": round(statistics.median(calls) / n * 1e6, 2),
        "cpu_us_per_event_min": round(min(calls) / n * 1e6, 2),
        "cpu_us_per_event_rounds": [round(c / n * 1e6, 2) for c in calls],
    }
    if len(cuts) > 1:
        out["phases"] = {name: _phases(n, name, got) for name in first}
    return out


def _phases(n: int, name: str, got: dict[str, list[dict[str, list[float]]]]) -> dict[str, float]:
    """One entity's split: each cut's median CPU seconds over the rounds, differenced."""
    events, rows = got["row"][0][name][0], got["row"][0][name][1]
    cpu = {c: statistics.median(r[name][2] for r in got[c]) for c in CUTS}
    update, finalize = cpu["update"] / events, (cpu["finalize"] - cpu["update"]) / rows
    encode, glue = (cpu["row"] - cpu["finalize"]) / rows, (cpu["update_rows"] - cpu["row"]) / n
    return {
        "events": int(events),
        "rows": int(rows),
        "rows_per_event": round(rows / max(events, 1), 3),
        "update_us_per_event": round(update * 1e6, 3),
        "finalize_us_per_row": round(finalize * 1e6, 3),
        "encode_us_per_row": round(encode * 1e6, 3),
        "glue_us_per_event": round(glue * 1e6, 3),
        "us_per_event": round(cpu["update_rows"] / n * 1e6, 3),
    }


def main() -> None:
    from flows.simulate import SimulationConfig, simulate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    n = args.events  # bench.stream._simulated's density (not imported: it imports this)
    table = simulate(SimulationConfig(events=n, cards=max(n // 30, 10),
                                      merchants=max(n // 300, 5), days=10.0, seed=5))  # fmt: skip
    print(json.dumps(measure(REFERENCE, table, args.rounds), indent=2))


if __name__ == "__main__":
    main()
