"""The stream's edges against the real Kafka broker and Redis (issue 12 items 2-5, 9):
an oversized message, the original keys on the DLQ and late outputs, a topic that does
not exist, keys that do not match the primary entity's id, Ctrl-C."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import run_main
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY

from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from flows.stream import StreamConfig, build_flow
from flows.stream_io import table_to_messages
from tests.integration import stream_support as sup

pytestmark = pytest.mark.integration

BIG = 1_040_000


def _produce(bootstrap: str, topic: str, msgs: list[tuple[bytes | None, bytes]]) -> None:
    """In order, one partition's worth; a producer that may send ~1 MB messages."""
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 2_000_000})
    failed: list[str] = []
    for key, value in msgs:
        p.produce(
            topic, value=value, key=key, on_delivery=lambda e, _m: e and failed.append(str(e))
        )
    assert p.flush(60) == 0 and not failed, failed


def _consume(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
         "auto.offset.reset": "earliest"}
    )  # fmt: skip
    c.subscribe([topic])
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(m for m in c.consume(100, 0.5) if m.error() is None)
    extra = c.consume(100, 1.0)  # nothing more than expected
    got.extend(m for m in extra if m.error() is None)
    c.close()
    return got


def _run(bootstrap: str, url: str, topic: str, out: Path) -> None:
    cfg = StreamConfig(
        store=StoreConfig(redis_url=url), brokers=bootstrap, topic=topic, out_dir=out, tail=False
    )
    run_main(build_flow(REFERENCE, cfg))  # returns only if the flow never crashed


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _keyed(table: Any) -> list[tuple[bytes | None, bytes]]:
    cards = table.column("card_id").to_pylist()
    return [(str(c).encode(), v) for c, v in zip(cards, table_to_messages(table), strict=True)]


def test_oversized_message_goes_to_the_dlq_truncated_with_its_key_and_the_flow_goes_on(
    kafka_bootstrap: str, redis_url: str, kafka_admin_topic: Any, tmp_path: Path
) -> None:
    topic = kafka_admin_topic(1, "big", {"max.message.bytes": "1100000"})
    table = sup.events(400, seed=5, cards=60, merchants=10, days=2.0)
    good = _keyed(table)
    big = b'{"pad":"' + b"y" * (BIG - 10) + b'"}'
    assert len(big) == BIG
    bad = [(f"junk-{i}".encode(), m) for i, m in enumerate(sup.malformed(16))]
    msgs = [*good[:200], (b"big-key", big), *bad, *good[200:]]
    _produce(kafka_bootstrap, topic, msgs)
    url = sup.redis_db_url(redis_url, 11)
    _run(kafka_bootstrap, url, topic, tmp_path)

    dlq = _consume(kafka_bootstrap, topic + ".dlq", 1 + len(bad))
    assert len(dlq) == 1 + len(bad)
    first, rest = dlq[0], dlq[1:]
    headers = dict(first.headers())
    assert first.key() == b"big-key"
    assert headers["reason"].decode().startswith("message")
    assert headers["truncated"] == str(BIG).encode()
    assert 0 < len(first.value()) < BIG and big.startswith(first.value())
    assert [(m.key(), m.value()) for m in rest] == bad  # original keys and bytes, in order
    assert all("truncated" not in dict(m.headers()) for m in rest)
    # every valid event after the oversized one was counted
    store = open_store(StoreConfig(redis_url=url), REFERENCE)
    cards = sorted(set(table.column("card_id").to_pylist()))
    assert all(s is not None for s in store.read_states([("card", c) for c in cards]))


def _event(tx: str, card: int, merchant: int, when: str) -> bytes:
    return json.dumps(
        {"transaction_id": tx, "card_id": card, "merchant_id": merchant, "amount": 12.5,
         "currency": "EUR", "country": "FR", "mcc": 5411, "event_time": when},
        separators=(",", ":"),
    ).encode()  # fmt: skip


def test_late_and_dlq_outputs_keep_the_original_key_and_bytes(
    kafka_bootstrap: str, redis_url: str, kafka_admin_topic: Any, tmp_path: Path
) -> None:
    topic = kafka_admin_topic(1, "keys")
    late = _event("late-1", 7, 990, "2026-01-01T10:00:00Z")  # 30 days before the card's
    msgs: list[tuple[bytes | None, bytes]] = [
        (b"7", _event("t-1", 7, 991, "2026-01-31T10:00:00Z")),
        (b"7", _event("t-2", 7, 991, "2026-01-31T10:05:00Z")),
        (b"producer-key-7", late),  # the producer's own key: kept, not recomputed
        (b"bad-key", b"not json"),
        (None, b"[1]"),
    ]
    _produce(kafka_bootstrap, topic, msgs)
    _run(kafka_bootstrap, sup.redis_db_url(redis_url, 12), topic, tmp_path)
    [m] = _consume(kafka_bootstrap, topic + ".late", 1)
    assert (m.key(), m.value()) == (b"producer-key-7", late)
    assert dict(m.headers()) == {"reason": b"late", "late_for": b"card"}
    dlq = _consume(kafka_bootstrap, topic + ".dlq", 2)
    assert [(d.key(), d.value()) for d in dlq] == [(b"bad-key", b"not json"), (None, b"[1]")]
    assert [dict(d.headers())["offset"] for d in dlq] == [b"3", b"4"]


def test_keys_that_are_not_the_primary_id_are_counted_and_warned(
    kafka_bootstrap: str,
    redis_url: str,
    kafka_admin_topic: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = kafka_admin_topic(1, "mismatch")
    table = sup.events(300, seed=6, cards=40, merchants=8, days=2.0)
    msgs = _keyed(table)
    wrong = [17, 18, 150, 299]
    for i in wrong[:-1]:
        msgs[i] = (f"x{i}".encode(), msgs[i][1])
    msgs[wrong[-1]] = (None, msgs[wrong[-1]][1])  # no key: spread over partitions too
    _produce(kafka_bootstrap, topic, msgs)
    name = "skewless_stream_key_mismatches_total"
    before = _counter(name)
    with caplog.at_level(logging.WARNING, logger="skewless.stream"):
        _run(kafka_bootstrap, sup.redis_db_url(redis_url, 13), topic, tmp_path)
    assert _counter(name) - before == len(wrong)
    warnings = [r.getMessage() for r in caplog.records if "key" in r.getMessage()]
    assert warnings, caplog.text
    card = table.column("card_id")[17].as_py()
    assert f"partition 0 offset 17: key b'x17', expected card_id {card}" in warnings[0]
    assert len(warnings) == 1  # rate-limited: one per interval


def _topics(bootstrap: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


def test_a_missing_topic_is_refused_naming_it_unless_create_topic(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    topic = f"absent-{uuid.uuid4().hex[:8]}"
    env = sup.stream_env(kafka_bootstrap, sup.redis_db_url(redis_url, 14), topic, tmp_path)
    cmd = [sys.executable, "-m", "skewless", "stream", "--no-tail"]
    try:
        done = subprocess.run(
            cmd, cwd=sup.ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("the stream waited on a topic that does not exist") from None
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert f"topic '{topic}' does not exist" in line and "--create-topic" in line, line
    assert topic not in _topics(kafka_bootstrap)

    done = subprocess.run(
        [*cmd, "--create-topic"], cwd=sup.ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert topic in _topics(kafka_bootstrap)


def test_ctrl_c_stops_the_stream_cleanly_with_exit_0(
    kafka_bootstrap: str, redis_url: str, kafka_admin_topic: Any, tmp_path: Path
) -> None:
    topic = kafka_admin_topic(2, "sigint")
    _produce(kafka_bootstrap, topic, _keyed(sup.events(2000, seed=8, cards=300, days=2.0)))
    url = sup.redis_db_url(redis_url, 15)
    env = sup.stream_env(kafka_bootstrap, url, topic, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "skewless", "stream"],  # tails: runs until stopped
        cwd=sup.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        sup.wait_for_keys(url, 300, proc)  # consuming
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.decode()
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
