"""Property test over random definitions (not just the reference set): for a random schema,
entities, windows, hops and request features, and a random history of that schema, the
Python engine, the native core, the vectorized backfill and a brute force written here
from DESIGN.md agree on every feature of every entity; request features agree between the
one-event and the columnar path; per-event and table validation reject the same rows.

The brute force never goes through the plan: it reads keys, times, ids and aggregated
fields from the raw event dicts by the names the definition gives, so a getter reading the
wrong field (or a schema position off by one) shows as a wrong value.
"""

from __future__ import annotations

import math
import random
import statistics
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from features.definitions import (
    MS_PER_DAY,
    MS_PER_HOUR,
    MS_PER_MINUTE,
    Aggregation,
    Entity,
    FeatureSet,
    Op,
)
from features.native import NativeLayout
from features.plan import compile_plan
from features.reference_codec import StateCodec
from features.reference_engine import Engine, Outcome, QueryTooOldError, txid_hash
from features.schema import EventSchema, Field, FieldType, InvalidEventError
from flows.backfill import BackfillReport, compute_features, load_events
from tests.features.random_definitions import (
    UNKNOWN_KEY,
    Case,
    definitions,
    histories,
    np_input,
)

_ARROW = {
    FieldType.STRING: pa.string(),
    FieldType.INT64: pa.int64(),
    FieldType.FLOAT64: pa.float64(),
    FieldType.BOOL: pa.bool_(),
    FieldType.TIMESTAMP: pa.int64(),  # epoch ms
}


def to_table(schema: EventSchema, rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table(
        {f.name: pa.array([r.get(f.name) for r in rows], _ARROW[f.type]) for f in schema.fields}
    )


# -- brute force, straight from DESIGN.md -------------------------------------------------


def brute_accept(case: Case, entity: str, events: list[dict]) -> tuple[list[int], set[int]]:
    """(indexes ``entity`` counts, indexes too late for it), in arrival order: the first copy
    per (key, event id), unless older than the key's newest counted event minus the largest
    W + H of the entity's windows plus the exact-query horizon."""
    fs = case.fs
    jk = fs.entity(entity).join_key
    spans = [a.window.length_ms + a.window.hop_ms for a in fs.for_entity(entity) if a.window]
    lateness = max(spans) + fs.exact_horizon // timedelta(milliseconds=1) if spans else None
    seen: set[tuple[int, str]] = set()
    newest: dict[int, int] = {}
    counted, late = [], set()
    for i, e in enumerate(events):
        key, ts = e[jk], e[case.event_time]
        if (key, e[case.event_id]) in seen:
            continue
        seen.add((key, e[case.event_id]))
        if lateness is not None and key in newest and ts < newest[key] - lateness:
            late.add(i)
            continue
        newest[key] = max(newest.get(key, ts), ts)
        counted.append(i)
    return counted, late


def brute_value(case: Case, agg: Aggregation, mine: list[dict], t: int) -> float | int:
    """``agg`` at query time ``t`` over one key's counted events."""
    times = [e[case.event_time] for e in mine]
    if agg.op is Op.SINCE_LAST:
        before = [ts for ts in times if ts < t]
        return (t - max(before)) / 1000 if before else math.nan
    assert agg.window is not None
    w, h = agg.window.length_ms, agg.window.hop_ms
    lo = (t // h) * h - w
    inside = [e for e, ts in zip(mine, times, strict=True) if lo <= ts < t]
    if agg.op is Op.COUNT:
        return len(inside)
    xs = [float(e[agg.field]) for e in inside]
    if agg.op is Op.SUM:
        return math.fsum(xs)
    if not xs:
        return math.nan
    if agg.op is Op.MEAN:
        return math.fsum(xs) / len(xs)
    if agg.op is Op.MIN:
        return min(xs)
    if agg.op is Op.MAX:
        return max(xs)
    return statistics.pstdev(xs)


def scale_of(case: Case, agg: Aggregation, mine: list[dict], t: int) -> float:
    """Σ|x| of the window (sum: the condition of the problem) or max |x| (mean, std)."""
    if agg.window is None or agg.field is None:
        return 0.0
    lo = (t // agg.window.hop_ms) * agg.window.hop_ms - agg.window.length_ms
    xs = [abs(float(e[agg.field])) for e in mine if lo <= e[case.event_time] < t]
    return (math.fsum(xs) if agg.op is Op.SUM else max(xs, default=0.0)) * 1e-9


def same(got: Any, want: Any) -> bool:
    """Identical value: the same float (NaN equals NaN), an int equal to an int."""
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    return type(got) is type(want) and got == want


def close(op: Op, got: Any, want: Any, abs_tol: float) -> bool:
    """The contract: count/min/max/seconds-since-last exact, sum/mean/std to 1e-9."""
    if op is Op.COUNT:
        return isinstance(got, int) and got == want
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if op in (Op.MIN, Op.MAX, Op.SINCE_LAST):
        return got == want
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=abs_tol)


# -- the property -------------------------------------------------------------------------


def spine_rows(case: Case, valid: list[dict], rnd: random.Random) -> list[dict]:
    """Query rows: the events themselves, then shifted in time (hop edges, just before and
    after, far ahead, far behind) and with other or unknown keys."""
    hops = sorted({a.window.hop_ms for a in case.fs.aggregations if a.window}) or [MS_PER_HOUR]
    rows = [dict(e) for e in valid[:12]]
    for _ in range(12):
        row = dict(rnd.choice(valid))
        t, hop = row[case.event_time], rnd.choice(hops)
        row[case.event_time] = rnd.choice(
            [
                t - 1,
                t + 1,
                (t // hop) * hop,
                (t // hops[-1] + 1) * hops[-1],
                t + rnd.randrange(3 * MS_PER_HOUR),
                t + 9 * MS_PER_DAY,
                t - 30 * MS_PER_MINUTE,
                t - 2 * MS_PER_DAY,
            ]
        )
        if rnd.random() < 0.4:
            row[rnd.choice(case.keys)] = rnd.choice([0, 1, 2, UNKNOWN_KEY])
        rows.append(row)
    return rows


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_random_definitions_agree_on_every_path(data: st.DataObject) -> None:
    case = data.draw(definitions(), label="definitions")
    arrival = data.draw(histories(case), label="arrival")
    fs = case.fs
    plan = compile_plan(fs)
    names = fs.schema.names

    # 4. validation: one event at a time and the whole table reject the same rows, and
    # name the same (first broken, in schema order) field
    valid_raw, records, broken = [], [], {}
    for i, raw in enumerate(arrival):
        try:
            records.append(plan.validator.validate(raw))
        except InvalidEventError as exc:
            broken[i] = str(exc).split(":")[0]
        else:
            valid_raw.append(raw)
    table = to_table(fs.schema, arrival)
    valid_table, rejects = plan.validator.validate_table(table)
    reasons = [r.split(":")[0] for r in rejects.column("reason").to_pylist()]
    assert dict(zip(rejects.column("row").to_pylist(), reasons, strict=True)) == broken
    assert valid_table.column("row").to_pylist() == [
        i for i in range(len(arrival)) if i not in broken
    ]
    for raw, rec in zip(valid_raw, records, strict=True):
        assert tuple(rec) == tuple(raw[n] for n in names)
    if not valid_raw:
        return

    report = BackfillReport()
    _, accepted, bf_rejects, late = load_events(fs, table, report)
    assert bf_rejects.column("row").to_pylist() == sorted(broken)

    rnd = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    spine = spine_rows(case, valid_raw, rnd)
    out = compute_features(fs, to_table(fs.schema, spine), accepted)
    assert out.column_names == [*names, *fs.feature_names]
    got_bf = {n: out.column(n).to_pylist() for n in fs.feature_names}

    counted_by: dict[str, dict[int, list[dict]]] = {}
    late_by: dict[int, list[str]] = {}
    window_values: list[list[list[float]]] = [[] for _ in spine]
    for ep in plan.entities:
        jk = ep.join_key
        counted, too_late = brute_accept(case, ep.name, valid_raw)
        for i in too_late:
            late_by.setdefault(i, []).append(ep.name)
        mine: dict[int, list[dict]] = {}
        for i in counted:
            mine.setdefault(valid_raw[i][jk], []).append(valid_raw[i])
        counted_by[ep.name] = mine

        # 2. the plan's getters read the key and the fields the definition names
        for raw, rec in zip(valid_raw, records, strict=True):
            assert ep.key(rec) == raw[jk]
            want_values = tuple(float(raw[f]) for f in ep.layout.fields if f in names)
            assert ep.values(rec) == (want_values or (0.0,))

        # 1a. Python engine and native core, in arrival order, decide the same events
        py, nat = Engine(plan.fs).layout(ep.name), NativeLayout(ep.layout)
        py_states: dict[int, Any] = {}
        nat_states: dict[int, Any] = {}
        applied = []
        for i, rec in enumerate(records):
            key, ts, h = ep.key(rec), plan.event_time(rec), txid_hash(plan.event_id(rec))
            ps = py_states.setdefault(key, py.new_state())
            ns = nat_states.setdefault(key, nat.new_state())
            outcome = py.update(ps, ts, ep.values(rec), h)
            assert nat.update(ns, ts, ep.values(rec), h) is outcome, (ep.name, i)
            if outcome is Outcome.APPLIED:
                applied.append(i)
        assert applied == counted, ep.name
        # ... and so does the backfill (file order, per entity)
        acc = accepted.by_entity[ep.name]
        assert list(zip(acc.keys.tolist(), acc.txids.to_pylist(), strict=True)) == [
            (valid_raw[i][jk], valid_raw[i][case.event_id]) for i in counted
        ]
        assert report.by_entity[ep.name]["late"] == len(too_late)

        # 1b. every query row: backfill == brute force; Python == native (same repr) ==
        # brute force where the state can answer exactly
        aggs = fs.for_entity(ep.entity)
        for r, row in enumerate(spine):
            key, t = row[jk], row[case.event_time]
            events = mine.get(key, [])
            want = [brute_value(case, a, events, t) for a in aggs]
            tol = [scale_of(case, a, events, t) for a in aggs]
            bf = [got_bf[a.name][r] for a in aggs]
            where = f"{ep.name}={key} t={t}"
            for a, g, w, tl in zip(aggs, bf, want, tol, strict=True):
                assert close(a.op, g, w, tl), f"backfill {a.name} {where}: {g} != {w}"
            window_values[r].append([float(v) for v in bf])
            ps = py_states.get(key, py.new_state())
            ns = nat_states.get(key, nat.new_state())
            if ps.max_seen is not None and t < ps.max_seen - py.horizon_ms:
                continue
            event("engine query")
            eng = py.finalize(ps, t)
            assert [repr(v) for v in nat.finalize(ns, t)] == [repr(v) for v in eng], where
            for a, g, w, tl in zip(aggs, eng, want, tol, strict=True):
                assert close(a.op, g, w, tl), f"engine {a.name} {where}: {g} != {w}"
        codec = StateCodec(py)
        for key, ps in py_states.items():
            oldest = ps.max_seen - py.horizon_ms
            for layout, s in ((py, ps), (nat, nat_states[key])):
                try:
                    layout.finalize(s, oldest - 1)
                    raise AssertionError(f"{ep.name}={key}: a query too old must be refused")
                except QueryTooOldError:
                    pass
            py.compact(ps)
            if ps.ids and ps.max_seen - min(ps.ids.values()) > 2**32 - 1:
                continue  # ids kept forever, beyond u32 offsets: test_ids_of_entity_without_windows
            assert nat.encode(nat_states[key]) == codec.encode(ps), f"{ep.name}={key} bytes"

    event(f"late rows: {min(len(late_by), 3)}")
    event(f"duplicates: {min(report.duplicates, 3)}")
    event(f"invalid rows: {min(len(broken), 3)}")
    event(f"entities: {len(fs.entities)}, aggregations: {len(fs.aggregations)}")
    # the late output names exactly the entities each event was too late for
    assert dict(
        zip(late.column("row").to_pylist(), late.column("late_for").to_pylist(), strict=True)
    ) == {int(valid_table.column("row")[i].as_py()): ",".join(v) for i, v in late_by.items()}

    # 3. request features: the one-event path == the backfill column; both == the function
    # applied to the raw field and the brute-force window value
    brute_window: list[dict[str, float]] = []
    for row in spine:
        values = {}
        for ep in plan.entities:
            mine = counted_by[ep.name].get(row[ep.join_key], [])
            for a in fs.for_entity(ep.entity):
                values[a.name] = float(brute_value(case, a, mine, row[case.event_time]))
        brute_window.append(values)
    for r, row in enumerate(spine):
        one = plan.request_one(plan.validator.validate(row), window_values[r])
        for rf, got in zip(fs.request, one, strict=True):
            col = got_bf[rf.name][r]
            assert same(float(col), got), f"{rf.name} row {r}: backfill {col} != one {got}"
            args = [np_input(brute_window[r].get(n, row.get(n))) for n in rf.inputs]
            with np.errstate(all="ignore"):
                want = float(rf.fn(*args))
            scale = 1e-8 * sum(abs(float(x)) for x in args if np.isfinite(x))
            assert (math.isnan(want) and math.isnan(got)) or math.isclose(
                got, want, rel_tol=1e-8, abs_tol=scale
            ), f"{rf.name} row {r}: {got} != {want} ({rf.inputs} = {args})"


# -- product bugs found by the property above (strict: a fix turns them into failures) ----


def _one_key_schema() -> EventSchema:
    return EventSchema(
        (
            Field("eid", FieldType.STRING),
            Field("ts", FieldType.TIMESTAMP),
            Field("user_id", FieldType.INT64),
        ),
        "eid",
        "ts",
    )


def test_two_seconds_since_last_on_one_entity_are_refused():
    user = Entity("user", "user_id")
    with pytest.raises(ValueError, match="user has more than one seconds_since_last"):
        FeatureSet(
            schema=_one_key_schema(),
            entities=(user,),
            primary=user,
            aggregations=(
                Aggregation(user, Op.SINCE_LAST, alias="since_a"),
                Aggregation(user, Op.SINCE_LAST, alias="since_b"),
            ),
        )


def test_an_entity_without_windows_is_refused():
    # no window: no event is ever too late, so the dedup ids could never be compacted
    user = Entity("user", "user_id")
    with pytest.raises(ValueError, match="user has no windowed aggregation"):
        FeatureSet(
            schema=_one_key_schema(),
            entities=(user,),
            primary=user,
            aggregations=(Aggregation(user, Op.SINCE_LAST),),
        )
