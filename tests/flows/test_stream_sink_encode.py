"""The sink's batch encoding (``skewless_native.HsetRows``, ``hset_pipeline``): one call per
batch gives exactly the bytes of ``HsetEncoder.command`` row after row, and refuses what
it refuses, with the same message."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.native import native as skewless_native
from features.reference import REFERENCE
from features.store import OnlineRow
from features.store.redis import RedisStore

STORE = RedisStore("redis://127.0.0.1:1/0", REFERENCE)


def test_the_project_core_encodes_a_batch_in_one_call() -> None:
    """The project's own build has the batch encoder (a core built before it falls back to
    row by row, which these tests would then not cover: a failure, not a skip)."""
    assert STORE._hset_rows is not None and STORE._pipeline is not None


value = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, -0.0, 0.0, 5e-324, 1e300]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 2**63 - 1, -(2**63), True, False]),
)


def rows_of(entity: str) -> st.SearchStrategy[list[OnlineRow]]:
    n = len(STORE._fields[entity])
    return st.lists(
        st.builds(
            OnlineRow,
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.integers(min_value=-(2**62), max_value=2**62),
            st.one_of(st.lists(value, min_size=n, max_size=n), st.tuples(*[value] * n)),
            st.binary(max_size=600),
        ),
        max_size=20,
    )


def per_row(entity: str, rows: list[OnlineRow]) -> bytes:
    enc = STORE._hset[entity].command
    return b"".join(enc(r.entity_id, list(r.values), r.state, r.event_ts_ms) for r in rows)


@settings(max_examples=300, deadline=None)
@given(cards=rows_of("card"), merchants=rows_of("merchant"))
def test_a_batch_is_the_rows_commands_one_after_another(
    cards: list[OnlineRow], merchants: list[OnlineRow]
) -> None:
    for entity, rows in (("card", cards), ("merchant", merchants)):
        assert STORE._hset_rows[entity].commands(rows) == per_row(entity, rows)
        assert STORE._hset_rows[entity].commands(tuple(rows)) == per_row(entity, rows)
    tail = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    batches = [(STORE._hset_rows["card"], cards), (STORE._hset_rows["merchant"], merchants)]
    assert skewless_native.hset_pipeline(batches, tail) == (
        per_row("card", cards) + per_row("merchant", merchants) + tail,
        len(cards) + len(merchants),
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1.0], "values: 1 values for 3 fields"),
        (["x", 1.0, 2.0], "values: str is not int or float"),
    ],
)
def test_a_bad_row_is_refused_as_the_row_encoder_refuses_it(
    values: list[object], message: str
) -> None:
    good = OnlineRow(1, 0, [1.0, 2, None], b"s")
    bad = OnlineRow(2, 0, values, b"")
    with pytest.raises(ValueError, match=message):
        STORE._hset["merchant"].command(2, values, b"", 0)
    with pytest.raises(ValueError, match=message):
        STORE._hset_rows["merchant"].commands([good, bad])
    with pytest.raises(ValueError, match=message):
        skewless_native.hset_pipeline([(STORE._hset_rows["merchant"], [good, bad])], b"")


def test_write_rows_sends_one_payload_of_the_same_bytes() -> None:
    """``RedisStore.write_rows``: the rows' commands, then ``then``, in one call."""
    sent: list[tuple[bytes, int]] = []

    class Wire:
        def call(self, payload: bytes, replies: int) -> list[object]:
            sent.append((payload, replies))
            return list(range(replies))

    store = RedisStore("redis://127.0.0.1:1/0", REFERENCE)
    store._client = Wire()
    cards = [OnlineRow(7, 1_767_225_600_123, [1.5] * len(store._fields["card"]), b"st")]
    merchants = [OnlineRow(i, 1_000 * i, [i, 2.0, math.nan], b"m%d" % i) for i in range(3)]
    then = [("SET", b"k", b"v")]
    replies = store.write_rows({"card": cards, "merchant": merchants}, then)
    assert replies == [4]  # the reply of ``then`` only
    want = (
        per_row("card", cards)
        + per_row("merchant", merchants)
        + b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
    )
    assert sent == [(want, 5)]
    store._hset_rows = None  # a core without it: row by row, the same bytes
    store.write_rows({"card": cards, "merchant": merchants}, then)
    assert sent[1] == sent[0]
