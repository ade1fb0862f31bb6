"""The thin Kafka source against Bytewax's KafkaSource on the same real topic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bytewax.connectors.kafka import KafkaSource
from confluent_kafka import Producer

from flows.stream_source import GAP_ENV, KafkaBatch, PollBudget, ThinKafkaSource
from tests.integration import stream_support as sup

pytestmark = pytest.mark.integration


def _read(part: Any) -> tuple[list[Any], list[int]]:
    """Every item to the end, and the snapshot after each batch."""
    items, snaps = [], [part.snapshot()]
    while True:
        try:
            batch = part.next_batch()
        except StopIteration:
            part.close()
            return items, snaps
        items += batch
        snaps.append(part.snapshot())


def test_thin_source_reads_what_kafka_source_reads_with_the_same_snapshots(
    kafka_bootstrap: str,
) -> None:
    topic = sup.create_topic(kafka_bootstrap, "thin-vs-bytewax", 2)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(2_500):
        key = None if i % 97 == 0 else str(i % 40).encode()
        p.produce(topic, value=b"" if i % 501 == 0 else b"v%d" % i, key=key, partition=i % 2,
                  timestamp=1_700_000_000_000 + i)  # fmt: skip
    p.flush(30)
    for part in ("0", "1"):
        name = f"{part}-{topic}"
        args: dict[str, Any] = {"batch_size": 300, "raise_on_errors": False}
        old, old_snaps = _read(KafkaSource([kafka_bootstrap], [topic], False, **args)
                               .build_part("s", name, None))  # fmt: skip
        new, new_snaps = _read(ThinKafkaSource([kafka_bootstrap], [topic], False, **args)
                               .build_part("s", name, None))  # fmt: skip
        assert all(type(b) is KafkaBatch and len(b) <= 300 for b in new)
        flat = [
            (b.partition, o, k, v, t)
            for b in new
            for o, k, v, t in zip(b.offsets, b.keys, b.values, b.timestamps, strict=True)
        ]
        assert flat == [(m.partition, m.offset, m.key, m.value or b"", m.timestamp[1]) for m in old]
        assert len(flat) == 1_250
        # the offset to resume from, after every batch that brought messages
        assert list(dict.fromkeys(new_snaps)) == list(dict.fromkeys(old_snaps))
        assert new_snaps[-1] == old_snaps[-1] == 1_250
        # resumed from a snapshot: the rest, exactly
        rest, _ = _read(ThinKafkaSource([kafka_bootstrap], [topic], False, **args)
                        .build_part("s", name, 1_000))  # fmt: skip
        assert [o for b in rest for o in b.offsets] == list(range(1_000, 1_250))


class Fixed(PollBudget):
    """A budget that always allows ``cap`` messages, and records what each poll took."""

    def __init__(self, cap: int, floor: int = 500) -> None:
        super().__init__(1.0, floor=floor)
        self.cap, self.taken = cap, []

    def size(self, batch_size: int) -> int:
        return min(self.cap, batch_size)

    def took(self, n: int) -> None:
        self.taken.append(n)


@pytest.mark.parametrize("cap", [100, 1_000])
def test_thin_source_polls_within_its_budget(kafka_bootstrap: str, cap: int) -> None:
    """A poll takes what librdkafka has fetched, up to the budget's size (the batch size at
    most); the budget hears every poll's count; every offset once."""
    topic = sup.create_topic(kafka_bootstrap, f"thin-budget-{cap}", 1)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(1_250):
        p.produce(topic, value=b"v%d" % i, key=b"k")
    p.flush(30)
    budget = Fixed(cap)
    source = ThinKafkaSource([kafka_bootstrap], [topic], False, batch_size=500, budget=budget)
    items, _ = _read(source.build_part("s", f"0-{topic}", None))
    assert [o for b in items for o in b.offsets] == list(range(1_250))
    assert all(len(b) <= min(cap, 500) for b in items)
    assert [n for n in budget.taken if n] == [len(b) for b in items]


def test_thin_source_doubles_its_polls_while_behind_and_starts_small_after(
    kafka_bootstrap: str,
) -> None:
    """After a caught-up poll the next takes at most the floor; after a full one, twice
    as many as it asked (up to the batch size): a short stall's backlog goes out oldest
    first in small polls, a lasting one in large polls."""
    topic = sup.create_topic(kafka_bootstrap, "thin-ramp", 1)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(1_250):
        p.produce(topic, value=b"v%d" % i, key=b"k")
    p.flush(30)
    source = ThinKafkaSource([kafka_bootstrap], [topic], False, batch_size=1_000,
                             budget=Fixed(10_000, floor=100))  # fmt: skip
    part = source.build_part("s", f"0-{topic}", None)
    assert part.ramp == 100
    polls: list[tuple[int, int, int]] = []  # (asked, got, the next ask)
    offsets: list[int] = []
    while True:
        asked = part.ramp
        try:
            batch = part.next_batch()
        except StopIteration:
            break
        got = sum(len(b) for b in batch)
        offsets += [o for b in batch for o in b.offsets]
        polls.append((asked, got, part.ramp))
    part.close()
    assert offsets == list(range(1_250))
    for asked, got, after in polls[:-1]:  # the last one also returned the partition's end
        assert got <= asked
        assert after == (min(2 * asked, 1_000) if got == asked else 100), polls


def test_thin_source_waits_after_a_small_poll_only(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SKEWLESS_STREAM_POLL_GAP_MS``: a poll that took fewer messages than it asked for
    (caught up) asks Bytewax to wait that long before the next; a full one does not."""
    topic = sup.create_topic(kafka_bootstrap, "thin-gap", 1)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(250):
        p.produce(topic, value=b"v%d" % i, key=b"k")
    p.flush(30)
    monkeypatch.setenv(GAP_ENV, "5")
    part = ThinKafkaSource([kafka_bootstrap], [topic], False, batch_size=1_000, budget=Fixed(100))
    part = part.build_part("s", f"0-{topic}", None)
    polls: list[tuple[int, Any]] = []
    while True:
        try:
            batch = part.next_batch()
        except StopIteration:
            break
        before = datetime.now(UTC)
        polls.append((sum(len(b) for b in batch), part.next_awake(), before))
    part.close()
    assert sum(n for n, _, _ in polls) == 250
    assert any(awake is not None for _, awake, _ in polls)  # the last, small poll at least
    for n, awake, before in polls:
        if n >= 100:
            assert awake is None, n
        elif awake is not None:
            assert before < awake <= before + timedelta(milliseconds=5)
    monkeypatch.setenv(GAP_ENV, "soon")
    with pytest.raises(ValueError, match=GAP_ENV):
        ThinKafkaSource([kafka_bootstrap], [topic], False)
