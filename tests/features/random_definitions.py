"""Random user definitions and event histories, for the property test over definitions
(``test_random_definitions.py``).

A definition is drawn the way a user would write one: a schema in any field order (an id,
a time, 1-3 int64 keys, 1-4 bounded int64/float64 fields, maybe a string with a rule and an
optional float), 1-3 entities on those keys, windows whose hops form a divisibility chain
per entity, and request features over event fields and window features. A history is drawn
against that schema: out-of-order arrival, duplicates (also with other values, and the same
id under another key), ties on hop boundaries, long gaps, too-late and invalid events.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from hypothesis import strategies as st

from features.definitions import (
    FIELD_OPS,
    MS_PER_DAY,
    MS_PER_HOUR,
    MS_PER_MINUTE,
    Aggregation,
    Entity,
    FeatureSet,
    Op,
    Window,
)
from features.request import RequestFeature
from features.schema import INT64_MIN, TIME_MAX_MS, TIME_MIN_MS, EventSchema, Field, FieldType

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
#: every subset of these hops is a divisibility chain; the longest window per hop
HOPS = {
    MS_PER_MINUTE: 30,
    5 * MS_PER_MINUTE: 24,
    15 * MS_PER_MINUTE: 16,
    MS_PER_HOUR: 48,
    MS_PER_DAY: 3,
}
KEYS = 3  # keys 0..2 per key field; 7 is a valid key no event has
UNKNOWN_KEY = 7


@dataclass(frozen=True)
class Case:
    """A drawn definition and the names the brute force reads raw dicts by."""

    fs: FeatureSet
    event_id: str
    event_time: str
    keys: tuple[str, ...]
    numeric: tuple[Field, ...]
    others: tuple[tuple[Field, tuple[Any, ...]], ...]  # string / optional fields, valid values


# -- request-feature functions (numpy scalars and arrays alike) ---------------------------


def ratio(x, w):  # type: ignore[no-untyped-def]
    return x / w


def twice(x):  # type: ignore[no-untyped-def]
    return x * 2


def minus(x, w):  # type: ignore[no-untyped-def]
    return w - x


def hour_of_day(t):  # type: ignore[no-untyped-def]
    return (t % MS_PER_DAY) // MS_PER_HOUR


def plus(x, w):  # type: ignore[no-untyped-def]
    return x + w


# -- definitions --------------------------------------------------------------------------


def _numeric_field(draw: Any, name: str) -> Field:
    if draw(st.booleans()):
        lo = draw(st.sampled_from([0, 1, -50]))
        hi = draw(st.sampled_from([100, 10**6]))
        return Field(name, FieldType.INT64, min=lo, max=hi)
    lo = draw(st.sampled_from([0.0, 0.5, -1000.0]))
    hi = draw(st.sampled_from([250.5, 1e6]))
    return Field(
        name, FieldType.FLOAT64, min=lo, max=hi,
        min_exclusive=draw(st.booleans()), max_exclusive=draw(st.booleans()),
    )  # fmt: skip


_STRINGS = (
    (dict(pattern="[a-z]{2}", hint="2 lower-case letters"), ("ab", "zz"), ("AB", "abc")),
    (dict(pattern="(?!zz)[a-z]{2}"), ("ab", "yz"), ("zz", "a")),  # RE2 lacks look-aheads
    (dict(min_length=1, max_length=4), ("a", "abcd"), ("", "abcde")),
    (dict(allowed=("red", "blue")), ("red", "blue"), ("green",)),
)


def bad_values(f: Field) -> list[Any]:
    """Values that break ``f``'s rules (derived from the rules, as a user's typo would)."""
    out: list[Any] = [None] if f.required else []
    if f.type is FieldType.INT64:
        if f.min is not None and f.min > INT64_MIN:
            out.append(int(f.min) - 1)
        out.append(int(f.max) + 1)  # type: ignore[arg-type]
    elif f.type is FieldType.FLOAT64:
        out += [float("nan"), float("inf")]
        if f.min is not None:
            out.append(float(f.min) if f.min_exclusive else float(f.min) - 0.25)
        if f.max is not None:
            out.append(float(f.max) if f.max_exclusive else float(f.max) + 0.25)
    elif f.type is FieldType.TIMESTAMP:
        out += [TIME_MAX_MS, TIME_MIN_MS - 1]
    elif f.type is FieldType.STRING:
        if f.min_length:
            out.append("x" * (f.min_length - 1))
        if f.max_length is not None:
            out.append("x" * (f.max_length + 1))
        if f.pattern is not None:
            out += next(bad for rule, _, bad in _STRINGS if rule.get("pattern") == f.pattern)
        if f.allowed is not None:
            out.append("green")
    return out


def _window(draw: Any, hops: list[int]) -> Window:
    hop = draw(st.sampled_from(hops))
    k = draw(st.integers(1, HOPS[hop]))
    return Window(timedelta(milliseconds=k * hop), timedelta(milliseconds=hop))


def _request(draw: Any, i: int, numeric: tuple[Field, ...], windows: list[str], time: str,
             optional: str | None) -> RequestFeature:  # fmt: skip
    name = f"req_{i}"
    kinds = ["ratio", "twice", "minus", "hour"] + (["plus"] if optional else [])
    kind = draw(st.sampled_from(kinds))
    field = draw(st.sampled_from([f.name for f in numeric]))
    window = draw(st.sampled_from(windows))
    if kind == "ratio":
        return RequestFeature(name, (field, window), ratio)
    if kind == "twice":
        return RequestFeature(name, (field,), twice)
    if kind == "minus":
        return RequestFeature(name, (field, window), minus)
    if kind == "hour":
        return RequestFeature(name, (time,), hour_of_day)
    assert optional is not None
    return RequestFeature(name, (optional, window), plus)


@st.composite
def definitions(draw: Any) -> Case:
    event_id = draw(st.sampled_from(["eid", "event_id", "click_id"]))
    event_time = draw(st.sampled_from(["ts", "event_time", "when"]))
    keys = draw(
        st.lists(st.sampled_from(["user_id", "item_id", "shop_id", "acct"]), min_size=1,
                 max_size=3, unique=True)
    )  # fmt: skip
    names = draw(
        st.lists(st.sampled_from(["amount", "dwell", "qty", "score", "price"]), min_size=1,
                 max_size=4, unique=True)
    )  # fmt: skip
    numeric = tuple(_numeric_field(draw, n) for n in names)
    others: list[tuple[Field, tuple[Any, ...]]] = []
    if draw(st.booleans()):
        rule, good, _ = draw(st.sampled_from(_STRINGS))
        others.append((Field("tag", FieldType.STRING, required=draw(st.booleans()), **rule), good))
    optional = None
    if draw(st.booleans()):
        optional = "extra"
        others.append((Field("extra", FieldType.FLOAT64, required=False, min=-10, max=10),
                       (None, -10.0, 2.5, 10.0)))  # fmt: skip
    fields = [
        Field(event_id, FieldType.STRING, min_length=1, max_length=16),
        Field(event_time, FieldType.TIMESTAMP),
        *(Field(k, FieldType.INT64, min=0, max=draw(st.sampled_from([10, 10**9]))) for k in keys),
        *numeric,
        *(f for f, _ in others),
    ]
    schema = EventSchema(tuple(draw(st.permutations(fields))), event_id, event_time)

    n_entities = draw(st.integers(1, 3))
    entity_names = ["user", "item", "shop"][:n_entities]
    entities = tuple(Entity(n, draw(st.sampled_from(keys))) for n in entity_names)
    aggs: list[Aggregation] = []
    seen: set[str] = set()
    for e in entities:
        hops = sorted(draw(st.sets(st.sampled_from(sorted(HOPS)), min_size=1, max_size=3)))
        for _ in range(draw(st.integers(2, 5))):
            op = draw(st.sampled_from(list(Op)))
            if op is Op.SINCE_LAST and any(a.op is op and a.entity == e for a in aggs):
                continue  # a second one under an alias: see test_two_seconds_since_last
            window = None if op is Op.SINCE_LAST else _window(draw, hops)
            field = draw(st.sampled_from(names)) if op in FIELD_OPS else None
            alias = f"{e.name}_f{len(aggs)}" if draw(st.integers(0, 5)) == 0 else None
            agg = Aggregation(e, op, window, field, alias)
            if agg.name not in seen:
                seen.add(agg.name)
                aggs.append(agg)
        if not any(a.entity == e and a.window is not None for a in aggs):
            # an entity needs a window (FeatureSet refuses seconds_since_last alone)
            agg = Aggregation(e, Op.COUNT, _window(draw, hops), alias=f"{e.name}_count_w")
            seen.add(agg.name)
            aggs.append(agg)
    windows = [a.name for a in aggs]
    request = tuple(
        _request(draw, i, numeric, windows, event_time, optional)
        for i in range(draw(st.integers(1, 2)))
    )
    fs = FeatureSet(
        schema=schema,
        entities=entities,
        aggregations=tuple(aggs),
        primary=draw(st.sampled_from(entities)),
        request=request,
        project="random_defs",
        exact_horizon=draw(
            st.sampled_from([timedelta(minutes=10), timedelta(hours=1), timedelta(hours=6)])
        ),
    )
    return Case(fs, event_id, event_time, tuple(keys), numeric, tuple(others))


# -- histories ----------------------------------------------------------------------------


def _value(draw: Any, f: Field) -> float | int:
    lo, hi = f.min, f.max
    assert lo is not None and hi is not None
    if f.type is FieldType.INT64:
        return draw(st.one_of(st.sampled_from([int(lo), int(hi)]), st.integers(int(lo), int(hi))))
    edges = [x for x, excl in ((lo, f.min_exclusive), (hi, f.max_exclusive)) if not excl]
    inside = st.integers(1, 9_999).map(lambda u: round(lo + (hi - lo) * u / 10_000, 2))
    return float(draw(st.one_of(inside, st.sampled_from(edges)) if edges else inside))


@st.composite
def histories(draw: Any, case: Case) -> list[dict[str, Any]]:
    """Raw events (dicts by field name) in arrival order."""
    hops = sorted({a.window.hop_ms for a in case.fs.aggregations if a.window})
    n = draw(st.integers(3, 30))
    t = T0 + draw(st.integers(0, MS_PER_DAY))
    events = []
    for i in range(n):
        t += draw(
            st.one_of(
                st.sampled_from([0, 1, MS_PER_MINUTE - 1, MS_PER_MINUTE, 5 * MS_PER_MINUTE]),
                st.integers(0, 3 * MS_PER_HOUR),
                st.sampled_from([2 * MS_PER_DAY, 11 * MS_PER_DAY]),  # longer than every window
            )
        )
        edge = draw(st.sampled_from([0, *hops]))
        e: dict[str, Any] = {
            case.event_id: f"e{i}",
            case.event_time: (t // edge) * edge if edge and draw(st.booleans()) else t,
        }
        for k in case.keys:
            e[k] = draw(st.integers(0, KEYS - 1))
        for f in case.numeric:
            e[f.name] = _value(draw, f)
        for f, good in case.others:
            e[f.name] = draw(st.sampled_from(good))
        events.append(e)
    rnd = random.Random(draw(st.integers(0, 2**32)))
    arrival = list(events)
    for _ in range(draw(st.integers(0, n))):  # out of order: some back a little, some far
        i = rnd.randrange(len(arrival))
        j = max(0, i - rnd.choice([1, 2, 5, 40]))
        arrival.insert(j, arrival.pop(i))
    for _ in range(draw(st.integers(0, 4))):  # duplicates, later in the stream
        i = rnd.randrange(len(arrival))
        copy = dict(arrival[i])
        variant = rnd.randrange(3)
        if variant == 1:  # same id, other values: the first copy counts
            f = rnd.choice(case.numeric)
            copy[f.name] = _value(draw, f)
        elif variant == 2:  # same id under another key: a first copy for that key
            copy[rnd.choice(case.keys)] = rnd.randrange(KEYS)
        arrival.insert(rnd.randrange(i, len(arrival) + 1), copy)
    if draw(st.booleans()):  # an old straggler: too late for some entities, maybe not all
        old = dict(rnd.choice(events), **{case.event_id: "old"})
        old[case.event_time] = max(e[case.event_time] for e in events) - rnd.choice(
            [2 * MS_PER_HOUR, 30 * MS_PER_HOUR, 4 * MS_PER_DAY]
        )
        arrival.append(old)
    fields = case.fs.schema.fields
    for k in range(draw(st.integers(0, 3))):  # invalid events, each breaking one rule
        f = rnd.choice([f for f in fields if bad_values(f)])
        bad = dict(rnd.choice(events), **{case.event_id: f"bad{k}"})
        bad[f.name] = rnd.choice(bad_values(f))
        arrival.insert(rnd.randrange(len(arrival) + 1), bad)
    return arrival


def np_input(value: Any) -> Any:
    """A raw value as the brute force hands it to a request function."""
    return np.float64(np.nan if value is None else value)
