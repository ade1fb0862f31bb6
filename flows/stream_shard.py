"""The shard-batched state layout (``skewless stream --state-layout sharded``).

Bytewax costs 3.1–4.6 µs of CPU per keyed item and one item per key shard per poll
1.5–2.0 µs per event (docs/perf-plan.md, "The Bytewax floor"). So here a poll's valid
events travel as one :class:`Poll`, not one item per event; the decoder groups them as it
decodes (``Decoder.routed``; :class:`ShardRouter` for what it leaves to Python), for every
entity, by shard (a stable hash of the entity id, :data:`SHARDS` of them) and entity
id, and sends one ``(entity/shard, (entity, {entity_id: [events]}))`` item per touched
shard of each entity, all into ONE stateful step (:data:`STEP`): so an activation's rows
leave as one Timely container and the sink writes once per poll (one step per entity gave two
containers, two Redis writes). A :class:`ShardLogic` holds one shard of one entity, one
:class:`flows.stream.EntityLogic` per entity id, and hands every entity its own events in
arrival order: dedup, lateness, covered-until, prefetched and evicted start states, the
loss-rewrite registry and idle eviction are the entity layout's own code, so the online
rows and the late output are the same in both layouts.

Recovery: a shard's snapshot holds its entity name, its entities' snapshots (an unchanged
entity's is reused, not remade) and the shard count. The stateful step's id names the
count (``shards64``), so a recovery directory written by the entity layout, by the
earlier one-step-per-entity sharded layout (``card_shards64``) or with another count is
refused by :func:`check_recovery` before the flow starts, naming the option.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import bytewax.operators as op
from bytewax.operators import StatefulBatchLogic

from features.native import native
from flows.stream_evict import Evicted
from flows.stream_io import DeadLetter, Ingested, RowOut

LAYOUTS = ("entity", "sharded")
CHOICES = ("auto", *LAYOUTS)  # --state-layout; auto: resolve_layout
SHARDS = 64  # a power of two: the shard is the top bits of a multiplicative hash
BITS = SHARDS.bit_length() - 1
_MIX, _MASK = 0x9E3779B97F4A7C15, (1 << 64) - 1  # Fibonacci hashing: ids may be sequential


def shard_of(entity_id: int) -> int:
    """The entity's shard: stable across runs and processes (no salted ``hash``)."""
    return ((entity_id * _MIX) & _MASK) >> (64 - BITS)


#: the one stateful step of every entity's shards: distinct from the entity layout's step
#: ids (the entity names) and naming the shard count, so Bytewax never mixes snapshots
STEP = f"shards{SHARDS}"


def step_id(entity: str) -> str:
    """The earlier sharded layout's step of ``entity`` (one step per entity): refused on
    resume (:func:`check_recovery`), never built."""
    return f"{entity}_shards{SHARDS}"


def shard_key(entity: str, shard: int) -> str:
    """The Bytewax state key of one shard of one entity."""
    return f"{entity}/{shard}"


class RowBatch(list[RowOut]):
    """A shard's new rows of one batch: one Bytewax item instead of one per entity (the
    sink takes it apart). ``shard``: ``(entity, shard)`` of its rows (None: not known), one
    row per entity id. Two batches of different shards never hold the same entity, so the
    sink takes the rows of a write whose batches are all of distinct shards as they are,
    without a per-row dedup (the same rows, in the same order)."""

    __slots__ = ("shard",)

    def __init__(self, rows: Iterable[RowOut] = (), shard: tuple[str, int] | None = None) -> None:
        super().__init__(rows)
        self.shard = shard


Logic = Any  # flows.stream.EntityLogic (imported by the flow, not here: no cycle)


#: (entity, {entity_id: events}): the events a list of ``Ingested`` or, from
#: ``Decoder.routed``, a ``skewless_native.Events`` (a view of the poll's columns that
#: makes an ``Ingested`` only when asked; it pickles as their list)
Group = tuple[str, Mapping[int, Sequence[Ingested]]]


class ShardRouter:
    """Every entity's router: a poll's events -> one ``(entity/shard, (entity, {entity_id:
    [events]}))`` item per touched shard of each entity, each entity's events in arrival
    order. With the key fields' ``positions`` in the event record, one native call
    groups the poll for every entity (``skewless_native.route_shards``), the same groups
    as the Python loop."""

    def __init__(
        self,
        keys: Sequence[tuple[str, Callable[[Any], int]]],
        positions: Sequence[int] | None = None,
    ) -> None:
        self.keys = list(keys)
        self.names = {  # the state keys, made once
            name: [shard_key(name, s) for s in range(SHARDS)] for name, _ in self.keys
        }
        self.positions = None if positions is None else list(positions)
        self.native: Any = getattr(native, "route_shards", None) if positions else None

    def __call__(self, items: list[Any]) -> list[tuple[str, Group]]:
        if self.native is not None:
            got = self.native(items, self.positions, BITS, Ingested)
            if got is not None:  # else an id beyond int64: the Python loop decides
                return self.items(got)
        return self.route(items)

    def items(self, got: list[list[tuple[int, dict[int, list[Ingested]]]]]) -> list[Any]:
        """The step's items from native groups (per entity: ``(shard, {id: [events]})``)."""
        out: list[tuple[str, Group]] = []
        for (name, _), shards in zip(self.keys, got, strict=True):
            names = self.names[name]
            out += [(names[s], (name, group)) for s, group in shards]
        return out

    def route(self, items: list[Any]) -> list[tuple[str, Group]]:
        """The Python loop (and the reference the native call is held to)."""
        events = [x for x in items if type(x) is Ingested]
        out: list[tuple[str, Group]] = []
        shift = 64 - BITS
        for name, key in self.keys:
            shards: dict[int, dict[int, list[Ingested]]] = {}
            for item in events:
                entity_id = key(item.event)
                s = ((entity_id * _MIX) & _MASK) >> shift
                group = shards.get(s)
                if group is None:
                    group = shards[s] = {}
                have = group.get(entity_id)
                if have is None:
                    group[entity_id] = [item]
                else:
                    have.append(item)
            names = self.names[name]
            out += [(names[s], (name, group)) for s, group in shards.items()]
        return out


class Poll(NamedTuple):
    """One decoder call's output in the sharded layout (``Decoder.routed``): the shard
    step's items, already grouped, and the dead letters. Between decode and the shard step
    no step looks at an event one by one (the prefetch reads the groups' ids)."""

    routed: list[tuple[str, Group]]
    dead: list[DeadLetter]


def dead_letters(poll: Poll) -> list[DeadLetter]:
    return poll.dead


def shard_items(poll: Poll) -> list[tuple[str, Group]]:
    return poll.routed


class ShardLogic(StatefulBatchLogic[Group, Any, Any]):
    """One shard of one entity: ``{entity_id: EntityLogic}``. Bytewax's builder gets no
    key, so the logic learns its entity from its first item (or its snapshot) and builds
    entity logics with ``makes[entity]``. Kept while it holds any entity; with idle
    eviction its entities are kept in the order they were last touched, so the next one
    due is the first."""

    def __init__(
        self,
        makes: Mapping[str, Callable[[Any], Logic]],
        evict_after_s: float | None,
        snapshots: bool,
        resume: tuple[int, str, list[Any]] | None,
    ) -> None:
        self.makes, self.snapshots = makes, snapshots
        self.entity = ""  # known at the first batch or from the snapshot
        self.make: Callable[[Any], Logic] | None = None
        self.after = None if evict_after_s is None else timedelta(seconds=evict_after_s)
        self.entities: dict[int, Logic] = OrderedDict() if self.after is not None else {}
        self.snaps: dict[int, Any] = {}  # entity snapshots still valid (untouched since)
        if resume is not None:
            if len(resume) != 3 or resume[0] != SHARDS:
                raise ValueError(
                    f"--state-layout sharded: the recovery snapshot has {resume[0]} shards, "
                    f"this build {SHARDS} in one step; resume with the build that wrote it"
                )
            _, entity, snaps = resume
            make = self._learn(entity)
            for snap in snaps:
                logic = make(snap)
                self.entities[logic.entity_id] = logic
                self.snaps[logic.entity_id] = snap

    def _learn(self, entity: str) -> Callable[[Any], Logic]:
        self.entity, self.make = entity, self.makes[entity]
        return self.make

    def on_batch(self, values: list[Group]) -> tuple[Iterable[Any], bool]:
        entity, groups = values[0]
        if len(values) > 1:  # several polls' items for the shard: keep each entity's order
            groups = {}
            for _, g in values:
                for entity_id, events in g.items():
                    have = groups.get(entity_id)
                    groups[entity_id] = events if have is None else [*have, *events]
        make = self.make or self._learn(entity)
        entities, snaps = self.entities, self.snaps
        logics, batches = [], list(groups.values())
        for entity_id in groups:
            logic = entities.get(entity_id)
            if logic is None:
                logic = entities[entity_id] = make(None)
            elif self.after is not None:
                entities.move_to_end(entity_id)  # type: ignore[attr-defined]
            if snaps:
                snaps.pop(entity_id, None)
            logics.append(logic)
        ctx: Any = getattr(logics[0], "ctx", None)
        update_rows = None if ctx is None else ctx.update_rows
        got: list[Any] = []
        if update_rows is not None:  # every entity's update and row in one native call
            states = [
                logic.begin(events, i)
                for logic, events, i in zip(logics, batches, groups, strict=True)
            ]
            done = update_rows(ctx.core, states, batches, ctx.time_pos, ctx.value_pos)
            for logic, events, d in zip(logics, batches, done, strict=True):
                logic.end(events, *d, got)
        else:
            for logic, events in zip(logics, batches, strict=True):
                got += logic.on_batch(list(events))[0]
        rows = RowBatch()
        out: list[Any] = [rows]
        for x in got:
            if type(x) is RowOut:
                rows.append(x)
            else:
                out.append(x)
        if rows:
            rows.shard = (entity, shard_of(rows[0].row.entity_id))
        else:
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

    def snapshot(self) -> tuple[int, str, list[Any]]:
        if not self.snapshots:  # no recovery: Bytewax asks anyway, and drops it
            return SHARDS, self.entity, []
        snaps = self.snaps
        out = []
        for entity_id, logic in self.entities.items():
            snap = snaps.get(entity_id)
            if snap is None:
                snap = snaps[entity_id] = logic.snapshot()
            out.append(snap)
        return SHARDS, self.entity, out


def shard_step(
    polls: Any,
    makes: Mapping[str, Callable[[Any], Logic]],
    evict_after_s: float | None,
    snapshots: bool,
) -> Any:
    """``polls``: a stream of :class:`Poll` (routed by ``Decoder.routed``); ``makes``: each
    entity's logic builder. Returns the one step's output stream: rows (as
    :class:`RowBatch` items), late events and evictions of every entity, unkeyed."""
    routed = op.flat_map("shard", polls, shard_items)
    logic = op.stateful_batch(
        STEP, routed, lambda resume: ShardLogic(makes, evict_after_s, snapshots, resume)
    )
    return op.key_rm("unshard", logic)


def _layout_of(step: str, entities: set[str]) -> str | None:
    """The layout a stateful step id was written by (None: not a state step)."""
    if step in entities:
        return "entity"
    base, _, count = step.rpartition("_shards")
    if base in entities and count.isdigit():
        return f"sharded ({count} shards) of an earlier build (one step per entity)"
    if step.startswith("shards") and step[6:].isdigit():
        return f"sharded ({step[6:]} shards)"
    return None


def recovery_layouts(directory: Path, entities: Iterable[str]) -> set[str]:
    """The layouts whose snapshots ``directory`` holds (``entity``, ``sharded (64 shards)``,
    or an earlier build's)."""
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
            written = _layout_of(sid.rsplit(".", 1)[-1], names)
            if written is not None:
                found.add(written)
    return found


def resolve_layout(layout: str, directory: Path | None, entities: Iterable[str]) -> str:
    """``--state-layout auto`` (the default): ``sharded`` without a recovery directory (less
    CPU per event, one write per poll); with one, the layout its snapshots were written in,
    else ``entity``: a sharded snapshot rewrites every entity of each touched shard, 7–40x
    the entity layout's bytes per epoch (docs/perf-plan.md, stream section 8)."""
    if layout != "auto":
        return layout
    if directory is None:
        return "sharded"
    found = recovery_layouts(directory, entities) if directory.exists() else set()
    return "sharded" if found == {f"sharded ({SHARDS} shards)"} else "entity"


def check_recovery(directory: Path, entities: Iterable[str], layout: str) -> None:
    """Refuse a recovery directory whose snapshots another ``--state-layout`` (or shard
    count, or an earlier build's sharded steps) wrote: resuming it would restart every
    state empty from resumed offsets."""
    found = recovery_layouts(directory, entities)
    want = "entity" if layout == "entity" else f"sharded ({SHARDS} shards)"
    other = sorted(found - {want})
    if other:
        how = "the build that wrote it" if "earlier build" in other[0] else "that layout"
        raise ValueError(
            f"--state-layout {layout}: recovery directory {directory} holds snapshots of "
            f"--state-layout {other[0]}; resume with {how} or use a new -r directory"
        )
