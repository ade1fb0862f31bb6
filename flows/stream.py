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
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow

from features.definitions import FeatureSet
from features.plan import Plan, compile_plan
from features.store import StoreConfig
from flows import stream_io
from flows.stream_decode import Decoder
from flows.stream_entity import EntityLogic, _EntityContext
from flows.stream_evict import Evicted, Evictions
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
from flows.stream_prefetch import Prefetch
from flows.stream_shard import (
    LAYOUTS,
    ShardRouter,
    check_recovery,
    dead_letters,
    resolve_layout,
    shard_step,
)
from flows.stream_sink import HeldStates, LossTicks, OnlineStoreSink

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
    #: "entity": one Bytewax key per entity; "sharded": per key shard (flows/stream_shard.py)
    state_layout: str = "entity"

    @property
    def kafka(self) -> bool:
        return bool(self.brokers)


def _is_row(x: RowOut | LateOut | Evicted) -> TypeGuard[RowOut | Evicted]:
    return type(x) is not LateOut


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
    logic = op.stateful_batch(name, keyed, lambda resume: EntityLogic(ctx, resume))
    split = op.branch("rows_" + name, op.key_rm("unkey_" + name, logic), _is_row)
    return split.trues, split.falses


def _sharded_step(
    plan: Plan,
    up: Any,
    store: StoreConfig | None,
    prefetch: Prefetch | None,
    held: HeldStates,
    evictions: Evictions | None,
    snapshots: bool = True,
) -> tuple[Any, Any]:
    """Every entity's shards in one step over the polls (``up``: :class:`Poll` items,
    grouped by the decoder): (rows and evictions, lates). One step, so a poll's rows
    reach the sink as one write."""
    makes = {}
    for entity in plan.entities:
        ctx = _EntityContext(plan, entity.name, store, prefetch, held, evictions, snapshots)
        makes[entity.name] = lambda resume, ctx=ctx: EntityLogic(ctx, resume)
    after = None if evictions is None else evictions.after_s
    out = shard_step(up, makes, after, snapshots)
    split = op.branch("rows", out, _is_row)
    return split.trues, split.falses


def _router(plan: Plan) -> ShardRouter:
    """The sharded layout's router of every entity (the decoder groups each poll with it)."""
    schema = plan.fs.schema
    keys = [(e.name, plan.entity(e.name).key) for e in plan.entities]
    return ShardRouter(keys, [schema.position(e.join_key) for e in plan.entities])


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
    if cfg.state_layout not in LAYOUTS:
        raise ValueError(f"--state-layout: {cfg.state_layout!r} is not one of {LAYOUTS}")
    sharded = cfg.state_layout == "sharded"
    decoder = Decoder(plan, check_keys=cfg.kafka, router=_router(plan) if sharded else None)
    decoded: Any = (  # sharded: one item per poll, already grouped, never one per event
        op.flat_map_batch("decode_polls", raw, lambda msgs: [decoder.routed(msgs)])
        if sharded
        else op.flat_map_batch("decode", raw, decoder)
    )
    store = cfg.store if cfg.load_state_from_store else None
    evictions = None
    if cfg.evict_after_s > 0:
        if store is None or cfg.store.backend != "redis":
            raise ValueError("--evict-after: needs the Redis online store (SKEWLESS_REDIS_URL)")
        evictions = Evictions(cfg.evict_after_s)
    prefetch = Prefetch(plan, store, evictions) if store is not None else None
    if prefetch is not None:
        decoded = (
            op.map("prefetch_polls", decoded, prefetch.routed)
            if sharded
            else op.flat_map_batch("prefetch", decoded, prefetch)
        )
    if sharded:
        valid: Any = decoded
        dead: Any = op.flat_map("dead", decoded, dead_letters)
    else:
        split: Any = op.branch("valid", decoded, lambda x: type(x) is Ingested)
        valid, dead = split.trues, split.falses
    if cfg.kafka:
        kop.output("dlq", op.map("dlq_msg", dead, lambda d: dlq_message(d, f"{cfg.topic}.dlq")),
                   brokers=[cfg.brokers], topic=f"{cfg.topic}.dlq")  # fmt: skip
    else:
        op.output("dlq", dead, JsonlSink(cfg.out_dir / "dlq"))

    held = HeldStates()
    steps = (
        [_sharded_step(plan, valid, store, prefetch, held, evictions, cfg.snapshots)]
        if sharded
        else [
            _entity_step(plan, e.name, valid, store, prefetch, held, evictions, cfg.snapshots)
            for e in plan.entities
        ]
    )
    rows, lates = [r for r, _ in steps], [late for _, late in steps]
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
    settings: Any,
    replay_path: Path | None = None,
    tail: bool = True,
    evict_after_s: float = 0.0,
    state_layout: str = "entity",
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
        state_layout=state_layout,
    )


def _recovery_directory(argv: list[str], env: Mapping[str, str]) -> Path | None:
    """``python -m bytewax.run``'s ``-r``/``--recovery-directory`` (or its variable)."""
    for i, arg in enumerate(argv):
        if arg in ("-r", "--recovery-directory") and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--recovery-directory="):
            return Path(arg.split("=", 1)[1])
    found = env.get("BYTEWAX_RECOVERY_DIRECTORY")
    return Path(found) if found else None


def __getattr__(name: str) -> Any:
    """``flows.stream:flow`` for ``python -m bytewax.run``: built from the environment."""
    if name == "flow":
        from features.loader import load_definitions
        from features.settings import Settings

        settings = Settings.from_env(os.environ)
        replay = os.environ.get("SKEWLESS_REPLAY_PATH")
        tail = os.environ.get("SKEWLESS_STREAM_TAIL", "1") != "0"
        evict = float(os.environ.get("SKEWLESS_STREAM_EVICT_AFTER") or 0)
        fs = load_definitions(settings.definitions)
        recovery = _recovery_directory(sys.argv, os.environ)
        layout = os.environ.get("SKEWLESS_STREAM_STATE_LAYOUT") or "auto"
        if layout not in ("auto", *LAYOUTS):
            raise SystemExit(
                f"SKEWLESS_STREAM_STATE_LAYOUT: {layout!r} is not auto, entity or sharded"
            )
        layout = resolve_layout(layout, recovery, [e.name for e in fs.entities])
        if recovery is not None and recovery.exists():
            try:
                check_recovery(recovery, [e.name for e in fs.entities], layout)
            except ValueError as exc:  # one line, not a traceback from bytewax.run
                raise SystemExit(f"flows.stream:flow: {exc}") from None
        return build_flow(
            fs,
            config_from_settings(settings, Path(replay) if replay else None, tail, evict, layout),
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
