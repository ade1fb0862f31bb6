"""Replay an events Parquet file into Kafka: key = card id, idempotent producer.

The rate limit is a token bucket over wall time; ``rate=0`` sends as fast as the broker
takes it. Every message gets a delivery report; the summary says how many were sent and
how many failed (a failed one is not retried by us beyond the producer's own retries).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from features.definitions import FeatureSet
from features.schema import SchemaError
from flows.progress import Count
from flows.stream_io import table_to_messages


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    first_error: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def producer_config(bootstrap: str) -> dict[str, object]:
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
    }


def produce_messages(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes]],
    rate: float = 0.0,
    total: int | None = None,
    progress: bool | None = None,
) -> DeliveryReport:
    """Send ``(key, value)`` pairs at ``rate`` messages/s (0 = unlimited). Progress: a bar
    on a terminal (``progress`` True), else log lines (see :mod:`flows.progress`)."""
    from confluent_kafka import KafkaException, Producer

    report = DeliveryReport()

    def delivered(err: object, _msg: object) -> None:
        if err is None:
            report.sent += 1
        else:
            report.failed += 1
            report.first_error = report.first_error or str(err)

    producer = Producer(producer_config(bootstrap))
    start = time.perf_counter()
    bar = Count(f"produce {topic}", total, "events", tty=progress)
    for i, (key, value) in enumerate(messages):
        if rate > 0:
            ahead = (i / rate) - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
            except KafkaException as exc:
                report.failed += 1
                report.first_error = report.first_error or str(exc)
                break
        producer.poll(0)
        bar.update(1)
    remaining = producer.flush(60)
    report.failed += remaining
    bar.close(f"{report.sent:,} delivered, {report.failed:,} failed")
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def produce_file(
    fs: FeatureSet,
    bootstrap: str,
    topic: str,
    path: Path,
    rate: float = 0.0,
    progress: bool | None = None,
) -> DeliveryReport:
    """Replay ``path`` (events Parquet) in file order, key = the primary entity's id."""
    from flows.inputs import read_parquet

    table = read_parquet(path, "events")
    key = fs.primary.join_key
    if key not in table.column_names:
        raise SchemaError(f"column '{key}': missing (the Kafka message key of {fs.project})")
    cards = table.column(key).to_pylist()
    values = table_to_messages(table)
    pairs = ((str(c).encode(), v) for c, v in zip(cards, values, strict=True))
    return produce_messages(bootstrap, topic, pairs, rate, total=table.num_rows, progress=progress)
