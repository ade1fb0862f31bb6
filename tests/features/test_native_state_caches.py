"""The native state's kept structures stay what a fresh state would hold: dedup ids kept in
the bytes' order (many ids, expiring, out of order, duplicates), all levels' tiles in one
pair of vectors (buckets opened in every level at once, filled out of order, expiring),
a tile's Σx and M2 cached apart. After every update: the bytes equal the reference
codec's, a decode of them encodes to the same bytes, and a snapshot restored continues
bit-equal."""

from __future__ import annotations

import random

import pytest

from features.definitions import MS_PER_DAY, MS_PER_HOUR
from features.native import NativeLayout
from features.reference import REFERENCE
from features.reference_codec import StateCodec
from features.reference_engine import Engine, txid_hash

ENGINE = Engine(REFERENCE)
PY = {e.name: ENGINE.layout(e.name) for e in REFERENCE.entities}
CODEC = {name: StateCodec(layout) for name, layout in PY.items()}
NAT = {name: NativeLayout(layout) for name, layout in PY.items()}


def _bits(values: list[float | int]) -> list[str]:
    return [f"{type(v).__name__}:{v!r}" for v in values]


def _history(rnd: random.Random, n: int) -> list[tuple[int, float, str]]:
    """One entity's events over 9 days, dense bursts (many ids at once, buckets opened in
    every level), late and early arrivals, repeated ids, tied times and values."""
    t0, out = 1_700_000_000_000, []
    t = t0
    for i in range(n):
        t += rnd.choice([1, 1000, 59_000, 61_000, 5 * 60_000, MS_PER_HOUR, 9 * MS_PER_HOUR])
        ts = t - rnd.choice([0, 0, 0, 30_000, 2 * MS_PER_HOUR, 3 * MS_PER_DAY, 8 * MS_PER_DAY])
        amount = rnd.choice([0.01, 12.34, 12.34, 1e7, 0.1 + i / 7])
        txid = f"t{i}" if rnd.random() > 0.1 else f"t{rnd.randrange(max(i, 1))}"
        out.append((ts, amount, txid))
    return out


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("entity", ["card", "merchant"])
def test_every_update_keeps_the_bytes_a_fresh_state_would_write(entity: str, seed: int) -> None:
    rnd = random.Random(seed)
    py, nat, codec = PY[entity], NAT[entity], CODEC[entity]
    ps, ns = py.new_state(), nat.new_state()
    restored = None
    for k, (ts, amount, txid) in enumerate(_history(rnd, 500)):
        tx = txid_hash(txid)
        want = py.update(ps, ts, (amount,), tx)
        assert nat.update(ns, ts, (amount,), tx) is want
        if restored is not None:
            assert nat.update(restored, ts, (amount,), tx) is want
        if rnd.random() < 0.5:  # a row: values, then the bytes (compaction timing varies)
            assert _bits(nat.as_of_last(ns)) == _bits(py.as_of_last(ps)), k
            blob = codec.encode(ps)
            assert nat.encode(ns) == blob, k
            assert nat.encode(nat.decode(blob)) == blob, k
            if restored is not None:
                assert nat.encode(restored) == blob, k
        if k % 97 == 0:
            restored = nat.restore(nat.snapshot(ns))
    assert ns.n_ids > 32  # the many-ids structure was exercised
    assert nat.encode(ns) == codec.encode(ps)
