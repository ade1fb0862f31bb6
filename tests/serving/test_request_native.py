"""The native ScoreBatchRequest reader against the Python path it replaces on the server:
on random and malformed request bytes, whatever the native reader accepts is exactly what
the strict parser + :meth:`EventConverter.batch_events` give (same values, same types),
and the servicer's answer (events, or the error and its message) is the Python path's."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.plan import compile_plan
from features.reference import REFERENCE
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import EventConverter, event_transaction
from serving.request_native import BatchRequestReader
from serving.scorer import Scorer
from serving.servicer import ScorerServicer
from serving.wire import MalformedRequestError, strict_parser
from tests.serving.test_convert import transactions

PLAN = compile_plan(REFERENCE)
READER = BatchRequestReader.of(PLAN)
CONVERT = EventConverter(PLAN)
STRICT = strict_parser(pb.ScoreBatchRequest.FromString)
SERVICER = ScorerServicer(Scorer(REFERENCE), max_batch_size=5)
MAX = 5


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _delimited(number: int, body: bytes) -> bytes:
    return _field(number, 2, _varint(len(body)) + body)


#: wire-level pieces: unknown fields of every kind, known ones repeated or mistyped,
#: varints padded to ten bytes, invalid UTF-8, groups
_PIECES = st.one_of(
    st.builds(lambda n, v: _field(n, 0, _varint(v)), st.integers(9, 40), st.integers(0, 2**64 - 1)),
    st.builds(lambda n, b: _field(n, 1, b), st.integers(9, 40), st.binary(min_size=8, max_size=8)),
    st.builds(lambda n, b: _delimited(n, b), st.integers(9, 40), st.binary(max_size=12)),
    st.builds(lambda n, b: _field(n, 5, b), st.integers(9, 40), st.binary(min_size=4, max_size=4)),
    st.builds(lambda n: _field(n, 3, b"") + _field(n, 4, b""), st.integers(9, 40)),
    st.builds(lambda n, w: _field(n, w, _varint(1)), st.integers(1, 8), st.sampled_from([0, 1, 5])),
    st.builds(lambda v: _field(2, 0, _varint(v)), st.integers(-(2**63), 2**63 - 1)),  # card_id
    st.builds(lambda v: _field(7, 0, _varint(v)), st.integers(-(2**40), 2**40)),  # mcc (int32)
    st.builds(lambda x: _field(4, 1, struct.pack("<d", x)), st.floats()),  # amount
    st.builds(lambda s: _delimited(5, s), st.sampled_from([b"EUR", b"USD", b"\xff\xfeA", b""])),
    st.just(_field(2, 0, b"\x87\x80\x80\x80\x80\x80\x80\x80\x80\x00")),  # card_id 7, padded
    st.builds(  # event_time merged from a second occurrence (either part)
        lambda n, v: _delimited(8, _field(n, 0, _varint(v))),
        st.sampled_from([1, 2]),
        st.integers(-(2**40), 2**40),
    ),
    st.builds(lambda b: _delimited(8, b), st.binary(max_size=6)),
)


@st.composite
def valid_transactions(draw) -> pb.Transaction:
    """Transactions the schema accepts (mostly), so that the native reader's accepting
    side is exercised as much as its refusals."""
    text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=64)
    return event_transaction({
        "transaction_id": draw(st.one_of(st.just("t-1"), text)),
        "card_id": draw(st.integers(0, 2**63 - 1)),
        "merchant_id": draw(st.integers(0, 2**63 - 1)),
        "amount": draw(st.floats(5e-324, 1e7)),
        "currency": draw(st.sampled_from(["EUR", "USD", "JPY"])),
        "country": draw(st.sampled_from(["FR", "DE"])),
        "mcc": draw(st.integers(0, 9999)),
        "event_time": draw(st.integers(946_684_800_000, 4_102_444_799_999)),
    })  # fmt: skip


_BATCH_SIZES = st.integers(0, MAX + 1)


@st.composite
def requests(draw, counts: st.SearchStrategy[int] = _BATCH_SIZES) -> bytes:
    """A ScoreBatchRequest's bytes: random transactions, each maybe with extra pieces,
    top-level pieces, and sometimes a byte flipped or the tail cut."""
    body = b""
    for _ in range(draw(counts)):
        tx = draw(st.one_of(transactions().map(lambda c: c[0]), valid_transactions()))
        raw = tx.SerializeToString()
        for piece in draw(st.lists(_PIECES, max_size=draw(st.sampled_from([0, 0, 3])))):
            at = draw(st.sampled_from([0, len(raw)]))
            raw = raw[:at] + piece + raw[at:]
        body += _delimited(1, raw)
    if draw(st.booleans()):
        body += _field(2, 0, _varint(draw(st.integers(0, 3))))  # include_features
    extra = draw(st.sampled_from(["", "", "", "unknown", "event", "mistyped", "flip", "cut"]))
    if extra == "unknown":
        body += draw(_PIECES.filter(lambda p: p[0] >> 3 > 8))
    elif extra == "event":
        body += _delimited(3, b"")
    elif extra == "mistyped":
        body += _field(1, 0, _varint(1))
    elif extra in ("flip", "cut") and body:
        at = draw(st.integers(0, len(body) - 1))
        if extra == "cut":
            body = body[:at]
        else:
            body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
    return body


def _python_path(data: bytes) -> tuple[str, object]:
    """What the server answered before the native reader: ("ok", (events, include)) or
    ("error", (type, message))."""
    msg = STRICT(data)
    if type(msg) is MalformedRequestError:
        return "error", (type(msg), str(msg))
    try:
        return "ok", (CONVERT.batch_events(msg, MAX), msg.include_features)
    except Exception as exc:
        return "error", (type(exc), str(exc))


def _exact(events: list) -> list[str]:
    return [repr(tuple(e)) + type(e).__name__ for e in events]  # -0.0, True vs 1, ...


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_native_reader_accepts_only_what_the_python_path_gives(data: bytes) -> None:
    want = _python_path(data)
    assert READER is not None
    got = READER.parse(data, MAX)
    if got is not None:
        assert want[0] == "ok", (want, got)
        events, include = want[1]  # type: ignore[misc]
        assert _exact(got[0]) == _exact(events)
        assert got[1] == include
    try:
        events, include, _ = SERVICER.batch_request(data)
        outcome: tuple[str, object] = "ok", (events, include)
    except Exception as exc:
        outcome = "error", (type(exc), str(exc))
    if want[0] == "ok":
        assert outcome[0] == "ok"
        assert _exact(outcome[1][0]) == _exact(want[1][0])  # type: ignore[index]
        assert outcome[1][1] == want[1][1]  # type: ignore[index]
    else:
        assert outcome == want


STRICT_ONE = strict_parser(pb.ScoreRequest.FromString)


@st.composite
def score_requests(draw) -> bytes:
    """A ScoreRequest's bytes: a batch's pieces re-framed (field 1 is ``transaction``,
    2 ``include_features``, 3 ``event`` in both messages), sometimes two transactions
    (merged by protobuf), none, or a generic event beside one."""
    return draw(requests(st.sampled_from([1, 1, 1, 0, 2])))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(score_requests())
def test_native_score_reader_accepts_only_what_the_python_path_gives(data: bytes) -> None:
    assert READER is not None
    got = READER.parse_one(data)
    if got is None:
        return
    msg = STRICT_ONE(data)
    assert type(msg) is not MalformedRequestError, msg
    event = CONVERT.request_event(msg)  # raises if the Python path refuses it
    assert _exact([got[0]]) == _exact([event])
    assert got[1] == msg.include_features


def test_native_score_reader_takes_a_plain_request() -> None:
    assert READER is not None
    data = pb.ScoreRequest(transaction=_valid(4), include_features=True).SerializeToString()
    got = READER.parse_one(data)
    assert got is not None and got[1] is True
    assert _exact([got[0]]) == _exact([CONVERT.request_event(STRICT_ONE(data))])
    assert READER.parse_one(pb.ScoreRequest().SerializeToString()) is None  # "missing"
    assert READER.parse_one(pb.ScoreRequest(event=pb.Event()).SerializeToString()) is None


def _valid(i: int) -> pb.Transaction:
    return event_transaction({"transaction_id": f"t{i}", "card_id": i, "merchant_id": 3,
                              "amount": 12.5 + i, "currency": "EUR", "country": "FR",
                              "mcc": 5411, "event_time": 1_767_225_600_123 + i})  # fmt: skip


def test_native_reader_takes_plainly_valid_batches() -> None:
    """The fast path is used: valid batches, with unknown fields, repeated and merged
    fields, are read natively (not sent to the Python path)."""
    assert READER is not None
    txs = [_valid(i) for i in range(MAX)]
    data = pb.ScoreBatchRequest(transactions=txs, include_features=True).SerializeToString()
    got = READER.parse(data, MAX)
    assert got is not None
    assert got[1] is True and _exact(got[0]) == _exact(CONVERT.batch_events(STRICT(data), MAX))
    tx = _valid(0).SerializeToString()
    tx += (
        _field(2, 0, _varint(9))
        + _field(20, 5, b"abcd")
        + _delimited(8, _field(2, 0, _varint(5_000_000)))
    )
    data = _delimited(1, tx) + _field(30, 2, b"\x01z")
    got = READER.parse(data, MAX)
    assert got is not None
    (event,) = got[0]
    assert (event.card_id, event.event_time_ms) == (9, 1_767_225_600_005)
    assert _exact(got[0]) == _exact(CONVERT.batch_events(STRICT(data), MAX))


def test_native_reader_leaves_the_rest_to_python() -> None:
    """Over the batch limit, a generic event, a broken rule: None (Python names it)."""
    assert READER is not None
    many = pb.ScoreBatchRequest(transactions=[_valid(i) for i in range(MAX + 1)])
    assert READER.parse(many.SerializeToString(), MAX) is None
    generic = pb.ScoreBatchRequest(events=[pb.Event()])
    assert READER.parse(generic.SerializeToString(), MAX) is None
    bad = _valid(1)
    bad.amount = -1.0
    assert READER.parse(pb.ScoreBatchRequest(transactions=[bad]).SerializeToString(), MAX) is None
