"""Redis loses its data under a running stream (a restart without persistence): the
stream finds its marker missing at its next write and rewrites every state it holds, so
entities it never touches again are back, byte for byte, and every entity is exact."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis

from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from features.store.redis import RedisStore
from skewless.verify import SkewReport, check_online_states
from tests.integration import stream_support as sup
from tests.service_fixtures import KafkaBroker, RedisServer

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check(url: str, table: pa.Table) -> SkewReport:
    """Every entity of ``table``, four times each, against the backfill."""
    store = open_store(StoreConfig(redis_url=url), REFERENCE)
    try:
        return check_online_states(
            REFERENCE, store, sup.accepted(table), sample_per_entity=100_000, times_per_entity=4
        )
    finally:
        store.close()


def _wait_exact(url: str, table: pa.Table, proc: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, f"the flow died:\n{log.read_text()[-3000:]}"
        report = _check(url, table)
        if report.mismatches == 0 and sum(report.missing_states.values()) == 0:
            return
        assert time.monotonic() < deadline, (
            f"not exact after 120 s: missing {report.missing_states}, "
            f"{report.mismatches} mismatches\n{log.read_text()[-2000:]}"
        )
        time.sleep(0.5)


def _entity_keys(url: str, table: pa.Table) -> set[bytes]:
    store = RedisStore(url, REFERENCE)
    return {
        store.key(e.name, int(i))
        for e in REFERENCE.entities
        for i in pc.unique(table.column(e.join_key)).to_pylist()
    }


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"no {name} in the metrics"
    return float(match.group(1))


def _start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[Any]:
    return subprocess.Popen(  # tails the topic
        [sys.executable, "-m", "skewless", "stream", *args],
        cwd=sup.ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[Any], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 0, log.read_text()[-2000:]


@pytest.mark.parametrize(
    "when", ["under_the_stream", "under_an_idle_stream", "while_the_stream_was_down"]
)
def test_redis_restart_without_persistence_loses_no_entity(
    kafka_broker: KafkaBroker, kafka_admin_topic: Any, tmp_path: Path, when: str
) -> None:
    """``under_an_idle_stream``: no event comes after the restart (the stream's once-a-
    second check finds the loss). ``while_the_stream_was_down``: the stream stops, Redis
    restarts empty, the stream resumes from its recovery snapshot (its states come back,
    Redis has none of them)."""
    table = sup.events(3_000, seed=41, cards=300, merchants=40, days=2.0)
    first, rest = table.slice(0, 2_980), table.slice(2_980)
    server = RedisServer(tmp_path / "redis")  # its own: a restart empties every db
    server.start()
    proc = None
    try:
        topic = kafka_admin_topic(partitions=2, prefix="redisloss")
        sup.produce_mixed(kafka_broker.bootstrap, topic, first, [])
        log = tmp_path / "flow.log"
        env = sup.stream_env(kafka_broker.bootstrap, server.url, topic, tmp_path)
        env["SKEWLESS_METRICS_PORT"] = str(metrics := _free_port())
        down = when == "while_the_stream_was_down"
        args = ("-r", str(tmp_path / "recovery"), "-s", "1") if down else ()
        proc = _start(env, log, *args)
        _wait_exact(server.url, first, proc, log)
        before = sup.dump(server.url)
        assert len(before) == len(_entity_keys(server.url, first))

        if down:
            _stop(proc, log)
        server.stop()  # SHUTDOWN NOSAVE: the restart comes back empty
        server.start()
        assert redis.Redis.from_url(server.url).dbsize() == 0
        if down:
            proc = _start(env, log, *args)
        if when == "under_an_idle_stream":
            table, rest = first, first.slice(0, 0)
        else:
            sup.produce_mixed(kafka_broker.bootstrap, topic, rest, [])
        _wait_exact(server.url, table, proc, log)

        after = sup.dump(server.url)
        touched = _entity_keys(server.url, rest)
        untouched = set(before) - touched
        assert len(untouched) > len(before) // 2  # most entities get no event after the loss
        assert len(untouched) == len(before) or when != "under_an_idle_stream"
        assert {k: after.get(k) for k in untouched} == {k: before[k] for k in untouched}
        assert set(after) == _entity_keys(server.url, table)

        lines = [x for x in log.read_text().splitlines() if "Redis lost its data" in x]
        assert len(lines) == 1, lines
        m = re.search(
            r"Redis lost its data \(marker missing\); rewriting (\d+) held states", lines[0]
        )
        assert m and "WARNING" in lines[0], lines[0]
        assert len(before) <= int(m.group(1)) <= len(after)
        assert _metric(metrics, "skewless_stream_redis_data_lost_total") == 1
        assert _metric(metrics, "skewless_stream_states_rewritten_total") == int(m.group(1))
    finally:
        if proc is not None and proc.poll() is None:
            sup.stop(proc)
        server.stop()
