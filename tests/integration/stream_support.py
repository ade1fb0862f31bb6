"""Helpers for the streaming integration tests: messy input, running the flow, dumps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import redis

from features.reference import REFERENCE
from flows.backfill import AcceptedEvents, BackfillReport, load_events
from flows.produce import produce_messages
from flows.simulate import SimulationConfig, simulate
from flows.stream_io import table_to_messages

ROOT = Path(__file__).resolve().parents[2]


def events(
    n: int, seed: int = 3, cards: int = 1500, merchants: int = 120, days: float = 9.0
) -> pa.Table:
    return simulate(
        SimulationConfig(events=n, cards=cards, merchants=merchants, days=days, seed=seed)
    )


def malformed(n: int, seed: int = 1) -> list[bytes]:
    """``n`` messages that must all land in the DLQ, one kind after another."""
    rng = np.random.default_rng(seed)
    good = {
        "card_id": 1, "merchant_id": 2, "amount": 10.0, "currency": "EUR", "country": "FR",
        "mcc": 5411, "event_time": "2026-01-02T10:00:00Z",
    }  # fmt: skip
    kinds = [
        lambda i: bytes(rng.integers(128, 256, size=24, dtype=np.uint8)),  # not UTF-8
        lambda i: f"not json {i}".encode(),
        lambda i: json.dumps([i, "x"]).encode(),  # JSON, not an object
        lambda i: json.dumps({k: v for k, v in {**good, "transaction_id": f"m{i}"}.items() if k != "amount"}).encode(),
        lambda i: json.dumps({**good, "transaction_id": f"m{i}", "card_id": "abc"}).encode(),
        lambda i: json.dumps({**good, "transaction_id": f"m{i}", "amount": "12.5"}).encode(),
        lambda i: json.dumps({**good, "transaction_id": f"m{i}", "amount": float("nan")}).encode(),
        lambda i: json.dumps({**good, "transaction_id": f"m{i}", "amount": float("inf")}).encode(),
        lambda i: json.dumps({**good, "transaction_id": f"m{i}", "amount": -3.0}).encode(),
        lambda i: json.dumps({**good, "transaction_id": f"m{i}", "event_time": "9999-01-01T00:00:00Z"}).encode(),
        lambda i: json.dumps({**good, "transaction_id": f"m{i}", "event_time": 32503680000000}).encode(),
        lambda i: json.dumps({**good, "transaction_id": "x" * 65 + str(i)}).encode(),
        lambda i: json.dumps({**good, "transaction_id": f"m{i}", "amount": 1e12}).encode(),
        lambda i: json.dumps({**good, "transaction_id": f"m{i}", "pad": "y" * 20_000}).encode(),
        lambda i: json.dumps({**good, "transaction_id": f"m{i}", "mcc": 12.5}).encode(),
        lambda i: json.dumps({**good, "transaction_id": f"m{i}", "event_time": "2026-01-02T10:00:00"}).encode(),
    ]  # fmt: skip
    return [kinds[i % len(kinds)](i) for i in range(n)]


def produce_mixed(
    bootstrap: str, topic: str, table: pa.Table, bad: list[bytes], seed: int = 2
) -> None:
    msgs: list[tuple[bytes | None, bytes]] = list(
        zip(
            (str(c).encode() for c in table.column("card_id").to_pylist()),
            table_to_messages(table),
            strict=True,
        )
    )
    rng = np.random.default_rng(seed)
    for b in bad:
        msgs.insert(int(rng.integers(0, len(msgs) + 1)), (b"junk", b))
    report = produce_messages(bootstrap, topic, msgs)
    assert report.failed == 0 and report.sent == len(msgs), report


def accepted(table: pa.Table) -> AcceptedEvents:
    _, ev, _, _ = load_events(REFERENCE, table, BackfillReport())
    return ev


def create_topic(bootstrap: str, name: str, partitions: int) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(60)
    return name


def redis_db_url(base_url: str, db: int) -> str:
    return base_url.rsplit("/", 1)[0] + f"/{db}"


def fresh_db_url(base_url: str, db: int) -> str:
    """Database ``db`` of the session's Redis, emptied first: modules share the 16 numbers,
    and a state left by an earlier test would be read as this test's bootstrap."""
    url = redis_db_url(base_url, db)
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def dump(url: str) -> dict[bytes, dict[bytes, bytes]]:
    """Every hash in the database: the whole online store content (not the stream's
    loss markers, ``skewless:*``: random per run)."""
    client = redis.Redis.from_url(url)
    try:
        return {
            k: client.hgetall(k)
            for k in client.scan_iter(count=1000)
            if not k.startswith(b"skewless:")
        }
    finally:
        client.close()


def stream_env(bootstrap: str, redis_url: str, topic: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKEWLESS_", "BYTEWAX_"))}
    env.update(
        SKEWLESS_KAFKA_BOOTSTRAP=bootstrap, SKEWLESS_REDIS_URL=redis_url, SKEWLESS_TOPIC=topic,
        SKEWLESS_DATA_DIR=str(data_dir), SKEWLESS_LOG_LEVEL="INFO",
    )  # fmt: skip
    return env


def start_stream(
    env: dict[str, str], *args: str, log: Path, tail: bool = False
) -> subprocess.Popen[Any]:
    """``skewless stream`` as a subprocess, its output appended to ``log``; it stops at
    the end of the topic unless ``tail``."""
    f = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "skewless", "stream", *([] if tail else ["--no-tail"]), *args],
        cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
    )  # fmt: skip


def stop(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    """SIGTERM (the stream writes what it holds and exits), then kill if it hangs."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait(proc: subprocess.Popen[Any], log: Path, timeout: float = 240) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(
            f"flow did not finish in {timeout}s:\n{log.read_text()[-3000:]}"
        ) from None
    assert rc == 0, f"flow exited {rc}:\n{log.read_text()[-3000:]}"


def wait_for_keys(
    url: str, at_least: int, proc: subprocess.Popen[Any], timeout: float = 60
) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while client.dbsize() < at_least:
        assert proc.poll() is None, "the flow finished before the interruption point"
        assert time.monotonic() < deadline, "no rows written in time"
        time.sleep(0.02)
    client.close()
