"""Exact range folds over sorted values: window sums from integer-digit prefix sums,
moments for ``std``, binary lifting with Chan's update where sums would cancel, and a
sparse table for min/max. Used by :mod:`features.backfill` and :mod:`features.state_build`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: std falls back to lifting where Σx² exceeds n·var by more than this (cancellation)
_GUARD = 2.0**16
_MAX_DIGITS = 6


# -- exact sums ------------------------------------------------------------------------


@dataclass(frozen=True)
class Digits:
    """Integers ``v · 2^scale`` split into base ``2^width`` digits, lowest first, each with
    the sign of its value. Sums of digits are exact as long as they fit int64."""

    parts: list[np.ndarray]
    scale: int
    width: int


def digits(x: np.ndarray, width: int, scale: int | None = None) -> Digits | None:
    """``x`` as exact digits (``scale`` forced, or the smallest that makes every value an
    integer); None when ``x`` is not finite, not integral at ``scale`` or too wide."""
    if not np.isfinite(x).all():
        return None
    ax = np.abs(x)
    nz = ax[ax != 0]
    if not len(nz):
        return Digits([np.zeros(len(x), np.int64)], scale or 0, width)
    _, ex = np.frexp(nz)  # |x| = m · 2^ex, m in [0.5, 1): |x| · 2^(53 - ex) is an integer
    lo_e, hi_e = int(ex.min()), int(ex.max())
    k = 53 - lo_e if scale is None else scale
    count = max(1, -(-(hi_e + k) // width))
    if count > _MAX_DIGITS or lo_e < -900 or hi_e > 900:
        return None
    rest = np.ldexp(ax, k)
    if scale is not None and not bool(np.all(np.floor(rest) == rest)):
        return None
    parts = []
    for _ in range(count - 1):
        q = np.floor(rest * 2.0**-width)  # every step is exact in float64
        parts.append((rest - q * 2.0**width).astype(np.int64))
        rest = q
    parts.append(rest.astype(np.int64))
    if (x < 0).any():
        parts = [np.where(x < 0, -p, p) for p in parts]
    return Digits(parts, k, width)


@dataclass(frozen=True)
class Moments:
    """Prefix sums (leading 0) of the exact digits of x and, when asked, of fl(x²): enough
    for Σx² to a relative 2^-52, which is all :meth:`EventIndex._std` needs."""

    s1: list[np.ndarray]
    s2: list[np.ndarray] | None
    scale: int
    scale2: int
    width: int


def _prefix(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.concatenate([np.zeros(1, np.int64), np.cumsum(p)]) for p in parts]


def moments_prefix(x: np.ndarray, squares: bool) -> Moments | None:
    """None for negative values or data too wide for digits (the caller then lifts)."""
    # n digits below 2^width sum below 2^62; below 2^53 each digit is an exact float
    width = min(52, 62 - max(len(x), 1).bit_length())
    d1 = digits(x, width) if not len(x) or x.min() >= 0 else None
    if d1 is None:
        return None
    d2 = digits(x * x, width) if squares else None
    if squares and (d2 is None or max(d1.scale, d2.scale) > 1000):
        return None
    return Moments(
        _prefix(d1.parts),
        _prefix(d2.parts) if d2 else None,
        d1.scale,
        d2.scale if d2 else 0,
        width,
    )


def _range_sum(
    c: list[np.ndarray], lo: np.ndarray, hi: np.ndarray, m: Moments, scale: int
) -> np.ndarray:
    """Σ over [lo, hi) from digit prefix sums: exact non-negative integers, rounded at the
    end (a few roundings at most, all relative to the result)."""
    v = (c[-1][hi] - c[-1][lo]).astype(np.float64)
    for p in reversed(c[:-1]):
        v *= 2.0**m.width
        v += p[hi] - p[lo]
    v *= 2.0**-scale
    return v


def _lift(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σx and Σ(x - mean)² over [lo, hi) by binary lifting: blocks of 2^j merged with
    Chan's update. Slower than the prefix sums; accurate for any finite data."""
    length = hi - lo
    cnt, mean, m2 = np.zeros(len(lo)), np.zeros(len(lo)), np.zeros(len(lo))
    bmean, bm2 = x.astype(np.float64), np.zeros(len(x))
    pos = lo.copy()
    top = int(length.max()).bit_length() if len(lo) else 0
    for j in range(top):
        size = 1 << j
        sel = np.flatnonzero(length & size)
        if len(sel):
            p, a = pos[sel], cnt[sel]
            tot = a + size
            delta = bmean[p] - mean[sel]
            mean[sel] += delta * (size / tot)
            m2[sel] += bm2[p] + delta * delta * (a * size / tot)
            cnt[sel] = tot
            pos[sel] = p + size
        if j + 1 < top:
            d = bmean[size:] - bmean[:-size]
            bmean, bm2 = bmean[:-size] + d * 0.5, bm2[:-size] + bm2[size:] + d * d * (size / 2)
    return mean * cnt, m2


def _extreme(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, fn: np.ufunc) -> np.ndarray:
    """max/min over [lo, hi) (NaN when empty) from a sparse table built level by level."""
    out = np.full(len(lo), np.nan)
    if not bool((hi > lo).any()):
        return out
    k = np.frexp((hi - lo).astype(np.float64))[1] - 1  # floor(log2(length)); -1 when empty
    by_k = np.argsort(k.astype(np.int8), kind="stable")
    cuts = np.searchsorted(k[by_k], np.arange(int(k.max()) + 2))
    table = x
    for j in range(int(k.max()) + 1):
        if j:
            half = 1 << (j - 1)
            table = fn(table[:-half], table[half:])
        sel = by_k[cuts[j] : cuts[j + 1]]
        out[sel] = fn(table[lo[sel]], table[hi[sel] - (1 << j)])
    return out
