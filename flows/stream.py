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
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from features.codec import StateCodec
from features.definitions import FeatureSet
from features.engine import Engine, EntityLayout, txid_hash
from features.events import Event, InvalidEventError, parse_event
from features.native import NativeLayout
from features.online_store import OnlineRow, StoreUnavailableError
from flows import stream_io
from flows.stream_io import DeadLetter, JsonlSink, OnlineStoreSink, ParquetReplaySource, StoreConfig

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
    batch_size: int = 1000
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
        stream_io.METRICS.dead_letters.inc()
        return DeadLetter(raw, str(exc), where)
    stream_io.METRICS.events_in.inc()
    return Ingested(event, produced or int(time.time() * 1000))


_APPLIED, _DUPLICATE, _LATE = 0, 1, 2  # native update outcomes


class EntityLogic(StatefulBatchLogic[Ingested, tuple[str, Any], bytes]):
    """One entity's engine state (native core). Emits ``("accepted" | "late", Ingested)``
    and one ``("row", (entity, OnlineRow, produced_ms))`` per batch that changed the state.
    Snapshots carry the exact big-integer sums, so a resumed run stays byte-equal."""

    def __init__(self, ctx: _EntityContext, resume: bytes | None) -> None:
        self.ctx = ctx
        self.state: Any = ctx.core.restore(resume) if resume is not None else None

    def on_batch(self, values: list[Ingested]) -> tuple[Iterable[tuple[str, Any]], bool]:
        ctx = self.ctx
        core, primary, join_key = ctx.core, ctx.primary, ctx.join_key
        entity_id = getattr(values[0].event, join_key)
        if self.state is None:
            self.state = ctx.load(entity_id)
        state = self.state
        out: list[tuple[str, Any]] = []
        changed, newest = False, 0
        for item in values:
            e = item.event
            if primary:
                outcome = core.update(state, e.event_time_ms, (e.amount,), txid_hash(e.transaction_id))
            else:
                outcome = core.update(state, e.event_time_ms, (e.amount,))
            if outcome == _APPLIED:
                changed = True
                if item.produced_ms > newest:
                    newest = item.produced_ms
                if primary:
                    out.append(("accepted", item))
            elif outcome == _LATE:
                stream_io.METRICS.late.inc()
                out.append(("late", item))
            else:
                stream_io.METRICS.duplicates.inc()
        if changed:
            features, blob = core.row(state)
            row = OnlineRow(entity_id, state.max_seen, features, blob)
            out.append(("row", (ctx.name, row, newest)))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:
        return None if self.state is None else self.ctx.core.snapshot(self.state)


class _EntityContext:
    """Per-entity helpers shared by all keys of a worker (native core, state loader)."""

    def __init__(self, fs: FeatureSet, entity: str, store: StoreConfig | None) -> None:
        self.layout: EntityLayout = Engine(fs).layout(entity)
        self.native = NativeLayout(self.layout)
        self.core = self.native.core
        self.name = entity
        self.primary = self.layout.primary
        self.join_key = self.layout.entity.join_key
        self.store = store

    def load(self, entity_id: int) -> Any:
        """State for an entity this worker has no state for: the bootstrap state that
        ``feast materialize`` wrote, else empty. Never the stream's own last write: that
        may be ahead of a recovery snapshot, and replaying on top of it would count twice."""
        if self.store is not None:
            backoff = 0.2
            while True:
                try:
                    [raw] = stream_io.store_for(self.store).read_states(
                        [(self.name, entity_id)], bootstrap=True
                    )
                    break
                except StoreUnavailableError as exc:
                    log.warning("%s; retrying in %.1fs", exc, backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
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
    fs: FeatureSet, name: str, join_key: str, up: Any, store: StoreConfig | None
) -> Any:
    ctx = _EntityContext(fs, name, store)
    keyed = op.key_on("key_" + name, up, lambda i: str(getattr(i.event, join_key)))
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
    decoded: Any = op.map("decode", raw, decode)
    split: Any = op.branch("valid", decoded, lambda x: isinstance(x, Ingested))
    dead: Any = split.falses
    if cfg.kafka:
        kop.output("dlq", op.map("dlq_msg", dead, lambda d: _dlq_message(d, f"{cfg.topic}.dlq")),
                   brokers=[cfg.brokers], topic=f"{cfg.topic}.dlq")  # fmt: skip
    else:
        op.output("dlq", dead, JsonlSink(cfg.out_dir / "dlq"))

    store = cfg.store if cfg.load_state_from_store else None
    primary = fs.primary
    card_out: Any = op.key_rm(
        "unkey_" + primary.name,
        _entity_step(fs, primary.name, primary.join_key, split.trues, store),
    )
    rows = [
        op.filter_map(
            "rows_" + primary.name, card_out, lambda kv: kv[1] if kv[0] == "row" else None
        )
    ]
    accepted: Any = op.filter_map(
        "accepted", card_out, lambda kv: kv[1] if kv[0] == "accepted" else None
    )
    late: Any = op.filter_map("late", card_out, lambda kv: kv[1] if kv[0] == "late" else None)
    late_topic = f"{cfg.topic}.late"
    if cfg.kafka:
        msgs = op.map("late_msg", late, lambda i: _event_message(i, late_topic, "late"))
        kop.output("late_out", msgs, brokers=[cfg.brokers], topic=late_topic)
    else:
        recs = op.map("late_rec", late, lambda i: DeadLetter(i.event.to_json(), "late", {}))
        op.output("late_out", recs, JsonlSink(cfg.out_dir / "late"))
    for entity in fs.entities:
        if entity == primary:
            continue
        out: Any = op.key_rm(
            "unkey_" + entity.name, _entity_step(fs, entity.name, entity.join_key, accepted, store)
        )
        rows.append(
            op.filter_map("rows_" + entity.name, out, lambda kv: kv[1] if kv[0] == "row" else None)
        )
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
        from skewless.settings import Settings

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
