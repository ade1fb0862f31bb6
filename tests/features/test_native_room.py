"""A state's room in its steady state: a card whose every event opens buckets as its row
expires as many, and remembers one dedup id as it forgets one, keeps the room it holds
instead of growing it at the update and giving it back at the row (two reallocations of
every tile per event: session 9 of perf-plan's stream, second round). Each step's bytes
and values stay the reference's."""

from __future__ import annotations

from features.definitions import MS_PER_DAY, MS_PER_HOUR
from features.native import NativeLayout
from features.reference import REFERENCE
from features.reference_codec import StateCodec
from features.reference_engine import Engine, txid_hash

ENGINE = Engine(REFERENCE)
PY = ENGINE.layout("card")
CODEC = StateCodec(PY)
NAT = NativeLayout(PY)
T0 = 1_700_000_000_000


def test_a_steady_card_keeps_its_room_through_update_and_row() -> None:
    ps, ns = PY.new_state(), NAT.new_state()
    step = 25 * MS_PER_HOUR + 7_000  # a new bucket in every level each time
    held: list[tuple[int, int]] = []  # (after the update, after the row), steady days
    for k in range(24 * MS_PER_DAY // step):
        ts, amount, tx = T0 + k * step, 10.0 + k % 7, txid_hash(f"t{k}")
        assert NAT.update(ns, ts, (amount,), tx) is PY.update(ps, ts, (amount,), tx)
        after_update = ns.heap_bytes
        assert [repr(v) for v in NAT.as_of_last(ns)] == [repr(v) for v in PY.as_of_last(ps)]
        blob = NAT.encode(ns)
        assert blob == CODEC.encode(ps), k
        if ts - T0 > 9 * MS_PER_DAY:  # past the 8-day id horizon and the 7-day window
            held.append((after_update, ns.heap_bytes, NAT.decode(blob).heap_bytes))
    assert len(held) > 10
    # steady: each event opens a bucket in each of the 4 levels where its row expires as
    # many, and adds one id where it forgets one: the room neither grows at the update
    # nor shrinks at the row, and holds at most one event (its raw time and value, its
    # id: 32 bytes) more than a state read from the bytes
    room = held[0][0]
    assert all(a == r == room for a, r, _ in held), held[:3]
    assert all(room - decoded <= 32 for _, _, decoded in held), held[:3]
