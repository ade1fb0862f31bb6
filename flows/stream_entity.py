"""One entity's engine in the stream: :class:`EntityLogic` (its state, dedup, lateness,
start state, eviction, snapshot) and the helpers a worker's logics of one entity share.

A batch of an entity's events goes to the native core in one call
(``skewless_native.update_items``: times and values read from the events natively, the
updates run with the GIL released); the per-event Python loop it replaced cost more than
the native update itself (docs/perf-plan.md, "Shard-batched state").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.operators import StatefulBatchLogic

from features.native import NativeLayout, native
from features.plan import Plan
from features.store import OnlineRow, StoreConfig
from flows import stream_io
from flows.stream_evict import Evicted, Evictions, Returned, pack, unpack
from flows.stream_io import Ingested, LateOut, RowOut
from flows.stream_prefetch import MISSING, Prefetch, read_start
from flows.stream_sink import HeldStates
from flows.stream_summary import COVERED

_APPLIED, _DUPLICATE, _LATE = 0, 1, 2  # native update outcomes


def _update_each(
    ctx: _EntityContext, state: Any, items: list[Ingested]
) -> tuple[list[int], int, int]:
    """``update_items`` in Python: (outcomes, how many applied, newest applied produced_ms)."""
    core, values_of, time_of = ctx.core, ctx.plan.values, ctx.event_time
    outcomes: list[int] = []
    applied, newest = 0, 0
    for item in items:
        e = item.event
        outcome = core.update(state, time_of(e), values_of(e), item.txid)
        outcomes.append(outcome)
        if outcome == _APPLIED:
            applied += 1
            if item.produced_ms > newest:
                newest = item.produced_ms
    return outcomes, applied, newest


class EntityLogic(StatefulBatchLogic[Ingested, Any, tuple[int | None, bytes]]):
    """One entity's engine state (native core). Every entity sees every valid event and
    decides duplicates and lateness on its own events. Emits one :class:`RowOut` per batch
    that changed the state and a :class:`LateOut` per too-late event. Snapshots carry the
    entity id and the exact big-integer sums, so a resumed run stays byte-equal (and can
    rewrite the state before its next event, should Redis lose it). The worker's
    :class:`HeldStates` knows every logic that holds a state."""

    def __init__(
        self, ctx: _EntityContext, resume: tuple[int | None, bytes] | bytes | None
    ) -> None:
        self.ctx = ctx
        self.entity_id: int | None = None
        self.state: Any = None
        #: the bootstrap state's newest event time: not applied at or before it = covered
        self.covered_until: int | None = None
        self.touched = datetime.now(UTC)  # the last batch (idle eviction)
        self.resumed = resume is not None
        self.registry: Any = None  # the worker's HeldStates registry that holds it
        if resume is not None:
            if isinstance(resume, bytes):  # a snapshot from before the id was kept
                resume = (None, resume)
            self.entity_id, self.state = resume[0], ctx.core.restore(resume[1])
            if self.entity_id is not None:
                self.registry = ctx.held.worker()
                self.registry.add(ctx.name, ctx.core, self.entity_id, self, resumed=True)

    def on_batch(self, values: list[Ingested]) -> tuple[Iterable[RowOut | LateOut], bool]:
        ctx = self.ctx
        state = self.begin(values)
        if ctx.update_items is not None:  # one native call, the GIL released
            outcomes, applied, newest = ctx.update_items(
                ctx.core, state, values, ctx.time_pos, ctx.value_pos
            )
        else:
            outcomes, applied, newest = _update_each(ctx, state, values)
        features, blob = ctx.core.row(state) if applied else (None, None)
        out: list[RowOut | LateOut] = []
        self.end(values, outcomes, applied, newest, features, blob, out)
        return out, StatefulBatchLogic.RETAIN

    def begin(self, values: Sequence[Ingested], key: int | None = None) -> Any:
        """Before a batch's update: the entity's state (loaded on its first batch). ``key``:
        the entity id when the caller knows it (the shard step's group key)."""
        ctx = self.ctx
        entity_id = self.entity_id
        if ctx.evictions is not None:
            self.touched = datetime.now(UTC)
        if entity_id is None:
            entity_id = ctx.plan.key(values[0].event) if key is None else key
            if self.state is None:
                self.state, self.covered_until = ctx.load(entity_id)
            self.entity_id = entity_id
            self.registry = ctx.held.worker()
            self.registry.add(ctx.name, ctx.core, entity_id, self, resumed=False)
        elif self.resumed:  # a prefetch made for a key resumed from a snapshot: unused
            self.resumed = False
            if ctx.prefetch is not None:
                ctx.prefetch.take((ctx.name, entity_id))
        return self.state

    def end(
        self,
        values: Sequence[Ingested],
        outcomes: Sequence[int],
        applied: int,
        newest: int,
        features: Any,
        blob: bytes | None,
        out: list[Any],
    ) -> None:
        """After a batch's update (and its row, if any applied): the refused events and
        the row, appended to ``out``."""
        if applied < len(values):
            self._refused(values, outcomes, out)
        if applied:
            assert self.entity_id is not None and blob is not None
            row = OnlineRow(self.entity_id, self.state.max_seen, features, blob)
            out.append(RowOut(self.ctx.name, row, newest))

    def _refused(self, items: Sequence[Ingested], outcomes: Sequence[int], out: list[Any]) -> None:
        """The events not applied: covered by the bootstrap, too late (to the late
        output), or duplicates; counted. Only these are read from ``items`` (a column
        view makes each ``Ingested`` when read)."""
        ctx, until, time_of = self.ctx, self.covered_until, self.ctx.event_time
        late, dups, covered = 0, 0, 0
        assert len(items) == len(outcomes)
        for i, outcome in enumerate(outcomes):
            if outcome == _APPLIED:
                continue
            item = items[i]
            if until is not None and time_of(item.event) <= until:
                covered += 1  # the bootstrap holds it (flows/stream_summary.py)
            elif outcome == _LATE:
                late += 1
                out.append(LateOut(item, ctx.name))
            else:
                dups += 1
        if late:
            stream_io.METRICS.late.labels(ctx.name).inc(late)
        if dups:
            stream_io.METRICS.duplicates.labels(ctx.name).inc(dups)
        if covered:
            COVERED.labels(ctx.name).inc(covered)

    def notify_at(self) -> datetime | None:
        ev = self.ctx.evictions
        return None if ev is None else self.touched + timedelta(seconds=ev.after_s)

    def on_notify(self) -> tuple[Iterable[Evicted], bool]:
        """Idle past ``--evict-after``: leave the exact snapshot to the sink, drop the key."""
        ctx, ev = self.ctx, self.ctx.evictions
        if ev is None or self.entity_id is None or self.state is None:
            return (), StatefulBatchLogic.RETAIN
        if datetime.now(UTC) < self.touched + timedelta(seconds=ev.after_s):
            return (), StatefulBatchLogic.RETAIN
        self.registry.remove(ctx.name, self.entity_id)  # the one it was added to
        blob = pack(self.covered_until, ctx.core.snapshot(self.state))
        return [ev.evict(ctx.name, self.entity_id, blob)], StatefulBatchLogic.DISCARD

    def snapshot(self) -> tuple[int | None, bytes]:
        # a logic exists only once a batch or a snapshot gave it a state
        assert self.state is not None
        if not self.ctx.snapshots:  # no recovery: Bytewax asks anyway, and drops it
            return self.entity_id, b""
        return self.entity_id, self.ctx.core.snapshot(self.state)


class _EntityContext:
    """Per-entity helpers shared by all keys of a worker (plan, native core, state loader)."""

    def __init__(
        self,
        plan: Plan,
        entity: str,
        store: StoreConfig | None,
        prefetch: Prefetch | None = None,
        held: HeldStates | None = None,
        evictions: Evictions | None = None,
        snapshots: bool = True,
    ) -> None:
        self.plan = plan.entity(entity)
        self.fs = plan.fs
        self.native = NativeLayout(self.plan.layout)
        self.core = self.native.core
        self.name = entity
        self.event_time = plan.event_time
        self.event_id = plan.event_id
        self.store = store
        self.prefetch = prefetch
        self.held = held if held is not None else HeldStates()
        self.evictions = evictions
        self.snapshots = snapshots
        schema = plan.fs.schema
        self.time_pos = schema.position(schema.event_time)
        self.value_pos = [schema.position(f) for f in self.plan.fields]
        #: ``skewless_native.update_items`` (None: a native core built before it, or a
        #: test of the per-event path): both give the same outcomes, bit for bit
        self.update_items: Any = getattr(native, "update_items", None)
        #: ``skewless_native.update_rows``: update_items + row for a shard's entities in
        #: one call (None: a core built before it; the shard calls each entity's on_batch)
        self.update_rows: Any = (
            getattr(native, "update_rows", None) if self.update_items is not None else None
        )

    def load(self, entity_id: int) -> tuple[Any, int | None]:
        """(State, covered until) for an entity this worker has no state for: its exact
        snapshot if it was evicted (flows/stream_evict.py), else the bootstrap state that
        ``feast materialize`` wrote, else empty. Never the stream's own last row: rounded,
        it would not continue byte-identically."""
        raw: object = MISSING
        if self.evictions is not None:
            blob = self.evictions.take(self.name, entity_id)
            raw = MISSING if blob is None else Returned(blob)
        if self.prefetch is not None:
            cached = self.prefetch.take((self.name, entity_id))
            raw = cached if raw is MISSING else raw
        if raw is MISSING and self.store is not None:
            [raw] = read_start(self.store, self.fs, [(self.name, entity_id)], bool(self.evictions))
        if isinstance(raw, Returned):
            covered, snap = unpack(raw.blob)
            stream_io.METRICS.returned.inc()
            return self.core.restore(snap), covered
        state = self.core.decode(raw) if isinstance(raw, bytes) else self.core.new_state()
        return state, state.max_seen
