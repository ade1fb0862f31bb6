"""The project's keys in a Redis online store, and the one layout change they went through.

Feast hashes each field as ``<view>:<feature>`` (and ``_ts:<view>``), so renaming the
as-of-last view from ``<entity>_features`` to ``<entity>_features_as_of_last_event``
(see :func:`features.feast_objects.view_name`) left a store written before it unreadable:
every read came back empty, as for an entity never seen, and served features without
history, silently. :func:`check_layout` samples the project's keys when a Redis store is
opened and refuses such a store, naming :func:`migrate` (``skewless store migrate``),
which renames the fields in place and keeps the values and timestamps.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from typing import Any

from features.definitions import FeatureSet
from features.feast_objects import bootstrap_field, state_field, view_name
from features.settings import masked_url
from features.store.encoding import feast_field

_GLOB_SPECIAL = re.compile(rb"([*?\[\]\\])")
SAMPLE_KEYS = 64  # keys looked at when a store is opened
SAMPLE_SCANS = 8  # SCAN calls at most per master and pattern (count 1000 each)


class StoreLayoutError(ValueError):
    """The store holds the project's rows under names this version does not read."""


def _glob(raw: bytes) -> bytes:
    return _GLOB_SPECIAL.sub(rb"\\\1", raw)


def key_patterns(fs: FeatureSet, stream: bool = True) -> list[bytes]:
    """SCAN patterns matching this project's keys and nobody else's: Feast's entity key
    (version 3: count, STRING, name length, name, INT64, 8, an 8-byte value) + the
    project; with ``stream``, also the stream's markers, evicted snapshots, tokens.

    >>> from features.reference import REFERENCE
    >>> [p[-16:] for p in key_patterns(REFERENCE)][-1]
    b'tream:skewless:*'
    """
    project = fs.project.encode()
    out = []
    for entity in fs.entities:
        name = entity.join_key.encode()
        head = struct.pack("<III", 1, 2, len(name)) + name + struct.pack("<II", 4, 8)
        out.append(_glob(head) + b"?" * 8 + _glob(project))
    if stream:
        out.append(b"skewless:stream:" + _glob(project) + b":*")
    return out


def masters(url: str) -> list[str]:
    """One redis-py URL per master serving slots: the URL itself for a single server."""
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
        flags = parts[2].split(",") if len(parts) > 2 else []
        if "master" in flags and "fail" not in flags and len(parts) > 8:  # slots listed
            host, _, port = parts[1].split("@")[0].rpartition(":")
            out.append(c.node_url((host or c.seeds[0][0], int(port))))
    return out


def client(url: str, timeout_s: float = 5.0) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def scan(conn: Any, patterns: list[bytes], max_scans: int | None = None) -> Iterator[bytes]:
    """Every key matching ``patterns`` (the first ``max_scans`` SCAN calls per pattern)."""
    for pattern in patterns:
        cursor, calls = 0, 0
        while True:
            cursor, keys = conn.scan(cursor=cursor, match=pattern, count=1000)
            yield from keys
            calls += 1
            if cursor == 0 or (max_scans is not None and calls >= max_scans):
                break


def _renames(fs: FeatureSet) -> dict[bytes, bytes]:
    """Old field -> new field, for every field of every entity's as-of-last view."""
    out = {}
    for e in fs.entities:
        old, new = f"{e.name}_features", view_name(e)
        names = [a.name for a in fs.for_entity(e)] + [state_field(e), bootstrap_field(e)]
        for n in names:
            out[feast_field(f"{old}:{n}")] = feast_field(f"{new}:{n}")
        out[f"_ts:{old}".encode()] = f"_ts:{new}".encode()
    return out


def _state_fields(fs: FeatureSet) -> tuple[set[bytes], set[bytes]]:
    old = {feast_field(f"{e.name}_features:{state_field(e)}") for e in fs.entities}
    new = {feast_field(f"{view_name(e)}:{state_field(e)}") for e in fs.entities}
    return old, new


def check_layout(url: str, fs: FeatureSet, timeout_s: float = 5.0) -> None:
    """Refuse a store whose sampled project rows carry only the old view names. A store
    that cannot be reached is left to the first read to report."""
    import redis

    old, new = _state_fields(fs)
    try:
        for node in masters(url):
            conn = client(node, timeout_s)
            try:
                sample = scan(conn, key_patterns(fs, stream=False), SAMPLE_SCANS)
                for seen, key in enumerate(sample, 1):
                    fields = set(conn.hkeys(key))
                    if fields & old and not fields & new:
                        raise StoreLayoutError(
                            f"online store: Redis at {masked_url(url)} holds project "
                            f"'{fs.project}' rows under the old view names "
                            "(<entity>_features), which read as empty now; rename them in "
                            "place with `skewless store migrate`"
                        )
                    if seen >= SAMPLE_KEYS:
                        break
            finally:
                conn.close()
    except (redis.ConnectionError, redis.TimeoutError, OSError, redis.ResponseError):
        return


def migrate(url: str, fs: FeatureSet) -> tuple[int, int]:
    """Rename the old view's fields of every project row in place (values and timestamps
    kept); a row that already has the new state field keeps it. Returns (rows renamed,
    rows already in the new layout)."""
    renames = _renames(fs)
    _, new_state = _state_fields(fs)
    renamed = current = 0
    for node in masters(url):
        conn = client(node)
        try:
            for key in scan(conn, key_patterns(fs, stream=False)):
                row = conn.hgetall(key)
                if set(row) & new_state:
                    current += 1
                    continue
                moved = {renames[f]: v for f, v in row.items() if f in renames}
                if not moved:
                    continue
                with conn.pipeline(transaction=True) as pipe:  # one key: atomic
                    pipe.hset(key, mapping=moved)
                    pipe.hdel(key, *[f for f in row if f in renames])
                    pipe.execute()
                renamed += 1
        finally:
            conn.close()
    return renamed, current
