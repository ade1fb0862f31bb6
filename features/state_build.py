"""End states built directly from sorted events, without replaying them.

The state after any replay holds exactly what its retention keeps (raw events, tiles per
level bucket, dedup ids), so tiles are group-bys and their exact sums come from integer
digits. The bytes are identical to :class:`features.reference_codec.StateCodec` encoding a replay
through :class:`features.reference_engine.Engine` (tests/features/test_backfill_job.py pins it over
random histories); it is a second writer of the codec layout, kept for speed (~40x).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from features import moments
from features.backfill import EventIndex
from features.layout import EntityLayout
from features.native import compile_core, native
from features.range_folds import digits
from features.txids import txid_hashes


def build_states(layout: EntityLayout, index: EventIndex, txids: Any) -> list[bytes]:
    """Each entity's state bytes, in ``index.uniq`` order, from its indexed events and their
    ids (``txids``, in the events' order: only the ids a state keeps are hashed)."""
    data, starts = state_bytes(layout, index, txids)
    blob = data.tobytes()
    return [blob[a:b] for a, b in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True)]


def state_bytes(
    layout: EntityLayout, index: EventIndex, txids: Any
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`build_states` as one uint8 buffer: every state in ``index.uniq`` order, and
    where each starts (in bytes; one more offset closes the last), for an Arrow column."""
    n_groups, ts, gid = len(index.uniq), index.ts, index.gid
    if not n_groups:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    ms = ts[index.ends - 1]  # newest event per entity (sorted by time within entity)
    if layout.fields == ("__count__",):
        vals = [np.zeros(len(ts))]
    else:
        vals = [index.values[f] for f in layout.fields]
    pieces: list[tuple[np.ndarray, np.ndarray]] = []  # (little-endian items, items per entity)
    # per entity, the oldest time its state keeps: raw events, ids, each level's tiles
    lateness = layout.lateness_ms
    raw_floor = (ms - layout.horizon_ms) // layout.fine_hop * layout.fine_hop
    tile_floors = [
        ((ms - layout.horizon_ms) // hop - keep) * hop  # ts // hop >= B  <=>  ts >= B * hop
        for hop, keep in zip(layout.hops, layout.keep, strict=True)
    ]
    floors = [raw_floor, *tile_floors]
    if layout.primary:
        floors.append(ms - lateness if lateness is not None else np.full(n_groups, ts.min()))
    tail = _tail(index, np.minimum.reduce(floors))
    ts_t, gid_t = ts[tail], gid[tail]  # every later selection is a subset of these

    def since(floor: np.ndarray) -> np.ndarray:
        """Index positions of the events at or after their entity's ``floor``."""
        return tail[np.flatnonzero(ts_t >= floor[gid_t])]

    raw = since(raw_floor)
    raw = raw[_tie_order(index.comp[raw], [v[raw] for v in vals])]
    n_raw = np.bincount(gid[raw], minlength=n_groups)
    before = index.ends - n_raw - 1  # newest event older than the raw floor, if any
    has_last = before >= index.starts
    pieces.append(((ms[gid[raw]] - ts[raw]).astype("<u4"), n_raw))
    pieces += [(v[raw].astype("<f8"), n_raw) for v in vals]

    n_ids = np.zeros(n_groups, np.int64)
    if layout.primary:
        ids = since(ms - lateness) if lateness is not None else np.arange(len(ts))
        kept = txid_hashes(txids, index.order[ids])
        o = _tie_order(index.comp[ids], [kept])
        ids, kept = ids[o], kept[o]
        n_ids = np.bincount(gid[ids], minlength=n_groups)
        pieces += [((ms[gid[ids]] - ts[ids]).astype("<u4"), n_ids), (kept, n_ids)]

    n_tiles = []
    for j, hop in enumerate(layout.hops):
        sel = since(tile_floors[j])
        bucket = ts[sel] // hop
        b, g = bucket, gid[sel]
        new = np.r_[True, (b[1:] != b[:-1]) | (g[1:] != g[:-1])] if len(sel) else sel > 0
        first = sel[new]
        last = sel[np.r_[new[1:], True]] if len(sel) else first
        tile_g = gid[first]
        counts = np.bincount(tile_g, minlength=n_groups)
        n_tiles.append(counts)
        pieces.append(((ms[tile_g] // hop - bucket[new]).astype("<u4"), counts))
        pieces.append(((last + 1 - first).astype("<u4"), counts))
        comps = layout.needs[j]
        for f, v in enumerate(vals):
            tiles = _Tiles(index, layout.fields[f], v, first, last + 1, sel, np.flatnonzero(new))
            tiles.fold = "m2" in comps  # Σx alone: the digit sums below are cheaper
            pieces += [(tiles.component(c), counts) for c in comps]

    # the header is the native core's to write: it owns the bytes' layout
    core = compile_core(layout)
    newest_before = ts[np.maximum(before, 0)].tolist()
    last_raw = [t if h else None for t, h in zip(newest_before, has_last.tolist(), strict=True)]
    blob = core.encode_headers(
        ms.tolist(), last_raw, n_raw.tolist(), n_ids.tolist(), [c.tolist() for c in n_tiles]
    )
    head = np.frombuffer(blob, f"V{core.header_size}")
    return _interleave([(head, np.ones(n_groups, np.int64)), *pieces])


def _tail(index: EventIndex, floor: np.ndarray) -> np.ndarray:
    """Index positions of each entity's events at or after its ``floor``: a suffix of the
    entity's sorted events, found by one binary search per entity."""
    bound = np.clip(floor - index.tmin, 0, index.stride - 1)
    cut = np.searchsorted(index.comp, np.arange(len(index.uniq)) * index.stride + bound)
    size = index.ends - cut
    shift = np.repeat(cut - (np.cumsum(size) - size), size)
    return shift + np.arange(int(size.sum()))


def _tie_order(comp: np.ndarray, keys: list[np.ndarray]) -> np.ndarray:
    """The permutation ordering sorted ``comp`` and then ``keys`` (first key first)."""
    perm = np.arange(len(comp))
    tie = np.r_[False, comp[1:] == comp[:-1]] if len(comp) else comp > 0
    tie[:-1] |= tie[1:]
    at = np.flatnonzero(tie)
    if len(at):
        perm[at] = at[np.lexsort((*[k[at] for k in reversed(keys)], comp[at]))]
    return perm


class _Tiles:
    """Tile components of one field: events ``[start, stop)`` of the index per tile;
    ``sel`` are the level's events and ``cuts`` where each tile starts among them."""

    def __init__(self, index: EventIndex, field: str, v: np.ndarray, start: np.ndarray,
                 stop: np.ndarray, sel: np.ndarray, cuts: np.ndarray) -> None:  # fmt: skip
        self.index, self.field, self.v = index, field, v
        self.start, self.stop, self.sel, self.cuts = start, stop, sel, cuts
        self.n = stop - start
        self._summary: tuple[np.ndarray, np.ndarray] | None = None
        self.fold = True

    def component(self, comp: str) -> np.ndarray:
        if not len(self.start):
            return np.zeros(0, "<f8")
        if comp in ("min", "max"):
            fn = np.minimum if comp == "min" else np.maximum
            return fn.reduceat(self.v[self.sel], self.cuts).astype("<f8")
        fold = getattr(native, "tile_moments", None) if self.fold else None
        if fold is not None:  # the engine's own tiles: Σx and Σ(x-mean)², correctly rounded
            if self._summary is None:
                self._summary = (np.empty(len(self.start)), np.empty(len(self.start)))
                fold(np.ascontiguousarray(self.v, np.float64), *self._bounds(), *self._summary)
            return self._summary[0 if comp == "sum" else 1].astype("<f8")
        known = self.field in self.index.values
        m = self.index.moments(self.field, squares=False) if known else None
        if comp == "sum":
            if m is None:
                return self._slow(moments.total)
            s1 = [c[self.stop] - c[self.start] for c in m.s1]
            out, exact = _digits_to_float(s1, m.scale, m.width)
            odd = np.flatnonzero(~exact)
            if len(odd):
                ones = np.ones(len(odd), np.int64).astype(object)
                out[odd] = _exact_ratio(_as_int([d[odd] for d in s1], m.width), ones, m.scale)
            return out.astype("<f8")
        out = np.zeros(len(self.start), "<f8")  # m2: 0 for one event
        many = np.flatnonzero(self.n >= 2)
        if not len(many):
            return out
        if m is None or not self._m2(m, many, out):
            out[many] = self._slow(moments.m2)[many]
        return out

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.ascontiguousarray(self.start, np.int64),
            np.ascontiguousarray(self.stop, np.int64),
        )

    def _m2(self, m: Any, many: np.ndarray, out: np.ndarray) -> bool:
        """Correctly rounded Σ(x - mean)² of the tiles ``many`` from exact Σx and Σx²."""
        start, n = self.start[many], self.n[many]
        cuts = np.r_[0, np.cumsum(n)[:-1]]
        x = self.v[np.repeat(start - cuts, n) + np.arange(int(n.sum()))]
        ax = np.abs(x[x != 0])
        if len(ax) and (ax.min() < 2.0**-300 or ax.max() > 2.0**300):
            return False
        p, e = two_product(x)  # Σx² = Σp + Σe exactly
        width = 61 - len(x).bit_length()
        dp, de = digits(p, width, 2 * m.scale), digits(e, width, 2 * m.scale)
        if dp is None or de is None:
            return False
        s2 = _as_int([np.add.reduceat(d, cuts) for d in dp.parts], width)
        s2 += _as_int([np.add.reduceat(d, cuts) for d in de.parts], width)
        s1 = _as_int([c[self.stop[many]] - c[start] for c in m.s1], m.width)
        n_obj = n.astype(object)
        out[many] = _exact_ratio(n_obj * s2 - s1 * s1, n_obj, 2 * m.scale)
        return True

    def _slow(self, fn: Any) -> np.ndarray:
        """Tiles folded event by event with :mod:`features.moments` (data too wide for digits)."""
        out = np.zeros(len(self.start), "<f8")
        for i, (a, b) in enumerate(zip(self.start.tolist(), self.stop.tolist(), strict=True)):
            tile = moments.empty()
            for x in self.v[a:b].tolist():
                moments.add(tile, x)
            out[i] = fn(tile)
        return out


def two_product(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x² == p + e`` exactly (Dekker's split), for |x| within 2^±300."""
    c = 134_217_729.0 * x
    hi = c - (c - x)
    lo = x - hi
    p = x * x
    return p, ((hi * hi - p) + 2.0 * hi * lo) + lo * lo


def _as_int(parts: list[np.ndarray], width: int) -> np.ndarray:
    """Digit sums as exact Python ints (an object array)."""
    acc = parts[-1].astype(object)
    for p in reversed(parts[:-1]):
        acc = (acc << width) + p.astype(object)
    return acc


def _exact_ratio(num: np.ndarray, den: np.ndarray, scale: int) -> np.ndarray:
    """``num / (den · 2^scale)`` correctly rounded (Python's int division is)."""
    if scale >= 0:
        return np.asarray(num / (den << scale), dtype=np.float64)
    return np.asarray((num << -scale) / den, dtype=np.float64)


def _digits_to_float(
    parts: list[np.ndarray], scale: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(value, is it correctly rounded) of non-negative digit sums."""
    d = [p.copy() for p in parts]
    for i in range(len(d) - 1):  # carry so every digit but the top is below 2^width
        c = d[i] >> width
        d[i] -= c << width
        d[i + 1] += c
    v = d[-1].astype(np.float64)
    for p in reversed(d[:-1]):
        v = v * 2.0**width + p
    exact = (d[-1] >= 0) & (d[1] < 2**53 if len(d) > 1 else d[0] >= 0)
    for p in d[2:]:
        exact &= p == 0
    return np.ldexp(v, -scale), exact


def _interleave(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per entity, its items of every piece in piece order, entity after entity in one
    buffer, and each entity's start in bytes: one native pass (``interleave_items``), or
    :func:`_scatter` with an installed core older than this checkout."""
    write = getattr(native, "interleave_items", None)
    if write is None:
        return _scatter(pieces)
    counts = np.stack([c for _, c in pieces])
    sizes = np.array([a.dtype.itemsize for a, _ in pieces], np.int64)
    start = np.zeros(counts.shape[1] + 1, np.int64)
    np.cumsum(sizes @ counts, out=start[1:])
    out = np.empty(int(start[-1]), np.uint8)
    items = [
        (np.ascontiguousarray(a).view(np.uint8), int(s), c)
        for (a, c), s in zip(pieces, sizes, strict=True)
    ]
    write(items, start, out)
    return out, start


def _scatter(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_interleave` in numpy: every item is a whole number of 4-byte units, so the
    shuffle is one scatter per piece."""
    units = [np.frombuffer(a.tobytes(), "<u4") for a, _ in pieces]
    counts = np.stack([c * (a.dtype.itemsize // 4) for a, c in pieces])
    start = np.r_[0, np.cumsum(counts.sum(axis=0))]
    within = np.cumsum(counts, axis=0) - counts
    out = np.empty(int(start[-1]), "<u4")
    for u, c, w in zip(units, counts, within, strict=True):
        src = np.r_[0, np.cumsum(c)[:-1]]
        out[np.repeat(start[:-1] + w - src, c) + np.arange(len(u))] = u
    return out.view(np.uint8), start * 4
