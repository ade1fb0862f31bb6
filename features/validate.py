"""Event validation, derived from the definitions' :class:`~features.schema.EventSchema`.

One event (a stream message or a decoded JSON object) goes through
:meth:`Validator.parse` / :meth:`Validator.validate`; a whole table through
:meth:`Validator.validate_table`. Both apply the schema's rules and name the field that
broke one. The native fast path (:mod:`features.native`) takes its parameters from the
same schema and is held equal to :meth:`Validator.parse_py` by a property test.

>>> from features.reference import REFERENCE
>>> v = Validator(REFERENCE.schema)
>>> e = v.parse(b'{"transaction_id": "t1", "card_id": 7, "merchant_id": 3, "amount": 12.5,'
...             b' "currency": "EUR", "country": "FR", "mcc": 5411,'
...             b' "event_time": "2026-01-01T10:00:00+01:00"}')
>>> e.card_id, e.event_time_ms
(7, 1767258000000)
>>> v.parse(b'{"transaction_id": "t1", "amount": -1}')
Traceback (most recent call last):
...
features.schema.InvalidEventError: card_id: missing
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from features.fastcheck import compile_fast_check
from features.field_rules import (
    allowed_text,
    in_bounds,
    length_text,
    parse_time_ms,
    type_name,
)
from features.schema import (
    EventSchema,
    Field,
    FieldType,
    InvalidEventError,
)

Check = Callable[[Any], Any]


def field_check(f: Field) -> Check:
    """The rules of one field: value -> normalized value, or :class:`InvalidEventError`."""
    name, required = f.name, f.required
    allowed = frozenset(f.allowed) if f.allowed is not None else None

    def absent() -> None:
        """An absent or null value: an error for a required field, else None."""
        if required:
            raise InvalidEventError(f"{name}: missing")

    if f.type is FieldType.INT64:
        lo, hi = f.min, f.max

        def check_int(v: Any) -> int | None:
            if v is None:
                absent()
                return None
            if isinstance(v, bool) or not isinstance(v, int):
                raise InvalidEventError(f"{name}: must be an integer, got {type_name(v)}")
            if not lo <= v <= hi:  # type: ignore[operator]
                raise InvalidEventError(f"{name}: {v} is outside {lo}..{hi}")
            if allowed is not None and v not in allowed:
                raise InvalidEventError(f"{name}: {v} is not one of {allowed_text(f)}")
            return v

        return check_int
    if f.type is FieldType.FLOAT64:

        def check_float(v: Any) -> float | None:
            if v is None:
                absent()
                return None
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InvalidEventError(f"{name}: must be a number, got {type_name(v)}")
            try:
                x = float(v)
            except OverflowError:
                x = math.inf if v > 0 else -math.inf
            if not (math.isfinite(x) and in_bounds(f, x)):
                raise InvalidEventError(f"{name}: {x} must be {f.rule_text()}")
            return x

        return check_float
    if f.type is FieldType.STRING:
        regex, lo_len, hi_len = f.regex, f.min_length, f.max_length

        def check_str(v: Any) -> str | None:
            if v is None:
                absent()
                return None
            if not isinstance(v, str):
                raise InvalidEventError(f"{name}: must be a string, got {type_name(v)}")
            n = len(v)
            if (lo_len is not None and n < lo_len) or (hi_len is not None and n > hi_len):
                raise InvalidEventError(f"{name}: length {n} is outside {length_text(f)}")
            if regex is not None and not regex.fullmatch(v):
                what = f.hint or f"a match of {f.pattern!r}"
                raise InvalidEventError(f"{name}: {v[:20]!r} is not {what}")
            if allowed is not None and v not in allowed:
                raise InvalidEventError(f"{name}: {v[:20]!r} is not one of {allowed_text(f)}")
            return v

        return check_str
    if f.type is FieldType.BOOL:

        def check_bool(v: Any) -> bool | None:
            if v is None:
                absent()
                return None
            if not isinstance(v, bool):
                raise InvalidEventError(f"{name}: must be a boolean, got {type_name(v)}")
            return v

        return check_bool

    def check_time(v: Any) -> int | None:
        if v is None:
            absent()
            return None
        return parse_time_ms(f, v)

    return check_time


class Validator:
    """Every validator of one schema: one event, one message, one table."""

    def __init__(self, schema: EventSchema) -> None:
        self.schema = schema
        self.record: Any = schema.record
        self._checks = tuple((f.name, field_check(f)) for f in schema.fields)
        self._names = schema.names
        #: ``fast(*values) -> record | None``: the rules inline, for a plainly valid event
        self.fast_check = compile_fast_check(schema)
        self._fast: Callable[[bytes], Any] | None = None

    def use_fast_path(self, fast: Callable[[bytes], Any] | None) -> None:
        """Install a native fast path: ``raw -> tuple | None`` (None: the rules below decide)."""
        self._fast = fast

    @property
    def fast_path(self) -> Callable[[bytes], Any] | None:
        """The installed fast path (the stream decodes a whole poll with it when native)."""
        return self._fast

    def validate(self, obj: object) -> Any:
        """One decoded JSON object -> an event record, or :class:`InvalidEventError`."""
        if not isinstance(obj, dict):
            raise InvalidEventError(f"message: must be a JSON object, got {type_name(obj)}")
        get = obj.get
        event = self.fast_check(*[get(name) for name in self._names])
        if event is not None:
            return event
        return self.validate_rules(obj)

    def validate_rules(self, obj: dict[str, Any]) -> Any:
        """:meth:`validate` rule by rule: the reference the fast paths are held to."""
        get = obj.get
        return self.record._make([check(get(name)) for name, check in self._checks])

    def parse(self, raw: bytes) -> Any:
        """Decode and validate one message (UTF-8 JSON). A valid message takes the native
        fast path when one is installed; anything else gets the rules, which name the field."""
        fast = self._fast
        if fast is not None:
            values = fast(raw)
            if values is not None:
                return self.record._make(values)
        return self.parse_py(raw)

    def parse_py(self, raw: bytes) -> Any:
        """:meth:`parse` in Python only: the reference the native fast path is held to."""
        limit = self.schema.max_message_bytes
        if len(raw) > limit:
            raise InvalidEventError(f"message: {len(raw)} bytes exceeds {limit}")
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidEventError(f"message: not UTF-8 JSON ({exc.__class__.__name__})") from None
        if not isinstance(obj, dict):
            raise InvalidEventError(f"message: must be a JSON object, got {type_name(obj)}")
        return self.validate_rules(obj)

    def to_json(self, event: Any) -> bytes:
        """An event record as the JSON message a producer sends (times as epoch ms)."""
        body = {k: v for k, v in zip(self.schema.names, event, strict=True) if v is not None}
        return json.dumps(body, separators=(",", ":")).encode()

    # -- tables --------------------------------------------------------------------------
    def validate_table(
        self, table: pa.Table, encoded: Mapping[str, pa.ChunkedArray] | None = None
    ) -> tuple[pa.Table, pa.Table]:
        """Split an events table into (valid, rejects).

        ``valid`` has the schema's columns normalized (int64, float64, string, bool, the
        time fields as timestamp[ms, UTC]) plus ``row`` (position in the file) and any extra
        columns; ``rejects`` has every invalid row's original values, ``row`` and the
        ``reason`` naming the first broken field. Raises :class:`SchemaError` for a file
        that is not an events table of this schema. ``encoded``: string columns the
        caller also holds dictionary-encoded (same values), whose rules then run per
        distinct value."""
        from features.validate_table import validate_table

        return validate_table(self.schema, table, encoded)
