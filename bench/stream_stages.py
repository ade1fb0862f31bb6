"""Where a stream event's time goes: the flow's stages run one after another in this
thread, without Bytewax, over the same Kafka topic the drain reads, each timed apart.

CPU figures are this thread's CPU time (``time.thread_time``), so other processes on a
shared machine inflate them less than wall time; the Redis stages also report wall time
(their round trips wait on the server). What Bytewax itself adds (items, keyed routing,
epochs, snapshots) is not here: it is the drain's CPU per event less these stages, and the
floor flows of ``bench/stream_floor.py`` measure it directly.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from bytewax.connectors.kafka import KafkaSource

from features.definitions import FeatureSet
from features.plan import compile_plan
from features.store import StoreConfig
from flows.stream_decode import Decoder
from flows.stream_entity import EntityLogic, _EntityContext
from flows.stream_io import Ingested, LateOut, RowOut
from flows.stream_prefetch import Prefetch
from flows.stream_shard import RowBatch, ShardLogic, ShardRouter
from flows.stream_sink import HeldStates, _StorePartition, latest_rows
from flows.stream_source import ThinKafkaSource

T = TypeVar("T")

STAGES = (
    "kafka source",
    "decode + validate",
    "prefetch",
    "key routing",
    "card step",
    "merchant step",
    "sink encode",
    "redis write",
)


class _Clock:
    """CPU (thread) and wall seconds per stage."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)

    def time(self, stage: str, fn: Callable[..., T], *args: Any) -> T:
        c, w = time.thread_time(), time.perf_counter()
        out = fn(*args)
        self.cpu[stage] += time.thread_time() - c
        self.wall[stage] += time.perf_counter() - w
        return out


def _batches(part: Any) -> Iterator[list[Any]]:
    while True:
        try:
            batch = part.next_batch()
        except StopIteration:
            return
        if batch:
            yield batch


def source_only(brokers: str, topic: str, batch_size: int, thin: bool) -> dict[str, float]:
    """Messages read from the topic's partition 0 to its end: seconds of CPU and wall."""
    cls = ThinKafkaSource if thin else KafkaSource
    source = cls([brokers], [topic], False, batch_size=batch_size, raise_on_errors=False,
                 add_config={"fetch.wait.max.ms": "20"})  # fmt: skip
    part = source.build_part("bench", f"0-{topic}", None)
    n = 0
    c, w = time.thread_time(), time.perf_counter()
    for batch in _batches(part):
        n += sum(len(b.values) for b in batch) if thin else len(batch)
    cpu, wall = time.thread_time() - c, time.perf_counter() - w
    part.close()
    return {"messages": n, "cpu_s": cpu, "wall_s": wall}


def _route(key: Callable[[Any], Any], valid: list[Ingested]) -> dict[str, list[Ingested]]:
    """What ``key_on`` computes, grouped per key as Bytewax hands a batch to each key."""
    groups: dict[str, list[Ingested]] = defaultdict(list)
    for item in valid:
        groups[str(key(item.event))].append(item)
    return groups


def _of_entity(name: str, routed: list[Any]) -> list[Any]:
    """One entity's items of a routed poll (the flow's one step takes them all)."""
    return [x for x in routed if x[1][0] == name]


def _step(ctx: Any, logics: dict[str, EntityLogic], groups: dict[str, list[Ingested]]) -> list[Any]:
    out: list[Any] = []
    for k, items in groups.items():
        logic = logics.get(k)
        if logic is None:
            logic = logics[k] = EntityLogic(ctx, None)
        out.extend(logic.on_batch(items)[0])
    return out


def _shard_step(ctx: Any, shards: dict[str, ShardLogic], routed: list[Any]) -> list[Any]:
    """The sharded layout's step (``--state-layout sharded``): one logic per key shard
    (the flow runs every entity's shards in one step; here each entity's are timed apart)."""
    out: list[Any] = []
    makes = {ctx.name: lambda r: EntityLogic(ctx, r)}
    for k, group in routed:
        logic = shards.get(k)
        if logic is None:
            logic = shards[k] = ShardLogic(makes, None, False, None)
        out += logic.on_batch([group])[0]  # rows as RowBatch items, as the sink gets them
    return out


def stages(
    fs: FeatureSet,
    brokers: str,
    topic: str,
    redis_url: str,
    workdir: Any,
    batch_size: int,
    thin: bool = True,
    sharded: bool = False,
) -> dict[str, Any]:
    """Every stage over the topic's partition 0; µs per event of each (CPU and wall).
    ``sharded``: as the flow's sharded layout, the decoder groups each poll (decode +
    validate includes the shard routing; key routing is only each entity's share of the
    groups), the prefetch reads the groups' ids, the entity steps hold shards."""
    plan = compile_plan(fs)
    store = StoreConfig(redis_url=redis_url, workdir=workdir)
    clock = _Clock()
    cls = ThinKafkaSource if thin else KafkaSource
    source = cls([brokers], [topic], False, batch_size=batch_size, raise_on_errors=False,
                 add_config={"fetch.wait.max.ms": "20"})  # fmt: skip
    part = source.build_part("bench", f"0-{topic}", None)
    batches = _batches(part)
    keys = [(e.name, plan.entity(e.name).key) for e in plan.entities]
    positions = [fs.schema.position(e.join_key) for e in plan.entities]
    # sharded: the flow's decoder, which groups each poll for every entity as it decodes
    decoder = Decoder(
        plan, check_keys=True, router=ShardRouter(keys, positions) if sharded else None
    )
    prefetch = Prefetch(plan, store, None)
    held = HeldStates()
    sink = _StorePartition(store, fs, held, 0)
    steps: list[tuple[str, Any, Any, dict[str, Any]]] = []
    for entity in plan.entities:
        ctx = _EntityContext(plan, entity.name, store, prefetch, held, None, snapshots=False)
        steps.append((entity.name, ctx, ctx.plan.key, {}))
    events = 0
    while (msgs := clock.time("kafka source", next, batches, None)) is not None:
        rows: list[Any] = []
        if sharded:  # decode + validate includes the grouping (the flow's Decoder.routed)
            poll = clock.time("decode + validate", decoder.routed, msgs)
            poll = clock.time("prefetch", prefetch.routed, poll)
            events += sum(
                len(v) for _, (e, g) in poll.routed if e == steps[0][0] for v in g.values()
            )
            for name, ctx, _, logics in steps:
                routed = clock.time("key routing", _of_entity, name, poll.routed)
                rows += clock.time(f"{name} step", _shard_step, ctx, logics, routed)
        else:
            decoded = clock.time("decode + validate", decoder, msgs)
            decoded = clock.time("prefetch", prefetch, decoded)
            valid = [x for x in decoded if type(x) is Ingested]
            events += len(valid)
            for name, ctx, key, logics in steps:
                groups = clock.time("key routing", _route, key, valid)
                rows += clock.time(f"{name} step", _step, ctx, logics, groups)
        rows = [r for r in rows if type(r) is not LateOut]
        clock.time("sink encode", _encode, sink, rows)
        clock.time("redis write", sink.write_batch, rows)
    part.close()
    # the sink's write_batch encodes again: its encode share is moved to its own stage
    clock.cpu["redis write"] -= clock.cpu["sink encode"]
    clock.wall["redis write"] -= clock.wall["sink encode"]
    per = 1e6 / max(events, 1)
    return {
        "events": events,
        "source": "thin" if thin else "bytewax",
        "state_layout": "sharded" if sharded else "entity",
        "cpu_us_per_event": {s: round(clock.cpu[s] * per, 2) for s in STAGES},
        "wall_us_per_event": {s: round(clock.wall[s] * per, 2) for s in STAGES},
        "cpu_us_per_event_total": round(sum(clock.cpu[s] for s in STAGES) * per, 2),
    }


def _encode(sink: _StorePartition, items: list[Any]) -> bytes:
    """What the sink's write makes of these items before it sends them: the rows it takes
    (``latest_rows``) and its pipeline's bytes (``RedisStore.write_rows``' batch encoder),
    not sent. Until session 11 this encoded row by row (``HsetEncoder.command``: a list
    and a ``bytes`` per row), which the sink no longer does: the last bench's "sink
    encode" (6.1 µs per event) exceeded the whole write's (its "redis write" -2.2)."""
    by_entity, _ = latest_rows([x for x in items if type(x) is RowOut or type(x) is RowBatch])
    store: Any = sink.store
    if store._pipeline is None or store._hset_rows is None:  # a core built before it
        return b"".join(
            store._hset[e].command(r.entity_id, list(r.values), r.state, r.event_ts_ms)
            for e, rows in by_entity.items()
            for r in rows
        )
    payload, _ = store._pipeline([(store._hset_rows[e], r) for e, r in by_entity.items()], b"")
    return bytes(payload)
