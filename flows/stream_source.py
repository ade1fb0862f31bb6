"""A thinner Kafka source: one item per partition and poll, not one object per message.

Bytewax's ``KafkaSource`` builds a ``KafkaSourceMessage`` dataclass per message (~3.6 µs
here) that the decoder reads once and drops. :class:`ThinKafkaSource` reads the same
partitions the same way (``Consumer.consume(batch_size)`` on an assigned partition, no
consumer group) and emits one :class:`KafkaBatch` of plain lists per poll; errors still
come one :class:`~bytewax.connectors.kafka.KafkaError` each. Its recovery state is
``KafkaSource``'s own: the next offset to read per partition, under the same step id, so a
snapshot written by either resumes with the other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError

#: How long a poll that finds nothing queued waits for the first message. ``consume(n, t)``
#: returns early only once it has n messages, so the old ``consume(batch, 0.001)`` held
#: the worker for the whole 1 ms on every poll of a partition with fewer (~1.2 ms of each
#: event's freshness at 5,000 events/s, the worker idle meanwhile). Now a poll takes what
#: librdkafka already fetched without waiting; only when that is nothing does it wait, for
#: one message, and returns as soon as one comes (an empty poll: Bytewax waits 1 ms more).
POLL_WAIT_S = 0.001
#: Messages per poll while the partition is caught up (fewer than ``LIVE_LAG`` messages
#: behind its end). Bytewax runs a poll's items step by step, so a batch's first row is
#: written only after the whole batch went through every step (polls of up to 5,000 at
#: 20,000 events/s: decode -> write start 54 ms p50, 300 ms p99). Further behind, the
#: full ``batch_size`` as before: a drain keeps its large polls.
LIVE_BATCH = 1000
LIVE_LAG = 20_000
#: ``SKEWLESS_STREAM_POLL_GAP_MS``: after a poll that took fewer than ``LIVE_BATCH``
#: messages (caught up), the next one waits this long (Bytewax's ``next_awake``). A
#: tailing stream's CPU is mostly per poll, not per event; at 5,000 events/s a 10 ms gap
#: doubled the messages per poll and cut the CPU per event 15-20%, for ~5 ms more p50
#: (docs/perf-plan.md, "Tailing cost per poll"). Default 0: poll as soon as Bytewax may.
GAP_ENV = "SKEWLESS_STREAM_POLL_GAP_MS"


def live_gap_s(env: Mapping[str, str] = os.environ) -> float:
    """The gap after a small poll, in seconds, from ``SKEWLESS_STREAM_POLL_GAP_MS``."""
    raw = env.get(GAP_ENV) or "0"
    try:
        ms = float(raw)
    except ValueError:
        ms = -1.0
    if not 0 <= ms <= 1000:
        raise ValueError(f"{GAP_ENV}: {raw!r} is not a number of milliseconds in 0..1000")
    return ms / 1000


@dataclass(frozen=True)
class KafkaBatch:
    """The messages of one poll of one partition, column by column (timestamps in ms)."""

    partition: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes]
    timestamps: list[int]

    def __len__(self) -> int:
        return len(self.values)


class Located(NamedTuple):
    """Where one message of a batch was read (for warnings naming it)."""

    partition: int
    offset: int
    key: bytes | None


class BatchMessages:
    """The messages of several batches, by their index in the decoded output, built only
    when one is asked for (the key check names its first offenders)."""

    def __init__(self, batches: list[KafkaBatch]) -> None:
        self.batches = batches

    def __getitem__(self, i: int) -> Located:
        for b in self.batches:
            if i < len(b):
                return Located(b.partition, b.offsets[i], b.keys[i])
            i -= len(b)
        raise IndexError(i)


class _ThinPartition(StatefulSourcePartition[Any, int]):
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        part: int,
        resume: int | None,
        batch_size: int,
        live: tuple[int, int] = (LIVE_BATCH, LIVE_LAG),
        gap_s: float = 0.0,
    ) -> None:
        self.offset = OFFSET_BEGINNING if resume is None else resume
        self.consumer = Consumer(config)
        self.tp = TopicPartition(topic, part, self.offset)
        self.consumer.assign([self.tp])
        self.topic, self.part, self.batch_size = topic, part, batch_size
        self.live_batch, self.live_lag = min(live[0], batch_size), live[1]
        self.eof = False
        self.gap = timedelta(seconds=gap_s)
        self.awake: datetime | None = None  # after a small poll, when the gap ends

    def next_awake(self) -> datetime | None:
        return self.awake

    def _size(self) -> int:
        """``batch_size`` when far behind the partition's end (its high watermark as the
        last fetch saw it, no request), else ``LIVE_BATCH``."""
        if self.live_batch == self.batch_size or self.offset < 0:
            return self.batch_size
        high = self.consumer.get_watermark_offsets(self.tp, cached=True)[1]
        return self.batch_size if high - self.offset > self.live_lag else self.live_batch

    def next_batch(self) -> list[Any]:
        if self.eof:
            raise StopIteration
        n = self._size()
        msgs = self.consumer.consume(n, 0)
        if not msgs and POLL_WAIT_S > 0:
            msgs = self.consumer.consume(1, POLL_WAIT_S)
            if msgs and n > 1:
                msgs += self.consumer.consume(n - 1, 0)
        self.awake = None
        if not msgs:
            return []
        if self.gap and len(msgs) < self.live_batch:
            self.awake = datetime.now(UTC) + self.gap
        offsets: list[int] = []
        keys: list[bytes | None] = []
        values: list[bytes] = []
        stamps: list[int] = []
        errors: list[Any] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == ConfluentKafkaError._PARTITION_EOF:
                    self.eof = True  # emit what came before it; stop at the next call
                    break
                errors.append(KafkaError(err, _message(m)))
                continue
            offsets.append(m.offset() or 0)
            keys.append(m.key())
            values.append(m.value() or b"")
            stamps.append(m.timestamp()[1])
        last = max(offsets[-1] if offsets else -1, *(e.msg.offset for e in errors), -1)
        if last >= 0:
            self.offset = last + 1  # resume after it, as KafkaSource does
        out: list[Any] = errors
        if offsets:
            out.append(KafkaBatch(self.part, offsets, keys, values, stamps))
        return out

    def snapshot(self) -> int:
        return self.offset

    def close(self) -> None:
        self.consumer.close()


def _message(m: Any) -> KafkaSourceMessage[bytes | None, bytes | None]:
    return KafkaSourceMessage(
        key=m.key(), value=m.value(), topic=m.topic(), headers=m.headers() or [],
        latency=m.latency(), offset=m.offset(), partition=m.partition(), timestamp=m.timestamp(),
    )  # fmt: skip


class ThinKafkaSource(FixedPartitionedSource[Any, int]):
    """``KafkaSource``'s arguments, partitions and snapshots, emitting
    :class:`KafkaBatch` items (and :class:`KafkaError` ones)."""

    def __init__(
        self,
        brokers: list[str],
        topics: list[str],
        tail: bool = True,
        batch_size: int = 1000,
        raise_on_errors: bool = False,
        add_config: dict[str, str] | None = None,
        live: tuple[int, int] = (LIVE_BATCH, LIVE_LAG),
    ) -> None:
        if raise_on_errors:
            raise ValueError("raise_on_errors: the thin source emits errors as items only")
        self.brokers, self.topics, self.tail = brokers, topics, tail
        self.batch_size, self.add_config = batch_size, dict(add_config or {})
        self.live = live  # (messages per poll, when fewer than this many behind)
        self.gap_s = live_gap_s()

    def list_parts(self) -> list[str]:
        """Each Kafka partition, named as ``KafkaSource`` names it."""
        return KafkaSource(self.brokers, self.topics, add_config=self.add_config).list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ThinPartition:
        idx, topic = for_part.split("-", 1)
        if topic not in self.topics:
            raise ValueError(f"recovery: partition {for_part} is not of topics {self.topics}")
        config = {
            "group.id": "BYTEWAX_IGNORED",  # offsets live in the recovery snapshots
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self.brokers),
            "enable.partition.eof": str(not self.tail),
            **self.add_config,
        }
        return _ThinPartition(
            config, topic, int(idx), resume_state, self.batch_size, self.live, self.gap_s
        )
