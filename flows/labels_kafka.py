"""Labels on real Kafka: ``<topic>.labels`` in (:func:`sync_labels`) and out
(:func:`produce_labels`).

:func:`sync_labels` reads the topic from where the last sync stopped up to its end (the
high watermarks when it starts) and appends the valid labels to a ``labels.parquet``
table, the same table the embedded mode writes; the next offset of every partition is
kept in that file's metadata, so a rerun reads only what is new and the table never
holds a message twice. An invalid label goes to ``<topic>.labels.dlq`` with its original
key and bytes and a ``reason`` header (plus ``topic``/``partition``/``offset``), the
stream's dead-letter format. Dead letters are sent before the table is replaced: a crash
in between resends them on the next sync (at least once), never loses one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from features.definitions import FeatureSet
from features.schema import InvalidEventError
from features.validate import Validator
from flows.labels import empty_labels, label_schema, read_labels, write_labels
from flows.produce import DeliveryReport, produce_messages, producer_config
from flows.stream_io import table_to_messages

log = logging.getLogger("skewless.labels")

_OFFSETS = b"skewless.label_offsets"
_MS = pa.timestamp("ms", tz="UTC")


def labels_topic(topic: str) -> str:
    return f"{topic}.labels"


def produce_labels(
    fs: FeatureSet,
    bootstrap: str,
    topic: str,
    path: Path,
    rate: float = 0.0,
    progress: bool = False,
) -> DeliveryReport:
    """Replay a labels file onto ``<topic>.labels`` (JSON, key = the event id) in file
    order. Rows are sent as they are: the consumer validates them."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"labels: {path} does not exist") from None
    ident = label_schema(fs).event_id
    if ident not in table.column_names:
        raise ValueError(f"labels {path}: column '{ident}' missing (the event id)")
    keys = [None if k is None else str(k).encode() for k in table.column(ident).to_pylist()]
    values = table_to_messages(table)
    return produce_messages(
        bootstrap, labels_topic(topic), zip(keys, values, strict=True), rate,
        total=table.num_rows, progress=progress,
    )  # fmt: skip


@dataclass
class SyncReport:
    read: int = 0
    labels: int = 0
    dead_letters: int = 0
    total_labels: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _stored_offsets(path: Path) -> dict[int, int]:
    if not path.exists():
        return {}
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(_OFFSETS)
    return {int(p): int(o) for p, o in json.loads(raw).items()} if raw else {}


def sync_labels(
    fs: FeatureSet,
    bootstrap: str,
    topic: str,
    path: Path,
    timeout_s: float = 30.0,
    consumer_config: dict[str, Any] | None = None,
) -> SyncReport:
    """Append the new valid labels of ``<topic>.labels`` to ``path``; dead-letter the rest."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    source = labels_topic(topic)
    validator = Validator(label_schema(fs))
    offsets = _stored_offsets(path)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "skewless-labels",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **(consumer_config or {}),
        }
    )
    report = SyncReport()
    rows: list[tuple[str, Any, int]] = []
    producer = Producer(producer_config(bootstrap))
    try:
        meta = consumer.list_topics(source, timeout=timeout_s).topics.get(source)
        if meta is None or meta.error is not None:
            raise ConnectionError(
                f"labels: topic {source} does not exist on {bootstrap} "
                "(send labels with `skewless produce --labels FILE`)"
            )
        ends: dict[int, int] = {}
        assign = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(source, p), timeout_s)
            start = max(offsets.get(p, low), low)
            if start < high:
                ends[p] = high
                assign.append(TopicPartition(source, p, start))
            offsets[p] = start
        consumer.assign(assign)
        while ends:
            msg = consumer.poll(timeout_s)
            if msg is None:
                raise ConnectionError(
                    f"labels: no message from {source} within {timeout_s:g} s "
                    f"(partitions left: {sorted(ends)})"
                )
            if msg.error() is not None:
                raise ConnectionError(f"labels: reading {source}: {msg.error()}")
            p, off = int(msg.partition() or 0), int(msg.offset() or 0)
            report.read += 1
            raw = msg.value() or b""
            try:
                rows.append(tuple(validator.parse(raw)))
            except InvalidEventError as exc:
                report.dead_letters += 1
                headers: list[tuple[str, str | bytes | None]] = [
                    ("reason", str(exc).encode()), ("topic", source.encode()),
                    ("partition", str(p).encode()), ("offset", str(off).encode()),
                ]  # fmt: skip
                producer.produce(f"{source}.dlq", value=raw, key=msg.key(), headers=headers)
                producer.poll(0)
            offsets[p] = off + 1
            if off + 1 >= ends[p]:
                del ends[p]
    finally:
        consumer.close()
    if producer.flush(30):
        raise ConnectionError(f"labels: dead letters to {source}.dlq not delivered")
    report.labels = len(rows)
    table = _append(fs, path, rows, offsets)
    report.total_labels = table.num_rows
    return report


def _append(
    fs: FeatureSet, path: Path, rows: list[tuple[str, Any, int]], offsets: dict[int, int]
) -> pa.Table:
    base = read_labels(fs, path)[0] if path.exists() else empty_labels(fs)
    base = base.cast(empty_labels(fs).schema)
    if rows:
        ids, values, times = zip(*rows, strict=True)
        new = pa.table(
            [pa.array(ids, pa.string()), pa.array(values), pa.array(times, pa.int64()).cast(_MS)],
            names=base.column_names,
        ).cast(base.schema)
        base = pa.concat_tables([base, new])
    meta = {_OFFSETS: json.dumps({str(p): o for p, o in sorted(offsets.items())}).encode()}
    table = base.replace_schema_metadata(meta)
    write_labels(table, path)
    log.info("labels: %d in %s", table.num_rows, path)
    return table
