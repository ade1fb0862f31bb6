"""Validation of a whole events table (the backfill's input), column by column with
Arrow compute: the same rules as :meth:`features.validate.Validator.validate` applies to
one event, each row's reason naming its first broken field. Columns are checked on
parallel threads (Arrow's kernels release the GIL); only the rejected rows get a reason.

A string column the caller also holds dictionary-encoded (``encoded``: the backfill reads
low-cardinality columns that way, :func:`flows.backfill_events.read_events`) has its rules
run once per distinct value and spread by the codes: the reference schema's two code
columns cost 0.04-0.06 CPU-s each per 2M rows as RE2 over every value, 0.004 this way.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.field_rules import allowed_text, length_text, parse_time_ms
from features.schema import EventSchema, Field, FieldType, InvalidEventError, SchemaError

#: tables from this many rows have their columns checked on parallel threads
_PARALLEL_ROWS = 65_536


def validate_table(
    schema: EventSchema, table: pa.Table, encoded: Mapping[str, pa.ChunkedArray] | None = None
) -> tuple[pa.Table, pa.Table]:
    """:meth:`features.validate.Validator.validate_table`. ``encoded`` maps a string
    column's name to the same values dictionary-encoded (rows and values equal to the
    table's column; used for the string rules only)."""
    n = table.num_rows
    present = []
    for f in schema.fields:
        if f.name in table.column_names:
            present.append(f)
        elif f.required:
            raise SchemaError(f"column '{f.name}': missing (found {', '.join(table.column_names)})")

    codes = dict(encoded or {})

    def rule(f: Field) -> tuple[pa.Array, pa.Array]:
        return _column_rule(f, table.column(f.name), codes.get(f.name))

    if n >= _PARALLEL_ROWS:  # Arrow's kernels release the GIL: columns on every core
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            checked = list(pool.map(rule, present))
    else:
        checked = [rule(f) for f in present]
    rules = [(_reason(f), ok) for f, (ok, _) in zip(present, checked, strict=True)]
    normalized = {f.name: value for f, (_, value) in zip(present, checked, strict=True)}
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
            parts.append(f"length outside {length_text(f)}")
        if f.pattern is not None:
            parts.append(f"not {f.hint or 'a match of ' + repr(f.pattern)}")
        text = f"{f.name}: {miss}{' or '.join(parts) or 'not a string'}"
    if f.allowed is not None:
        text += f" or not one of {allowed_text(f)}"
    return text


def _check_type(f: Field, col: pa.ChunkedArray, ok: bool, expected: str) -> None:
    if not ok:
        raise SchemaError(f"column '{f.name}': expected {expected}, found {col.type}")


def _is_string(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _column_rule(
    f: Field, col: pa.ChunkedArray, encoded: pa.ChunkedArray | None = None
) -> tuple[pa.Array, pa.Array]:
    """(row passes ``f``'s rules, the normalized column) for one table column. Null rows
    pass only for optional fields; a failed row's normalized value is arbitrary (dropped).
    ``encoded``: the same string column dictionary-encoded, if the caller has it."""
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
        codes = _codes_of(encoded, col)
        if codes is not None:  # each distinct value checked once, spread by the codes
            ok = pa.chunked_array(
                [_string_ok(f, pc.cast(c.dictionary, pa.string())).take(c.indices)
                 for c in codes.chunks],
                pa.bool_(),
            )  # fmt: skip
        else:
            ok = _string_ok(f, value)
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


def _codes_of(encoded: pa.ChunkedArray | None, col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """``encoded`` if it is a dictionary-encoded string column as long as ``col``."""
    if encoded is None or len(encoded) != len(col):
        return None
    t = encoded.type
    return encoded if pa.types.is_dictionary(t) and _is_string(t.value_type) else None


def _string_ok(f: Field, value: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Per value, whether it passes ``f``'s string rules (null: not true)."""
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
    return ok


def _matches(f: Field, value: pa.Array | pa.ChunkedArray) -> pa.Array:
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
