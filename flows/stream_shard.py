"""The shard-batched state layout (``skewless stream --state-layout sharded``).

Bytewax costs 3.1–4.6 µs of CPU per keyed item and one item per key shard per poll
1.5–2.0 µs per event (docs/perf-plan.md, "The Bytewax floor"). So here a poll's valid
events travel as one list, not one item per event; per entity, one router groups them by
shard (a stable hash of the entity id, :data:`SHARDS` of them) and entity id, and sends
one ``(shard, {entity_id: [events]})`` item per touched shard. A :class:`ShardLogic` holds
the shard's entities, one :class:`flows.stream.EntityLogic` each, and hands every entity
its own events in arrival order: dedup, lateness, covered-until, prefetched and evicted
start states, the loss-rewrite registry and idle eviction are the entity layout's own
code, so the online rows and the late output are the same in both layouts.

Recovery: a shard's snapshot holds its entities' snapshots (an unchanged entity's is
reused, not remade) and the shard count. The stateful steps' ids name the count
(``card_shards64``), so a recovery directory written by the other layout, or with another
count, is refused by :func:`check_recovery` before the flow starts, naming the option.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.operators import StatefulBatchLogic

from flows.stream_evict import Evicted
from flows.stream_io import DeadLetter, Ingested, RowOut

LAYOUTS = ("entity", "sharded")
SHARDS = 64  # a power of two: the shard is the top bits of a multiplicative hash
_BITS = SHARDS.bit_length() - 1
_MIX, _MASK = 0x9E3779B97F4A7C15, (1 << 64) - 1  # Fibonacci hashing: ids may be sequential


def shard_of(entity_id: int) -> int:
    """The entity's shard: stable across runs and processes (no salted ``hash``)."""
    return ((entity_id * _MIX) & _MASK) >> (64 - _BITS)


def step_id(entity: str) -> str:
    """The sharded stateful step of ``entity``: distinct from the entity layout's
    (``entity``), and naming the shard count, so Bytewax never mixes their snapshots."""
    return f"{entity}_shards{SHARDS}"


class RowBatch(list[RowOut]):
    """A shard's new rows of one batch: one Bytewax item instead of one per entity (the
    sink takes it apart)."""


Logic = Any  # flows.stream.EntityLogic (imported by the flow, not here: no cycle)


class ShardRouter:
    """One entity's router: a poll's events -> ``(shard, {entity_id: [events]})`` items,
    each entity's events in arrival order."""

    def __init__(self, key: Callable[[Any], int]) -> None:
        self.key = key

    def __call__(self, items: list[Any]) -> list[tuple[str, dict[int, list[Ingested]]]]:
        key = self.key
        shards: dict[int, dict[int, list[Ingested]]] = {}
        for item in items:
            if type(item) is not Ingested:
                continue
            entity_id = key(item.event)
            s = ((entity_id * _MIX) & _MASK) >> (64 - _BITS)
            group = shards.get(s)
            if group is None:
                group = shards[s] = {}
            events = group.get(entity_id)
            if events is None:
                group[entity_id] = [item]
            else:
                events.append(item)
        return [(str(s), group) for s, group in shards.items()]


def dead_letters(items: list[Any]) -> list[DeadLetter]:
    return [x for x in items if type(x) is DeadLetter]


class ShardLogic(StatefulBatchLogic[dict[int, list[Ingested]], Any, Any]):
    """One shard of one entity: ``{entity_id: EntityLogic}``. Kept while it holds any
    entity; with idle eviction its entities are kept in the order they were last touched,
    so the next one due is the first."""

    def __init__(
        self,
        make: Callable[[Any], Logic],
        evict_after_s: float | None,
        snapshots: bool,
        resume: tuple[int, list[Any]] | None,
    ) -> None:
        self.make, self.snapshots = make, snapshots
        self.after = None if evict_after_s is None else timedelta(seconds=evict_after_s)
        self.entities: dict[int, Logic] = OrderedDict() if self.after is not None else {}
        self.snaps: dict[int, Any] = {}  # entity snapshots still valid (untouched since)
        if resume is not None:
            shards, snaps = resume
            if shards != SHARDS:
                raise ValueError(
                    f"--state-layout sharded: the recovery snapshot has {shards} shards, this "
                    f"build {SHARDS}; resume with the build that wrote it"
                )
            for snap in snaps:
                logic = make(snap)
                self.entities[logic.entity_id] = logic
                self.snaps[logic.entity_id] = snap

    def on_batch(self, values: list[dict[int, list[Ingested]]]) -> tuple[Iterable[Any], bool]:
        groups = values[0]
        if len(values) > 1:  # several polls' items for the shard: keep each entity's order
            groups = {}
            for g in values:
                for entity_id, events in g.items():
                    have = groups.get(entity_id)
                    groups[entity_id] = events if have is None else have + events
        entities, snaps, make = self.entities, self.snaps, self.make
        rows = RowBatch()
        out: list[Any] = [rows]
        for entity_id, events in groups.items():
            logic = entities.get(entity_id)
            if logic is None:
                logic = entities[entity_id] = make(None)
            elif self.after is not None:
                entities.move_to_end(entity_id)  # type: ignore[attr-defined]
            if snaps:
                snaps.pop(entity_id, None)
            got, _ = logic.on_batch(events)
            for x in got:
                if type(x) is RowOut:
                    rows.append(x)
                else:
                    out.append(x)
        if not rows:
            out.pop(0)
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.after is None or not self.entities:
            return None
        oldest = next(iter(self.entities.values()))
        when: datetime = oldest.touched + self.after
        return when

    def on_notify(self) -> tuple[Iterable[Evicted], bool]:
        """Evict every entity idle past ``--evict-after`` (its exact snapshot goes to the
        sink); the shard goes too once it holds none."""
        out: list[Evicted] = []
        if self.after is not None:
            now = datetime.now(UTC)
            entities = self.entities
            while entities:
                entity_id, logic = next(iter(entities.items()))
                if now < logic.touched + self.after:
                    break
                gone, discard = logic.on_notify()
                if discard is not StatefulBatchLogic.DISCARD:
                    break  # not evictable (cannot happen after a batch): keep it
                out.extend(gone)
                del entities[entity_id]
                self.snaps.pop(entity_id, None)
        if self.entities:
            return out, StatefulBatchLogic.RETAIN
        return out, StatefulBatchLogic.DISCARD

    def snapshot(self) -> tuple[int, list[Any]]:
        if not self.snapshots:  # no recovery: Bytewax asks anyway, and drops it
            return SHARDS, []
        snaps = self.snaps
        out = []
        for entity_id, logic in self.entities.items():
            snap = snaps.get(entity_id)
            if snap is None:
                snap = snaps[entity_id] = logic.snapshot()
            out.append(snap)
        return SHARDS, out


def shard_step(
    name: str,
    events: Any,
    key: Callable[[Any], int],
    make: Callable[[Any], Logic],
    evict_after_s: float | None,
    snapshots: bool,
) -> Any:
    """``events``: a stream of lists (one per poll). Returns the step's output stream:
    rows (as :class:`RowBatch` items), late events and evictions, unkeyed."""
    routed = op.flat_map("shard_" + name, events, ShardRouter(key))
    logic = op.stateful_batch(
        step_id(name), routed, lambda resume: ShardLogic(make, evict_after_s, snapshots, resume)
    )
    return op.key_rm("unshard_" + name, logic)


def check_recovery(directory: Path, entities: Iterable[str], layout: str) -> None:
    """Refuse a recovery directory whose snapshots another ``--state-layout`` (or shard
    count) wrote: resuming it would restart every state empty from resumed offsets."""
    names = set(entities)
    found: set[str] = set()
    for part in sorted(directory.glob("*.sqlite3")):
        con = sqlite3.connect(f"file:{part}?mode=ro", uri=True)
        try:
            ids = [r[0] for r in con.execute("SELECT DISTINCT step_id FROM snaps")]
        except sqlite3.DatabaseError:
            continue  # not a Bytewax recovery part: Bytewax itself will say so
        finally:
            con.close()
        for sid in ids:
            last = sid.rsplit(".", 1)[-1]
            base, _, count = last.partition("_shards")
            if base in names:
                found.add("entity" if not count else f"sharded ({count} shards)")
    want = "entity" if layout == "entity" else f"sharded ({SHARDS} shards)"
    other = sorted(found - {want})
    if other:
        raise ValueError(
            f"--state-layout {layout}: recovery directory {directory} holds snapshots of "
            f"--state-layout {other[0]}; resume with that layout or use a new -r directory"
        )
