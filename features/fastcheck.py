"""The schema's rules compiled into one Python function: the fast path for a plainly valid
event (a serving request; a stream message the native parser left to Python).

The rule-by-rule validator (:mod:`features.validate`) calls one closure per field and
builds a dict first, about 8 µs per reference event; this generated function checks the
same rules inline, about 1.5 µs. It only ever *accepts*: anything it is not sure of (a
broken rule, a value of another type, a string time) returns None and the validator
decides and names the field. The tests hold the two equal (tests/serving/test_convert.py,
tests/features/test_random_definitions.py).

>>> from features.reference import SCHEMA
>>> fast = compile_fast_check(SCHEMA)
>>> fast("t1", 7, 3, 12.5, "EUR", "FR", 5411, 1_767_258_000_000, None).card_id
7
>>> fast("t1", 7, 3, -1.0, "EUR", "FR", 5411, 1_767_258_000_000, None) is None
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from features.schema import EventSchema, Field, FieldType


def _bounds(f: Field, v: str) -> list[str]:
    out = []
    if f.min is not None:
        out.append(f"{v} {'>' if f.min_exclusive else '>='} {f.min!r}")
    if f.max is not None:
        out.append(f"{v} {'<' if f.max_exclusive else '<='} {f.max!r}")
    return out


def _field_lines(f: Field, i: int, env: dict[str, Any]) -> list[str]:
    """Lines that return None unless value ``v<i>`` passes ``f``'s rules (floats may be
    rebound: an int in a float field becomes a float, as the validator does)."""
    v = f"v{i}"
    conds: list[str] = []
    pre: list[str] = []
    if f.type is FieldType.INT64:
        conds = [f"type({v}) is int", *_bounds(f, v)]
        if f.allowed is not None:
            env[f"allowed{i}"] = frozenset(f.allowed)
            conds.append(f"{v} in allowed{i}")
    elif f.type is FieldType.FLOAT64:
        # finite: x - x is 0.0 only for finite x (NaN and inf give NaN)
        conds = [f"type({v}) is float", f"{v} - {v} == 0.0", *_bounds(f, v)]
    elif f.type is FieldType.STRING:
        conds = [f"type({v}) is str"]
        if f.min_length is not None:
            conds.append(f"len({v}) >= {f.min_length}")
        if f.max_length is not None:
            conds.append(f"len({v}) <= {f.max_length}")
        if f.regex is not None:
            env[f"regex{i}"] = f.regex.fullmatch
            conds.append(f"regex{i}({v}) is not None")
        if f.allowed is not None:
            env[f"allowed{i}"] = frozenset(f.allowed)
            conds.append(f"{v} in allowed{i}")
    elif f.type is FieldType.BOOL:
        conds = [f"type({v}) is bool"]
    else:  # timestamps: epoch ms only (RFC 3339 strings take the rules)
        conds = [f"type({v}) is int", *_bounds(f, v)]
    test = " and ".join(conds)
    if f.required:
        return [*pre, f"    if not ({test}):", "        return None"]
    return [*pre, f"    if {v} is not None and not ({test}):", "        return None"]


def compile_fast_check(schema: EventSchema) -> Callable[..., Any]:
    """``fast(*values) -> record | None``: the values in schema order (None: absent)."""
    record: Any = schema.record
    env: dict[str, Any] = {"record": record._make}
    args = ", ".join(f"v{i}" for i in range(len(schema.fields)))
    lines = [f"def fast({args}):"]
    for i, f in enumerate(schema.fields):
        lines += _field_lines(f, i, env)
    lines.append(f"    return record(({args},))")
    exec("\n".join(lines), env)  # the source is built above from the schema alone
    fast: Callable[..., Any] = env["fast"]
    return fast
