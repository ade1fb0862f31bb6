"""Property tests: engine (update in arrival order, finalize at t) == vectorized backfill
== a brute-force reference written here from DESIGN.md, for random histories with
out-of-order arrival, duplicates, ties on hop boundaries, long gaps, too-late and invalid
events."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.backfill import accept, window_features
from features.definitions import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, Op
from features.reference import REFERENCE, Event
from features.reference_codec import StateCodec
from features.reference_engine import Engine, Outcome, QueryTooOldError, txid_hash
from features.schema import InvalidEventError
from features.validate import Validator
from flows.simulate import EVENT_SCHEMA

FS = REFERENCE
ENGINE = Engine(FS)
VALIDATOR = Validator(FS.schema)
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

# -- brute force, straight from DESIGN.md ----------------------------------------------


def brute_accept(events: list[dict], entity: str) -> tuple[list[dict], int, int]:
    """What ``entity`` counts (DESIGN.md: each entity decides on its own events): the first
    copy of each (key, id), unless older than the key's newest counted event minus W+H."""
    layout = ENGINE.layout(entity)
    jk = layout.entity.join_key
    seen: dict[int, set[str]] = {}
    max_seen: dict[int, int] = {}
    lateness = layout.lateness_ms
    assert lateness is not None
    out, dups, late = [], 0, 0
    for e in events:
        key = e[jk]
        if e["transaction_id"] in seen.setdefault(key, set()):
            dups += 1
            continue
        seen[key].add(e["transaction_id"])
        if key in max_seen and e["ts"] < max_seen[key] - lateness:
            late += 1
            continue
        max_seen[key] = max(max_seen.get(key, e["ts"]), e["ts"])
        out.append(e)
    return out, dups, late


def brute_value(agg, events: list[dict], key: int, t: int) -> float:
    mine = [e for e in events if e[agg.entity.join_key] == key]
    if agg.op is Op.SINCE_LAST:
        before = [e["ts"] for e in mine if e["ts"] < t]
        return (t - max(before)) / 1000 if before else math.nan
    w, h = agg.window.length_ms, agg.window.hop_ms
    lo = (t // h) * h - w
    xs = [e["amount"] for e in mine if lo <= e["ts"] < t]
    if agg.op is Op.COUNT:
        return len(xs)
    if agg.op is Op.SUM:
        return math.fsum(xs)
    if not xs:
        return math.nan
    return {
        Op.MEAN: lambda: math.fsum(xs) / len(xs),
        Op.MAX: lambda: max(xs),
        Op.MIN: lambda: min(xs),
        Op.STD: lambda: statistics.pstdev(xs),
    }[agg.op]()


def assert_same(name: str, op: Op, got: float, want: float, scale: float, where: str) -> None:
    if isinstance(want, float) and math.isnan(want):
        assert isinstance(got, float) and math.isnan(got), f"{name} {where}: {got} != NaN"
        return
    if op in (Op.COUNT, Op.MIN, Op.MAX):
        assert got == want, f"{name} {where}: {got} != {want}"
    else:
        tol = 1e-9 * scale if op is Op.STD else 0.0
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=tol), (
            f"{name} {where}: {got} != {want}"
        )


# -- generated histories ---------------------------------------------------------------

_EDGES = [0, MS_PER_MINUTE, 5 * MS_PER_MINUTE, MS_PER_HOUR, MS_PER_DAY]


@st.composite
def histories(draw):
    n = draw(st.integers(1, 40))
    t = T0
    events = []
    for i in range(n):
        step = draw(
            st.one_of(
                st.sampled_from([0, 1, 59_999, 60_000, 300_000, 3_600_000]),
                st.integers(0, 3 * MS_PER_HOUR),
                st.sampled_from([11 * MS_PER_DAY, 2 * MS_PER_DAY]),  # gaps longer than every window
            )
        )
        t += step
        edge = draw(st.sampled_from(_EDGES))
        ts = (t // edge) * edge if edge and draw(st.booleans()) else t
        amount = draw(st.integers(1, 10**9)) / 100
        events.append(
            {
                "transaction_id": f"x{i}",
                "card_id": draw(st.integers(0, 2)),
                "merchant_id": draw(st.integers(0, 1)),
                "amount": amount,
                "currency": "EUR",
                "country": "FR",
                "mcc": 5411,
                "event_time": ts,
            }
        )
    # out-of-order arrival: some events move back, some far back (too late)
    arrival = list(events)
    rnd = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(0, n))):
        i = rnd.randrange(len(arrival))
        j = max(0, i - rnd.choice([1, 2, 5, 40]))
        arrival.insert(j, arrival.pop(i))
    for _ in range(draw(st.integers(0, 5))):  # exact-copy duplicates, later in the stream
        i = rnd.randrange(len(arrival))
        arrival.insert(rnd.randrange(i, len(arrival) + 1), dict(arrival[i]))
    for k in range(draw(st.integers(0, 3))):  # invalid events
        bad = dict(rnd.choice(arrival), transaction_id=f"bad{k}")
        bad.update(
            rnd.choice([{"amount": -1.0}, {"currency": "eur"}, {"mcc": 10_000}, {"card_id": -3}])
        )
        arrival.insert(rnd.randrange(len(arrival) + 1), bad)
    return arrival


def valid_only(arrival: list[dict]) -> list[tuple[dict, Event]]:
    """The events ``validate_event`` accepts, with their parsed form, in arrival order."""
    out = []
    for e in arrival:
        try:
            out.append((e, VALIDATOR.validate(e)))
        except InvalidEventError:
            continue
    return out


def to_table(events: list[dict]) -> pa.Table:
    cols = {k: [e[k] for e in events] for k in events[0]}
    schema = pa.schema([f for f in EVENT_SCHEMA if f.name != "is_fraud"])
    schema = schema.set(schema.get_field_index("event_time"), pa.field("event_time", pa.int64()))
    return pa.table(cols, schema=schema)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_engine_backfill_and_brute_force_agree(arrival, data):
    # validation: both paths reject the same rows
    parsed = [{**e, "ts": ev.event_time_ms} for e, ev in valid_only(arrival)]
    valid, rejects = VALIDATOR.validate_table(to_table(arrival))
    assert valid.num_rows == len(parsed) and rejects.num_rows == len(arrival) - len(parsed)

    scale = max(e["amount"] for e in parsed) if parsed else 1.0
    states: dict[str, dict] = {"card": {}, "merchant": {}}
    for entity in ("card", "merchant"):
        layout = ENGINE.layout(entity)
        jk = layout.entity.join_key
        accepted, dups, late = brute_accept(parsed, entity)
        # engine path: arrival order, this entity decides on its own events
        engine_accepted = []
        for e in parsed:
            s = states[entity].setdefault(e[jk], layout.new_state())
            outcome = layout.update(s, e["ts"], (e["amount"],), txid_hash(e["transaction_id"]))
            if outcome is Outcome.APPLIED:
                engine_accepted.append(e)
        assert [e["transaction_id"] for e in engine_accepted] == [
            e["transaction_id"] for e in accepted
        ]
        # backfill acceptance
        acc = accept(
            layout.lateness_ms,
            valid.column(jk).to_numpy(),
            valid.column("transaction_id").to_numpy(zero_copy_only=False),
            valid.column("event_time").cast(pa.int64()).to_numpy(),
        )
        assert int(acc.accepted.sum()) == len(accepted)
        assert int(acc.duplicate.sum()) + int(acc.late.sum()) == dups + late
        acc_rows = valid.filter(pa.array(acc.accepted))
        codec = StateCodec(layout)
        queries = []
        for key, state in states[entity].items():
            assert state.max_seen is not None
            oldest = state.max_seen - layout.horizon_ms
            for _ in range(3):
                t = data.draw(
                    st.one_of(
                        st.integers(oldest, state.max_seen + 2 * MS_PER_HOUR),
                        st.sampled_from(
                            [e["ts"] for e in accepted if e[jk] == key and e["ts"] >= oldest]
                            or [state.max_seen]
                        ),
                    )
                )
                queries.append((key, t))
            try:
                layout.finalize(state, oldest - 1)
                raise AssertionError("a query older than the horizon must be refused")
            except QueryTooOldError:
                pass
            # bytes round trip: same values, and canonical bytes
            assert codec.encode(codec.decode(codec.encode(state))) == codec.encode(state)
        if not queries:
            continue
        q_keys = np.array([k for k, _ in queries], dtype=np.int64)
        q_t = np.array([t for _, t in queries], dtype=np.int64)
        bf = window_features(
            FS,
            entity,
            acc_rows.column(jk).to_numpy(),
            acc_rows.column("event_time").cast(pa.int64()).to_numpy(),
            {"amount": acc_rows.column("amount").to_numpy()},
            q_keys,
            q_t,
        )
        for i, (key, t) in enumerate(queries):
            state = states[entity][key]
            eng = layout.finalize(state, t)
            blob = codec.encode(state)
            restored = layout.finalize(codec.decode(blob), t)
            # a decoded state (full or read-only) finalizes to the very same bits
            for variant in (restored, layout.finalize(codec.decode(blob, readonly=True), t)):
                assert [repr(x) for x in variant] == [repr(x) for x in eng]
            for pos, agg in enumerate(FS.for_entity(entity)):
                want = brute_value(agg, accepted, key, t)
                where = f"{entity}={key} t={t}"
                assert_same(agg.name, agg.op, eng[pos], want, scale, "engine " + where)
                assert_same(agg.name, agg.op, restored[pos], want, scale, "decoded " + where)
                got = bf[agg.name][i]
                got = int(got) if agg.op is Op.COUNT else float(got)
                assert_same(agg.name, agg.op, got, want, scale, "backfill " + where)


def test_merchant_state_bytes_do_not_depend_on_arrival_order():
    layout = ENGINE.layout("merchant")
    codec = StateCodec(layout)
    rnd = random.Random(3)
    events = [
        (T0 + rnd.randrange(0, 3 * MS_PER_DAY), rnd.randrange(1, 10**6) / 100) for _ in range(300)
    ]
    states = []
    for seed in range(3):
        order = list(events)
        random.Random(seed).shuffle(order)
        s = layout.new_state()
        for ts, x in order:
            layout.update(s, ts, (x,))
        states.append(codec.encode(s))
    assert states[0] == states[1] == states[2]


def test_empty_and_single_event_windows():
    layout = ENGINE.layout("card")
    s = layout.new_state()
    empty = dict(zip(layout.names, layout.finalize(s, T0), strict=True))
    assert empty["card_txn_count_1h"] == 0 and empty["card_amount_sum_24h"] == 0.0
    for name in (
        "card_amount_max_24h",
        "card_amount_mean_7d",
        "card_amount_std_7d",
        "card_seconds_since_last",
    ):
        assert math.isnan(empty[name])
    layout.update(s, T0, (42.0,), txid_hash("a"))
    one = dict(zip(layout.names, layout.finalize(s, T0 + 1500), strict=True))
    assert one == {
        "card_txn_count_10m": 1,
        "card_txn_count_1h": 1,
        "card_txn_count_24h": 1,
        "card_amount_sum_1h": 42.0,
        "card_amount_sum_24h": 42.0,
        "card_amount_max_24h": 42.0,
        "card_amount_mean_7d": 42.0,
        "card_amount_std_7d": 0.0,
        "card_seconds_since_last": 1.5,
    }
    # R2: three hours later the 1h window is empty although it was the last event
    later = dict(zip(layout.names, layout.finalize(s, T0 + 3 * MS_PER_HOUR), strict=True))
    assert later["card_txn_count_1h"] == 0 and later["card_txn_count_24h"] == 1


def test_window_tail_is_hop_aligned_and_head_exclusive():
    layout = ENGINE.layout("card")
    s = layout.new_state()
    # 1h window with 5m hop queried at 10:07 covers [09:05, 10:07)
    base = T0 + 10 * MS_PER_HOUR
    for i, ts in enumerate(
        [base - 62 * MS_PER_MINUTE, base - 55 * MS_PER_MINUTE, base + 7 * MS_PER_MINUTE]
    ):
        layout.update(s, ts, (1.0,), txid_hash(str(i)))
    t = base + 7 * MS_PER_MINUTE
    values = dict(zip(layout.names, layout.finalize(s, t), strict=True))
    # 09:05 is in (tail aligned to 09:05), 08:58 is out, 10:07 itself is out
    assert values["card_txn_count_1h"] == 1
