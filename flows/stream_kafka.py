"""The stream's Kafka edges: its input (stoppable between batches), the dead-letter and
late messages it writes back (original key and bytes, sized to fit the broker), and the
check that messages are keyed by the primary entity's id."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSinkMessage, KafkaSource
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow, operator

from features.plan import Plan
from flows import stream_io
from flows.stream_io import DeadLetter, Ingested, LateOut, StoppableSource
from flows.stream_source import ThinKafkaSource

log = logging.getLogger("skewless.stream")


class KeyCheck:
    """Counts Kafka messages whose key is not the primary entity's id: they spread one
    entity's events over partitions, so its events arrive out of order (and late). Warns
    at most once per ``interval_s``, naming the first offenders since the last warning."""

    interval_s = 30.0
    shown = 5

    def __init__(self, plan: Plan) -> None:
        self.key = plan.primary.key
        self.join_key = plan.fs.primary.join_key
        self.lock = threading.Lock()
        self.last = -float("inf")
        self.pending = 0
        self.first: list[str] = []

    def __call__(self, msgs: list[Any], out: list[Ingested | DeadLetter]) -> None:
        key = self.key
        bad = [
            i for i, x in enumerate(out)
            if type(x) is Ingested and x.key != str(key(x.event)).encode()
        ]  # fmt: skip
        if bad:
            self.report(msgs, out, bad)

    def report(
        self, msgs: list[Any], out: Sequence[Any] | Mapping[int, Any], bad: list[int]
    ) -> None:
        """``out[i]``: offender ``i``'s ``Ingested`` (the poll's items, or the offenders')."""
        stream_io.METRICS.key_mismatches.inc(len(bad))
        with self.lock:
            self.pending += len(bad)
            for i in bad[: max(self.shown - len(self.first), 0)]:
                m = msgs[i]
                self.first.append(
                    f"partition {m.partition} offset {m.offset}: key {m.key!r}, "
                    f"expected {self.join_key} {self.key(out[i].event)}"
                )
            now = time.monotonic()
            if now - self.last < self.interval_s:
                return
            self.last = now
            n, first, self.pending, self.first = self.pending, self.first, 0, []
        log.warning(
            "%d message key(s) are not the %s (key each message by it, or one entity's "
            "events spread over partitions and arrive late): %s",
            n, self.join_key, "; ".join(first),
        )  # fmt: skip


# A dead letter fits Kafka's default limits (producer message.max.bytes 1,000,000; a
# topic's max.message.bytes 1,048,588) whatever the input topic allowed: a message the
# DLQ refused would stop the flow at it on every restart.
DLQ_MAX_VALUE = 900_000
DLQ_MAX_KEY = 16_384
DLQ_MAX_REASON = 2_048


def dlq_message(d: DeadLetter, topic: str) -> KafkaSinkMessage[bytes | None, bytes]:
    """The original key and bytes (truncated past the limits above, saying so in the
    ``truncated`` / ``key_truncated`` headers with the original length), the reason and
    where it was read."""
    reason = d.reason if len(d.reason) <= DLQ_MAX_REASON else d.reason[:DLQ_MAX_REASON] + "..."
    headers = [("reason", reason.encode()), *((k, str(v).encode()) for k, v in d.where.items())]
    value, key = d.raw, d.key
    if len(value) > DLQ_MAX_VALUE:
        headers.append(("truncated", str(len(value)).encode()))
        value = value[:DLQ_MAX_VALUE]
    if key is not None and len(key) > DLQ_MAX_KEY:
        headers.append(("key_truncated", str(len(key)).encode()))
        key = key[:DLQ_MAX_KEY]
    return KafkaSinkMessage(key=key, value=value, topic=topic, headers=headers)


def late_message(late: LateOut, topic: str) -> KafkaSinkMessage[bytes | None, bytes]:
    """The original key and bytes, naming the entity that dropped it."""
    return KafkaSinkMessage(
        key=late.item.key,
        value=late.item.raw,
        topic=topic,
        headers=[("reason", b"late"), ("late_for", late.entity.encode())],
    )


@operator
def kafka_in(
    step_id: str,
    flow: Dataflow,
    brokers: str,
    topic: str,
    tail: bool,
    batch_size: int,
    thin: bool = True,
) -> kop.KafkaOpOut[Any, Any]:
    """``kop.input`` with stoppable partitions, under the same step ids (so a recovery
    snapshot of an older version still resumes its offsets). ``thin``: one
    :class:`~flows.stream_source.KafkaBatch` per poll instead of a message object each
    (``flows/stream_source.py``; same offsets in the snapshots)."""
    cls = ThinKafkaSource if thin else KafkaSource
    source = cls(
        [brokers], [topic], tail, batch_size=batch_size, raise_on_errors=False,
        add_config={"fetch.wait.max.ms": "20"},
    )  # fmt: skip
    msgs = op.input("kafka_input", flow, StoppableSource(source))
    split = op.branch("split_err", msgs, lambda m: not isinstance(m, KafkaError))
    return kop.KafkaOpOut(split.trues, split.falses)
