"""The native fast path of ``parse_event`` takes only messages the Python rules accept,
and gives the very same Event; anything else falls through to the Python rules."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from skewless_native import parse_event_fast

from features.events import Event, InvalidEventError, parse_event, parse_event_py
from flows.simulate import SimulationConfig, simulate
from flows.stream_io import table_to_messages

BASE = {
    "transaction_id": "t-1",
    "card_id": 7,
    "merchant_id": 3,
    "amount": 12.5,
    "currency": "EUR",
    "country": "FR",
    "mcc": 5411,
    "event_time": "2026-01-01T10:00:00.123Z",
}

_TIMES = st.one_of(
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False),
    st.builds(
        lambda y, mo, d, h, mi, s, frac, off: (
            f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{off}"
        ),
        st.integers(0, 2200),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 24),
        st.integers(0, 60),
        st.integers(0, 60),
        st.sampled_from(["", ".1", ".12", ".123", ".1234", ".123456", ".1234567", "."]),
        st.sampled_from(["Z", "z", "", "+01:00", "-05:30", "+24:00", "+0100", "+23:59", "-00:00"]),
    ),
    st.text(max_size=30),
)
_ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=70)
)
_FIELDS = {
    "transaction_id": st.one_of(st.text(max_size=70), _ANY),
    "card_id": st.one_of(st.integers(-5, 2**64), _ANY),
    "merchant_id": st.one_of(st.integers(-5, 2**64), _ANY),
    "amount": st.one_of(st.floats(), st.integers(-5, 2 * 10**7), _ANY),
    "currency": st.one_of(st.sampled_from(["EUR", "eur", "EU", "EURO", "ÉUR"]), _ANY),
    "country": st.one_of(st.sampled_from(["FR", "fr", "F", "FRA"]), _ANY),
    "mcc": st.one_of(st.integers(-1, 10_001), _ANY),
    "event_time": _TIMES,
    "is_fraud": st.one_of(st.none(), st.booleans(), _ANY),
}


@st.composite
def messages(draw):
    obj = dict(BASE)
    for name in draw(st.sets(st.sampled_from(sorted(_FIELDS)), max_size=3)):
        if draw(st.booleans()):
            obj[name] = draw(_FIELDS[name])
        else:
            obj.pop(name, None)
    raw = json.dumps(obj, ensure_ascii=draw(st.booleans()), allow_nan=True).encode()
    if draw(st.integers(0, 9)) == 0:
        raw = draw(st.sampled_from([b"[1]", b"", raw[:-1], raw + b"x", b"\xff" + raw]))
    return raw


@settings(max_examples=3000, deadline=None)
@given(messages())
def test_fast_path_agrees_with_python_rules(raw):
    fast = parse_event_fast(raw)
    try:
        want = parse_event_py(raw)
    except InvalidEventError as exc:
        assert fast is None, f"fast path accepted what Python refuses: {exc}"
        return
    if fast is not None:
        assert Event(*fast) == want
    assert parse_event(raw) == want


def test_fast_path_takes_the_producers_messages():
    table = simulate(SimulationConfig(events=500, cards=20, merchants=5, days=2.0, seed=3))
    for raw in table_to_messages(table):
        fast = parse_event_fast(raw)
        assert fast is not None and Event(*fast) == parse_event_py(raw)
