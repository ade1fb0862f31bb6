"""The native tiles' exact sums live inline (``s1`` in an i128, ``s2`` in 192 bits) while
they fit and in big integers after the first add that would not. Around and past that
boundary, negative sums too, the core must give the Python reference's state bytes and
values, and its snapshot must carry the reference's exact sums byte for byte."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.native import NativeLayout
from features.reference import REFERENCE
from features.reference_codec import StateCodec
from features.reference_engine import Engine, txid_hash

PY = Engine(REFERENCE).layout("card")
CODEC = StateCodec(PY)
NAT = NativeLayout(PY)
T0 = 1_767_225_600_000
NF = len(PY.fields)


def snapshot_tiles(data: bytes) -> list[list[tuple]]:
    """Per level, ``(bucket, n, k, d, min, max, s1, s2)`` per tile, from a native
    snapshot (``engine.rs``: ``snapshot``)."""
    pos = 2 + 4 + 1 + 8 + 8

    def take(fmt: str) -> tuple:
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    def big() -> int:
        nonlocal pos
        (n,) = take("I")
        v = int.from_bytes(data[pos : pos + n], "little", signed=True)
        pos += n
        return v

    (n_raw,) = take("I")
    pos += n_raw * 8 * (1 + NF)
    (n_ids,) = take("I")
    pos += n_ids * 16
    levels = []
    for _ in PY.hops:
        (count,) = take("I")
        level = []
        for _ in range(count):
            (bucket,) = take("q")
            for _ in range(NF):
                n, k, d, mn, mx = take("QQQdd")
                level.append((bucket, n, k, d, mn, mx, big(), big()))
        levels.append(level)
    assert pos == len(data)
    return levels


def reference_tiles(state) -> list[list[tuple]]:
    return [
        [
            (b, t[0], t[3], t[6], t[4], t[5], t[1], t[2])
            for b, tiles in sorted(level.items())
            for t in tiles
        ]
        for level in state.levels
    ]


def bits(values: list) -> list[str]:
    return [f"{type(v).__name__}:{v!r}" for v in values]


def check_same(ps, ns) -> None:
    """Bytes, values and exact sums of the reference state ``ps`` and the native ``ns``."""
    assert NAT.encode(ns) == CODEC.encode(ps)
    t = (ps.max_seen or 0) + 1
    assert bits(NAT.finalize(ns, t)) == bits(PY.finalize(ps, t))
    snap = NAT.snapshot(ns)
    assert snapshot_tiles(snap) == reference_tiles(ps)
    restored = NAT.restore(snap)
    assert NAT.snapshot(restored) == snap
    assert NAT.encode(restored) == CODEC.encode(ps)


def feed(values: list[float], times: list[int] | None = None):
    """Both engines fed ``values`` (1 ms apart, so one tile per level, unless ``times``),
    checked after each event; returns both states."""
    ps, ns = PY.new_state(), NAT.new_state()
    for i, x in enumerate(values):
        ts = T0 + i if times is None else times[i]
        h = txid_hash(f"t{i}")
        assert NAT.update(ns, ts, (x,), h) is PY.update(ps, ts, (x,), h)
        check_same(ps, ns)
    return ps, ns


@pytest.mark.parametrize(
    ("values", "spill_at"),
    [
        # s2 = 4 * 2^190 = 2^192: one past the inline s2
        ([2.0**95] * 5, 3),
        ([-(2.0**95)] * 5, 3),
        # s1 stays at 0 or 2^94; s2 = 16 * 2^188 = 2^192
        ([2.0**94, -(2.0**94)] * 10, 15),
        # the exponent: 2^-37 shifts s2 = 2^120 by 74 bits, past 192 (s1 = 2^97 fits)
        ([2.0**60, 2.0**-37], 1),
        # 1.0 then 2^-1000 shifts s1 by 1000 bits
        ([1.0, 2.0**-1000, 3.0], 1),
        # a numerator past 126 bits never goes inline
        ([1e38, 1.0], 0),
        # cents up to the simulator's largest amount: never spill
        ([12.34, 0.01, 9_999_999.99, 5.0, 0.07, -3.5], None),
        # subnormal sums round once, as Python's division does
        ([2.2250738585e-313, 5e-324, -1e-320], None),
    ],
)
def test_the_overflow_boundary_keeps_bytes_and_values(values, spill_at):
    """``spill_at``: the index of the first event that no longer fits inline."""
    ps, ns = PY.new_state(), NAT.new_state()
    for i, x in enumerate(values):
        ts = T0 + i  # one tile per level
        h = txid_hash(f"t{i}")
        assert NAT.update(ns, ts, (x,), h) is PY.update(ps, ts, (x,), h)
        check_same(ps, ns)
        spilled = spill_at is not None and i >= spill_at
        # every level's tile took the event: all spill together, or none
        assert ns.n_big_tiles == (len(PY.hops) if spilled else 0), (i, x)


def test_restored_and_continued_past_the_boundary():
    """A snapshot taken inline restores inline, then goes past the boundary; a snapshot
    of big-integer sums restores as big integers and continues exactly."""
    ps, ns = feed([2.0**95] * 3)
    ns = NAT.restore(NAT.snapshot(ns))
    assert ns.n_big_tiles == 0
    for i, x in enumerate([2.0**95, -(2.0**96), 1.0]):
        ts, h = T0 + 10 + i, txid_hash(f"u{i}")
        assert NAT.update(ns, ts, (x,), h) is PY.update(ps, ts, (x,), h)
        check_same(ps, ns)
    assert ns.n_big_tiles == len(PY.hops)
    ns = NAT.restore(NAT.snapshot(ns))
    assert ns.n_big_tiles == len(PY.hops)
    ts, h = T0 + 20, txid_hash("w")
    assert NAT.update(ns, ts, (2.5,), h) is PY.update(ps, ts, (2.5,), h)
    check_same(ps, ns)


def test_bootstrap_tiles_rebuilt_from_bytes_continue_exactly():
    """Tiles rebuilt from state bytes (``d = n``) take more events inline and past the
    boundary, as the reference's rebuilt tiles do."""
    ps, ns = feed([0.1, 2.5, 1e9, 7.25])
    data = CODEC.encode(ps)
    ps, ns = CODEC.decode(data), NAT.decode(data)
    for i, x in enumerate([3.3, 2.0**120, -(2.0**124), 1e-300]):
        ts, h = T0 + 20 + i, txid_hash(f"v{i}")
        assert NAT.update(ns, ts, (x,), h) is PY.update(ps, ts, (x,), h)
        check_same(ps, ns)


_boundary = st.builds(
    lambda sign, e, m: sign * m * 2.0**e,
    st.sampled_from([1.0, -1.0]),
    st.integers(-1074, 200),
    st.sampled_from([1.0, 3.0, 1.5, float(2**53 - 1)]),
)
_values = st.one_of(
    st.floats(-(2.0**200), 2.0**200, allow_nan=False, allow_subnormal=True),
    _boundary,
    st.integers(1, 10**9).map(lambda c: c / 100),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_values, st.integers(0, 2 * 3_600_000)), min_size=1, max_size=30))
def test_any_magnitudes_match_the_reference(events):
    values = [x for x, _ in events]
    times = [T0 + dt for _, dt in events]
    assert all(math.isfinite(x) for x in values)
    feed(values, times)
