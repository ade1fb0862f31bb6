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
ids and too-late routing keep the online values exact.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from features.definitions import FeatureSet
from features.native import NativeLayout, txid_hash_native
from features.plan import Plan, compile_plan
from features.schema import InvalidEventError
from features.store import OnlineRow, StoreConfig, StoreUnavailableError
from flows import stream_io
from flows.stream_io import (
    DeadLetter,
    Ingested,
    JsonlSink,
    LateOut,
    ParquetReplaySource,
    RowOut,
    StoppableSource,
)
from flows.stream_kafka import KeyCheck, dlq_message, kafka_in, late_message
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

    @property
    def kafka(self) -> bool:
        return bool(self.brokers)


class Decoder:
    """Parses messages with the definitions' schema; anything invalid becomes a dead
    letter naming the field. Counted once per batch in the metrics."""

    def __init__(self, plan: Plan, check_keys: bool = False) -> None:
        self.parse = plan.validator.parse
        self.check_keys = KeyCheck(plan) if check_keys else None

    def __call__(self, msgs: list[Any]) -> list[Ingested | DeadLetter]:
        out = [self.decode(m) for m in msgs]
        dead = sum(1 for x in out if type(x) is DeadLetter)
        stream_io.METRICS.dead_letters.inc(dead)
        stream_io.METRICS.events_in.inc(len(out) - dead)
        if self.check_keys is not None:
            self.check_keys(msgs, out)
        return out

    def decode(self, msg: Any) -> Ingested | DeadLetter:
        key: bytes | None
        if isinstance(msg, KafkaSourceMessage):
            raw, key = msg.value or b"", msg.key
            _, ts = msg.timestamp or (0, 0)
            produced, where = ts, {"partition": msg.partition, "offset": msg.offset}
        else:
            raw, key, produced, where = msg.value, None, msg.produced_ms, {"row": msg.row}
        try:
            event = self.parse(raw)
        except InvalidEventError as exc:
            return DeadLetter(raw, str(exc), where, key)
        return Ingested(event, produced or int(time.time() * 1000), raw, key)


_APPLIED, _DUPLICATE, _LATE = 0, 1, 2  # native update outcomes
_txid = txid_hash_native  # == features.layout.txid_hash (tests/features/test_native.py)


def _is_row(x: RowOut | LateOut) -> TypeGuard[RowOut]:
    return type(x) is RowOut


class EntityLogic(StatefulBatchLogic[Ingested, RowOut | LateOut, tuple[int | None, bytes]]):
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
        if resume is not None:
            if isinstance(resume, bytes):  # a snapshot from before the id was kept
                resume = (None, resume)
            self.entity_id, self.state = resume[0], ctx.core.restore(resume[1])
            if self.entity_id is not None:
                ctx.held.worker().add(ctx.name, ctx.core, self.entity_id, self, resumed=True)

    def on_batch(self, values: list[Ingested]) -> tuple[Iterable[RowOut | LateOut], bool]:
        ctx = self.ctx
        core, key, values_of, time_of, id_of = (
            ctx.core, ctx.plan.key, ctx.plan.values, ctx.event_time, ctx.event_id
        )  # fmt: skip
        entity_id = key(values[0].event)
        if self.entity_id is None:
            if self.state is None:
                self.state = ctx.load(entity_id)
                self.covered_until = self.state.max_seen
            self.entity_id = entity_id
            ctx.held.worker().add(ctx.name, ctx.core, entity_id, self, resumed=False)
        state, until = self.state, self.covered_until
        out: list[RowOut | LateOut] = []
        changed, newest, late, dups, covered = False, 0, 0, 0, 0
        for item in values:
            e = item.event
            t = time_of(e)
            outcome = core.update(state, t, values_of(e), _txid(id_of(e)))
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

    def snapshot(self) -> tuple[int | None, bytes]:
        # a logic exists only once a batch or a snapshot gave it a state
        assert self.state is not None
        return self.entity_id, self.ctx.core.snapshot(self.state)


_MISSING = object()


class Prefetch:
    """Reads the bootstrap state of every entity this process has not seen yet, one
    pipelined round trip per batch, before the batch is keyed; the entity steps then take
    it from here instead of one round trip per new key. (A key resumed from a recovery
    snapshot never asks: its prefetched entry is dropped when the key shows up again.)"""

    def __init__(self, plan: Plan, store: StoreConfig) -> None:
        self.store = store
        self.fs = plan.fs
        self.entities = tuple((p.name, p.key) for p in plan.entities)
        self.seen: dict[str, set[int]] = {name: set() for name, _ in self.entities}
        self.cache: dict[tuple[str, int], bytes | None] = {}
        self.lock = threading.Lock()

    def __call__(self, items: list[Any]) -> list[Any]:
        events = [x.event for x in items if isinstance(x, Ingested)]
        keys: list[tuple[str, int]] = []
        with self.lock:
            for name, key in self.entities:
                seen = self.seen[name]
                for e in events:
                    entity_id = key(e)
                    if entity_id not in seen:
                        seen.add(entity_id)
                        keys.append((name, entity_id))
        if keys:
            raws = _read_bootstrap(self.store, self.fs, keys)
            with self.lock:
                self.cache.update(zip(keys, raws, strict=True))
        return items

    def take(self, key: tuple[str, int]) -> object:
        with self.lock:
            return self.cache.pop(key, _MISSING)


def _read_bootstrap(
    store: StoreConfig, fs: FeatureSet, keys: list[tuple[str, int]]
) -> list[bytes | None]:
    """Bootstrap states, retried with backoff while the store is down (never skipped:
    a missing start state would silently lose the backfill's history)."""
    backoff = 0.2
    while True:
        try:
            return stream_io.store_for(store, fs).read_states(keys, bootstrap=True)
        except StoreUnavailableError as exc:
            log.warning("%s; retrying in %.1fs", exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


class _EntityContext:
    """Per-entity helpers shared by all keys of a worker (plan, native core, state loader)."""

    def __init__(
        self,
        plan: Plan,
        entity: str,
        store: StoreConfig | None,
        prefetch: Prefetch | None = None,
        held: HeldStates | None = None,
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

    def load(self, entity_id: int) -> Any:
        """State for an entity this worker has no state for: the bootstrap state that
        ``feast materialize`` wrote, else empty. Never the stream's own last write: that
        may be ahead of a recovery snapshot, and replaying on top of it would count twice."""
        if self.store is not None:
            raw = _MISSING if self.prefetch is None else self.prefetch.take((self.name, entity_id))
            if raw is _MISSING:
                [raw] = _read_bootstrap(self.store, self.fs, [(self.name, entity_id)])
            if isinstance(raw, bytes):
                return self.core.decode(raw)
        return self.core.new_state()


def _entity_step(
    plan: Plan,
    name: str,
    up: Any,
    store: StoreConfig | None,
    prefetch: Prefetch | None,
    held: HeldStates,
) -> tuple[Any, Any]:
    """One entity's step over every valid event: (its rows, its late events)."""
    ctx = _EntityContext(plan, name, store, prefetch, held)
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
        kin = kafka_in("kafka_in", flow, cfg.brokers, cfg.topic, cfg.tail, cfg.batch_size)
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
    prefetch = Prefetch(plan, store) if store is not None else None
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
        r, late = _entity_step(plan, entity.name, split.trues, store, prefetch, held)
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
    op.output("online_store", op.merge("all_rows", *rows), OnlineStoreSink(cfg.store, fs, held))
    return flow


def config_from_settings(
    settings: Any, replay_path: Path | None = None, tail: bool = True
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
    )


def __getattr__(name: str) -> Any:
    """``flows.stream:flow`` for ``python -m bytewax.run``: built from the environment."""
    if name == "flow":
        from features.loader import load_definitions
        from features.settings import Settings

        settings = Settings.from_env(os.environ)
        replay = os.environ.get("SKEWLESS_REPLAY_PATH")
        tail = os.environ.get("SKEWLESS_STREAM_TAIL", "1") != "0"
        return build_flow(
            load_definitions(settings.definitions),
            config_from_settings(settings, Path(replay) if replay else None, tail),
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
