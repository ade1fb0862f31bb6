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
from flows.stream_source import BatchMessages, KafkaBatch


class Decoder:
    """Parses messages with the definitions' schema; anything invalid becomes a dead
    letter naming the field. Counted once per batch in the metrics. Takes Kafka
    messages, :class:`KafkaBatch` polls (the thin source) or replayed rows."""

    def __init__(self, plan: Plan, check_keys: bool = False) -> None:
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
