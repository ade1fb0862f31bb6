"""The real Kafka broker and Redis server started by scripts/services.sh work end to end."""

from __future__ import annotations

import socket
import time
import uuid
from collections import Counter
from typing import Any

import pytest

pytestmark = pytest.mark.integration

N_MESSAGES = 100
N_PARTITIONS = 3


def _consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Any]:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    messages: list[Any] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(messages) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            messages.append(msg)
        # nothing beyond what was produced
        extra = consumer.poll(1.0)
        assert extra is None or extra.error() is not None, "unexpected extra message"
    finally:
        consumer.close()
    return messages


def _produce(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    errors = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            errors.append(err)

    for i, payload in enumerate(payloads):
        producer.produce(
            topic,
            value=payload,
            key=f"k{i}".encode(),
            partition=i % N_PARTITIONS,
            on_delivery=on_delivery,
        )
    assert producer.flush(30) == 0
    assert errors == []


def test_kafka_produce_consume_100_messages_3_partitions(kafka_bootstrap, kafka_admin_topic):
    assert kafka_bootstrap.startswith("127.0.0.1:")
    topic = kafka_admin_topic(partitions=N_PARTITIONS, prefix="services")
    payloads = [f"payload-{i:03d}".encode() for i in range(N_MESSAGES)]

    _produce(kafka_bootstrap, topic, payloads)
    messages = _consume_all(kafka_bootstrap, topic, N_MESSAGES)

    values = [m.value() for m in messages]
    assert len(values) == N_MESSAGES  # no duplicates
    assert set(values) == set(payloads)
    assert Counter(m.partition() for m in messages) == {0: 34, 1: 33, 2: 33}
    for m in messages:
        i = int(m.value().decode().split("-")[1])
        assert m.key() == f"k{i}".encode()
        assert m.partition() == i % N_PARTITIONS
    # per-partition order is preserved
    for p in range(N_PARTITIONS):
        in_p = [int(m.value().decode().split("-")[1]) for m in messages if m.partition() == p]
        assert in_p == sorted(in_p)


def test_redis_set_get_round_trip(redis_url):
    import redis

    assert redis_url.startswith("redis://127.0.0.1:") and redis_url.endswith("/0")
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        assert client.set("skewless:test:key", b"value-1") is True
        assert client.get("skewless:test:key") == b"value-1"
        client.hset("skewless:test:hash", mapping={"a": "1", "b": "2"})
        assert client.hgetall("skewless:test:hash") == {b"a": b"1", b"b": b"2"}
        assert client.delete("skewless:test:key", "skewless:test:hash") == 2
        assert client.get("skewless:test:key") is None
    finally:
        client.close()


def test_redis_stop_refuses_then_restarts_on_same_port(redis_server):
    import redis

    url_before = redis_server.url
    port = redis_server.port
    client = redis.Redis.from_url(url_before, socket_connect_timeout=2, socket_timeout=2)
    try:
        assert client.set("skewless:test:restart", b"before") is True

        redis_server.stop()
        try:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            with pytest.raises(redis.exceptions.ConnectionError):
                client.ping()
        finally:
            redis_server.start()

        assert redis_server.url == url_before
        assert redis_server.port == port
        assert client.ping() is True  # the same client reconnects
        # no persistence: the restarted server is empty
        assert client.get("skewless:test:restart") is None
        assert client.set("skewless:test:restart", b"after") is True
        assert client.get("skewless:test:restart") == b"after"
        assert client.delete("skewless:test:restart") == 1
    finally:
        client.close()


def test_kafka_restart_keeps_port_and_data(kafka_broker, kafka_admin_topic):
    topic = kafka_admin_topic(partitions=N_PARTITIONS, prefix="restart")
    payloads = [f"kept-{i:03d}".encode() for i in range(30)]
    _produce(kafka_broker.bootstrap, topic, payloads)
    bootstrap_before = kafka_broker.bootstrap

    with kafka_broker.stopped(), pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", kafka_broker.port), timeout=2).close()

    assert kafka_broker.bootstrap == bootstrap_before
    messages = _consume_all(kafka_broker.bootstrap, topic, len(payloads))
    assert sorted(m.value() for m in messages) == payloads
