"""The moments monoid every windowed op is finalized from.

A partial aggregate ("tile") holds, for one numeric field, ``n`` plus exact sums:
``s1 = Σx · 2^k`` and ``s2 = d · Σx² · 2^(2k)`` as Python integers, where ``k`` is the largest
binary exponent seen and ``d`` a denominator (1 unless the tile was rebuilt from bytes).
Integer sums are associative and commutative, so a tile's value does not depend on the
order events arrived in: two workers, a restart from a snapshot or a reshuffled Kafka
partition all produce the same bits. Finalize rounds once, correctly.

``empty()`` and ``add(tile, x)`` build a tile; ``summary(tile)`` (Σx and Σ(x-mean)², each
correctly rounded, cached) is what a window read and the state bytes take from it.

Reading a window merges many tiles: that is done in float64 from each tile's summary
with Chan's parallel update (``features.reference_engine`` inlines it), then ``acc_finalize``. A
tile rebuilt from bytes (``from_summary``) has the very same summary, so a decoded state
finalizes to the same bits as the live one.

>>> t = empty()
>>> for x in (0.1, 0.2, 0.3):
...     add(t, x)
>>> total(t), round(m2(t), 15)
(0.6, 0.02)
>>> acc = acc_empty()
>>> for x in (0.1, 0.2, 0.3):
...     acc_add(acc, x, need_m2=True)
>>> acc_finalize(acc, Op.MEAN), round(acc_finalize(acc, Op.STD), 12)  # float sums, unlike a tile
(0.20000000000000004, 0.081649658093)
>>> acc_finalize(acc_empty(), Op.COUNT), acc_finalize(acc_empty(), Op.SUM)
(0, 0.0)
"""

from __future__ import annotations

import math

from features.definitions import Op

# tile slots: [n, s1, s2, k, min, max, d, cached summary or None]
N, S1, S2, K, MIN, MAX, D, CACHE = range(8)
NAN = math.nan

Tile = list  # [int, int, int, int, float, float, int, tuple[float, float] | None]


def empty() -> Tile:
    return [0, 0, 0, 0, math.inf, -math.inf, 1, None]


def exact(x: float) -> tuple[int, int]:
    """``x`` as ``(m, k)`` with ``x == m / 2**k`` exactly."""
    num, den = x.as_integer_ratio()
    return num, den.bit_length() - 1


def _raise_to(tile: Tile, k: int) -> int:
    """Bring the tile's exponent up to at least ``k``; returns the exponent it now has."""
    tk = tile[K]
    if k > tk:
        tile[S1] <<= k - tk
        tile[S2] <<= 2 * (k - tk)
        tile[K] = tk = k
    return int(tk)


def add(tile: Tile, x: float, mk: tuple[int, int] | None = None) -> None:
    """Add one value in place (``mk``: ``exact(x)`` when the caller already has it)."""
    m, k = mk if mk is not None else exact(x)
    m <<= _raise_to(tile, k) - k
    tile[N] += 1
    tile[S1] += m
    tile[S2] += m * m if tile[D] == 1 else tile[D] * m * m
    tile[CACHE] = None
    if x < tile[MIN]:
        tile[MIN] = x
    if x > tile[MAX]:
        tile[MAX] = x


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
    return [n, s1, s2, k, min_, max_, n, (sum_, m2_)]


def summary(tile: Tile) -> tuple[float, float]:
    """(Σx, Σ(x-mean)²), each correctly rounded; cached until the tile changes."""
    cached = tile[CACHE]
    if cached is None:
        cached = tile[CACHE] = (total(tile), m2(tile))
    return cached


# -- float accumulator for reading windows: [n, Σx, mean, M2, min, max] ------------------


def acc_empty() -> list[float]:
    return [0, 0.0, 0.0, 0.0, math.inf, -math.inf]


def acc_add(acc: list[float], x: float, need_m2: bool) -> None:
    """Add one raw value (Welford)."""
    n = acc[0] + 1
    acc[0] = n
    acc[1] += x
    if need_m2:
        delta = x - acc[2]
        acc[2] += delta / n
        acc[3] += delta * (x - acc[2])
    if x < acc[4]:
        acc[4] = x
    if x > acc[5]:
        acc[5] = x


def acc_finalize(acc: list[float], op: Op) -> float | int:
    """The value of ``op``; empty gives 0 for count/sum and NaN otherwise."""
    n = int(acc[0])
    if op is Op.COUNT:
        return n
    if op is Op.SUM:
        return acc[1] + 0.0
    if not n:
        return NAN
    if op is Op.MEAN:
        return acc[1] / n
    if op is Op.MIN:
        return float(acc[4])
    if op is Op.MAX:
        return float(acc[5])
    if op is Op.STD:
        return math.sqrt(acc[3] / n) if acc[3] > 0 else 0.0
    raise ValueError(f"op: {op} is not a window op")
