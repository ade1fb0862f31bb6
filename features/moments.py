"""The moments monoid every windowed op is finalized from.

A partial aggregate ("tile") holds, for one numeric field, ``n`` plus exact sums:
``s1 = Σx · 2^k`` and ``s2 = d · Σx² · 2^(2k)`` as Python integers, where ``k`` is the largest
binary exponent seen and ``d`` a denominator (1 unless the tile was rebuilt from bytes).
Integer sums are associative and commutative, so a tile's value does not depend on the
order events arrived in: two workers, a restart from a snapshot or a reshuffled Kafka
partition all produce the same bits. Finalize rounds once, correctly.

``empty()``, ``add(tile, x)``, ``merge(a, b)`` and ``finalize(tile, op)`` are the whole API.

>>> t = empty()
>>> for x in (0.1, 0.2, 0.3):
...     add(t, x)
>>> finalize(t, Op.SUM), finalize(t, Op.MEAN), finalize(t, Op.MAX)
(0.6, 0.2, 0.3)
>>> round(finalize(t, Op.STD), 12)
0.081649658093
>>> finalize(empty(), Op.COUNT), finalize(empty(), Op.SUM)
(0, 0.0)
"""

from __future__ import annotations

import math

from features.definitions import Op

# tile slots: [n, s1, s2, k, min, max, d]
N, S1, S2, K, MIN, MAX, D = range(7)
NAN = math.nan

Tile = list  # [int, int, int, int, float, float, int]


def empty() -> Tile:
    return [0, 0, 0, 0, math.inf, -math.inf, 1]


def exact(x: float) -> tuple[int, int]:
    """``x`` as ``(m, k)`` with ``x == m / 2**k`` exactly."""
    num, den = x.as_integer_ratio()
    return num, den.bit_length() - 1


def add(tile: Tile, x: float) -> None:
    """Add one value in place."""
    m, k = exact(x)
    tk = tile[K]
    if k > tk:
        shift = k - tk
        tile[S1] <<= shift
        tile[S2] <<= 2 * shift
        tile[K] = k
    elif k < tk:
        m <<= tk - k
    tile[N] += 1
    tile[S1] += m
    tile[S2] += m * m if tile[D] == 1 else tile[D] * m * m
    if x < tile[MIN]:
        tile[MIN] = x
    if x > tile[MAX]:
        tile[MAX] = x


def merge(into: Tile, other: Tile) -> None:
    """Merge ``other`` into ``into`` in place."""
    if not other[N]:
        return
    s1, s2, ok = other[S1], other[S2], other[K]
    tk = into[K]
    if ok > tk:
        shift = ok - tk
        into[S1] <<= shift
        into[S2] <<= 2 * shift
        into[K] = ok
    elif ok < tk:
        s1 <<= tk - ok
        s2 <<= 2 * (tk - ok)
    da, db = into[D], other[D]
    if da != db:
        d = math.lcm(da, db)
        into[S2] *= d // da
        s2 *= d // db
        into[D] = d
    into[N] += other[N]
    into[S1] += s1
    into[S2] += s2
    if other[MIN] < into[MIN]:
        into[MIN] = other[MIN]
    if other[MAX] > into[MAX]:
        into[MAX] = other[MAX]


def total(tile: Tile) -> float:
    """Correctly rounded Σx (0.0 when empty)."""
    return tile[S1] / (1 << tile[K]) if tile[N] else 0.0


def m2(tile: Tile) -> float:
    """Correctly rounded Σ(x - mean)² (0.0 when empty)."""
    n = tile[N]
    if not n:
        return 0.0
    d = tile[D]
    return max((n * tile[S2] - d * tile[S1] * tile[S1]) / ((d * n) << (2 * tile[K])), 0.0)


def finalize(tile: Tile, op: Op) -> float | int:
    """The value of ``op`` over the tile; empty gives 0 for count/sum and NaN otherwise."""
    n = tile[N]
    if op is Op.COUNT:
        return n
    if op is Op.SUM:
        return total(tile)
    if not n:
        return NAN
    if op is Op.MEAN:
        return tile[S1] / (n << tile[K])
    if op is Op.MIN:
        return float(tile[MIN])
    if op is Op.MAX:
        return float(tile[MAX])
    if op is Op.STD:
        d = tile[D]
        var = (n * tile[S2] - d * tile[S1] * tile[S1]) / ((d * n * n) << (2 * tile[K]))
        return math.sqrt(var) if var > 0 else 0.0
    raise ValueError(f"op: {op} is not a tile op")


def from_summary(n: int, sum_: float, m2_: float, min_: float, max_: float) -> Tile:
    """Rebuild a tile exactly from its serialized summary (``n``, Σx, Σ(x-mean)², min, max):
    ``Σx² = m2 + (Σx)²/n``, kept exact with the denominator ``d = n``."""
    if not n:
        return empty()
    s1, k1 = exact(sum_)
    a, ka = exact(m2_)
    k = max(k1, (ka + 1) // 2)
    s1 <<= k - k1
    s2 = n * (a << (2 * k - ka)) + s1 * s1
    return [n, s1, s2, k, min_, max_, n]
