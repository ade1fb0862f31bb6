"""One master of a real Redis Cluster loses its data under a running stream (FLUSHALL on
that node alone, as a restart without persistence or a failover to a lagging replica
would): the stream has a loss marker on every master, notices it at its next write and
rewrites every state it holds, so entities it never touches again are back, byte for
byte. With the marker on one node only, two masters in three could lose theirs unseen."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from skewless.verify import check_online_states
from tests.integration import stream_support as sup
from tests.integration.test_redis_cluster import _flush, _masters, _node, _wait_until_exact
from tests.service_fixtures import KafkaBroker, RedisClusterNodes

pytestmark = pytest.mark.integration


def _dump(cluster: RedisClusterNodes) -> dict[bytes, dict[bytes, bytes]]:
    """Every entity hash on every master (not the stream's own ``skewless:*`` keys)."""
    out = {}
    for port in _masters(cluster):
        node = _node(cluster, port)
        for k in node.scan_iter(count=1000):
            if not k.startswith(b"skewless:"):
                out[k] = node.hgetall(k)
    return out


def _live_markers(cluster: RedisClusterNodes) -> dict[int, int]:
    """Loss markers (``skewless:stream:*:live:*``) per master port."""
    return {
        port: sum(1 for _ in _node(cluster, port).scan_iter(match=b"skewless:stream:*:live:*"))
        for port in _masters(cluster)
    }


def test_one_flushed_master_is_noticed_and_its_states_rewritten(
    redis_cluster: RedisClusterNodes, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    _flush(redis_cluster)
    table = sup.events(3_000, seed=47, cards=300, merchants=40, days=2.0)
    first, rest = table.slice(0, 2_980), table.slice(2_980)
    topic = sup.create_topic(kafka_broker.bootstrap, "cluster-loss", 2)
    sup.produce_mixed(kafka_broker.bootstrap, topic, first, [])
    log = tmp_path / "flow.log"
    env = sup.stream_env(kafka_broker.bootstrap, redis_cluster.url, topic, tmp_path)
    proc = sup.start_stream(env, log=log, tail=True)
    try:
        _wait_until_exact(redis_cluster.url, first, proc, log, timeout=120)
        before = _dump(redis_cluster)
        markers = _live_markers(redis_cluster)
        # the loss of a master that holds no marker is the one a single marker misses
        victim = next((p for p, n in markers.items() if n == 0), max(markers))
        on_victim = sum(1 for _ in _node(redis_cluster, victim).scan_iter(count=1000))
        assert on_victim > 50, on_victim  # the flush below loses real states
        _node(redis_cluster, victim).flushall()
        sup.produce_mixed(kafka_broker.bootstrap, topic, rest, [])
        _wait_until_exact(redis_cluster.url, table, proc, log, timeout=120)
        after = _dump(redis_cluster)
    finally:
        sup.stop(proc)
    assert min(markers.values()) == 1, markers  # one per master, for the one worker
    store = open_store(StoreConfig(redis_cluster.url), REFERENCE)
    report = check_online_states(REFERENCE, store, sup.accepted(table), 100_000, 4)
    assert report.missing_states == {"card": 0, "merchant": 0}
    assert report.mismatches == 0 and report.compared > 1_000
    touched = {store.key(e.name, int(i)) for e in REFERENCE.entities
               for i in set(rest.column(e.join_key).to_pylist())}  # fmt: skip
    untouched = set(before) - touched
    assert len(untouched) > len(before) // 2
    assert {k: after.get(k) for k in untouched} == {k: before[k] for k in untouched}
    lines = [x for x in log.read_text().splitlines() if "Redis lost its data" in x]
    assert len(lines) == 1, lines
    m = re.search(r"\(marker missing on 127\.0\.0\.1:(\d+)\); rewriting (\d+) held", lines[0])
    assert m and int(m.group(1)) == victim, lines[0]
    assert int(m.group(2)) >= len(before)
