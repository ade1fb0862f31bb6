"""`skewless demo --redis`: the database must not already hold the demo project's keys.

Feast's Redis writer skips a row whose timestamp is not newer than the stored one, and
the stream takes what it finds as the entity's current state, so an earlier demo's (or
any earlier run's) states in the same database would be served instead of this run's:
a second demo with another `--events` measured 151 mismatches in 675 scored values.
The demo counts the project's keys on every master (Feast rows: the entity key of each
join key + the project name; the stream's own `skewless:stream:<project>:*`) and
refuses to start, naming them, unless `--reset-redis` deletes exactly those keys.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from features.definitions import FeatureSet
from features.settings import masked_url

_GLOB_SPECIAL = re.compile(rb"([*?\[\]\\])")


def _glob(raw: bytes) -> bytes:
    return _GLOB_SPECIAL.sub(rb"\\\1", raw)


def key_patterns(fs: FeatureSet) -> list[bytes]:
    """SCAN patterns that match this project's keys and nobody else's: Feast's entity key
    (version 3: count, STRING, name length, name, INT64, 8, an 8-byte value), then the
    project; and the stream's markers, evicted snapshots and worker tokens.

    >>> from features.reference import REFERENCE
    >>> [p[-20:] for p in key_patterns(REFERENCE)][-1]
    b'tream:skewless:*'
    """
    project = fs.project.encode()
    heads = []
    for entity in fs.entities:
        name = entity.join_key.encode()
        head = struct.pack("<III", 1, 2, len(name)) + name + struct.pack("<II", 4, 8)
        heads.append(_glob(head) + b"?" * 8 + _glob(project))
    return [*heads, b"skewless:stream:" + _glob(project) + b":*"]


def _masters(url: str) -> list[str]:
    """One redis-py URL per master: the URL itself for a single node."""
    from features.store.redis_cluster import is_cluster_url, parse_cluster_url

    if not is_cluster_url(url):
        return [url]
    import redis

    c = parse_cluster_url(url)
    seed = redis.Redis.from_url(c.node_url(c.seeds[0]), socket_timeout=5)
    try:
        nodes = seed.execute_command("CLUSTER", "NODES")
    finally:
        seed.close()
    text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 2 and "master" in parts[2].split(",") and "fail" not in parts[2]:
            host, _, port = parts[1].split("@")[0].rpartition(":")
            out.append(c.node_url((host or c.seeds[0][0], int(port))))
    return out


def _scan(client: Any, patterns: Sequence[bytes]) -> Iterator[bytes]:
    for pattern in patterns:
        yield from client.scan_iter(match=pattern, count=1000)


def _unlink(client: Any, keys: list[bytes]) -> None:
    """One key per UNLINK (a cluster node refuses keys of several slots in one), pipelined."""
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.unlink(key)
        pipe.execute()
    keys.clear()


def project_keys(url: str, fs: FeatureSet, delete: bool = False) -> int:
    """How many of the project's keys the database holds (deleted when ``delete``)."""
    import redis

    found = 0
    for node in _masters(url):
        client = redis.Redis.from_url(node, socket_timeout=5, socket_connect_timeout=5)
        try:
            batch: list[bytes] = []
            for key in _scan(client, key_patterns(fs)):
                found += 1
                if delete:
                    batch.append(key)
                    if len(batch) >= 1000:
                        _unlink(client, batch)
            _unlink(client, batch)
        finally:
            client.close()
    return found


def guard(url: str, fs: FeatureSet, reset: bool) -> None:
    """Refuse a database holding the project's keys, or delete them with ``reset``."""
    n = project_keys(url, fs, delete=reset)
    if n and not reset:
        raise ValueError(
            f"--redis: {masked_url(url)} already holds {n:,} keys of project '{fs.project}' "
            "(an earlier demo or stream); the demo would serve them as this run's state. "
            "Pass --reset-redis to delete exactly those keys, or point SKEWLESS_REDIS_URL "
            "at an empty database (e.g. redis://127.0.0.1:PORT/1)"
        )
