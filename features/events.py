"""The transaction event schema and its validation, shared by every path that reads events.

A stream message is validated by :func:`parse_event`; a Parquet file by
:func:`validate_table`. Both apply the same rules and name the field that broke one.

>>> e = parse_event(b'{"transaction_id": "t1", "card_id": 7, "merchant_id": 3, "amount": 12.5,'
...                 b' "currency": "EUR", "country": "FR", "mcc": 5411,'
...                 b' "event_time": "2026-01-01T10:00:00+01:00"}')
>>> e.card_id, e.event_time_ms
(7, 1767258000000)
>>> parse_event(b'{"transaction_id": "t1", "amount": -1}')
Traceback (most recent call last):
...
features.events.InvalidEventError: card_id: missing
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_MESSAGE_BYTES = 16 * 1024
MAX_AMOUNT = 10_000_000.0
MAX_ID = 2**63 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: event times outside [MIN_TIME, MAX_TIME) are rejected (far past / far future)
MIN_TIME_MS = int((datetime(2000, 1, 1, tzinfo=UTC) - EPOCH) / timedelta(milliseconds=1))
MAX_TIME_MS = int((datetime(2100, 1, 1, tzinfo=UTC) - EPOCH) / timedelta(milliseconds=1))

_CURRENCY = re.compile(r"[A-Z]{3}")
_COUNTRY = re.compile(r"[A-Z]{2}")
REQUIRED = (
    "transaction_id",
    "card_id",
    "merchant_id",
    "amount",
    "currency",
    "country",
    "mcc",
    "event_time",
)


try:
    from skewless_native import parse_event_fast as _parse_event_fast
except ImportError:  # pragma: no cover - the Python rules alone are complete, just slower
    _parse_event_fast = None


class InvalidEventError(ValueError):
    """An event broke a rule; the message starts with the field name."""


class SchemaError(ValueError):
    """An events file cannot be read as events at all (missing column, wrong type)."""


class Event(NamedTuple):
    """One valid transaction (a named tuple: built once per message on the hot path)."""

    transaction_id: str
    card_id: int
    merchant_id: int
    amount: float
    currency: str
    country: str
    mcc: int
    event_time_ms: int
    is_fraud: bool | None = None

    def to_json(self) -> bytes:
        body: dict[str, object] = {
            "transaction_id": self.transaction_id,
            "card_id": self.card_id,
            "merchant_id": self.merchant_id,
            "amount": self.amount,
            "currency": self.currency,
            "country": self.country,
            "mcc": self.mcc,
            "event_time": self.event_time_ms,
        }
        if self.is_fraud is not None:
            body["is_fraud"] = self.is_fraud
        return json.dumps(body, separators=(",", ":")).encode()


def _int(obj: dict[str, object], name: str, lo: int, hi: int) -> int:
    v = obj.get(name)
    if v is None:
        raise InvalidEventError(f"{name}: missing")
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidEventError(f"{name}: must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise InvalidEventError(f"{name}: {v} is outside {lo}..{hi}")
    return v


def _str(obj: dict[str, object], name: str) -> str:
    v = obj.get(name)
    if v is None:
        raise InvalidEventError(f"{name}: missing")
    if not isinstance(v, str):
        raise InvalidEventError(f"{name}: must be a string, got {type(v).__name__}")
    return v


def event_time_ms(value: object) -> int:
    """Epoch milliseconds (UTC) from RFC 3339 with an offset, or from epoch milliseconds."""
    if isinstance(value, bool) or value is None:
        raise InvalidEventError("event_time: missing" if value is None else "event_time: bool")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEventError(f"event_time: {value[:40]!r} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise InvalidEventError("event_time: RFC 3339 time needs an offset (e.g. Z or +01:00)")
        ms = (dt - EPOCH) // timedelta(milliseconds=1)
    else:
        raise InvalidEventError(
            f"event_time: must be RFC 3339 or epoch ms, got {type(value).__name__}"
        )
    if not MIN_TIME_MS <= ms < MAX_TIME_MS:
        raise InvalidEventError(f"event_time: {ms} ms is outside 2000-01-01..2100-01-01")
    return ms


def validate_event(obj: object) -> Event:
    """The same rules as :func:`validate_table`, for one decoded JSON object."""
    if not isinstance(obj, dict):
        raise InvalidEventError(f"message: must be a JSON object, got {type(obj).__name__}")
    txid = _str(obj, "transaction_id")
    if not 1 <= len(txid) <= 64:
        raise InvalidEventError(f"transaction_id: length {len(txid)} is outside 1..64")
    card = _int(obj, "card_id", 0, MAX_ID)
    merchant = _int(obj, "merchant_id", 0, MAX_ID)
    amount = obj.get("amount")
    if amount is None:
        raise InvalidEventError("amount: missing")
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise InvalidEventError(f"amount: must be a number, got {type(amount).__name__}")
    amount = float(amount)
    if not (math.isfinite(amount) and 0.0 < amount <= MAX_AMOUNT):
        raise InvalidEventError(f"amount: {amount} must be finite, > 0 and <= {MAX_AMOUNT:.0f}")
    currency = _str(obj, "currency")
    if not _CURRENCY.fullmatch(currency):
        raise InvalidEventError(f"currency: {currency[:20]!r} is not 3 upper-case letters")
    country = _str(obj, "country")
    if not _COUNTRY.fullmatch(country):
        raise InvalidEventError(f"country: {country[:20]!r} is not 2 upper-case letters")
    mcc = _int(obj, "mcc", 0, 9999)
    ts = event_time_ms(obj.get("event_time"))
    fraud = obj.get("is_fraud")
    if fraud is not None and not isinstance(fraud, bool):
        raise InvalidEventError(f"is_fraud: must be a boolean, got {type(fraud).__name__}")
    return Event(txid, card, merchant, amount, currency, country, mcc, ts, fraud)


def parse_event(raw: bytes) -> Event:
    """Decode and validate one message (UTF-8 JSON). The common valid message takes the
    native fast path; anything else gets the rules below, which name the broken field."""
    fast = _parse_event_fast(raw) if _parse_event_fast is not None else None
    if fast is not None:
        return Event(*fast)
    return parse_event_py(raw)


def parse_event_py(raw: bytes) -> Event:
    """:func:`parse_event` in Python only: the reference the native fast path is held to."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEventError(f"message: {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEventError(f"message: not UTF-8 JSON ({exc.__class__.__name__})") from None
    return validate_event(obj)


# -- files ---------------------------------------------------------------------------


def _check_type(table: pa.Table, name: str, ok: bool, expected: str) -> None:
    if not ok:
        raise SchemaError(
            f"column '{name}': expected {expected}, found {table.schema.field(name).type}"
        )


def _time_column(col: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(epoch ms int64, parse-ok mask) from a timestamp/int/string event_time column."""
    t = col.type
    if pa.types.is_timestamp(t):
        if t.tz is None:
            raise SchemaError(
                "column 'event_time': timestamp without a time zone; store UTC (tz='UTC')"
            )
        ms = pc.cast(pc.cast(col, pa.timestamp("ms", tz="UTC")), pa.int64())
        return ms, pc.is_valid(ms)
    if pa.types.is_integer(t):
        ms = pc.cast(col, pa.int64())
        return ms, pc.is_valid(ms)
    values: list[int | None] = []
    for v in col.to_pylist():
        try:
            values.append(event_time_ms(v))
        except InvalidEventError:
            values.append(None)
    arr = pa.array(values, pa.int64())
    return arr, pc.is_valid(arr)


def validate_table(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Split an events table into (valid, rejects).

    ``valid`` has the schema's columns normalized (int64 ids, float64 amount, int32 mcc,
    ``event_time`` as timestamp[ms, UTC]) plus ``row`` (position in the file) and any
    extra columns; ``rejects`` has every invalid row's original values, ``row`` and the
    ``reason`` naming the first broken field. Raises :class:`SchemaError` for a file that
    is not an events table.
    """
    for name in REQUIRED:
        if name not in table.column_names:
            raise SchemaError(f"column '{name}': missing (found {', '.join(table.column_names)})")
    s = table.schema
    string = (pa.types.is_string, pa.types.is_large_string)
    for name in ("transaction_id", "currency", "country"):
        _check_type(table, name, any(f(s.field(name).type) for f in string), "string")
    for name in ("card_id", "merchant_id", "mcc"):
        _check_type(table, name, pa.types.is_integer(s.field(name).type), "an integer")
    at = s.field("amount").type
    _check_type(table, "amount", pa.types.is_floating(at) or pa.types.is_integer(at), "a number")
    et = s.field("event_time").type
    _check_type(
        table,
        "event_time",
        pa.types.is_timestamp(et) or pa.types.is_integer(et) or any(f(et) for f in string),
        "a timestamp with time zone, epoch milliseconds or RFC 3339 strings",
    )
    if "is_fraud" in s.names:
        _check_type(table, "is_fraud", pa.types.is_boolean(s.field("is_fraud").type), "a boolean")

    n = table.num_rows
    ms, ms_ok = _time_column(table.column("event_time"))
    amount = pc.cast(table.column("amount"), pa.float64())
    amount_np = amount.to_numpy(zero_copy_only=False)
    txlen = pc.utf8_length(table.column("transaction_id"))

    def in_range(name: str, hi: int) -> pa.Array:
        col = table.column(name)
        return pc.and_(pc.greater_equal(col, 0), pc.less_equal(col, hi))

    ids_ok = {
        "card_id": in_range("card_id", MAX_ID),
        "merchant_id": in_range("merchant_id", MAX_ID),
        "mcc": in_range("mcc", 9999),
    }
    amount_ok = np.isfinite(amount_np) & (amount_np > 0) & (amount_np <= MAX_AMOUNT)
    rules: list[tuple[str, pa.Array]] = [
        (
            "transaction_id: missing or length outside 1..64",
            pc.and_(pc.greater_equal(txlen, 1), pc.less_equal(txlen, 64)),
        ),
        ("card_id: missing, negative or above int64", ids_ok["card_id"]),
        ("merchant_id: missing, negative or above int64", ids_ok["merchant_id"]),
        ("amount: missing, not finite, <= 0 or > 10000000", pa.array(amount_ok, pa.bool_())),
        (
            "currency: not 3 upper-case letters",
            pc.match_substring_regex(table.column("currency"), r"^[A-Z]{3}$"),
        ),
        (
            "country: not 2 upper-case letters",
            pc.match_substring_regex(table.column("country"), r"^[A-Z]{2}$"),
        ),
        ("mcc: missing or outside 0..9999", ids_ok["mcc"]),
        (
            "event_time: missing, unparseable or outside 2000-01-01..2100-01-01",
            pc.and_(ms_ok, pc.and_(pc.greater_equal(ms, MIN_TIME_MS), pc.less(ms, MAX_TIME_MS))),
        ),
    ]
    reason = pa.nulls(n, pa.string())
    for text, ok in reversed(rules):
        bad = pc.invert(pc.fill_null(ok, False))
        reason = pc.if_else(bad, pa.scalar(text), reason)
    rows = pa.array(np.arange(n, dtype=np.int64))
    is_bad = pc.is_valid(reason)
    rejects = table.append_column("row", rows).append_column("reason", reason).filter(is_bad)

    valid = table.set_column(
        table.schema.get_field_index("event_time"),
        "event_time",
        pc.cast(pc.cast(ms, pa.int64()), pa.timestamp("ms", tz="UTC")),
    )
    valid = valid.set_column(valid.schema.get_field_index("amount"), "amount", amount)
    for name, typ in (("card_id", pa.int64()), ("merchant_id", pa.int64()), ("mcc", pa.int32())):
        # invalid rows are dropped below; zero them first so the narrowing cast cannot fail
        col = pc.if_else(pc.fill_null(ids_ok[name], False), valid.column(name), 0)
        valid = valid.set_column(
            valid.schema.get_field_index(name), name, pc.cast(col, typ, safe=False)
        )
    valid = valid.append_column("row", rows).filter(pc.invert(is_bad))
    return valid, rejects
