"""A state's raw events (those at or past its raw floor) in one vector, a time and its
values per event, instead of a vector of times beside a vector of values: one growth and
one allocation per state fewer (session 10 of perf-plan's stream, second round). The order
(time, then values on a tie), the compaction and the bytes stay the reference's."""

from __future__ import annotations

import random

from features.definitions import MS_PER_HOUR
from features.native import NativeLayout
from features.reference import REFERENCE
from features.reference_codec import StateCodec
from features.reference_engine import Engine, txid_hash

ENGINE = Engine(REFERENCE)
PY = ENGINE.layout("card")
CODEC = StateCodec(PY)
NAT = NativeLayout(PY)
T0 = 1_700_000_000_000


def test_a_new_state_holds_one_vector_for_its_raw_events() -> None:
    # heap_bytes counts the state's own struct: two optional times (32 B), the raw events'
    # vector (24), the ids (40), the levels' two vectors (48) and their ends (16 B + 4 per
    # level), the read-only flag and the field count (8); a second vector was 24 B more
    for name in ("card", "merchant"):
        state = NativeLayout(ENGINE.layout(name)).new_state()
        assert state.heap_bytes - 4 * len(state.n_tiles) == 152, name


def test_raw_events_keep_time_then_value_order_through_ties_and_compaction() -> None:
    rnd = random.Random(3)
    ps, ns = PY.new_state(), NAT.new_state()
    ts, most = T0, 0
    for k in range(400):
        ts += rnd.choice([0, 0, 1, 7, MS_PER_HOUR, 5 * MS_PER_HOUR])  # ties, then jumps
        when = ts - rnd.choice([0, 0, 0, 1, 3 * MS_PER_HOUR])  # some out of order
        amount = rnd.choice([1.0, 2.5, -0.0, 0.0, 2.5, 1e9, 0.01])
        tx = txid_hash(f"t{k}")
        assert NAT.update(ns, when, (amount,), tx) is PY.update(ps, when, (amount,), tx)
        assert ns.raw_ts == ps.raw_ts, k
        most = max(most, len(ps.raw_ts))
        if rnd.random() < 0.3:  # a row compacts: the raw head drops what the floor passed
            assert NAT.encode(ns) == CODEC.encode(ps), k
            assert ns.raw_ts == ps.raw_ts, k
            restored = NAT.restore(NAT.snapshot(ns))
            assert restored.raw_ts == ns.raw_ts
            assert NAT.encode(restored) == CODEC.encode(ps), k
    assert most > 20  # the raw head held many events at once, ties among them
