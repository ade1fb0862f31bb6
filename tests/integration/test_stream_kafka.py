"""The streaming flow against the real Kafka broker and Redis server (issue 3)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from bytewax.testing import run_main
from confluent_kafka import Consumer

from features.feast_objects import view_name
from features.reference import REFERENCE
from features.reference_codec import StateCodec
from features.reference_engine import Engine
from features.store import StoreConfig, open_feature_store, open_store
from flows.backfill import run_backfill
from flows.stream import StreamConfig, build_flow
from skewless.verify import check_online_states
from tests.integration import stream_support as sup
from tests.service_fixtures import RedisServer

pytestmark = pytest.mark.integration


def _consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{topic}",
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    got: list[Any] = []
    idle = 0
    while len(got) < expected or idle < 3:
        msgs = c.consume(1000, 1.0)
        idle = idle + 1 if not msgs else 0
        got.extend(m for m in msgs if m.error() is None)
        if idle > timeout:
            break
    c.close()
    return got


@pytest.fixture(scope="module")
def main_run(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """50,000 simulated events + 1,000 malformed messages through the flow, once."""
    topic = "main-run"
    sup.create_topic(kafka_bootstrap, topic, 3)
    table = sup.events(50_000)
    bad = sup.malformed(1000)
    sup.produce_mixed(kafka_bootstrap, topic, table, bad)
    url = sup.redis_db_url(redis_url, 1)
    out = tmp_path_factory.mktemp("main-run")
    cfg = StreamConfig(
        store=StoreConfig(redis_url=url),
        brokers=kafka_bootstrap,
        topic=topic,
        out_dir=out,
        tail=False,
    )
    run_main(build_flow(REFERENCE, cfg))  # returns only if the flow never crashed
    return {"table": table, "bad": bad, "url": url, "topic": topic}


def test_every_valid_event_counts_and_online_equals_backfill(main_run: dict[str, Any]) -> None:
    store = open_store(StoreConfig(redis_url=main_run["url"]), REFERENCE)
    ev = sup.accepted(main_run["table"])
    report = check_online_states(REFERENCE, store, ev, sample_per_entity=600, times_per_entity=4)
    assert report.missing_states == {"card": 0, "merchant": 0}
    assert report.compared > 10_000
    assert report.mismatches == 0, report.to_json()
    # every valid event is in its card's state: the as-of-last 24h/7d windows add up
    layout = Engine(REFERENCE).layout("merchant")
    codec = StateCodec(layout)
    merchants = sorted(set(ev.by_entity["merchant"].keys.tolist()))
    states = store.read_states([("merchant", m) for m in merchants])
    assert all(s is not None for s in states)
    assert sum(codec.decode(s).max_seen is not None for s in states if s) == len(merchants)


def test_dead_letter_topic_holds_exactly_the_malformed_messages(
    main_run: dict[str, Any], kafka_bootstrap: str
) -> None:
    dlq = _consume_all(kafka_bootstrap, main_run["topic"] + ".dlq", len(main_run["bad"]))
    assert Counter(m.value() for m in dlq) == Counter(main_run["bad"])
    reasons = [dict(m.headers())["reason"].decode() for m in dlq]
    assert all(
        r.split(":")[0] in {"message", "card_id", "amount", "mcc", "event_time", "transaction_id"}
        for r in reasons
    )
    assert Counter(r.split(":")[0] for r in reasons)["amount"] >= 5 * 1000 // 16


def test_feast_sdk_reads_what_the_flow_wrote(main_run: dict[str, Any], tmp_path: Path) -> None:
    fstore = open_feature_store(StoreConfig(main_run["url"], tmp_path), REFERENCE)
    store = open_store(StoreConfig(redis_url=main_run["url"]), REFERENCE)
    layout = Engine(REFERENCE).layout("card")
    codec = StateCodec(layout)
    cards = sorted(set(main_run["table"].column("card_id").to_pylist()))[:40]
    got = fstore.get_online_features(
        features=[f"{view_name(REFERENCE.primary)}:{n}" for n in layout.names],
        entity_rows=[{"card_id": c} for c in cards],
    ).to_dict()
    for i, blob in enumerate(store.read_states([("card", c) for c in cards])):
        assert blob is not None
        want = layout.as_of_last(codec.decode(blob, readonly=True))
        for pos, name in enumerate(layout.names):
            w = want[pos]
            assert got[name][i] == (None if isinstance(w, float) and w != w else w), name


@pytest.fixture(scope="module")
def replay_topic(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """30,000 events on a 4-partition topic and the online store of one clean run."""
    topic = "replay"
    sup.create_topic(kafka_bootstrap, topic, 4)
    table = sup.events(30_000, seed=9)
    sup.produce_mixed(kafka_bootstrap, topic, table, sup.malformed(50))
    url = sup.redis_db_url(redis_url, 2)
    out = tmp_path_factory.mktemp("clean")
    log = out / "flow.log"
    sup.wait(sup.start_stream(sup.stream_env(kafka_bootstrap, url, topic, out), log=log), log)
    return {"topic": topic, "clean": sup.dump(url), "table": table}


@pytest.mark.parametrize("layout", ["entity", "sharded"])
def test_kill_9_then_recovery_equals_an_uninterrupted_run(
    replay_topic: dict[str, Any], kafka_bootstrap: str, redis_url: str, tmp_path: Path, layout: str
) -> None:
    """Either state layout (``--state-layout``) resumes byte-identical after kill -9; the
    uninterrupted run it is compared with used the entity layout."""
    url = sup.fresh_db_url(redis_url, 3)
    env = sup.stream_env(kafka_bootstrap, url, replay_topic["topic"], tmp_path)
    log = tmp_path / "flow.log"
    rec = ["-r", str(tmp_path / "recovery"), "-s", "0.5", "-b", "0", "--state-layout", layout]
    first = sup.start_stream(env, *rec, log=log)
    sup.wait_for_keys(url, 800, first)
    first.kill()  # SIGKILL, mid-stream
    assert first.wait(30) == -9
    sup.wait(sup.start_stream(env, *rec, log=log), log)
    assert sup.dump(url) == replay_topic["clean"]


@pytest.mark.parametrize(("before", "after"), [("bytewax", "thin"), ("thin", "bytewax")])
def test_a_snapshot_of_either_kafka_source_resumes_with_the_other(
    replay_topic: dict[str, Any],
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
    before: str,
    after: str,
) -> None:
    """The thin source keeps KafkaSource's offsets under the same step id: a recovery
    directory written by one resumes with the other, byte-identical after kill -9."""
    url = sup.fresh_db_url(redis_url, 3)
    env = sup.stream_env(kafka_bootstrap, url, replay_topic["topic"], tmp_path)
    log = tmp_path / "flow.log"
    rec = ["-r", str(tmp_path / "recovery"), "-s", "0.5", "-b", "0"]
    first = sup.start_stream(env, *rec, "--kafka-source", before, log=log)
    sup.wait_for_keys(url, 800, first)
    first.kill()
    assert first.wait(30) == -9
    sup.wait(sup.start_stream(env, *rec, "--kafka-source", after, log=log), log)
    assert sup.dump(url) == replay_topic["clean"]


def test_two_workers_and_a_two_process_cluster_equal_one_worker(
    replay_topic: dict[str, Any], kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    url = sup.redis_db_url(redis_url, 4)
    log = tmp_path / "w2.log"
    sup.wait(
        sup.start_stream(
            sup.stream_env(kafka_bootstrap, url, replay_topic["topic"], tmp_path),
            "-w",
            "2",
            log=log,
        ),
        log,
    )
    assert sup.dump(url) == replay_topic["clean"]

    url = sup.redis_db_url(redis_url, 5)
    ports = [_free_port(), _free_port()]
    addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
    env = sup.stream_env(kafka_bootstrap, url, replay_topic["topic"], tmp_path)
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = [sup.start_stream(env, "-i", str(i), "-a", addresses, log=logs[i]) for i in range(2)]
    for p, lg in zip(procs, logs, strict=True):
        sup.wait(p, lg)
    assert sup.dump(url) == replay_topic["clean"]


def test_redis_outage_is_retried_and_loses_nothing(
    replay_topic: dict[str, Any],
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SKEWLESS_REDIS_APPENDONLY", "1")  # data survives the restart
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        log = tmp_path / "flow.log"
        proc = sup.start_stream(
            sup.stream_env(kafka_bootstrap, server.url, replay_topic["topic"], tmp_path), log=log
        )
        sup.wait_for_keys(server.url, 300, proc)
        with server.stopped(10):
            pass
        sup.wait(proc, log)
        text = log.read_text()
        assert "is unreachable" in text and "retrying in" in text, text[-2000:]
        assert sup.dump(server.url) == replay_topic["clean"]
    finally:
        server.stop()


def test_bootstrap_by_materialize_then_stream_equals_one_backfill(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    """R4: backfill up to T -> feast materialize -> stream the rest (with an overlap that
    must not be counted twice) == one backfill over everything. Materialized through the
    Feast SDK in this process (``FeatureStore.materialize``, the call ``feast materialize``
    makes, as ``skewless demo`` does): the ``feast`` CLI itself, on feature_repo/ into
    Redis, is tested in tests/feature_repo/test_repo_errors.py."""
    table = sup.events(20_000, seed=21)
    ms = pc.cast(table.column("event_time"), pa.int64())
    cut = int(pc.quantile(ms, 0.7)[0].as_py())
    before = table.filter(pc.less(ms, cut))
    after = table.filter(pc.greater_equal(ms, cut - 3_600_000))  # one hour replayed twice
    import pyarrow.parquet as pq

    pq.write_table(before, tmp_path / "before.parquet")
    run_backfill(REFERENCE, tmp_path / "before.parquet", tmp_path / "bf")
    url = sup.redis_db_url(redis_url, 6)
    fstore = open_feature_store(
        StoreConfig(redis_url=url, workdir=tmp_path / "feast"), REFERENCE, tmp_path / "bf" / "feast"
    )
    fstore.materialize(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    topic = "after-cut"
    sup.create_topic(kafka_bootstrap, topic, 2)
    sup.produce_mixed(kafka_bootstrap, topic, after, [])
    cfg = StreamConfig(
        store=StoreConfig(redis_url=url),
        brokers=kafka_bootstrap,
        topic=topic,
        out_dir=tmp_path,
        tail=False,
    )
    run_main(build_flow(REFERENCE, cfg))
    report = check_online_states(
        REFERENCE, open_store(StoreConfig(redis_url=url), REFERENCE), sup.accepted(table), 400, 4
    )
    assert report.missing_states == {"card": 0, "merchant": 0}
    assert report.mismatches == 0, report.to_json()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_skewless_verify_gates_the_real_kafka_redis_run(
    main_run: dict[str, Any], kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The CI gate: `skewless verify` over the real run's Redis exits 0 (and 1 once a
    state is damaged)."""
    import os

    import pyarrow.parquet as pq
    import redis

    pq.write_table(main_run["table"], tmp_path / "events.parquet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    env.update(SKEWLESS_REDIS_URL=main_run["url"], SKEWLESS_DATA_DIR=str(tmp_path))
    cmd = [
        sys.executable,
        "-m",
        "skewless",
        "verify",
        "--events",
        str(tmp_path / "events.parquet"),
        "--sample",
        "300",
    ]
    ok = subprocess.run(cmd, cwd=sup.ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    # the same gate reading the events back from the topic itself (malformed ones skipped)
    by_topic = [*cmd[:4], "--topic", main_run["topic"], "--sample", "300"]
    env_k = {**env, "SKEWLESS_KAFKA_BOOTSTRAP": kafka_bootstrap}
    ok = subprocess.run(
        by_topic, cwd=sup.ROOT, env=env_k, capture_output=True, text=True, timeout=600
    )
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert '"mismatches": 0' in ok.stdout

    # drop one merchant's state: verify must now fail and say so
    store = open_store(StoreConfig(redis_url=main_run["url"]), REFERENCE)
    merchant = int(main_run["table"].column("merchant_id")[0].as_py())
    client = redis.Redis.from_url(main_run["url"])
    saved = client.hgetall(store.key("merchant", merchant))
    client.delete(store.key("merchant", merchant))
    try:
        cmd[-1] = "100000"  # every entity
        bad = subprocess.run(
            cmd, cwd=sup.ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert bad.returncode == 1
        assert '"merchant": 1' in bad.stdout  # one missing state
    finally:
        client.hset(store.key("merchant", merchant), mapping=saved)


def test_demo_against_real_kafka_and_redis(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    """`skewless demo --kafka --redis`: the same loop on the real services, zero skew."""
    import json
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    env.update(
        SKEWLESS_KAFKA_BOOTSTRAP=kafka_bootstrap, SKEWLESS_REDIS_URL=sup.fresh_db_url(redis_url, 9)
    )
    cmd = [sys.executable, "-m", "skewless", "--data-dir", str(tmp_path / "demo"), "demo", "--kafka", "--redis",
           "--events", "30000", "--score", "100"]  # fmt: skip
    done = subprocess.run(cmd, cwd=sup.ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert "Kafka at" in done.stdout
    # not a terminal: produce and the stream log a line each with their count and time
    assert re.search(r"produce skewless-demo-\d+: [\d,]+ events in \d+\.\d s", done.stderr)
    assert re.search(r"stream: [\d,]+ events in \d+\.\d s", done.stderr)
    assert (
        report["skew_online_state"]["mismatches"] == 0
        and report["skew_online_state"]["compared"] > 1000
    )
    assert report["skew_scored"]["mismatches"] == 0 and report["scoring"]["requests"] > 0
    assert (
        open_store(StoreConfig(redis_url=sup.redis_db_url(redis_url, 9)), REFERENCE).read_states(
            [("merchant", 0)]
        )[0]
        is not None
    )
