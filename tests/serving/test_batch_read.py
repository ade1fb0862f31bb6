"""``ScoreBatch``'s buffered Redis read (serving.batch_read) on the real Redis: the same
results as the ordinary read (``read_states``, one bytes object per key) field for field,
whatever the buffer's size; the ordinary read's errors for every reply it does not read
(an error reply, a value that is not a feast ``bytes_val``), a corrupt state, a query
too old, and Redis gone; a connection the store closed is opened again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from features.reference import REFERENCE, Event
from features.store import StoreConfig, open_store
from features.store.protocol import StoreUnavailableError
from features.store.redis import RedisReplyError, RedisStore
from serving import batch_read
from serving.model import LoadedModel, load_model
from serving.scorer import BatchItemError, CorruptStateError, Scorer
from serving.testing import fold_states, write_states
from tests.service_fixtures import RedisServer
from tests.serving.conftest import HISTORY, HOUR, NOW, T0, ev

pytestmark = pytest.mark.integration

#: ids no other test writes into the shared Redis
OFFSET = 920_000_000_000


def shifted(e: Event) -> Event:
    return e._replace(card_id=e.card_id + OFFSET, merchant_id=e.merchant_id + OFFSET)


@pytest.fixture
def model(model_registry: Path) -> LoadedModel:
    from flows.registry import resolve

    return load_model(resolve(model_registry, "production"), REFERENCE.fingerprint())


@pytest.fixture
def scorer(redis_url: str, model: LoadedModel) -> Any:
    store = open_store(StoreConfig(redis_url=redis_url), REFERENCE)
    assert type(store) is RedisStore
    write_states(store, fold_states([shifted(e) for e in HISTORY], REFERENCE), REFERENCE)
    s = Scorer(REFERENCE, store)
    s.install(model)
    yield s
    store.close()


def batch(n: int = 40, tag: str = "b") -> list[Event]:
    """Known and unknown cards and merchants in every combination, repeated ids."""
    cards, merchants = [1, 2, 404, 3, 405, 406], [10, 11, 909, 909, 12]
    return [
        shifted(ev(f"{tag}{i}", cards[i % 6], merchants[i % 5], 2.0 + i, NOW + i * 997))
        for i in range(n)
    ]


def ordinary(scorer: Any, events: list[Event], infos: bool = True) -> list[Any]:
    return scorer.score_columns(events, log=False, infos=infos, read=scorer.store.read_states)


def buffered(scorer: Any, events: list[Event], infos: bool = True) -> list[Any]:
    """The path the server takes, checked to be the buffered one (no ``read_states``)."""
    calls = []
    read = scorer.store.read_states
    scorer.store.read_states = lambda keys: calls.append(keys) or read(keys)
    try:
        got = scorer.score_columns(events, log=False, infos=infos)
    finally:
        del scorer.store.read_states
    assert calls == [], "the batch took the ordinary read"
    return got


@pytest.mark.parametrize("start_bytes", [batch_read.START_BYTES, 7, 4096])
def test_buffered_read_gives_the_ordinary_reads_results(
    scorer: Any, monkeypatch: pytest.MonkeyPatch, start_bytes: int
) -> None:
    monkeypatch.setattr(batch_read, "START_BYTES", start_bytes)  # small: the buffer grows
    events = batch()
    for infos in (True, False):
        got, want = buffered(scorer, events, infos), ordinary(scorer, events, infos)
        assert list(map(repr, got)) == list(map(repr, want))  # every field, NaN and -0.0 too
        assert {len(r.warnings) for r in got} == {0, 1, 2}
    assert [r.entities[0].found for r in buffered(scorer, events)][:6] == [
        True, True, False, True, False, False,
    ]  # fmt: skip


def fallback_error(scorer: Any, events: list[Event]) -> tuple[type, str]:
    """The error of the server's path, after checking it is the ordinary read's."""
    with pytest.raises(Exception) as want:
        ordinary(scorer, events)
    with pytest.raises(Exception) as got:
        scorer.score_columns(events, log=False)
    assert (type(got.value), str(got.value)) == (type(want.value), str(want.value))
    return type(got.value), str(got.value)


def test_replies_it_does_not_read_raise_the_ordinary_reads_errors(
    scorer: Any, redis_url: str
) -> None:
    store, r = scorer.store, redis.Redis.from_url(redis_url)
    events = batch()
    card = OFFSET + 3
    key, field = store.key("card", card), store._state_field["card"]
    r.delete(key)
    r.set(key, b"not a hash")  # WRONGTYPE: an error reply
    kind, message = fallback_error(scorer, events)
    assert kind is RedisReplyError and message.startswith("WRONGTYPE")
    r.delete(key)
    r.hset(key, field, b"\x08\x01")  # a stored value that is not a bytes_val
    assert fallback_error(scorer, events) == (
        ValueError,
        "state: stored value is not a bytes value",
    )
    r.hset(key, field, b"\x0a\x05SKxyz")  # a bytes_val holding no state
    kind, message = fallback_error(scorer, events)
    assert kind is CorruptStateError and message.startswith(f"card {card}: state: 5 bytes")
    r.delete(key)
    # the connection the odd replies left half-read was closed: the next batch is whole
    got, want = buffered(scorer, events), ordinary(scorer, events)
    assert list(map(repr, got)) == list(map(repr, want))


def test_query_too_old_names_the_event(scorer: Any) -> None:
    events = batch(12)
    events[7] = shifted(ev("old", 1, 10, 5.0, T0 + 8 * HOUR))  # before card 1's horizon
    with pytest.raises(BatchItemError) as info:
        scorer.score_columns(events, log=False)
    assert info.value.index == 7
    with pytest.raises(BatchItemError) as want:
        ordinary(scorer, events)
    assert str(info.value) == str(want.value)


def test_a_connection_closed_by_the_store_is_opened_again(scorer: Any) -> None:
    events = batch()
    first = buffered(scorer, events)
    scorer.store.close()  # closes every connection its wire opened, this reader's too
    assert list(map(repr, buffered(scorer, events))) == list(map(repr, first))


def test_redis_gone_is_unavailable_naming_how_to_start_it(
    redis_server: RedisServer, model: LoadedModel
) -> None:
    store = open_store(StoreConfig(redis_url=redis_server.url), REFERENCE)
    scorer = Scorer(REFERENCE, store)
    scorer.install(model)
    events = batch(8)
    try:
        buffered(scorer, events)
        with redis_server.stopped(), pytest.raises(StoreUnavailableError) as info:
            scorer.score_columns(events, log=False)
        assert "is unreachable" in str(info.value)
        assert "scripts/services.sh redis-start" in str(info.value)
    finally:
        store.close()


def test_offered_for_one_plain_redis_server_only(redis_url: str) -> None:
    from tests.serving.test_scorer import MemoryStore

    plain = open_store(StoreConfig(redis_url=redis_url), REFERENCE)
    tls = open_store(StoreConfig(redis_url="rediss://127.0.0.1:9/0"), REFERENCE)  # no I/O yet
    try:
        assert type(batch_read.batch_reader(plain)) is batch_read.BatchStateReader
        assert batch_read.batch_reader(tls) is None  # TLS keeps the ordinary read
        assert batch_read.batch_reader(MemoryStore()) is None
    finally:
        plain.close()
        tls.close()
