"""Requests whose bytes are not what they claim, sent raw over a real channel: corrupt
protobuf, a known field with the wrong wire type, Timestamp nanos out of range. Each is
``INVALID_ARGUMENT`` with a message naming the problem (never ``UNKNOWN`` with a Python
class name), counted, and logged at most once per interval without a traceback."""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from features.plan import compile_plan
from features.reference import REFERENCE
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import event_message, ms_timestamp
from serving.request_native import BatchRequestReader
from serving.server import ServerConfig
from tests.serving.conftest import NOW, RunningServer
from tests.serving.test_server import ev as _ev
from tests.serving.test_server import tx

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SCORE = "/skewless.v1.Scorer/Score"
CORRUPT = b"\xff\xff\xff garbage"


def raw(channel: grpc.Channel, method: str = SCORE) -> Callable[..., bytes]:
    """A generic unary call that sends and returns bytes as they are."""
    return channel.unary_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    """One encoded field; ``payload`` is the value's bytes (length-prefixed for type 2)."""
    if wire_type == 2:
        payload = varint(len(payload)) + payload
    return varint(number << 3 | wire_type) + payload


def without(t: pb.Transaction, name: str) -> bytes:
    t = pb.Transaction.FromString(t.SerializeToString())
    t.ClearField(name)
    return t.SerializeToString()


def request(tx_bytes: bytes, *extra: bytes) -> bytes:
    return field(1, 2, tx_bytes) + b"".join(extra)


def call_error(call: Callable[[], Any]) -> tuple[Any, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# -- corrupt bytes -------------------------------------------------------------------


def test_corrupt_bytes_are_invalid_argument(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    score = raw(server.channel)
    for _ in range(20):
        code, details = call_error(lambda: score(CORRUPT, timeout=5))
        assert code == INVALID
        assert details == (
            "request: not a valid skewless.v1.ScoreRequest (11 bytes that do not parse as protobuf)"
        )
    assert all(r.exc_info is None and "Traceback" not in r.getMessage() for r in caplog.records)
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert lines[0].levelno == logging.WARNING
    assert "malformed requests: 1 since the previous report" in lines[0].getMessage()
    assert "latest: Score from ipv4:127.0.0.1:" in lines[0].getMessage()
    assert "request: not a valid skewless.v1.ScoreRequest" in lines[0].getMessage()
    server.stub.Score(pb.ScoreRequest(transaction=tx()), timeout=5)  # still serving


def test_corrupt_bytes_on_every_rpc(server: RunningServer) -> None:
    for method, name in [
        ("/skewless.v1.Scorer/ScoreBatch", "ScoreBatchRequest"),
        ("/skewless.v1.Scorer/GetFeatures", "GetFeaturesRequest"),
    ]:
        code, details = call_error(
            lambda m=method: raw(server.channel, m)(b"\x0a\x05ab", timeout=5)
        )
        assert (code, details) == (
            INVALID,
            f"request: not a valid skewless.v1.{name} (4 bytes that do not parse as protobuf)",
        )
    stream = server.channel.stream_stream(
        "/skewless.v1.Scorer/ScoreStream",
        request_serializer=lambda b: b, response_deserializer=lambda b: b,
    )  # fmt: skip
    good = pb.ScoreRequest(transaction=tx()).SerializeToString()
    got: list[bytes] = []
    with pytest.raises(grpc.RpcError) as info:
        got.extend(stream(iter([good, CORRUPT, good]), timeout=5))
    assert len(got) == 1
    assert (info.value.code(), info.value.details()) == (
        INVALID,
        "message 1: request: not a valid skewless.v1.ScoreRequest "
        "(11 bytes that do not parse as protobuf)",
    )


def _scrape(port: int, want: str) -> str:
    deadline = time.monotonic() + 5
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        if want in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_malformed_requests_are_counted(
    start_server: Callable[..., RunningServer], base_config: ServerConfig
) -> None:
    from tests.serving.test_server import _free_port

    port = _free_port()
    s = start_server(replace(base_config, metrics_port=port))
    # deltas: once feast is imported first, prometheus_client is in multiprocess mode and
    # same-named series of other servers in this process (earlier tests) add up
    corrupt = 'skewless_grpc_malformed_requests_total{method="Score",problem="corrupt"}'
    wire = 'skewless_grpc_malformed_requests_total{method="Score",problem="wire_type"}'
    handled = 'skewless_grpc_server_handled_total{code="INVALID_ARGUMENT",method="Score"}'
    before = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    score = raw(s.channel)
    for _ in range(3):
        call_error(lambda: score(CORRUPT, timeout=5))
    call_error(lambda: score(request(without(tx(), "card_id"), field(2, 2, b"7")), timeout=5))
    want = {corrupt: 3.0, wire: 1.0}
    deadline = time.monotonic() + 5
    while True:  # the status counter moves just after the client has its error
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        got = {k: _value(text, k) - _value(before, k) for k in (*want, handled)}
        if got[handled] >= 4.0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert {k: got[k] for k in want} == want
    # at least these 4 (multiprocess mode shares same-named series between the servers of
    # one process, so another server's write can land in between; test_server pins exact
    # status counts on the process's first metrics server)
    assert got[handled] >= 4.0


def test_rate_limited_log_counts_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    from serving.wire import RateLimitedLog

    now = [100.0]
    rl = RateLimitedLog(logging.getLogger("skewless.test"), "malformed requests", 10.0,
                        clock=lambda: now[0])  # fmt: skip
    caplog.set_level(logging.WARNING, "skewless.test")
    for i in range(5):
        rl.add(f"Score: problem {i}")
        now[0] += 1.0
    now[0] += 6.0
    rl.add("Score: problem 5")
    assert [r.getMessage() for r in caplog.records] == [
        "malformed requests: 1 since the previous report (one report per 10 s at most); "
        "latest: Score: problem 0",
        "malformed requests: 5 since the previous report (one report per 10 s at most); "
        "latest: Score: problem 5",
    ]


# -- wrong wire types ----------------------------------------------------------------

WIRE = [
    ("card_id as a string", "card_id", field(2, 2, b"7"),
     "transaction: field 2 (card_id) has the wrong wire type: "
     "length-delimited, but card_id (int64) is varint"),
    ("amount as a varint", "amount", field(4, 0, varint(50)),
     "transaction: field 4 (amount) has the wrong wire type: "
     "varint, but amount (double) is 64-bit"),
    ("currency as a varint", "currency", field(5, 0, varint(1)),
     "transaction: field 5 (currency) has the wrong wire type: "
     "varint, but currency (string) is length-delimited"),
    ("include_features as a string", None, field(2, 2, b"\x01"),
     "request: field 2 (include_features) has the wrong wire type: "
     "length-delimited, but include_features (bool) is varint"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "replaced", "bad", "message"), WIRE, ids=[w[0] for w in WIRE])
def test_wrong_wire_type_is_named(
    server: RunningServer, case: str, replaced: str | None, bad: bytes, message: str
) -> None:
    if replaced is not None:  # the field, inside the transaction, sent with another type
        body = request(without(tx(), replaced) + bad)
    else:  # a top-level field
        body = request(tx().SerializeToString(), bad)
    assert call_error(lambda: raw(server.channel)(body, timeout=5)) == (INVALID, message)


def test_wrong_wire_type_in_nested_messages(server: RunningServer) -> None:
    ts = field(1, 0, varint(NOW // 1000)) + field(2, 2, b"x")
    t = without(tx(), "event_time") + field(8, 2, ts)
    assert call_error(lambda: raw(server.channel)(request(t), timeout=5)) == (
        INVALID,
        "transaction.event_time: field 2 (nanos) has the wrong wire type: "
        "length-delimited, but nanos (int32) is varint",
    )
    good = tx().SerializeToString()
    bad = without(tx(), "card_id") + field(2, 2, b"7")
    batch = field(1, 2, good) + field(1, 2, bad)
    call = raw(server.channel, "/skewless.v1.Scorer/ScoreBatch")
    assert call_error(lambda: call(batch, timeout=5)) == (
        INVALID,
        "transactions[1]: field 2 (card_id) has the wrong wire type: "
        "length-delimited, but card_id (int64) is varint",
    )
    e = pb.ScoreRequest(event=event_message(_ev("g1", 1, 10, 50.0, NOW), _plan()))
    e.event.fields["amount"].ClearField("double_value")
    body = e.SerializeToString()
    entry = field(1, 2, b"amount") + field(2, 2, field(2, 0, varint(50)))
    body += field(3, 2, field(1, 2, entry))  # a second Event chunk: merged into the first
    assert call_error(lambda: raw(server.channel)(body, timeout=5)) == (
        INVALID,
        "event.fields['amount']: field 2 (double_value) has the wrong wire type: "
        "varint, but double_value (double) is 64-bit",
    )


def test_unknown_field_numbers_are_ignored(server: RunningServer) -> None:
    """proto3: a field this server does not know (a newer client) is skipped, not refused."""
    body = request(tx().SerializeToString() + field(99, 0, varint(1)), field(42, 2, b"new"))
    resp = pb.ScoreResponse.FromString(raw(server.channel)(body, timeout=5))
    assert resp.transaction_id == "q1"


# -- Timestamp nanos -----------------------------------------------------------------


def _plan() -> Any:
    from features.plan import compile_plan
    from features.reference import REFERENCE

    return compile_plan(REFERENCE)


def _bad_ts(nanos: int) -> Timestamp:
    ts = ms_timestamp(NOW)
    ts.nanos = nanos
    return ts


@pytest.mark.parametrize("nanos", [-1, 1_000_000_000, 2**31 - 1])
def test_timestamp_nanos_out_of_range(server: RunningServer, nanos: int) -> None:
    want = f"nanos {nanos} is outside 0..999999999"
    req = pb.ScoreRequest(transaction=tx(event_time=_bad_ts(nanos)))
    assert call_error(lambda: server.stub.Score(req, timeout=5)) == (
        INVALID, f"transaction.event_time: {want}",
    )  # fmt: skip
    batch = pb.ScoreBatchRequest(transactions=[tx(), tx(event_time=_bad_ts(nanos))])
    assert call_error(lambda: server.stub.ScoreBatch(batch, timeout=5)) == (
        INVALID, f"transactions[1].event_time: {want}",
    )  # fmt: skip
    e = pb.ScoreRequest(event=event_message(_ev("g1", 1, 10, 50.0, NOW), _plan()))
    e.event.fields["event_time"].timestamp_value.nanos = nanos
    assert call_error(lambda: server.stub.Score(e, timeout=5)) == (
        INVALID, f"event.event_time: {want}",
    )  # fmt: skip
    at = pb.GetFeaturesRequest(entity="card", entity_id=1, at=_bad_ts(nanos))
    assert call_error(lambda: server.stub.GetFeatures(at, timeout=5)) == (INVALID, f"at: {want}")


def test_unusual_but_valid_bytes_score_as_their_clean_message(server: RunningServer) -> None:
    """The server reads a typed request's bytes natively (serving.request_native): unknown
    fields, a repeated scalar (the last wins), a padded varint and a second event_time
    chunk (merged) give the response of the message protobuf reads from the same bytes."""
    base = tx(card_id=2, amount=20.0)  # then card 1: the last one sent is scored
    odd = (
        base.SerializeToString()
        + field(30, 0, varint(5))
        + field(31, 2, b"\x00\xff")
        + field(2, 0, b"\x81\x80\x80\x80\x80\x80\x80\x80\x80\x00")  # card_id 1, padded
        + field(8, 2, field(2, 0, varint(7_000_000)))  # nanos: merged into event_time
    )
    clean = pb.Transaction.FromString(odd)
    assert clean.card_id == 1 and clean.event_time.nanos == 7_000_000
    reader = BatchRequestReader.of(compile_plan(REFERENCE))
    assert reader is not None
    body_one = request(odd, field(2, 0, varint(1)))
    for method, body, message, response in (
        (SCORE, body_one, pb.ScoreRequest, pb.ScoreResponse),
        ("/skewless.v1.Scorer/ScoreBatch", field(1, 2, odd) * 2 + field(2, 0, varint(1)),
         pb.ScoreBatchRequest, pb.ScoreBatchResponse),
    ):  # fmt: skip
        native = reader.parse_one(body) if message is pb.ScoreRequest else reader.parse(body, 9)
        assert native is not None  # the native reader takes these bytes
        want = raw(server.channel, method)(message.FromString(body).SerializeToString(), timeout=5)
        got = raw(server.channel, method)(body, timeout=5)
        assert response.FromString(got) == response.FromString(want)
    # and it is card 1 (the last card_id sent) at NOW + 7 ms (the merged nanos)
    got_one = pb.ScoreResponse.FromString(raw(server.channel)(body_one, timeout=5))
    at_now = server.stub.Score(pb.ScoreRequest(transaction=tx(), include_features=True))
    assert [(s.entity_id, s.age_ms) for s in got_one.entities] == [
        (s.entity_id, s.age_ms + 7) for s in at_now.entities
    ]
    assert got_one.entities[0].entity_id == 1
