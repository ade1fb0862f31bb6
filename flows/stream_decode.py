"""The stream's decode step: raw messages -> valid events or dead letters."""

from __future__ import annotations

import time
from typing import Any

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
        """One poll of one partition: no per-message object but the result."""
        parse, id_of, now = self.parse, self.id_of, int(time.time() * 1000)
        out: list[Ingested | DeadLetter] = []
        add = out.append
        for raw, key, ts, offset in zip(b.values, b.keys, b.timestamps, b.offsets, strict=True):
            try:
                event = parse(raw)
                add(Ingested(event, ts or now, txid_hash_native(id_of(event)), raw, key))
            except InvalidEventError as exc:
                add(DeadLetter(raw, str(exc), {"partition": b.partition, "offset": offset}, key))
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
        produced = produced or int(time.time() * 1000)
        return Ingested(event, produced, txid_hash_native(self.id_of(event)), raw, key)
