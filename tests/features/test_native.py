"""The native core (``native/``, Rust) against the Python reference engine: same update
outcomes, the same feature values bit for bit (ints stay ints), the same canonical state
bytes, and both read each other's bytes. Histories come from the property test's
generator (out of order, duplicates, ties on hop edges, long gaps, too-late events)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.definitions import MS_PER_DAY, MS_PER_HOUR
from features.native import NativeLayout
from features.reference import REFERENCE
from features.reference_codec import StateCodec
from features.reference_engine import Engine, QueryTooOldError, txid_hash
from flows.simulate import SimulationConfig, simulate
from tests.features.test_equivalence import T0, histories, valid_only

ENGINE = Engine(REFERENCE)
PY = {e.name: ENGINE.layout(e.name) for e in REFERENCE.entities}
CODEC = {name: StateCodec(layout) for name, layout in PY.items()}
NAT = {name: NativeLayout(layout) for name, layout in PY.items()}


def bits(values: list) -> list[str]:
    return [f"{type(v).__name__}:{v!r}" for v in values]


def run_both(events: list[tuple[int, float, int, int, str]], rnd: random.Random):
    """Feed (ts, amount, card, merchant, txid) to both engines, card first; compare each
    outcome, encode at random points (compaction timing must not show)."""
    py_states: dict[tuple[str, int], object] = {}
    nat_states: dict[tuple[str, int], object] = {}
    for ts, amount, card, merchant, txid in events:
        h = txid_hash(txid)
        for entity, key, tx in (("card", card, h), ("merchant", merchant, None)):
            ps = py_states.setdefault((entity, key), PY[entity].new_state())
            ns = nat_states.setdefault((entity, key), NAT[entity].new_state())
            out_py = PY[entity].update(ps, ts, (amount,), tx)
            out_nat = NAT[entity].update(ns, ts, (amount,), tx)
            assert out_py is out_nat, (entity, key, ts)
            if rnd.random() < 0.2:
                assert NAT[entity].encode(ns) == CODEC[entity].encode(ps)
            if entity == "card" and out_py.name != "APPLIED":
                break
    return py_states, nat_states


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_native_matches_python_engine(arrival, data):
    events = [
        (ev.event_time_ms, ev.amount, ev.card_id, ev.merchant_id, ev.transaction_id)
        for _, ev in valid_only(arrival)
    ]
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    py_states, nat_states = run_both(events, rnd)
    for (entity, key), ps in py_states.items():
        py, nat, codec = PY[entity], NAT[entity], CODEC[entity]
        ns = nat_states[(entity, key)]
        assert ns.max_seen == ps.max_seen
        oldest = ps.max_seen - py.horizon_ms
        times = [oldest, ps.max_seen, ps.max_seen + 1, ps.max_seen + 3 * MS_PER_HOUR]
        times += [data.draw(st.integers(oldest, ps.max_seen + 2 * MS_PER_DAY)) for _ in range(3)]
        blob = codec.encode(ps)
        assert nat.encode(ns) == blob
        for t in times:
            want = bits(py.finalize(ps, t))
            assert bits(nat.finalize(ns, t)) == want
            # each reads the other's bytes, fully or read-only
            assert bits(nat.finalize(nat.decode(blob), t)) == want
            assert bits(nat.finalize(nat.decode(blob, readonly=True), t)) == want
            assert bits(nat.core.features(blob, t)) == want
        assert bits(nat.as_of_last(ns)) == bits(py.as_of_last(ps))
        with pytest.raises(QueryTooOldError, match="event_time"):
            nat.finalize(ns, oldest - 1)
        # bootstrap path: decoded (rebuilt from summaries) states keep agreeing under updates
        pd, nd = codec.decode(blob), nat.decode(blob)
        # snapshot path: exact sums survive, so a restored state continues bit-equal
        restored = nat.restore(nat.snapshot(ns))
        for i in range(5):
            ts = ps.max_seen - rnd.randrange(0, 2 * MS_PER_HOUR) + rnd.randrange(0, MS_PER_HOUR)
            x = rnd.randrange(1, 10**7) / 100
            tx = txid_hash(f"more{i}") if py.primary else None
            assert py.update(pd, ts, (x,), tx) is nat.update(nd, ts, (x,), tx)
            assert py.update(ps, ts, (x,), tx) is nat.update(restored, ts, (x,), tx)
        assert nat.encode(nd) == codec.encode(pd)
        assert nat.encode(restored) == codec.encode(ps)


def test_native_matches_on_a_simulated_stream():
    table = simulate(SimulationConfig(events=20_000, cards=300, merchants=40, days=9.0, seed=11))
    rows = table.to_pylist()
    events = [
        (int(r["event_time"].timestamp() * 1000), r["amount"], r["card_id"], r["merchant_id"],
         r["transaction_id"])
        for r in rows
    ]  # fmt: skip
    random.Random(1).shuffle(events[::7])  # some disorder
    py_states, nat_states = run_both(events, random.Random(2))
    for (entity, key), ps in py_states.items():
        ns = nat_states[(entity, key)]
        assert NAT[entity].encode(ns) == CODEC[entity].encode(ps)
        assert bits(NAT[entity].as_of_last(ns)) == bits(PY[entity].as_of_last(ps))


def test_native_many_rows_is_row_by_row():
    nat = NAT["card"]
    s = nat.new_state()
    for i in range(50):
        nat.update(s, T0 + i * 97_000, (1.5 + i,), txid_hash(str(i)))
    blob = nat.encode(s)
    ts = [T0 + 50 * 97_000, T0 + 60 * 97_000]
    import numpy as np

    many = np.frombuffer(nat.core.features_many([blob, None], ts), dtype="<f8").reshape(2, -1)
    assert bits(many[0].tolist()) == bits([float(v) for v in nat.core.features(blob, ts[0])])
    assert bits(many[1].tolist()) == bits([float(v) for v in nat.core.features(None, ts[1])])
    with pytest.raises(ValueError) as info:
        nat.core.features_many([blob, blob], [ts[0], T0])
    index, exc = info.value.args
    assert index == 1 and isinstance(exc, QueryTooOldError)


def test_native_refuses_bad_bytes_like_the_codec():
    nat, codec = NAT["merchant"], CODEC["merchant"]
    s = nat.new_state()
    nat.update(s, T0, (3.5,))
    blob = nat.encode(s)
    for bad in (b"nope", blob[:-1], blob + b"\0", b"SK\x02" + blob[3:], NAT["card"].encode(
            NAT["card"].new_state())):  # fmt: skip
        with pytest.raises(ValueError) as want:
            codec.decode(bad)
        with pytest.raises(ValueError) as got:
            nat.decode(bad)
        assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match="snapshot"):
        nat.restore(nat.snapshot(s)[:-3])
    with pytest.raises(ValueError, match="read-only"):
        nat.update(nat.decode(blob, readonly=True), T0, (1.0,))
    with pytest.raises(ValueError, match="values"):
        nat.update(s, T0, (1.0, 2.0))


@given(st.text(max_size=80))
def test_native_txid_hash_is_the_engines(txid):
    from features.native import txid_hash_native

    assert txid_hash_native(txid) == txid_hash(txid)


@settings(deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=60), st.data())
def test_native_txid_hashes_are_the_engines(txids, data):
    """Whole columns at once (sliced, chunked, with nulls as the empty id, picked rows),
    and a column long enough to be hashed on several threads."""
    import pyarrow as pa

    from features.txids import txid_hashes

    arr = pa.chunked_array([pa.array(txids, pa.string())] * 2).slice(len(txids) // 2)
    want = [txid_hash(t or "") for t in arr.to_pylist()]
    assert txid_hashes(arr).tolist() == want
    assert txid_hashes(arr.cast(pa.large_string())).tolist() == want
    rows = data.draw(st.lists(st.integers(0, max(len(want) - 1, 0)), max_size=len(want)))
    assert txid_hashes(arr, np.array(rows, np.int64)).tolist() == [want[r] for r in rows]
    assert txid_hashes([t or "" for t in arr.to_pylist()]).tolist() == want


def test_native_txid_hashes_of_a_long_column_and_bad_ranges():
    from features.native import native
    from features.txids import txid_hashes

    ids = [f"t{i}" for i in range(200_000)]
    got = txid_hashes(ids)
    assert [int(got[i]) for i in (0, 77_777, 199_999)] == [
        txid_hash(ids[i]) for i in (0, 77_777, 199_999)
    ]
    body = np.frombuffer(b"abc", np.uint8)
    with pytest.raises(ValueError, match="outside the 3 data bytes"):
        native.txid_hashes(body, np.array([1], np.int64), np.array([4], np.int64))
    with pytest.raises(ValueError, match="one end per start"):
        native.txid_hashes(body, np.array([0, 1], np.int64), np.array([1], np.int64))


@pytest.mark.parametrize("repeat", [1, 20])  # the Python loop, then numpy (>= SMALL_OBSERVE)
def test_observe_many_is_observe(repeat: int):
    from prometheus_client import CollectorRegistry, Histogram

    from flows.stream_io import SMALL_OBSERVE, observe_many

    reg = CollectorRegistry()
    a = Histogram("a", "a", buckets=(0.01, 0.1, 1), registry=reg)
    b = Histogram("b", "b", buckets=(0.01, 0.1, 1), registry=reg)
    values = [0.0, 0.01, 0.010001, 0.05, 0.1, 0.5, 1.0, 3.0, 7.5] * repeat
    assert (len(values) < SMALL_OBSERVE) == (repeat == 1)
    for v in values:
        a.observe(v)
    observe_many(b, values)
    samples = {
        m.name: [
            (s.name[1:], s.labels.get("le"), s.value) for s in m.samples if "created" not in s.name
        ]
        for m in reg.collect()
    }
    assert samples["a"] == samples["b"]


def test_native_follows_a_new_feature_set():
    """Adding features (README: one edit) needs nothing native: the core is compiled from
    the layout. Ops, windows and fields the reference set lacks: card min, a card max over
    a second field (two values per event), merchant std, max over a new window, merchant
    seconds-since-last."""
    import dataclasses
    from datetime import timedelta

    from features.definitions import Aggregation, Op, Window
    from features.reference import CARD, MERCHANT, W1H, W24H

    fs = dataclasses.replace(
        REFERENCE,
        aggregations=(
            *REFERENCE.aggregations,
            Aggregation(CARD, Op.MIN, W24H, "amount"),
            Aggregation(CARD, Op.MAX, W24H, "mcc"),
            Aggregation(MERCHANT, Op.STD, W1H, "amount"),
            Aggregation(
                MERCHANT, Op.MAX, Window(timedelta(minutes=30), timedelta(minutes=5)), "amount"
            ),
            Aggregation(MERCHANT, Op.SINCE_LAST),
        ),
    )
    engine = Engine(fs)
    rnd = random.Random(1)
    for entity in ("card", "merchant"):
        py = engine.layout(entity)
        codec, nat = StateCodec(py), NativeLayout(py)
        for trial in range(60):
            ps, ns = py.new_state(), nat.new_state()
            t = T0
            for i in range(rnd.randint(1, 60)):
                t += rnd.choice(
                    [0, 1, 60_000, 300_000, rnd.randint(0, MS_PER_HOUR), 2 * MS_PER_DAY]
                )
                ts = t - rnd.choice([0, 0, 0, rnd.randint(0, 2 * MS_PER_HOUR)])
                x = tuple(rnd.randint(1, 10**7) / 100 for _ in py.fields)
                h = txid_hash(f"{trial}-{i}") if py.primary else None
                assert py.update(ps, ts, x, h) is nat.update(ns, ts, x, h)
            blob = codec.encode(ps)
            assert nat.encode(ns) == blob
            for _ in range(5):
                tq = ps.max_seen - py.horizon_ms + rnd.randint(0, 3 * MS_PER_HOUR)
                want = bits(py.finalize(ps, tq))
                assert bits(nat.finalize(ns, tq)) == want
                assert bits(nat.core.features(blob, tq)) == want


def test_native_owns_the_header():
    """The header is read and written by the Rust side only: max_seen of any layout's
    bytes, the full header of one layout, and headers for a vectorized writer."""
    from features.native import NativeLayout as NL

    nat, codec, py = NAT["card"], CODEC["card"], PY["card"]
    ps, ns = py.new_state(), nat.new_state()
    for i, ts in enumerate((T0, T0 + 5 * MS_PER_HOUR, T0 + 6 * MS_PER_DAY)):
        py.update(ps, ts, (2.5 + i,), txid_hash(str(i)))
        nat.update(ns, ts, (2.5 + i,), txid_hash(str(i)))
    blob = codec.encode(ps)
    assert NL.max_seen(blob) == ps.max_seen == T0 + 6 * MS_PER_DAY
    assert NL.max_seen(None) is None
    assert NL.max_seen(nat.encode(nat.new_state())) is None
    with pytest.raises(ValueError, match="not a skewless state"):
        NL.max_seen(b"SK\x01")
    head = nat.core.header(blob)
    assert (head.max_seen, head.last_before_raw) == (ps.max_seen, ps.last_before_raw)
    assert head.crc == codec.crc
    assert (head.n_raw, head.n_ids) == (len(ps.raw_ts), len(ps.ids))
    assert head.n_tiles == [len(level) for level in ps.levels]
    with pytest.raises(ValueError, match="other card definitions"):
        NAT["card"].core.header(NAT["merchant"].encode(NAT["merchant"].new_state()))
    empty = nat.encode(nat.new_state())
    size = nat.core.header_size
    headers = nat.core.encode_headers(
        [head.max_seen, None],
        [head.last_before_raw, None],
        [head.n_raw, 0],
        [head.n_ids, 0],
        [[n, 0] for n in head.n_tiles],
    )
    assert headers == blob[:size] + empty[:size]
    with pytest.raises(ValueError, match="one tile-count list per level"):
        nat.core.encode_headers([1], [None], [0], [0], [])


def test_native_ops_and_outcomes_come_from_one_enum():
    """The layout spec names ops and components; the Rust side knows every windowed op
    and refuses an unknown one by name."""
    import dataclasses

    from features.definitions import Op
    from features.layout import M2, MAX, MIN, SUM
    from features.native import CoreSpec, native
    from features.reference_engine import Outcome

    assert set(native.OPS) == {op.value for op in Op} - {Op.SINCE_LAST.value}
    assert tuple(native.COMPONENTS) == (SUM, M2, MIN, MAX)
    assert {Outcome(o) for o in native.OUTCOMES} == set(Outcome)
    spec = CoreSpec.of(PY["card"])
    g = spec.groups[0]
    bad = dataclasses.replace(g, outputs=((g.outputs[0][0], "median", 0),))
    with pytest.raises(ValueError, match="median"):
        native.Core(dataclasses.replace(spec, groups=(bad, *spec.groups[1:])), QueryTooOldError)
    with pytest.raises(ValueError, match="hops, keep and needs"):
        native.Core(dataclasses.replace(spec, keep=()), QueryTooOldError)
