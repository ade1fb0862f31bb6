"""One native call per poll (``skewless_native.decode_poll`` in ``Decoder.decode_batch``)
gives exactly what the per-message path gives: the same Ingested tuples (event records of
the same class, values and types, the same txid hash, timestamp, bytes and key) and the
same dead letters with the same reason text, over random and malformed messages (valid
events, every invalid kind, non-UTF-8, wrong types, missing and extra fields)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import skewless_native as _native
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.native import _native_field
from features.reference import REFERENCE
from features.validate import Validator
from flows.stream_decode import Decoder
from flows.stream_io import DeadLetter, Ingested
from flows.stream_source import KafkaBatch
from tests.features.test_parse_fast import SCHEMAS, messages


def _session_plan() -> SimpleNamespace:
    """The second schema with its native parser alone installed (no Python re-check):
    what is compared is the decode of one parser, per poll against per message."""
    schema = SCHEMAS["session"]
    validator = Validator(schema)
    specs = [_native_field(f)[0] for f in schema.fields]
    validator.use_fast_path(_native.EventParser(schema.max_message_bytes, specs))
    return SimpleNamespace(validator=validator, event_id=schema.getter(schema.event_id))


def _reference_plan() -> object:
    from features.plan import compile_plan

    return compile_plan(REFERENCE)


DECODERS = {"reference": Decoder(_reference_plan()), "session": Decoder(_session_plan())}  # type: ignore[arg-type]


def _same(a: object, b: object) -> None:
    assert type(a) is type(b)
    if type(a) is DeadLetter:
        assert a == b
        return
    assert isinstance(a, Ingested) and isinstance(b, Ingested)
    assert type(a.event) is type(b.event)
    # exact, types included: 1 vs 1.0 vs True, 0.0 vs -0.0
    assert repr(a.event) == repr(b.event)
    assert [type(v) for v in a.event] == [type(v) for v in b.event]
    assert a[1:] == b[1:] and [type(v) for v in a[1:]] == [type(v) for v in b[1:]]


def _polls(name: str) -> st.SearchStrategy[KafkaBatch]:
    one = st.tuples(messages(name), st.one_of(st.none(), st.binary(max_size=8)),
                    st.sampled_from([0, 1, 1_700_000_000_000, 2**40]))  # fmt: skip
    return st.lists(one, max_size=12).map(_batch)


def _batch(ms: list[tuple[bytes, bytes | None, int]]) -> KafkaBatch:
    offsets = [100 + i for i in range(len(ms))]
    return KafkaBatch(3, offsets, [k for _, k, _ in ms], [m for m, _, _ in ms], [t for *_, t in ms])


_PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", ["reference", "session"])
def test_the_native_path_is_taken(name: str) -> None:
    assert DECODERS[name].native is not None, (
        "no native decode_poll (rebuild native/): the property would test nothing"
    )


@_PROPERTY
@given(b=_polls("reference"))
def test_poll_decode_equals_per_message_reference(b: KafkaBatch) -> None:
    _check(DECODERS["reference"], b)


@_PROPERTY
@given(b=_polls("session"))
def test_poll_decode_equals_per_message_session(b: KafkaBatch) -> None:
    _check(DECODERS["session"], b)


def _check(decoder: Decoder, b: KafkaBatch) -> None:
    got = decoder.decode_batch(b)
    now = 1_000  # each 0 timestamp became "now": compare it with the call's own now
    want = [decoder._one(b, i, now) for i in range(len(b))]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if type(g) is Ingested and b.timestamps[i] == 0:
            assert g.produced_ms > 1_600_000_000_000
            g = g._replace(produced_ms=now)
        _same(g, w)


def test_not_bytes_and_odd_timestamps_take_the_python_path() -> None:
    decoder = DECODERS["reference"]
    assert decoder.native is not None
    raw = b'{"transaction_id":"t1","card_id":7,"merchant_id":3,"amount":1.5,"currency":"EUR",'
    raw += b'"country":"FR","mcc":5411,"event_time":1767225600000}'
    out, unsure = _native.decode_poll(decoder.native, [raw, bytearray(raw), raw, raw],
                                      [None, None, b"k", None], [5, 5, 2**70, 0], 42,
                                      decoder.id_at, decoder.record, Ingested)  # fmt: skip
    assert unsure == [1, 2]
    assert out[0].produced_ms == 5 and out[3].produced_ms == 42 and out[3].key is None
    with pytest.raises(TypeError, match="named tuple class"):
        _native.decode_poll(decoder.native, [raw], [None], [1], 0, 0, dict, Ingested)
