"""Redis Cluster without a server: hash slots (Redis's published CRC16 values, hash tags),
cluster URLs, and what the factory and the Feast config make of them (no I/O)."""

from __future__ import annotations

import hiredis
import pytest

from features.reference import REFERENCE
from features.settings import masked_url
from features.store import OnlineRow, StoreConfig, StoreUnavailableError, open_store
from features.store.feast import feast_connection_string, repo_config
from features.store.redis import RedisStore
from features.store.redis_cluster import (
    RedisClusterStore,
    is_cluster_url,
    key_slot,
    parse_cluster_url,
)


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        (b"123456789", 0x31C3),  # the CRC16/XMODEM check value (Redis cluster spec)
        (b"", 0),
        (b"foo", 12182),
        (b"{user1000}.following", 3443),
        (b"{user1000}.followers", 3443),
    ],
)
def test_key_slot_known_values(key: bytes, slot: int) -> None:
    assert key_slot(key) == slot


def test_hash_tags_follow_the_redis_rules() -> None:
    assert key_slot(b"a{tag}b") == key_slot(b"tag") == key_slot(b"{tag}")
    assert key_slot(b"{}tag") != key_slot(b"tag")  # an empty tag: the whole key
    assert key_slot(b"x{a}{b}") == key_slot(b"a")  # the first tag only
    assert key_slot(b"{{a}") == key_slot(b"{a")  # from the first { to the next }
    assert key_slot(b"foo{}{bar}") != key_slot(b"bar")  # the first { meets an empty tag
    assert key_slot(b"no close {a") != key_slot(b"a")


def test_cluster_urls() -> None:
    c = parse_cluster_url("redis+cluster://127.0.0.1:7000, 127.0.0.1:7001/")
    assert c.seeds == (("127.0.0.1", 7000), ("127.0.0.1", 7001)) and c.scheme == "redis"
    c = parse_cluster_url("redis://u:p%40w@[::1]:7000/0?cluster=1&ssl_cert_reqs=none")
    assert c.seeds == (("::1", 7000),) and c.query == "ssl_cert_reqs=none"
    assert c.node_url(("h", 1)) == "redis://u:p%40w@h:1/0?ssl_cert_reqs=none"
    assert is_cluster_url("rediss+cluster://h:1") and not is_cluster_url("rediss://h:1/0")
    with pytest.raises(ValueError, match="redis_url: Redis Cluster has only db 0"):
        parse_cluster_url("redis+cluster://h:1/3")
    with pytest.raises(ValueError, match="redis_url: cluster node 'h' is not host:port"):
        parse_cluster_url("redis+cluster://h:1,h")
    with pytest.raises(ValueError, match="is not a Redis Cluster URL"):
        parse_cluster_url("http://h:1")
    assert masked_url("rediss+cluster://u:secret@h:1,h:2") == "rediss+cluster://u:***@h:1,h:2"


def test_factory_and_feast_config_name_the_cluster() -> None:
    url = "rediss+cluster://u:p@127.0.0.1:7000,127.0.0.1:7001?ssl_ca_certs=/ca.crt"
    # by name: pytest may import this module twice (doctests), so classes are not identical
    assert type(open_store(StoreConfig(url), REFERENCE)).__name__ == "RedisClusterStore"
    assert (
        type(open_store(StoreConfig("redis://127.0.0.1:1/0"), REFERENCE)).__name__ == "RedisStore"
    )
    assert feast_connection_string(url) == (
        "127.0.0.1:7000,127.0.0.1:7001,ssl=true,username=u,password=p"
    )
    online = repo_config(StoreConfig(url), "p").online_config
    assert online["redis_type"] == "redis_cluster"
    assert "redis_type" not in repo_config(StoreConfig("redis://h:1/0"), "p").online_config


def test_cluster_commands_are_the_single_node_bytes() -> None:
    """The cluster store sends what RedisStore sends, one command per row, keyed by slot."""
    single = RedisStore("redis://h:1/0", REFERENCE)
    n = len(REFERENCE.for_entity("card"))
    rows = [OnlineRow(i, 1000 + i, [float(i)] * n, b"s%d" % i) for i in (0, 123, 0x7B7D)]
    enc = single._hset["card"].command
    for r in rows:
        cmd = enc(r.entity_id, list(r.values), r.state, r.event_ts_ms)
        reader = hiredis.Reader()
        reader.feed(cmd)
        args = reader.gets()
        assert args[0] == b"HSET" and args[1] == single.key("card", r.entity_id)


def test_slots_of_feast_keys_are_the_slots_of_the_keys() -> None:
    store = RedisClusterStore("redis+cluster://127.0.0.1:1", REFERENCE).build()
    keys = [(e, i) for e in ("card", "merchant") for i in (0, 1, 0x7B7D, -1, 2**63 - 1)]
    assert store._slots_of(keys) == [key_slot(store.key(e, i)) for e, i in keys]


def test_no_reachable_node_is_one_clear_line() -> None:
    import socket

    ports = []
    for _ in range(2):  # ports nothing listens on
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    url = f"redis+cluster://u:secret@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
    store = open_store(StoreConfig(url, timeout_s=1.0), REFERENCE)
    with pytest.raises(StoreUnavailableError) as info:
        store.read_states([("card", 1)])
    msg = str(info.value)
    assert "no Redis Cluster node answered" in msg and "redis-cluster-start" in msg
    assert all(f"127.0.0.1:{p}" in msg for p in ports)
    assert "secret" not in msg and "\n" not in msg
