"""The online store on a real Redis Cluster (3 masters + 3 replicas on loopback, started by
scripts/services.sh redis-cluster-start): the stream writes it, `verify`, the scoring server
and Feast (materialize + SDK) read it, values equal a single Redis server's, and a master
killed with kill -9 mid-stream loses nothing once its replica has taken over."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from features.feast_objects import view_name
from features.reference import REFERENCE
from features.reference_codec import StateCodec
from features.reference_engine import Engine
from features.store import OnlineRow, StoreConfig, open_store
from features.store.redis import RedisReplyError, RedisSetupError
from features.store.redis_cluster import key_slot, parse_cluster_url
from flows.backfill import run_backfill
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc
from serving.convert import event_transaction
from serving.testing import publish_synthetic_model
from skewless.verify import check_online_states
from tests.integration import stream_support as sup
from tests.service_fixtures import KafkaBroker, RedisClusterNodes

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node(cluster: RedisClusterNodes, port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def _masters(cluster: RedisClusterNodes) -> list[int]:
    """Ports of the nodes serving slots now."""
    for port in cluster.ports():
        try:
            slots = _node(cluster, port).execute_command("CLUSTER SLOTS")
        except redis.ConnectionError:
            continue
        return sorted({int(r[2][1]) for r in slots})
    raise AssertionError("no cluster node answers")


def _flush(cluster: RedisClusterNodes) -> None:
    for port in _masters(cluster):
        _node(cluster, port).flushall()


def _keys(cluster: RedisClusterNodes) -> int:
    total = 0
    for port in _masters(cluster):
        with contextlib.suppress(redis.ConnectionError):
            total += int(_node(cluster, port).dbsize())
    return total


def _env(url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKEWLESS_", "BYTEWAX_"))}
    env.update(SKEWLESS_REDIS_URL=url, SKEWLESS_DATA_DIR=str(data_dir), SKEWLESS_LOG_LEVEL="INFO")
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, "-m", "skewless", *args], cwd=sup.ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_key_slots_equal_cluster_keyslot_for_binary_keys(redis_cluster: RedisClusterNodes) -> None:
    rng = np.random.default_rng(12)
    keys = [bytes(rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8))
            for _ in range(1500)]  # fmt: skip
    braces = np.frombuffer(b"{}{}ab", dtype=np.uint8)
    for _ in range(1500):  # hash tags: keys made mostly of { and } bytes
        raw = rng.choice(braces, size=int(rng.integers(1, 12)))
        keys.append(bytes(raw.astype(np.uint8)) + bytes([int(rng.integers(0, 256))]))
    store = open_store(StoreConfig(redis_cluster.url), REFERENCE)
    assert type(store).__name__ == "RedisClusterStore"
    feast_keys = [store.key(e, i) for e in ("card", "merchant") for i in (0, 123, 0x7B7D, -5)]
    keys += feast_keys  # Feast's own keys, one with { } bytes in its int64 value
    assert any(b"{" in k and b"}" in k for k in feast_keys)
    pipe = _node(redis_cluster, redis_cluster.ports()[0]).pipeline(transaction=False)
    for k in keys:
        pipe.execute_command("CLUSTER KEYSLOT", k)
    assert [key_slot(k) for k in keys] == pipe.execute()


@pytest.fixture(scope="module")
def streamed(
    redis_cluster: RedisClusterNodes, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One replay streamed into the cluster and, for comparison, into one Redis server."""
    work = tmp_path_factory.mktemp("cluster")
    table = sup.events(6_000, seed=41, cards=400, merchants=40, days=3.0)
    pq.write_table(table, work / "events.parquet")
    _flush(redis_cluster)
    single = sup.redis_db_url(redis_url, 11)
    redis.Redis.from_url(single).flushdb()
    for url, name in ((redis_cluster.url, "cluster"), (single, "single")):
        _run(["stream", "--replay", str(work / "events.parquet"), "--no-tail"],
             _env(url, work / name))  # fmt: skip
    return {"table": table, "work": work, "single": single}


def test_stream_writes_the_cluster_and_verify_finds_no_mismatch(
    streamed: dict[str, Any], redis_cluster: RedisClusterNodes
) -> None:
    work = streamed["work"]
    # no prediction log in work/v: verify says so and checks the online state only
    out = _run(["verify", "--events", str(work / "events.parquet"), "--sample", "100000"],
               _env(redis_cluster.url, work / "v"))  # fmt: skip
    assert '"mismatches": 0' in out, out
    report = check_online_states(REFERENCE, open_store(StoreConfig(redis_cluster.url), REFERENCE),
                                 sup.accepted(streamed["table"]), 100_000, 2)  # fmt: skip
    assert report.missing_states == {"card": 0, "merchant": 0}
    assert report.mismatches == 0 and report.compared > 2_000
    # the keys are spread over the three masters
    counts = [int(_node(redis_cluster, p).dbsize()) for p in _masters(redis_cluster)]
    assert len(counts) == 3 and min(counts) > 50, counts
    # the same bytes as one server holds, for every entity (and none where there is none)
    c = open_store(StoreConfig(redis_cluster.url), REFERENCE)
    s = open_store(StoreConfig(streamed["single"]), REFERENCE)
    keys = [("card", i) for i in range(410)] + [("merchant", i) for i in range(45)]
    assert c.read_states(keys) == s.read_states(keys)
    ids = {e: set(streamed["table"].column(f"{e}_id").to_pylist()) for e in ("card", "merchant")}
    assert [x is not None for x in c.read_states(keys)] == [i in ids[e] for e, i in keys]


class _Server:
    def __init__(self, url: str, registry: Path, log: Path) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "skewless", "serve", "--address", f"127.0.0.1:{self.port}",
             "--registry", str(registry), "--redis-url", url, "--no-prediction-log"],
            cwd=sup.ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.log = log
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.ScorerStub(self.channel)

    def wait_serving(self, timeout: float = 90) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                req = health_pb2.HealthCheckRequest()
                if health.Check(req, timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.2)

    def stop(self) -> None:
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, self.log.read_text()[-2000:]


def test_server_on_the_cluster_answers_as_on_one_server(
    streamed: dict[str, Any], redis_cluster: RedisClusterNodes, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    publish_synthetic_model(registry, seed=5, fs=REFERENCE)
    servers = [_Server(u, registry, tmp_path / f"serve-{n}.log")
               for n, u in (("cluster", redis_cluster.url), ("single", streamed["single"]))]  # fmt: skip
    try:
        for s in servers:
            s.wait_serving()
        table = streamed["table"]
        rows = table.slice(table.num_rows - 60).drop(["is_fraud"]).to_pylist()
        newest = int(pc.max(pc.cast(table.column("event_time"), pa.int64())).as_py())
        at = Timestamp()
        at.FromMilliseconds(newest + 60_000)
        found = 0
        for r in rows:
            r["event_time"] = newest + 60_000  # after every stored event: exact
            req = pb.ScoreRequest(transaction=event_transaction(r), include_features=True)
            a, b = (s.stub.Score(req, timeout=10) for s in servers)
            assert a == b
            for entity, entity_id in (("card", r["card_id"]), ("merchant", r["merchant_id"])):
                q = pb.GetFeaturesRequest(entity=entity, entity_id=entity_id, at=at)
                fa, fb = (s.stub.GetFeatures(q, timeout=10) for s in servers)
                assert fa == fb
                found += fa.state.found
        assert found == 2 * len(rows)
    finally:
        for s in servers:
            s.stop()


def test_feast_materialize_and_sdk_read_the_cluster(
    streamed: dict[str, Any],
    redis_cluster: RedisClusterNodes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`skewless feast-repo` on a cluster URL writes Feast's cluster config; Feast's
    materialize through it writes every card on every master and the SDK reads the stream's
    values back. In this process (`skewless.cli.main`, the Feast SDK's ``apply`` and
    ``materialize``: the calls the ``feast`` CLI makes): the CLI itself on a generated repo
    is tested in tests/skewless/test_feast_repo.py, and a new process would pay Feast's
    import (~9 CPU-s per ``feast`` command)."""
    from feast import FeatureStore

    from features.feast_objects import build_feast_objects
    from skewless.cli import main

    work = streamed["work"]
    run_backfill(REFERENCE, work / "events.parquet", tmp_path / "bf")
    repo = tmp_path / "repo"
    for name in [k for k in os.environ if k.startswith(("SKEWLESS_", "BYTEWAX_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SKEWLESS_REDIS_URL", redis_cluster.url)
    assert main(["feast-repo", "--out", str(repo)]) == 0
    yaml_text = (repo / "feature_store.yaml").read_text()
    assert "redis_type: redis_cluster" in yaml_text, yaml_text
    host, port = parse_cluster_url(redis_cluster.url).seeds[0]
    assert f"connection_string: {host}:{port}," in yaml_text
    store = open_store(StoreConfig(redis_cluster.url), REFERENCE)
    cards = sorted(set(streamed["table"].column("card_id").to_pylist()))
    streamed_states = store.read_states([("card", c) for c in cards])
    # Feast skips a row whose stored _ts is not older: start from an empty cluster, so that
    # what Feast reads below comes from materialize alone
    _flush(redis_cluster)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdk = FeatureStore(repo_path=str(repo))  # the generated feature_store.yaml
        sdk.apply(build_feast_objects(REFERENCE, tmp_path / "bf" / "feast").all())
        sdk.materialize(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    boot = store.read_states([("card", c) for c in cards], bootstrap=True)
    assert all(b is not None for b in boot)  # materialize wrote every card, on every master
    layout = Engine(REFERENCE).layout("card")
    codec = StateCodec(layout)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = (
            FeatureStore(repo_path=str(repo))
            .get_online_features(
                features=[f"{view_name(REFERENCE.primary)}:{n}" for n in layout.names],
                entity_rows=[{"card_id": c} for c in cards],
            )
            .to_dict()
        )
    # the stream and the backfill saw the same events: Feast reads the stream's values
    for i, blob in enumerate(streamed_states):
        assert blob is not None
        want = layout.as_of_last(codec.decode(blob, readonly=True))
        for pos, name in enumerate(layout.names):
            w = want[pos]  # a std may differ in its last bit (the backfill sums in another order)
            if isinstance(w, float):
                w = None if w != w else pytest.approx(w, rel=1e-12, abs=1e-9)
            assert got[name][i] == w, name


def test_a_single_node_url_on_a_cluster_node_is_one_clear_line(
    redis_cluster: RedisClusterNodes,
) -> None:
    ports = _masters(redis_cluster)
    store = open_store(StoreConfig(f"redis://127.0.0.1:{ports[0]}/0"), REFERENCE)
    with pytest.raises(RedisSetupError, match=r"is a Redis Cluster node .*redis\+cluster://"):
        store.read_states([("card", i) for i in range(50)])  # some slots are elsewhere


def _owners(cluster: RedisClusterNodes, slot: int) -> set[int]:
    """The master port each live node believes serves ``slot``."""
    seen = set()
    for port in cluster.ports():
        with contextlib.suppress(redis.ConnectionError):
            for start, end, master, *_ in _node(cluster, port).execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    seen.add(int(master[1]))
    return seen


def _row(card: int) -> OnlineRow:
    n = len(REFERENCE.for_entity("card"))
    return OnlineRow(card, 1_000 + card, [1.0] * n, b"state-%d" % card)


def test_moved_and_ask_redirects_are_followed(redis_cluster: RedisClusterNodes) -> None:
    _flush(redis_cluster)
    store = open_store(StoreConfig(redis_cluster.url), REFERENCE)
    assert store.read_states([("card", 1), ("card", 2)]) == [None, None]  # the map is loaded
    ids = {p: _node(redis_cluster, p).execute_command("CLUSTER MYID").decode()
           for p in _masters(redis_cluster)}  # fmt: skip
    # MOVED: card 1's (empty) slot is given to another master behind the client's back
    slot = key_slot(store.key("card", 1))
    [owner] = _owners(redis_cluster, slot)
    target = next(p for p in ids if p != owner)
    for p in ids:
        _node(redis_cluster, p).execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
    deadline = time.monotonic() + 30
    while _owners(redis_cluster, slot) != {target}:
        assert time.monotonic() < deadline, "the slot move did not spread"
        time.sleep(0.1)
    store.write("card", [_row(1)])
    assert _node(redis_cluster, target).exists(store.key("card", 1)) == 1
    assert store.read_states([("card", 1)]) == [b"state-1"]
    # ASK: card 2's slot is being migrated; the key is not on the source, so it is asked for
    slot2 = key_slot(store.key("card", 2))
    [source] = _owners(redis_cluster, slot2)
    dest = next(p for p in ids if p != source)
    _node(redis_cluster, dest).execute_command("CLUSTER SETSLOT", slot2, "IMPORTING", ids[source])
    _node(redis_cluster, source).execute_command("CLUSTER SETSLOT", slot2, "MIGRATING", ids[dest])
    try:
        store.write("card", [_row(2)])
        assert store.read_states([("card", 2), ("card", 1)]) == [b"state-2", b"state-1"]
        pipe = _node(redis_cluster, dest).pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.exists(store.key("card", 2))
        assert pipe.execute()[1] == 1  # it went where the source sent it
        pipe.execute_command("ASKING")
        pipe.delete(store.key("card", 2))
        pipe.execute()
    finally:
        for p in (source, dest):
            _node(redis_cluster, p).execute_command("CLUSTER SETSLOT", slot2, "STABLE")


def test_a_command_error_leaves_no_answer_behind(redis_cluster: RedisClusterNodes) -> None:
    """An error answer on one node (WRONGTYPE) fails the call, and every other node's
    answers of that call are read or dropped: the next call gets its own answers."""
    _flush(redis_cluster)
    store = open_store(StoreConfig(redis_cluster.url), REFERENCE)
    store.write("card", [_row(c) for c in range(60)])
    bad = store.key("card", 5)
    [owner] = _owners(redis_cluster, key_slot(bad))
    _node(redis_cluster, owner).set(bad, b"not a hash")
    others = [
        c for c in range(60) if _owners(redis_cluster, key_slot(store.key("card", c))) != {owner}
    ]
    with pytest.raises(RedisReplyError, match="WRONGTYPE"):
        store.read_states([("card", 5)] + [("card", c) for c in others[:20]])
    again = others[20:40]
    assert store.read_states([("card", c) for c in again]) == [b"state-%d" % c for c in again]


def _wait_until_exact(
    url: str, table: pa.Table, proc: subprocess.Popen[Any], log: Path, timeout: float
) -> None:
    store = open_store(StoreConfig(redis_url=url), REFERENCE)
    events = sup.accepted(table)
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the flow died:\n{log.read_text()[-3000:]}"
        try:
            report = check_online_states(REFERENCE, store, events, 100_000, 2)
            if report.mismatches == 0 and sum(report.missing_states.values()) == 0:
                return
            state = f"{report.mismatches} mismatches, missing {report.missing_states}"
        except ConnectionError as exc:  # the failover may still be going on
            state = str(exc)
        assert time.monotonic() < deadline, f"not exact after {timeout}s: {state}"
        time.sleep(1.0)


def test_a_killed_master_fails_over_and_the_stream_loses_nothing(
    redis_cluster: RedisClusterNodes, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    _flush(redis_cluster)
    table = sup.events(12_000, seed=43, cards=500, merchants=50, days=3.0)
    first, second = table.slice(0, 6_000), table.slice(6_000)
    topic = sup.create_topic(kafka_broker.bootstrap, "cluster-failover", 2)
    sup.produce_mixed(kafka_broker.bootstrap, topic, first, [])
    log = tmp_path / "flow.log"
    env = sup.stream_env(kafka_broker.bootstrap, redis_cluster.url, topic, tmp_path)
    proc = sup.start_stream(env, log=log, tail=True)
    victim = _masters(redis_cluster)[0]
    try:
        deadline = time.monotonic() + 120
        while _keys(redis_cluster) < 300:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no rows written in time"
            time.sleep(0.05)
        os.kill(redis_cluster.pid(victim), signal.SIGKILL)  # a replica takes over in seconds
        sup.produce_mixed(kafka_broker.bootstrap, topic, second, [])
        _wait_until_exact(redis_cluster.url, table, proc, log, timeout=180)
    finally:
        sup.stop(proc)
    masters = _masters(redis_cluster)
    assert victim not in masters and len(masters) == 3, masters
    report = check_online_states(REFERENCE, open_store(StoreConfig(redis_cluster.url), REFERENCE),
                                 sup.accepted(table), 100_000, 4)  # fmt: skip
    assert report.missing_states == {"card": 0, "merchant": 0}
    assert report.mismatches == 0 and report.compared > 5_000
    text = log.read_text()
    assert "Redis Cluster" in text and "retrying in" in text, text[-3000:]
    redis_cluster.start()  # the killed node comes back, as a replica (once gossip reached it)
    deadline = time.monotonic() + 30
    while victim in _masters(redis_cluster):
        assert time.monotonic() < deadline, "the restarted node still serves slots"
        time.sleep(0.2)
