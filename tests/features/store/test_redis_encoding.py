"""The native HSET encoder writes exactly the bytes of the Python value encoders
(``encode_value`` / ``encode_timestamp``), under Feast's key and field names."""

from __future__ import annotations

import math

import hiredis
import pytest

from features.reference import REFERENCE
from features.store.encoding import encode_timestamp, encode_value
from features.store.redis import RedisStore


def parse_command(raw: bytes) -> list[bytes]:
    """RESP request -> its arguments (a request is an array of bulk strings, like a reply)."""
    reader = hiredis.Reader()
    reader.feed(raw)
    return reader.gets()


@pytest.mark.parametrize(
    "values",
    [
        [3, 0, 7, 12.5, 0.1, 1e300, math.nan, -0.0, 2.5],
        [-1, 2**40, 1, math.inf, -3.25, 5e-324, 1.0, 7.0, math.nan],
    ],
)
def test_hset_command_matches_python_encoding(values):
    store = RedisStore("redis://127.0.0.1:1/0", REFERENCE)
    state = bytes(range(256)) * 3
    ts = 1_767_225_600_123
    cmd = parse_command(store._hset["card"].command(460, values, state, ts))
    want_fields = [*store._fields["card"], store._state_field["card"], store._ts_field["card"]]
    want_values = [*(encode_value(v) for v in values), encode_value(state), encode_timestamp(ts)]
    assert cmd[0] == b"HSET" and cmd[1] == store.key("card", 460)
    assert cmd[2::2] == want_fields
    assert cmd[3::2] == want_values


def test_hset_command_refuses_wrong_rows():
    store = RedisStore("redis://127.0.0.1:1/0", REFERENCE)
    with pytest.raises(ValueError, match="values"):
        store._hset["merchant"].command(1, [1.0], b"", 0)
    with pytest.raises(ValueError, match="not int or float"):
        store._hset["merchant"].command(1, ["x", 1.0, 2.0], b"", 0)
