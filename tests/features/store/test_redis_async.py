"""The Redis read awaited on an event loop (``features.store.redis_async``), on a real
Redis: the same bytes as the blocking read; Redis's answer counts against the timeout,
not the loop's own lateness in looking at it; offered only where it can work."""

from __future__ import annotations

import asyncio
import time

import pytest

from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from features.store.redis import RedisStore
from features.store.redis_async import async_reader
from serving.testing import fold_states, write_states
from tests.serving.conftest import HISTORY
from tests.serving.test_redis import shifted

pytestmark = pytest.mark.integration


def _store(url: str, timeout_s: float = 0.25) -> RedisStore:
    store = open_store(StoreConfig(redis_url=url, timeout_s=timeout_s), REFERENCE)
    assert isinstance(store, RedisStore)
    return store


def test_awaited_read_equals_the_blocking_read(redis_url: str) -> None:
    store = _store(redis_url)
    write_states(store, fold_states([shifted(e) for e in HISTORY], REFERENCE), REFERENCE)
    e = shifted(HISTORY[-1])
    keys = [("card", e.card_id), ("merchant", e.merchant_id), ("card", 123_456_789_000)]
    reader = async_reader(store)
    assert reader is not None

    async def both() -> tuple[list[bytes | None], list[bytes | None]]:
        first = await reader.read_states(keys)
        asyncio.get_running_loop().call_soon(lambda: None)  # work ready: the loop waits
        return first, await reader.read_states(keys)

    polled, awaited = asyncio.run(both())
    blocking = store.read_states(keys)
    assert polled == awaited == blocking
    assert blocking[0] is not None and blocking[2] is None
    assert (reader.polled, reader.awaited) == (1, 1)
    store.close()


def test_a_late_loop_is_not_a_store_timeout(redis_url: str) -> None:
    """Redis answers at once; the loop only looks after the timeout (busy elsewhere)."""
    store = _store(redis_url, timeout_s=0.05)
    reader = async_reader(store)
    assert reader is not None

    async def late() -> list[bytes | None]:
        reader.send([("card", 1)])
        time.sleep(0.2)  # the loop busy with other calls, past the deadline
        asyncio.get_running_loop().call_soon(lambda: None)  # other work is ready too
        return await reader.receive()

    assert asyncio.run(late()) == store.read_states([("card", 1)])
    store.close()


def test_offered_only_for_a_plain_redis_store(redis_url: str) -> None:
    assert async_reader(_store(redis_url)) is not None
    assert async_reader(_store(f"{redis_url.replace('redis://', 'rediss://')}")) is None
    assert async_reader(object()) is None
