"""The stream's decode step: raw messages -> valid events or dead letters."""

from __future__ import annotations

import time
from typing import Any

import skewless_native as _native
from bytewax.connectors.kafka import KafkaSourceMessage

from features.native import txid_hash_native
from features.plan import Plan
from features.schema import InvalidEventError
from flows import stream_io
from flows.stream_io import DeadLetter, Ingested
from flows.stream_kafka import KeyCheck
from flows.stream_shard import BITS, Poll, ShardRouter
from flows.stream_source import BatchMessages, KafkaBatch


class Decoder:
    """Parses messages with the definitions' schema; anything invalid becomes a dead
    letter naming the field. Counted once per batch in the metrics. Takes Kafka
    messages, :class:`KafkaBatch` polls (the thin source) or replayed rows."""

    def __init__(
        self, plan: Plan, check_keys: bool = False, router: ShardRouter | None = None
    ) -> None:
        self.parse = plan.validator.parse
        self.id_of = plan.event_id
        # the native parser as the fast path: one call per poll (else one per message;
        # also for a native core built before decode_poll)
        fast = plan.validator.fast_path
        has_poll = hasattr(_native, "decode_poll")
        self.native = fast if isinstance(fast, _native.EventParser) and has_poll else None
        schema = plan.validator.schema
        self.id_at, self.record = schema.position(schema.event_id), schema.record
        self.check_keys = KeyCheck(plan) if check_keys else None
        self.check_at = schema.position(plan.fs.primary.join_key) if check_keys else None
        #: the sharded layout's router: with the native parser, one call per poll parses,
        #: checks the keys and groups (``skewless_native.decode_route``)
        self.router = router
        self.decode_route: Any = getattr(_native, "decode_route", None)  # None: an older core
        fused = router is not None and router.positions is not None
        self.fused = self.native is not None and fused and self.decode_route is not None
        #: the valid events kept natively as columns, the groups views of them (no
        #: ``Ingested`` per valid event; None: an older core, the groups hold tuples)
        self.decode_groups: Any = getattr(_native, "decode_groups", None) if self.fused else None

    def __call__(self, msgs: list[Any]) -> list[Ingested | DeadLetter]:
        if msgs and type(msgs[0]) is KafkaBatch:
            out: list[Ingested | DeadLetter] = []
            for batch in msgs:
                out += self.decode_batch(batch)
            where: Any = BatchMessages(msgs)
        else:
            out, where = [self.decode(m) for m in msgs], msgs
        dead = sum(1 for x in out if type(x) is DeadLetter)
        stream_io.METRICS.dead_letters.inc(dead)
        stream_io.METRICS.events_in.inc(len(out) - dead)
        if self.check_keys is not None:
            self.check_keys(where, out)
        return out

    def routed(self, msgs: list[Any]) -> Poll:
        """The sharded layout's decode: the poll's events grouped as the shard step takes
        them, and its dead letters; the same groups, dead letters, key check and counts as
        the router over ``self(msgs)``, which stays the path of what the native call does
        not decide (a replayed row, an unsure message found valid, an id beyond int64)."""
        router = self.router
        assert router is not None, "Decoder.routed needs the shard router"
        if not (self.fused and msgs and type(msgs[0]) is KafkaBatch):
            out = self(msgs)
            return Poll(router(out), [x for x in out if type(x) is DeadLetter])
        if len(msgs) == 1:
            b = msgs[0]
            values, keys, stamps = b.values, b.keys, b.timestamps
        else:
            values, keys, stamps = [], [], []
            for b in msgs:
                values += b.values
                keys += b.keys
                stamps += b.timestamps
        now = int(time.time() * 1000)
        if self.decode_groups is not None:
            poll = self._grouped(msgs, values, keys, stamps, now)
            if poll is not None:
                return poll
        out, unsure, got, bad = self.decode_route(
            self.native, values, keys, stamps, now, self.id_at, self.record, Ingested,
            router.positions, BITS, self.check_at,
        )  # fmt: skip
        dead: list[DeadLetter] = []
        valid_unsure = False
        for i in unsure:
            b, j = _locate(msgs, i)
            x = out[i] = self._one(b, j, now)
            if type(x) is DeadLetter:
                dead.append(x)
            else:
                valid_unsure = True
        stream_io.METRICS.dead_letters.inc(len(dead))
        stream_io.METRICS.events_in.inc(len(out) - len(dead))
        where: Any = BatchMessages(msgs)
        if got is None or valid_unsure:  # the Python path groups and checks
            if self.check_keys is not None:
                self.check_keys(where, out)
            return Poll(router(out), dead)
        if bad and self.check_keys is not None:
            self.check_keys.report(where, out, bad)
        return Poll(router.items(got), dead)

    def _grouped(
        self, msgs: list[Any], values: list[Any], keys: list[Any], stamps: list[Any], now: int
    ) -> Poll | None:
        """The poll as ``decode_groups`` columns and groups, or None where the Python path
        must group the whole poll (an unsure message found valid, an id beyond int64): the
        caller decodes it again as ``decode_route`` does."""
        router = self.router
        assert router is not None
        valid, unsure, got, bad, offenders = self.decode_groups(
            self.native, values, keys, stamps, now, self.id_at, self.record, Ingested,
            router.positions, BITS, self.check_at,
        )  # fmt: skip
        if got is None:
            return None
        dead: list[DeadLetter] = []
        for i in unsure:
            b, j = _locate(msgs, i)
            x = self._one(b, j, now)
            if type(x) is not DeadLetter:
                return None  # its place in each entity's order: the Python path's
            dead.append(x)
        stream_io.METRICS.dead_letters.inc(len(dead))
        stream_io.METRICS.events_in.inc(valid)
        if bad and self.check_keys is not None:
            where: Any = BatchMessages(msgs)
            self.check_keys.report(where, dict(zip(bad, offenders, strict=True)), bad)
        return Poll(router.items(got), dead)

    def decode_batch(self, b: KafkaBatch) -> list[Ingested | DeadLetter]:
        """One poll of one partition: no per-message object but the result. With the
        native parser, one native call; the messages it is not sure of get the Python path."""
        now = int(time.time() * 1000)
        if self.native is None:
            return [self._one(b, i, now) for i in range(len(b.values))]
        out, unsure = _native.decode_poll(self.native, b.values, b.keys, b.timestamps, now,
                                          self.id_at, self.record, Ingested)  # fmt: skip
        for i in unsure:
            out[i] = self._one(b, i, now)
        return out

    def _one(self, b: KafkaBatch, i: int, now: int) -> Ingested | DeadLetter:
        """Message ``i`` of a poll, the per-message path (the reference of decode_poll)."""
        raw, key = b.values[i], b.keys[i]
        try:
            event = self.parse(raw)
            return Ingested(event, b.timestamps[i] or now, txid_hash_native(self.id_of(event)),
                            raw, key)  # fmt: skip
        except InvalidEventError as exc:
            return DeadLetter(
                raw, str(exc), {"partition": b.partition, "offset": b.offsets[i]}, key
            )

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
        produced = produced or int(time.time() * 1000)
        return Ingested(event, produced, txid_hash_native(self.id_of(event)), raw, key)


def _locate(msgs: list[KafkaBatch], i: int) -> tuple[KafkaBatch, int]:
    """Message ``i`` of several polls: its poll and its index there."""
    for b in msgs:
        if i < len(b.values):
            return b, i
        i -= len(b.values)
    raise IndexError(i)
