"""Feast's online layout, encoded without Feast: ``ValueProto`` and ``Timestamp`` bytes,
the entity key and the Redis hash field of a feature (each pinned to Feast by a test), so
the stream never imports Feast.

>>> encode_value(1.5).hex(), encode_value(300).hex(), encode_value(float("nan"))
('29000000000000f83f', '20ac02', b'')
"""

from __future__ import annotations

import math
import struct

_DOUBLE = struct.Struct("<d")


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_value(v: float | int | bytes | None) -> bytes:
    """Serialize a feast ``ValueProto`` (int64 / double / bytes; NaN or None = unset)."""
    if v is None:
        return b""
    if isinstance(v, bytes):
        return b"\x0a" + _varint(len(v)) + v
    if isinstance(v, int):
        return b"\x20" + _varint(v)
    if math.isnan(v):
        return b""
    return b"\x29" + _DOUBLE.pack(v)


def encode_timestamp(ms: int) -> bytes:
    """Serialize a ``google.protobuf.Timestamp`` from epoch milliseconds."""
    seconds, rem = divmod(ms, 1000)
    out = b""
    if seconds:
        out += b"\x08" + _varint(seconds)
    if rem:
        out += b"\x10" + _varint(rem * 1_000_000)
    return out


def entity_key_bytes(join_key: str, entity_id: int) -> bytes:
    """Feast's ``serialize_entity_key`` (version 3) for one int64 join key, without
    building protos: ``count, STRING, len, name, INT64, 8, value`` (a test pins it to
    Feast's own function).

    >>> from feast.infra.key_encoding_utils import serialize_entity_key
    >>> from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    >>> from feast.protos.feast.types.Value_pb2 import Value
    >>> key = EntityKey(join_keys=["card_id"], entity_values=[Value(int64_val=460)])
    >>> entity_key_bytes("card_id", 460) == serialize_entity_key(key, 3)
    True
    """
    name = join_key.encode()
    return _KEY_HEAD.pack(1, 2, len(name)) + name + _KEY_INT.pack(4, 8, entity_id)


_KEY_HEAD = struct.Struct("<III")
_KEY_INT = struct.Struct("<IIq")


def feast_field(name: str) -> bytes:
    """Feast's Redis hash field for ``"<view>:<feature>"``: the first 4 bytes of the
    little-endian unsigned murmur3 (``feast.infra.online_stores.helpers._mmh3``, pinned by
    a test; computed here so the stream never imports Feast).

    >>> from feast.infra.online_stores.helpers import _mmh3
    >>> f = "card_features_as_of_last_event:card_txn_count_1h"
    >>> feast_field(f) == _mmh3(f)
    True
    """
    import mmh3

    return struct.pack("<Q", mmh3.hash(name, signed=False))[:4]
