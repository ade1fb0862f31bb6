"""The typed Transaction and the generic Event convert to the very event the schema's
validator gives for the same fields, with the same errors (the request path prefixed)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from features.plan import compile_plan
from features.reference import REFERENCE
from features.schema import InvalidEventError
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import (
    EventConverter,
    batch_response,
    batch_response_bytes,
    event_message,
    ms_timestamp,
    score_response,
)
from serving.score_types import ScoreResults
from serving.scorer import ScoreResult

PLAN = compile_plan(REFERENCE)
CONVERT = EventConverter(PLAN)
_INT64 = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
_INT32 = st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))  # mcc is an int32


@st.composite
def transactions(draw):
    obj = {
        "transaction_id": draw(st.one_of(st.just("t-1"), st.text(max_size=70))),
        "currency": draw(st.one_of(st.just("EUR"), st.text(max_size=4))),
        "country": draw(st.one_of(st.just("FR"), st.text(max_size=3))),
    }
    for name, good, wide in (
        ("card_id", 7, _INT64),
        ("merchant_id", 3, _INT64),
        ("mcc", 5411, _INT32),
    ):
        obj[name] = draw(st.one_of(st.just(good), wide, st.integers(-2, 10_001)))
    obj["amount"] = draw(st.one_of(st.just(12.5), st.none(), st.floats(), st.floats(-1, 2e7)))
    obj["event_time"] = draw(
        st.one_of(st.just(1_767_225_600_123), st.none(), st.integers(-(2**50), 2**50))
    )
    tx = pb.Transaction(**{k: v for k, v in obj.items() if v is not None and k != "event_time"})
    if obj["event_time"] is not None:
        tx.event_time.CopyFrom(ms_timestamp(obj["event_time"]))
    return tx, obj


def _outcome(fn, *args):
    try:
        return fn(*args)
    except InvalidEventError as exc:
        return str(exc)


@settings(max_examples=1500, deadline=None)
@given(transactions())
def test_typed_and_generic_requests_agree_with_the_schema_rules(case):
    tx, obj = case
    want = _outcome(PLAN.validator.validate, obj)
    got = _outcome(CONVERT.transaction, tx)
    if isinstance(want, str):
        assert got == f"transaction.{want}"
        return
    assert got == want
    # the generic Event of the same event converts to the same record
    assert CONVERT.event(event_message(want, PLAN)) == want


def test_generic_event_errors_name_the_request_path():
    ev = event_message({**_VALID, "amount": 5.0}, PLAN)
    del ev.fields["card_id"]
    req = pb.ScoreBatchRequest(events=[event_message(_VALID, PLAN), ev])
    try:
        CONVERT.batch_events(req, 10)
    except InvalidEventError as exc:
        assert str(exc) == "events[1].card_id: missing"
    else:
        raise AssertionError("a generic event without card_id must be refused")
    bad = pb.Event()
    bad.fields["event_time"].timestamp_value.CopyFrom(pb.Value().timestamp_value)
    bad.fields["event_time"].timestamp_value.nanos = -1
    try:
        CONVERT.event(bad)
    except InvalidEventError as exc:
        assert str(exc) == "event.event_time: nanos -1 is outside 0..999999999"
    else:
        raise AssertionError("nanos outside [0, 1e9) must be refused")


_VALID = {
    "transaction_id": "t-1", "card_id": 7, "merchant_id": 3, "amount": 12.5,
    "currency": "EUR", "country": "FR", "mcc": 5411, "event_time": 1_767_225_600_123,
}  # fmt: skip


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
    # the batch's own columns (serving.score_batch) encode to the same bytes
    n, cols = len(rows), list(zip(*rows, strict=True)) or [(), (), (), ()]
    columns = {"transaction_id": list(cols[0]), "score": list(cols[1]),
               "decision": list(cols[2]), "threshold": [threshold] * n,
               "model_version": [version] * n, "warnings": [tuple(w) for w in cols[3]],
               "shadow_score": [None] * n, "shadow_version": [None] * n}  # fmt: skip
    by_column = batch_response_bytes(ScoreResults(results, columns), False)
    assert by_column == batch_response_bytes(results, False)
