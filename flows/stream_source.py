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
import threading
import time
from collections.abc import Callable, Mapping
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
#: A poll's size while tailing: what librdkafka has fetched, up to as many messages as the
#: flow processes in ``BUDGET_ENV`` milliseconds of its worker thread's CPU (measured:
#: :class:`PollBudget`), never more than ``batch_size``. Bytewax runs a poll's items step
#: by step, so a batch's first row is written only after the whole batch went through
#: every step: the budget bounds what one poll adds to freshness. A stream that is caught
#: up finds few messages and polls small; one that is behind takes large polls, which cost
#: less per event (fewer rows per event, fewer passes over Bytewax's operators). The first
#: poll after being caught up takes at most ``POLL_FLOOR``, each full poll after it twice
#: the last (a short stall's backlog goes out in small polls, its oldest messages first:
#: at 5,000 events/s a stall's catch-up polls are what the p99 sees). It
#: replaced a fixed 1,000 within 20,000 messages of the end, which kept a stream 0.1-1 s
#: behind at 20,000 events/s in small, dear polls (docs/perf-plan.md, section 10). A bounded
#: drain (``--no-tail``) takes full ``batch_size`` polls to the end.
BUDGET_ENV = "SKEWLESS_STREAM_POLL_BUDGET_MS"
BUDGET_MS = 100.0
#: The smallest cap (a cost estimate inflated by a run of empty polls cannot starve a
#: backlog; the first poll after a caught-up one), and the cost per message assumed
#: before any is measured.
POLL_FLOOR = 500
FIRST_COST_S = 30e-6
#: A cost is measured over at least this many messages (tiny polls are mostly per-poll
#: cost), and each measurement moves the estimate this far.
SAMPLE_MIN = 200
SAMPLE_WEIGHT = 0.5
#: ``SKEWLESS_STREAM_POLL_GAP_MS``: after a poll that took fewer messages than it asked for
#: (caught up), the next one waits this long (Bytewax's ``next_awake``). A
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


def poll_budget_s(env: Mapping[str, str] = os.environ) -> float:
    """A poll's CPU budget, in seconds, from ``SKEWLESS_STREAM_POLL_BUDGET_MS``."""
    raw = env.get(BUDGET_ENV) or str(BUDGET_MS)
    try:
        ms = float(raw)
    except ValueError:
        ms = 0.0
    if not 1 <= ms <= 60_000:
        raise ValueError(f"{BUDGET_ENV}: {raw!r} is not a number of milliseconds in 1..60000")
    return ms / 1000


class _Meter:
    __slots__ = ("cost_s", "messages", "since")

    def __init__(self, cost_s: float) -> None:
        self.cost_s, self.messages, self.since = cost_s, 0, 0.0


class PollBudget:
    """How many messages the next poll may take: ``seconds`` of the worker thread's CPU at
    the cost per message measured on that thread (its CPU time from one poll to the next
    over the messages polled in between: Bytewax runs a worker's partitions and the steps
    of what they emit on the worker's thread), between ``floor`` and the batch size.

    >>> ticks = iter([0.0, 0.03])  # the thread's CPU clock when read
    >>> b = PollBudget(0.1, floor=10, cost_s=1e-3, clock=lambda: next(ticks))
    >>> b.size(5000)  # 0.1 s at the assumed 1 ms per message
    100
    >>> b.took(100)
    >>> b.size(5000)  # too few messages to measure yet (the clock started at them)
    100
    >>> b.took(200)
    >>> b.size(5000)  # 0.03 s over 300 messages: 0.1 ms each, the estimate halfway there
    181
    """

    def __init__(
        self,
        seconds: float,
        floor: int = POLL_FLOOR,
        cost_s: float = FIRST_COST_S,
        clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self.seconds, self.floor, self.first_cost_s, self.clock = seconds, floor, cost_s, clock
        self.meters: dict[int, _Meter] = {}  # per worker thread

    def _meter(self) -> _Meter:
        m = self.meters.get(threading.get_ident())
        if m is None:
            m = self.meters[threading.get_ident()] = _Meter(self.first_cost_s)
        return m

    def size(self, batch_size: int) -> int:
        m = self._meter()
        if m.messages >= SAMPLE_MIN:
            now = self.clock()
            m.cost_s += SAMPLE_WEIGHT * ((now - m.since) / m.messages - m.cost_s)
            m.since, m.messages = now, 0
        return min(batch_size, max(self.floor, int(self.seconds / max(m.cost_s, 1e-9))))

    def took(self, n: int) -> None:
        """A poll returned ``n`` messages (their processing is measured from here)."""
        if n:
            m = self._meter()
            if not m.messages:  # idle polls before them are no message's cost
                m.since = self.clock()
            m.messages += n


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
        budget: PollBudget | None,
        gap_s: float = 0.0,
    ) -> None:
        self.offset = OFFSET_BEGINNING if resume is None else resume
        self.consumer = Consumer(config)
        self.tp = TopicPartition(topic, part, self.offset)
        self.consumer.assign([self.tp])
        self.topic, self.part, self.batch_size = topic, part, batch_size
        self.budget = budget  # None: every poll may take ``batch_size`` (a bounded drain)
        self.ramp = budget.floor if budget is not None else batch_size
        self.eof = False
        self.gap = timedelta(seconds=gap_s)
        self.awake: datetime | None = None  # after a small poll, when the gap ends

    def next_awake(self) -> datetime | None:
        return self.awake

    def next_batch(self) -> list[Any]:
        if self.eof:
            raise StopIteration
        n = self.batch_size
        if self.budget is not None:
            n = min(self.ramp, self.budget.size(n))
        msgs = self.consumer.consume(n, 0)
        if not msgs and POLL_WAIT_S > 0:
            msgs = self.consumer.consume(1, POLL_WAIT_S)
            if msgs and n > 1:
                msgs += self.consumer.consume(n - 1, 0)
        self.awake = None
        if self.budget is not None:  # behind: twice the size next; caught up: from the floor
            self.ramp = min(2 * self.ramp, self.batch_size) if len(msgs) >= n else self.budget.floor
        if not msgs:
            return []
        if self.gap and len(msgs) < n:
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
        if self.budget is not None:
            self.budget.took(len(offsets) + len(errors))
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
        budget: PollBudget | None = None,
    ) -> None:
        if raise_on_errors:
            raise ValueError("raise_on_errors: the thin source emits errors as items only")
        self.brokers, self.topics, self.tail = brokers, topics, tail
        self.batch_size, self.add_config = batch_size, dict(add_config or {})
        # shared by the partitions; a bounded drain (``tail=False``) has no freshness to
        # keep and takes full polls
        seconds = poll_budget_s()
        self.budget = budget or (PollBudget(seconds) if tail else None)
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
            config, topic, int(idx), resume_state, self.batch_size, self.budget, self.gap_s
        )
