"""The direct path of ``transaction_to_event`` builds only what ``validate_event`` accepts,
and the very same Event."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from features.events import InvalidEventError
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import (
    _validated,
    batch_response,
    ms_timestamp,
    score_response,
    transaction_to_event,
)
from serving.scorer import ScoreResult

_INT64 = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
_INT32 = st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))  # mcc is an int32


@st.composite
def transactions(draw):
    tx = pb.Transaction(
        transaction_id=draw(st.one_of(st.just("t-1"), st.text(max_size=70))),
        currency=draw(st.one_of(st.just("EUR"), st.text(max_size=4))),
        country=draw(st.one_of(st.just("FR"), st.text(max_size=3))),
    )
    for name, good, wide in (
        ("card_id", 7, _INT64),
        ("merchant_id", 3, _INT64),
        ("mcc", 5411, _INT32),
    ):
        v = draw(st.one_of(st.just(good), wide, st.integers(-2, 10_001)))
        if v is not None:
            setattr(tx, name, v)
    amount = draw(st.one_of(st.just(12.5), st.none(), st.floats(), st.floats(-1, 2e7)))
    if amount is not None:
        tx.amount = amount
    ms = draw(st.one_of(st.just(1_767_225_600_123), st.none(), st.integers(-(2**50), 2**50)))
    if ms is not None:
        tx.event_time.CopyFrom(ms_timestamp(ms))
    return tx


@settings(max_examples=2000, deadline=None)
@given(transactions())
def test_direct_path_agrees_with_validate_event(tx):
    try:
        want = _validated(tx, "transaction")
    except InvalidEventError as exc:
        try:
            transaction_to_event(tx)
        except InvalidEventError as got:
            assert str(got) == str(exc)
        else:
            raise AssertionError(f"direct path accepted what validate_event refuses: {exc}")
        return
    assert transaction_to_event(tx) == want


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(max_size=20),
            st.floats(allow_nan=False),
            st.booleans(),
            st.lists(st.text(max_size=30), max_size=2),
        ),
        max_size=5,
    ),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
def test_native_batch_response_is_the_protobuf_one(rows, threshold, version):
    results = [
        ScoreResult(t, s, d, threshold, version, (), [], (), tuple(w)) for t, s, d, w in rows
    ]
    want = pb.ScoreBatchResponse(responses=[score_response(r, False) for r in results])
    assert batch_response(results, False) == want
