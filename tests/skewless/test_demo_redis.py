"""`skewless demo --redis` refuses a database that already holds its project's keys (an
earlier demo's states would be served as this run's: 151 mismatches in 675 scored values
were measured before the guard), and `--reset-redis` deletes exactly those keys: on a
real Redis server and a real 3-master Redis Cluster."""

from __future__ import annotations

import pytest
import redis

from features.reference import REFERENCE
from features.store.encoding import entity_key_bytes
from skewless.demo_redis import guard, project_keys
from tests.integration import stream_support as sup
from tests.service_fixtures import RedisClusterNodes

pytestmark = pytest.mark.integration

OURS = [
    *(entity_key_bytes("card_id", i) + b"skewless" for i in (0, 7, -3, 2**40)),
    *(entity_key_bytes("merchant_id", i) + b"skewless" for i in (1, 42)),
    b"skewless:stream:skewless:worker:0",
    b"skewless:stream:skewless:evicted:card:7",
]
THEIRS = [
    entity_key_bytes("card_id", 7) + b"my_skewless",  # another project, same suffix
    entity_key_bytes("card_id", 7) + b"other",
    entity_key_bytes("user_id", 7) + b"skewless",  # a join key this project does not have
    b"xskewless",
    b"skewless:stream:other:worker:0",
    b"plain",
]


def _fill(client: redis.Redis) -> None:
    for key in OURS + THEIRS:
        client.hset(key, b"f", b"v")


def _check(url: str) -> None:
    with pytest.raises(ValueError) as err:
        guard(url, REFERENCE, reset=False)
    msg = str(err.value)
    assert f"holds {len(OURS):,} keys of project 'skewless'" in msg and "--reset-redis" in msg
    assert project_keys(url, REFERENCE) == len(OURS)  # counting deletes nothing
    guard(url, REFERENCE, reset=True)
    assert project_keys(url, REFERENCE) == 0
    guard(url, REFERENCE, reset=False)  # an empty project passes


def test_single_server(redis_url: str) -> None:
    url = sup.fresh_db_url(redis_url, 13)
    client = redis.Redis.from_url(url)
    try:
        _fill(client)
        _check(url)
        left = sorted(client.scan_iter(count=1000))
        assert left == sorted(THEIRS)  # nobody else's key was touched
    finally:
        client.flushdb()
        client.close()


def test_cluster_every_master(redis_cluster: RedisClusterNodes) -> None:
    url = redis_cluster.url
    client = redis.RedisCluster.from_url(url.replace("redis+cluster://", "redis://").split(",")[0])
    try:
        for node in client.get_primaries():  # the session's cluster: earlier tests' keys
            client.flushall(target_nodes=node)
        _fill(client)  # spread over the 3 masters by slot
        _check(url)
        assert all(client.exists(k) == 1 for k in THEIRS)
        assert not any(client.exists(k) for k in OURS)
    finally:
        for key in OURS + THEIRS:
            client.delete(key)
        client.close()
