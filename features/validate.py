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

import functools
import json
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.fastcheck import compile_fast_check
from features.schema import (
    EventSchema,
    Field,
    FieldType,
    InvalidEventError,
    SchemaError,
    epoch_ms,
)

Check = Callable[[Any], Any]


def _type_name(v: object) -> str:
    return type(v).__name__


def parse_time_ms(f: Field, value: object) -> int:
    """Epoch ms (UTC) from RFC 3339 with an offset, or from epoch ms; within ``f``'s bounds."""
    name = f.name
    if isinstance(value, bool):
        raise InvalidEventError(f"{name}: must be RFC 3339 or epoch ms, got bool")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEventError(f"{name}: {value[:40]!r} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise InvalidEventError(f"{name}: RFC 3339 time needs an offset (e.g. Z or +01:00)")
        ms = epoch_ms(dt)
    else:
        raise InvalidEventError(f"{name}: must be RFC 3339 or epoch ms, got {_type_name(value)}")
    if not _in_bounds(f, ms):
        raise InvalidEventError(f"{name}: {ms} ms is outside {f.range_text()}")
    return ms


def _in_bounds(f: Field, x: float) -> bool:
    lo, hi = f.min, f.max
    if lo is not None and (x <= lo if f.min_exclusive else x < lo):
        return False
    return not (hi is not None and (x >= hi if f.max_exclusive else x > hi))


def _length_text(f: Field) -> str:
    lo, hi = f.min_length, f.max_length
    if lo is not None and hi is not None:
        return f"{lo}..{hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def _allowed_text(f: Field) -> str:
    assert f.allowed is not None
    shown = ", ".join(str(a) for a in f.allowed[:10])
    return shown + (", ..." if len(f.allowed) > 10 else "")


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
                raise InvalidEventError(f"{name}: must be an integer, got {_type_name(v)}")
            if not lo <= v <= hi:  # type: ignore[operator]
                raise InvalidEventError(f"{name}: {v} is outside {lo}..{hi}")
            if allowed is not None and v not in allowed:
                raise InvalidEventError(f"{name}: {v} is not one of {_allowed_text(f)}")
            return v

        return check_int
    if f.type is FieldType.FLOAT64:

        def check_float(v: Any) -> float | None:
            if v is None:
                absent()
                return None
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InvalidEventError(f"{name}: must be a number, got {_type_name(v)}")
            try:
                x = float(v)
            except OverflowError:
                x = math.inf if v > 0 else -math.inf
            if not (math.isfinite(x) and _in_bounds(f, x)):
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
                raise InvalidEventError(f"{name}: must be a string, got {_type_name(v)}")
            n = len(v)
            if (lo_len is not None and n < lo_len) or (hi_len is not None and n > hi_len):
                raise InvalidEventError(f"{name}: length {n} is outside {_length_text(f)}")
            if regex is not None and not regex.fullmatch(v):
                what = f.hint or f"a match of {f.pattern!r}"
                raise InvalidEventError(f"{name}: {v[:20]!r} is not {what}")
            if allowed is not None and v not in allowed:
                raise InvalidEventError(f"{name}: {v[:20]!r} is not one of {_allowed_text(f)}")
            return v

        return check_str
    if f.type is FieldType.BOOL:

        def check_bool(v: Any) -> bool | None:
            if v is None:
                absent()
                return None
            if not isinstance(v, bool):
                raise InvalidEventError(f"{name}: must be a boolean, got {_type_name(v)}")
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

    def validate(self, obj: object) -> Any:
        """One decoded JSON object -> an event record, or :class:`InvalidEventError`."""
        if not isinstance(obj, dict):
            raise InvalidEventError(f"message: must be a JSON object, got {_type_name(obj)}")
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
            raise InvalidEventError(f"message: must be a JSON object, got {_type_name(obj)}")
        return self.validate_rules(obj)

    def to_json(self, event: Any) -> bytes:
        """An event record as the JSON message a producer sends (times as epoch ms)."""
        body = {k: v for k, v in zip(self.schema.names, event, strict=True) if v is not None}
        return json.dumps(body, separators=(",", ":")).encode()

    # -- tables --------------------------------------------------------------------------
    def validate_table(self, table: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Split an events table into (valid, rejects).

        ``valid`` has the schema's columns normalized (int64, float64, string, bool, the
        time fields as timestamp[ms, UTC]) plus ``row`` (position in the file) and any extra
        columns; ``rejects`` has every invalid row's original values, ``row`` and the
        ``reason`` naming the first broken field. Raises :class:`SchemaError` for a file
        that is not an events table of this schema."""
        n = table.num_rows
        rules: list[tuple[str, pa.Array]] = []
        normalized: dict[str, pa.Array] = {}
        for f in self.schema.fields:
            if f.name not in table.column_names:
                if f.required:
                    raise SchemaError(
                        f"column '{f.name}': missing (found {', '.join(table.column_names)})"
                    )
                continue
            ok, value = _column_rule(f, table.column(f.name))
            rules.append((_reason(f), ok))
            normalized[f.name] = value
        rows = pa.array(np.arange(n, dtype=np.int64))
        valid = table
        for name, value in normalized.items():
            valid = valid.set_column(valid.schema.get_field_index(name), name, value)
        valid = valid.append_column("row", rows)
        good = [pc.fill_null(ok, False) for _, ok in rules]
        all_ok = functools.reduce(pc.and_, good) if good else pa.array(np.ones(n, bool))
        bad = np.flatnonzero(~np.asarray(all_ok.to_numpy(zero_copy_only=False), bool))
        rejects = table.append_column("row", rows).append_column("reason", pa.nulls(n, pa.string()))
        if not len(bad):
            return valid, rejects.slice(0, 0)
        # the reason names each bad row's first broken rule (checked on those rows only)
        first = np.full(len(bad), len(rules), np.int64)
        at = pa.array(bad)
        for j in reversed(range(len(rules))):
            ok_here = np.asarray(good[j].take(at).to_numpy(zero_copy_only=False), bool)
            first[~ok_here] = j
        texts = pa.array([text for text, _ in rules], pa.string())
        is_bad = np.zeros(n, bool)
        is_bad[bad] = True
        rejects = rejects.filter(pa.array(is_bad))
        reason = rejects.schema.get_field_index("reason")
        rejects = rejects.set_column(reason, "reason", texts.take(pa.array(first)))
        return valid.filter(pa.array(~is_bad)), rejects


def _reason(f: Field) -> str:
    """The dead-letter reason of a table row that breaks ``f``'s rules."""
    miss = "missing or " if f.required else ""
    if f.type is FieldType.INT64:
        text = f"{f.name}: {miss}outside {f.range_text()}"
    elif f.type is FieldType.FLOAT64:
        text = f"{f.name}: {miss}not {f.rule_text()}"
    elif f.type is FieldType.TIMESTAMP:
        text = f"{f.name}: {miss}unparseable or outside {f.range_text()}"
    elif f.type is FieldType.BOOL:
        text = f"{f.name}: missing"
    else:
        parts = []
        if f.min_length is not None or f.max_length is not None:
            parts.append(f"length outside {_length_text(f)}")
        if f.pattern is not None:
            parts.append(f"not {f.hint or 'a match of ' + repr(f.pattern)}")
        text = f"{f.name}: {miss}{' or '.join(parts) or 'not a string'}"
    if f.allowed is not None:
        text += f" or not one of {_allowed_text(f)}"
    return text


def _check_type(f: Field, col: pa.ChunkedArray, ok: bool, expected: str) -> None:
    if not ok:
        raise SchemaError(f"column '{f.name}': expected {expected}, found {col.type}")


def _is_string(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _column_rule(f: Field, col: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(row passes ``f``'s rules, the normalized column) for one table column. Null rows
    pass only for optional fields; a failed row's normalized value is arbitrary (dropped)."""
    t = col.type
    optional_null = pc.is_null(col) if not f.required else None
    if f.type is FieldType.INT64:
        _check_type(f, col, pa.types.is_integer(t) or pa.types.is_null(t), "an integer")
        ok = pc.and_(pc.greater_equal(col, f.min), pc.less_equal(col, f.max))
        if f.allowed is not None:
            ok = pc.and_(ok, pc.is_in(col, value_set=pa.array(f.allowed, t)))
        # zero failed rows first so the narrowing cast cannot fail (they are dropped)
        value = pc.cast(pc.if_else(pc.fill_null(ok, False), col, 0), pa.int64(), safe=False)
        if optional_null is not None:
            value = pc.if_else(optional_null, pa.scalar(None, pa.int64()), value)
    elif f.type is FieldType.FLOAT64:
        number = pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)
        _check_type(f, col, number, "a number")
        value = pc.cast(col, pa.float64())
        x = value.to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            good = np.isfinite(x)
            if f.min is not None:
                good &= (x > f.min) if f.min_exclusive else (x >= f.min)
            if f.max is not None:
                good &= (x < f.max) if f.max_exclusive else (x <= f.max)
        ok = pa.array(good, pa.bool_(), mask=np.asarray(pc.is_null(value)))
    elif f.type is FieldType.STRING:
        _check_type(f, col, _is_string(t) or pa.types.is_null(t), "string")
        value = pc.cast(col, pa.string())
        ok = pc.is_valid(value)
        if f.min_length is not None or f.max_length is not None:
            n = pc.utf8_length(value)
            if f.min_length is not None:
                ok = pc.and_(ok, pc.greater_equal(n, f.min_length))
            if f.max_length is not None:
                ok = pc.and_(ok, pc.less_equal(n, f.max_length))
        if f.regex is not None:
            ok = pc.and_(ok, _matches(f, value))
        if f.allowed is not None:
            ok = pc.and_(ok, pc.is_in(value, value_set=pa.array(f.allowed, pa.string())))
    elif f.type is FieldType.BOOL:
        _check_type(f, col, pa.types.is_boolean(t) or pa.types.is_null(t), "a boolean")
        value = pc.cast(col, pa.bool_())
        ok = pc.is_valid(value)
    else:
        ms, parsed = _time_column(f, col)
        inside = pc.greater_equal(ms, f.min) if not f.min_exclusive else pc.greater(ms, f.min)
        below = pc.less(ms, f.max) if f.max_exclusive else pc.less_equal(ms, f.max)
        ok = pc.and_(parsed, pc.and_(inside, below))
        value = pc.cast(pc.cast(ms, pa.int64()), pa.timestamp("ms", tz="UTC"))
    if optional_null is not None:
        ok = pc.or_(pc.fill_null(ok, False), optional_null)
    return ok, value


def _matches(f: Field, value: pa.ChunkedArray) -> pa.Array:
    """Full matches of ``f.pattern``: Arrow's RE2 when it takes the pattern, else Python's
    ``re`` per value (RE2 lacks look-arounds and back-references)."""
    try:
        return pc.match_substring_regex(value, rf"\A(?:{f.pattern})\z")
    except pa.ArrowInvalid:
        regex = f.regex
        assert regex is not None
        return pa.array(
            [None if v is None else bool(regex.fullmatch(v)) for v in value.to_pylist()],
            pa.bool_(),
        )


def _time_column(f: Field, col: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(epoch ms int64, parse-ok mask) from a timestamp/int/string time column."""
    t = col.type
    if pa.types.is_timestamp(t):
        if t.tz is None:
            raise SchemaError(
                f"column '{f.name}': timestamp without a time zone; store UTC (tz='UTC')"
            )
        ms = pc.cast(pc.cast(col, pa.timestamp("ms", tz="UTC")), pa.int64())
        return ms, pc.is_valid(ms)
    if pa.types.is_integer(t):
        ms = pc.cast(col, pa.int64())
        return ms, pc.is_valid(ms)
    if not (_is_string(t) or pa.types.is_null(t)):
        raise SchemaError(
            f"column '{f.name}': expected a timestamp with time zone, epoch milliseconds or "
            f"RFC 3339 strings, found {t}"
        )
    values: list[int | None] = []
    for v in col.to_pylist():
        try:
            values.append(None if v is None else parse_time_ms(f, v))
        except InvalidEventError:
            values.append(None)
    arr = pa.array(values, pa.int64())
    return arr, pc.is_valid(arr)
