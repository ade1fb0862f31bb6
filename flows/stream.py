"""The streaming flow: Kafka (or a Parquet replay) -> Bytewax -> Feast online store.

Steps: decode + validate with the definitions' schema (invalid -> dead letters with the
original bytes and a reason) -> for every entity of the definitions: key by its join key ->
its engine (dedup, too-late routing, update: each entity decides on its own events) -> one
batched write per batch of every touched entity's state and as-of-last-event features, in
Feast's layout (``flows/stream_sink.py``: it also rewrites every held state when Redis
lost its data). Too-late events go to the late output naming the entity that dropped them.

Run it as ``skewless stream`` or ``python -m bytewax.run flows.stream:flow`` (settings from
``SKEWLESS_*`` variables). With recovery (``-r DIR -s 5 -b 0``) a restart resumes from
the snapshot with its Kafka offsets; without, it rereads the topic and the state's dedup
ids and too-late routing keep the online values exact. ``--evict-after`` bounds the
memory: idle entities leave the worker and come back exact (``flows/stream_evict.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from features.definitions import FeatureSet
from features.native import NativeLayout
from features.plan import Plan, compile_plan
from features.store import OnlineRow, StoreConfig
from flows import stream_io
from flows.stream_decode import Decoder
from flows.stream_evict import Evicted, Evictions, Returned, pack, unpack
from flows.stream_io import (
    DeadLetter,
    Ingested,
    JsonlSink,
    LateOut,
    ParquetReplaySource,
    RowOut,
    StoppableSource,
)
from flows.stream_kafka import dlq_message, kafka_in, late_message
from flows.stream_prefetch import MISSING, Prefetch, read_start
from flows.stream_sink import HeldStates, LossTicks, OnlineStoreSink
from flows.stream_summary import COVERED

log = logging.getLogger("skewless.stream")


@dataclass(frozen=True)
class StreamConfig:
    """Everything the flow needs; built from :class:`features.settings.Settings`."""

    store: StoreConfig
    brokers: str = ""
    topic: str = "transactions"
    replay_path: Path | None = None
    out_dir: Path = Path("out/stream")
    tail: bool = True
    batch_size: int = 5000
    metrics_port: int = 0
    load_state_from_store: bool = True
    evict_after_s: float = 0.0  # 0: never (flows/stream_evict.py)
    #: False only when no recovery store will keep them (``skewless stream`` without -r):
    #: Bytewax still asks every touched key for its snapshot each epoch (~5% of a drain)
    snapshots: bool = True
    thin_source: bool = True  # one item per Kafka poll (flows/stream_source.py)

    @property
    def kafka(self) -> bool:
        return bool(self.brokers)


_APPLIED, _DUPLICATE, _LATE = 0, 1, 2  # native update outcomes


def _is_row(x: RowOut | LateOut | Evicted) -> TypeGuard[RowOut | Evicted]:
    return type(x) is not LateOut


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
        entity_id = self.entity_id
        if ctx.evictions is not None:
            self.touched = datetime.now(UTC)
        if entity_id is None:
            entity_id = ctx.plan.key(values[0].event)
            if self.state is None:
                self.state, self.covered_until = ctx.load(entity_id)
            self.entity_id = entity_id
            self.registry = ctx.held.worker()
            self.registry.add(ctx.name, ctx.core, entity_id, self, resumed=False)
        elif self.resumed:  # a prefetch made for a key resumed from a snapshot: unused
            self.resumed = False
            if ctx.prefetch is not None:
                ctx.prefetch.take((ctx.name, entity_id))
        core, values_of, time_of = ctx.core, ctx.plan.values, ctx.event_time
        state, until = self.state, self.covered_until
        out: list[RowOut | LateOut] = []
        changed, newest, late, dups, covered = False, 0, 0, 0, 0
        for item in values:
            e = item.event
            t = time_of(e)
            outcome = core.update(state, t, values_of(e), item.txid)
            if outcome == _APPLIED:
                changed = True
                if item.produced_ms > newest:
                    newest = item.produced_ms
            elif until is not None and t <= until:
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
        if changed:
            features, blob = core.row(state)
            row = OnlineRow(entity_id, state.max_seen, features, blob)
            out.append(RowOut(ctx.name, row, newest))
        return out, StatefulBatchLogic.RETAIN

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


def _entity_step(
    plan: Plan,
    name: str,
    up: Any,
    store: StoreConfig | None,
    prefetch: Prefetch | None,
    held: HeldStates,
    evictions: Evictions | None,
    snapshots: bool = True,
) -> tuple[Any, Any]:
    """One entity's step over every valid event: (its rows and evictions, its lates)."""
    ctx = _EntityContext(plan, name, store, prefetch, held, evictions, snapshots)
    key = ctx.plan.key
    keyed = op.key_on("key_" + name, up, lambda i: str(key(i.event)))
    out = op.key_rm(
        "unkey_" + name, op.stateful_batch(name, keyed, lambda resume: EntityLogic(ctx, resume))
    )
    split = op.branch("rows_" + name, out, _is_row)
    return split.trues, split.falses


def build_flow(fs: FeatureSet, cfg: StreamConfig) -> Dataflow:
    """The dataflow for ``fs`` under ``cfg``."""
    plan = compile_plan(fs)
    if cfg.metrics_port:
        stream_io.serve_metrics(cfg.metrics_port)
    flow = Dataflow("skewless_stream")
    raw: Any
    if cfg.kafka:
        kin = kafka_in("kafka_in", flow, cfg.brokers, cfg.topic, cfg.tail, cfg.batch_size,
                       cfg.thin_source)  # fmt: skip
        raw = kin.oks
        op.output("kafka_errors", op.map("kafka_err", kin.errs, lambda e: DeadLetter(
            e.msg.value or b"", f"kafka: {e.err}", {"partition": e.msg.partition}, e.msg.key)),
            JsonlSink(cfg.out_dir / "kafka-errors"))  # fmt: skip
    else:
        if cfg.replay_path is None:
            raise ValueError("replay_path: the embedded mode needs an events file to replay")
        replay = ParquetReplaySource(cfg.replay_path, cfg.batch_size)
        raw = op.input("replay_in", flow, StoppableSource(replay))
    decoded: Any = op.flat_map_batch("decode", raw, Decoder(plan, check_keys=cfg.kafka))
    store = cfg.store if cfg.load_state_from_store else None
    evictions = None
    if cfg.evict_after_s > 0:
        if store is None or cfg.store.backend != "redis":
            raise ValueError("--evict-after: needs the Redis online store (SKEWLESS_REDIS_URL)")
        evictions = Evictions(cfg.evict_after_s)
    prefetch = Prefetch(plan, store, evictions) if store is not None else None
    if prefetch is not None:
        decoded = op.flat_map_batch("prefetch", decoded, prefetch)
    split: Any = op.branch("valid", decoded, lambda x: type(x) is Ingested)
    dead: Any = split.falses
    if cfg.kafka:
        kop.output("dlq", op.map("dlq_msg", dead, lambda d: dlq_message(d, f"{cfg.topic}.dlq")),
                   brokers=[cfg.brokers], topic=f"{cfg.topic}.dlq")  # fmt: skip
    else:
        op.output("dlq", dead, JsonlSink(cfg.out_dir / "dlq"))

    rows, lates = [], []
    held = HeldStates()
    for entity in plan.entities:
        r, late = _entity_step(
            plan, entity.name, split.trues, store, prefetch, held, evictions, cfg.snapshots
        )
        rows.append(r)
        lates.append(late)
    late_all: Any = op.merge("late", *lates)
    late_topic = f"{cfg.topic}.late"
    if cfg.kafka:
        msgs = op.map("late_msg", late_all, lambda x: late_message(x, late_topic))
        kop.output("late_out", msgs, brokers=[cfg.brokers], topic=late_topic)
    else:
        recs = op.map(
            "late_rec", late_all, lambda x: DeadLetter(x.item.raw, "late", {"late_for": x.entity})
        )
        op.output("late_out", recs, JsonlSink(cfg.out_dir / "late"))
    if cfg.tail and cfg.store.backend == "redis":  # an idle worker still checks its marker
        rows.append(op.input("loss_ticks", flow, LossTicks()))
    op.output(
        "online_store", op.merge("all_rows", *rows), OnlineStoreSink(cfg.store, fs, held, evictions)
    )
    return flow


def config_from_settings(
    settings: Any, replay_path: Path | None = None, tail: bool = True, evict_after_s: float = 0.0
) -> StreamConfig:
    store = StoreConfig(redis_url=settings.redis_url, workdir=settings.data_dir / "feast")
    return StreamConfig(
        store=store,
        brokers=settings.kafka_bootstrap,
        topic=settings.topic,
        replay_path=replay_path,
        out_dir=settings.data_dir / "stream",
        tail=tail,
        metrics_port=settings.metrics_port,
        evict_after_s=evict_after_s,
    )


def __getattr__(name: str) -> Any:
    """``flows.stream:flow`` for ``python -m bytewax.run``: built from the environment."""
    if name == "flow":
        from features.loader import load_definitions
        from features.settings import Settings

        settings = Settings.from_env(os.environ)
        replay = os.environ.get("SKEWLESS_REPLAY_PATH")
        tail = os.environ.get("SKEWLESS_STREAM_TAIL", "1") != "0"
        evict = float(os.environ.get("SKEWLESS_STREAM_EVICT_AFTER") or 0)
        return build_flow(
            load_definitions(settings.definitions),
            config_from_settings(settings, Path(replay) if replay else None, tail, evict),
        )
    raise AttributeError(name)


__all__ = [
    "Decoder",
    "EntityLogic",
    "Ingested",
    "StreamConfig",
    "build_flow",
    "config_from_settings",
]
