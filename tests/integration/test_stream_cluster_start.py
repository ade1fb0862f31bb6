"""A two-process stream cluster whose members start seconds apart still meets (within
``--cluster-timeout``), runs on real Kafka and Redis, and writes exact values."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from skewless.verify import check_online_states
from tests.integration import stream_support as sup
from tests.service_fixtures import KafkaBroker

pytestmark = pytest.mark.integration


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


def test_members_started_apart_meet_and_write_exact_values(
    kafka_broker: KafkaBroker, kafka_admin_topic: Any, redis_url: str, tmp_path: Path
) -> None:
    table = sup.events(4_000, seed=43, cards=200, merchants=30, days=2.0)
    topic = kafka_admin_topic(partitions=2, prefix="cluster")
    sup.produce_mixed(kafka_broker.bootstrap, topic, table, [])
    url = sup.redis_db_url(redis_url, 11)
    env = sup.stream_env(kafka_broker.bootstrap, url, topic, tmp_path)
    addresses = ";".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    args = ("-a", addresses, "--cluster-timeout", "120")
    late = sup.start_stream(env, "-i", "1", *args, log=logs[1])
    time.sleep(3)  # the scenario: member 0 comes up a few seconds after member 1
    first = sup.start_stream(env, "-i", "0", *args, log=logs[0])
    sup.wait(first, logs[0])
    sup.wait(late, logs[1])
    for log in logs:
        assert "cluster: all 2 members answered; starting" in log.read_text()
    store = open_store(StoreConfig(redis_url=url), REFERENCE)
    report = check_online_states(
        REFERENCE, store, sup.accepted(table), sample_per_entity=100_000, times_per_entity=3
    )
    assert report.missing_states == {"card": 0, "merchant": 0}
    assert report.mismatches == 0 and report.compared > 1_000
