"""The streaming flow: Kafka (or a Parquet replay) -> Bytewax -> Feast online store.

Steps: decode + validate (invalid -> dead letters with the original bytes and a reason)
-> key by card -> card engine (dedup, too-late routing, update) -> key by merchant ->
merchant engine -> one batched write per batch of every touched entity's state and
as-of-last-event features, in Feast's layout.

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
from typing import Any, NamedTuple

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from features.definitions import FeatureSet
from features.engine import Engine, EntityLayout
from features.events import Event, InvalidEventError, parse_event
from features.native import NativeLayout, txid_hash_native
from features.store import OnlineRow, StoreConfig, StoreUnavailableError
from flows import stream_io
from flows.stream_io import DeadLetter, JsonlSink, OnlineStoreSink, ParquetReplaySource

log = logging.getLogger("skewless.stream")


@dataclass(frozen=True)
class StreamConfig:
    """Everything the flow needs; built from :class:`skewless.settings.Settings`."""

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


@dataclass(frozen=True)
class Ingested:
    """A valid event and when it entered the system (Kafka timestamp or read time, ms)."""

    event: Event
    produced_ms: int


def decode_batch(msgs: list[Any]) -> list[Ingested | DeadLetter]:
    """:func:`decode` for a batch, counted once in the metrics."""
    out = [decode(m) for m in msgs]
    dead = sum(1 for x in out if type(x) is DeadLetter)
    stream_io.METRICS.dead_letters.inc(dead)
    stream_io.METRICS.events_in.inc(len(out) - dead)
    return out


def decode(msg: Any) -> Ingested | DeadLetter:
    """Parse one message; anything invalid becomes a dead letter naming the field."""
    if isinstance(msg, KafkaSourceMessage):
        raw = msg.value or b""
        _, ts = msg.timestamp or (0, 0)
        produced, where = ts, {"partition": msg.partition, "offset": msg.offset}
    else:
        raw, produced, where = msg.value, msg.produced_ms, {"row": msg.row}
    try:
        event = parse_event(raw)
    except InvalidEventError as exc:
        return DeadLetter(raw, str(exc), where)
    return Ingested(event, produced or int(time.time() * 1000))


_APPLIED, _DUPLICATE, _LATE = 0, 1, 2  # native update outcomes
_txid = txid_hash_native  # == features.engine.txid_hash (tests/features/test_native.py)


class RowOut(NamedTuple):
    """An entity's new online row (the newest Kafka timestamp it includes: freshness)."""

    entity: str
    row: OnlineRow
    produced_ms: int


class LateOut(NamedTuple):
    item: Ingested


class EntityLogic(StatefulBatchLogic[Ingested, Any, bytes]):
    """One entity's engine state (native core). Emits one :class:`RowOut` per batch that
    changed the state; the primary entity also emits :class:`LateOut` per too-late event
    and each accepted event, already keyed for the next entity (``(key, Ingested)``) when
    there is exactly one, else bare. Snapshots carry the exact big-integer sums, so a
    resumed run stays byte-equal."""

    def __init__(self, ctx: _EntityContext, resume: bytes | None) -> None:
        self.ctx = ctx
        self.state: Any = ctx.core.restore(resume) if resume is not None else None

    def on_batch(self, values: list[Ingested]) -> tuple[Iterable[Any], bool]:
        ctx = self.ctx
        core, primary, join_key, forward = ctx.core, ctx.primary, ctx.join_key, ctx.forward_key
        entity_id = getattr(values[0].event, join_key)
        if self.state is None:
            self.state = ctx.load(entity_id)
        state = self.state
        out: list[Any] = []
        changed, newest = False, 0
        for item in values:
            e = item.event
            if primary:
                outcome = core.update(state, e.event_time_ms, (e.amount,), _txid(e.transaction_id))
            else:
                outcome = core.update(state, e.event_time_ms, (e.amount,))
            if outcome == _APPLIED:
                changed = True
                if item.produced_ms > newest:
                    newest = item.produced_ms
                if primary:
                    out.append((str(getattr(e, forward)), item) if forward else item)
            elif outcome == _LATE:
                stream_io.METRICS.late.inc()
                out.append(LateOut(item))
            else:
                stream_io.METRICS.duplicates.inc()
        if changed:
            features, blob = core.row(state)
            row = OnlineRow(entity_id, state.max_seen, features, blob)
            out.append(RowOut(ctx.name, row, newest))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        # a logic exists only once a batch loaded its state (on_batch runs first)
        assert self.state is not None
        return self.ctx.core.snapshot(self.state)


_MISSING = object()


class Prefetch:
    """Reads the bootstrap state of every entity this process has not seen yet, one
    pipelined round trip per batch, before the batch is keyed; the entity steps then take
    it from here instead of one round trip per new key. (A key resumed from a recovery
    snapshot never asks: its prefetched entry is dropped when the key shows up again.)"""

    def __init__(self, fs: FeatureSet, store: StoreConfig) -> None:
        self.store = store
        self.entities = tuple((e.name, e.join_key) for e in fs.entities)
        self.seen: dict[str, set[int]] = {name: set() for name, _ in self.entities}
        self.cache: dict[tuple[str, int], bytes | None] = {}
        self.lock = threading.Lock()

    def __call__(self, items: list[Any]) -> list[Any]:
        events = [x.event for x in items if isinstance(x, Ingested)]
        keys: list[tuple[str, int]] = []
        with self.lock:
            for name, join_key in self.entities:
                seen = self.seen[name]
                for e in events:
                    entity_id = getattr(e, join_key)
                    if entity_id not in seen:
                        seen.add(entity_id)
                        keys.append((name, entity_id))
        if keys:
            raws = _read_bootstrap(self.store, keys)
            with self.lock:
                self.cache.update(zip(keys, raws, strict=True))
        return items

    def take(self, key: tuple[str, int]) -> object:
        with self.lock:
            return self.cache.pop(key, _MISSING)


def _read_bootstrap(store: StoreConfig, keys: list[tuple[str, int]]) -> list[bytes | None]:
    """Bootstrap states, retried with backoff while the store is down (never skipped:
    a missing start state would silently lose the backfill's history)."""
    backoff = 0.2
    while True:
        try:
            return stream_io.store_for(store).read_states(keys, bootstrap=True)
        except StoreUnavailableError as exc:
            log.warning("%s; retrying in %.1fs", exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


class _EntityContext:
    """Per-entity helpers shared by all keys of a worker (native core, state loader)."""

    def __init__(
        self,
        fs: FeatureSet,
        entity: str,
        store: StoreConfig | None,
        prefetch: Prefetch | None = None,
    ) -> None:
        self.layout: EntityLayout = Engine(fs).layout(entity)
        self.native = NativeLayout(self.layout)
        self.core = self.native.core
        self.name = entity
        self.primary = self.layout.primary
        self.join_key = self.layout.entity.join_key
        self.store = store
        self.prefetch = prefetch
        others = [e for e in fs.entities if e != self.layout.entity]
        #: the primary keys accepted events for the next entity itself when there is one
        self.forward_key = others[0].join_key if self.primary and len(others) == 1 else None

    def load(self, entity_id: int) -> Any:
        """State for an entity this worker has no state for: the bootstrap state that
        ``feast materialize`` wrote, else empty. Never the stream's own last write: that
        may be ahead of a recovery snapshot, and replaying on top of it would count twice."""
        if self.store is not None:
            raw = _MISSING if self.prefetch is None else self.prefetch.take((self.name, entity_id))
            if raw is _MISSING:
                [raw] = _read_bootstrap(self.store, [(self.name, entity_id)])
            if raw is not None:
                return self.core.decode(raw)
        return self.core.new_state()


def _dlq_message(d: DeadLetter, topic: str) -> KafkaSinkMessage[bytes | None, bytes]:
    headers = [("reason", d.reason.encode()), *((k, str(v).encode()) for k, v in d.where.items())]
    return KafkaSinkMessage(key=None, value=d.raw, topic=topic, headers=headers)


def _event_message(item: Ingested, topic: str, reason: str) -> KafkaSinkMessage[bytes, bytes]:
    e = item.event
    return KafkaSinkMessage(
        key=str(e.card_id).encode(),
        value=e.to_json(),
        topic=topic,
        headers=[("reason", reason.encode())],
    )


def _entity_step(
    fs: FeatureSet,
    name: str,
    join_key: str,
    up: Any,
    store: StoreConfig | None,
    prefetch: Prefetch | None,
    keyed_already: bool,
) -> Any:
    ctx = _EntityContext(fs, name, store, prefetch)
    keyed = (
        up
        if keyed_already
        else op.key_on("key_" + name, up, lambda i: str(getattr(i.event, join_key)))
    )
    return op.stateful_batch(name, keyed, lambda resume: EntityLogic(ctx, resume))


def build_flow(fs: FeatureSet, cfg: StreamConfig) -> Dataflow:
    """The dataflow for ``fs`` under ``cfg``."""
    if cfg.metrics_port:
        stream_io.serve_metrics(cfg.metrics_port)
    flow = Dataflow("skewless_stream")
    raw: Any
    if cfg.kafka:
        kin = kop.input(
            "kafka_in", flow, brokers=[cfg.brokers], topics=[cfg.topic], tail=cfg.tail,
            batch_size=cfg.batch_size,
            add_config={"fetch.wait.max.ms": "20"},
        )  # fmt: skip
        raw = kin.oks
        op.output("kafka_errors", op.map("kafka_err", kin.errs, lambda e: DeadLetter(
            e.msg.value or b"", f"kafka: {e.err}", {"partition": e.msg.partition})),
            JsonlSink(cfg.out_dir / "kafka-errors"))  # fmt: skip
    else:
        if cfg.replay_path is None:
            raise ValueError("replay_path: the embedded mode needs an events file to replay")
        raw = op.input("replay_in", flow, ParquetReplaySource(cfg.replay_path, cfg.batch_size))
    decoded: Any = op.flat_map_batch("decode", raw, decode_batch)
    store = cfg.store if cfg.load_state_from_store else None
    prefetch = Prefetch(fs, store) if store is not None else None
    if prefetch is not None:
        decoded = op.flat_map_batch("prefetch", decoded, prefetch)
    split: Any = op.branch("valid", decoded, lambda x: isinstance(x, Ingested))
    dead: Any = split.falses
    if cfg.kafka:
        kop.output("dlq", op.map("dlq_msg", dead, lambda d: _dlq_message(d, f"{cfg.topic}.dlq")),
                   brokers=[cfg.brokers], topic=f"{cfg.topic}.dlq")  # fmt: skip
    else:
        op.output("dlq", dead, JsonlSink(cfg.out_dir / "dlq"))

    primary = fs.primary
    others = [e for e in fs.entities if e != primary]
    card_out: Any = op.key_rm(
        "unkey_" + primary.name,
        _entity_step(fs, primary.name, primary.join_key, split.trues, store, prefetch, False),
    )
    # accepted events are most of the output: test for them first
    kind: Any = op.branch(
        "accepted", card_out, lambda x: type(x) is not RowOut and type(x) is not LateOut
    )
    accepted, rest = kind.trues, kind.falses
    kind = op.branch("rows_" + primary.name, rest, lambda x: type(x) is RowOut)
    rows = [kind.trues]
    late: Any = op.map("late", kind.falses, lambda x: x.item)
    late_topic = f"{cfg.topic}.late"
    if cfg.kafka:
        msgs = op.map("late_msg", late, lambda i: _event_message(i, late_topic, "late"))
        kop.output("late_out", msgs, brokers=[cfg.brokers], topic=late_topic)
    else:
        recs = op.map("late_rec", late, lambda i: DeadLetter(i.event.to_json(), "late", {}))
        op.output("late_out", recs, JsonlSink(cfg.out_dir / "late"))
    for entity in others:
        # one other entity: the primary keyed its accepted events for it already
        step = _entity_step(
            fs, entity.name, entity.join_key, accepted, store, prefetch, len(others) == 1
        )
        rows.append(op.key_rm("unkey_" + entity.name, step))
    op.output("online_store", op.merge("all_rows", *rows), OnlineStoreSink(cfg.store))
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
        from features.reference import REFERENCE
        from features.settings import Settings

        settings = Settings.from_env(os.environ)
        replay = os.environ.get("SKEWLESS_REPLAY_PATH")
        tail = os.environ.get("SKEWLESS_STREAM_TAIL", "1") != "0"
        return build_flow(
            REFERENCE, config_from_settings(settings, Path(replay) if replay else None, tail)
        )
    raise AttributeError(name)


__all__ = [
    "EntityLogic",
    "Ingested",
    "StreamConfig",
    "build_flow",
    "config_from_settings",
    "decode",
]
