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

from typing import Any

from features.definitions import FeatureSet
from features.settings import masked_url
from features.store.layout import client, key_patterns, masters, scan


def _unlink(conn: Any, keys: list[bytes]) -> None:
    """One key per UNLINK (a cluster node refuses keys of several slots in one), pipelined."""
    with conn.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.unlink(key)
        pipe.execute()
    keys.clear()


def project_keys(url: str, fs: FeatureSet, delete: bool = False) -> int:
    """How many of the project's keys the database holds (deleted when ``delete``)."""
    found = 0
    for node in masters(url):
        conn = client(node)
        try:
            batch: list[bytes] = []
            for key in scan(conn, key_patterns(fs)):
                found += 1
                if delete:
                    batch.append(key)
                    if len(batch) >= 1000:
                        _unlink(conn, batch)
            _unlink(conn, batch)
        finally:
            conn.close()
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
