"""A Redis store written before the as-of-last view was renamed read as empty (every
entity served as never seen, silently): opening it is now refused with the command that
fixes it, and `skewless store migrate` renames the rows in place, byte for byte. Real
Redis; the old layout is the current rows under fields hashed with the old view name,
which is all the rename changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from features.reference import REFERENCE
from features.store import OnlineRow, StoreConfig, open_store
from features.store.layout import StoreLayoutError, _renames
from flows.simulate import SimulationConfig, simulate, write_events
from tests.integration import stream_support as sup

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def _write_current(url: str) -> dict[bytes, dict[bytes, bytes]]:
    store = open_store(StoreConfig(url), REFERENCE)
    try:
        for e in REFERENCE.entities:
            n = len(REFERENCE.for_entity(e))
            rows = [
                OnlineRow(i, 1_700_000_000_000 + i, [float(i) + 0.5] * n, b"state-%d" % i)
                for i in range(1, 40)
            ]
            store.write(e.name, rows)
    finally:
        store.close()
    return sup.dump(url)


def _to_old_layout(url: str) -> None:
    back = {new: old for old, new in _renames(REFERENCE).items()}
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(count=1000):
            row = client.hgetall(key)
            client.hset(key, mapping={back[f]: v for f, v in row.items()})
            client.hdel(key, *row)
    finally:
        client.close()


def _migrate(url: str) -> str:
    env = {**os.environ, "SKEWLESS_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "skewless", "store", "migrate"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_old_layout_refused_then_migrated_byte_for_byte(redis_url: str) -> None:
    url = sup.fresh_db_url(redis_url, 11)
    want = _write_current(url)
    assert want
    _to_old_layout(url)
    assert sup.dump(url) != want
    with pytest.raises(StoreLayoutError, match="skewless store migrate"):
        open_store(StoreConfig(url), REFERENCE)
    out = _migrate(url)
    assert f"{len(want):,} rows renamed, 0 already" in out
    assert sup.dump(url) == want  # same keys, fields and bytes as the current writer's
    store = open_store(StoreConfig(url), REFERENCE)  # accepted now
    try:
        assert store.read_states([("card", 7)]) == [b"state-7"]
    finally:
        store.close()
    assert "0 rows renamed" in _migrate(url)  # a second run changes nothing


def test_verify_refuses_the_old_layout_in_one_line(redis_url: str, tmp_path: Path) -> None:
    url = sup.fresh_db_url(redis_url, 11)
    _write_current(url)
    _to_old_layout(url)
    events = tmp_path / "ev.parquet"
    write_events(simulate(SimulationConfig(events=500, cards=50, merchants=10)), events)
    env = {**os.environ, "SKEWLESS_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    env.pop("SKEWLESS_KAFKA_BOOTSTRAP", None)
    out = subprocess.run(
        [sys.executable, "-m", "skewless", "verify", "--events", str(events)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "old view names" in out.stderr and "Traceback" not in out.stderr
