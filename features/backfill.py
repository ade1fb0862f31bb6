"""The vectorized backfill: every feature at every spine row, no per-event Python loop.

It implements exactly the semantics of the engine (:mod:`features.layout`, held by the native
core and the Python reference :mod:`features.reference_engine`) over whole arrays:

1. :func:`accept` decides, per entity and in file order, which valid events count: the
   first copy of each ``(entity key, event id)`` that is not too late for that entity.
2. :class:`EventIndex` sorts one entity's accepted events by (entity, time) once; the
   spine's features, the Feast tables and the end states all read that one index. A
   window ``[floor(t/H)*H - W, t)`` is a contiguous range, found for all queries at once
   by merging their sorted bounds into the sorted events. Sums come from exact prefix
   sums: each value is split into integer digits (``x · 2^scale`` in base ``2^width``)
   whose int64 prefix sums subtract without rounding, so a window sum carries a few
   roundings relative to itself, however long the history before it. ``std`` comes from
   ``Σx`` and ``Σx²``; the rare windows where those cancel (near-constant values), and
   data too wide for digits, fall back to binary lifting with Chan's update. ``max`` and
   ``min`` use a sparse table built level by level, so memory stays O(events).

>>> import numpy as np
>>> from features.reference import REFERENCE
>>> ts = np.array([0, 60_000, 120_000])
>>> amounts = {"amount": np.array([1.0, 2.0, 4.0])}
>>> q_keys, q_t = np.array([1, 1]), np.array([120_000, 120_001])
>>> out = window_features(REFERENCE, "card", np.array([1, 1, 1]), ts, amounts, q_keys, q_t)
>>> out["card_txn_count_10m"].tolist(), out["card_amount_max_24h"].tolist()
([2, 3], [2.0, 4.0])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.dedup import late_rows, maybe_repeated
from features.definitions import MS_PER_SECOND, FeatureSet, Op
from features.native import native
from features.range_folds import _GUARD, Moments, _extreme, _lift, _range_sum, moments_prefix
from features.window_native import evaluate, extremes_ok


@dataclass(frozen=True)
class Acceptance:
    """Per valid event, in file order: exactly one of accepted / duplicate / late."""

    accepted: np.ndarray
    duplicate: np.ndarray
    late: np.ndarray


def dense_ids(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(sorted unique keys, each key's position among them, a direct lookup table or None)."""
    if len(keys) and keys.min() >= 0 and keys.max() < 4 * len(keys) + 65_536:
        present = np.zeros(int(keys.max()) + 1, dtype=bool)
        present[keys] = True
        lut = np.cumsum(present, dtype=np.int64) - 1
        lut[~present] = -1
        return np.flatnonzero(present), lut[keys], lut
    uniq, ids = np.unique(keys, return_inverse=True)
    return uniq, ids.astype(np.int64), None


def _lookup(uniq: np.ndarray, lut: np.ndarray | None, q: np.ndarray) -> np.ndarray:
    """Position of each ``q`` among ``uniq``; -1 when absent."""
    if lut is not None:
        inside = (q >= 0) & (q < len(lut))
        return np.where(inside, lut[np.where(inside, q, 0)], -1)
    pos = np.searchsorted(uniq, q)
    ok = pos < len(uniq)
    ok[ok] = uniq[pos[ok]] == q[ok]
    return np.where(ok, pos, -1)


def group_order(ids: np.ndarray, ts: np.ndarray | None = None) -> np.ndarray:
    """Stable order by ``ids`` (non-negative), then ``ts``: radix passes of 16 bits."""
    if ts is not None and len(ts) > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
        first = np.argsort(ts, kind="stable")
        return first[group_order(ids[first])]
    top = int(ids.max()) if len(ids) else 0
    if top >= 2**32:
        return np.argsort(ids, kind="stable")
    order = np.argsort((ids & 0xFFFF).astype(np.uint16), kind="stable")
    if top >= 2**16:
        order = order[np.argsort((ids[order] >> 16).astype(np.uint16), kind="stable")]
    return order


def _exclusive_cummax(groups: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """For rows sorted by group (file order within), the max ts of earlier rows of the
    same group; ``int64 min`` for a group's first row."""
    tmin, span = int(ts.min()), int(ts.max() - ts.min()) + 1
    if (int(groups.max()) + 1) * span >= 2**62:
        raise ValueError("events: time span × entities too large; split the file by time")
    shifted = (ts - tmin) + groups * span
    prev = np.empty_like(shifted)
    prev[0] = -1
    prev[1:] = np.maximum.accumulate(shifted)[:-1]
    out = prev - groups * span + tmin
    out[np.r_[True, groups[1:] != groups[:-1]]] = np.iinfo(np.int64).min
    return out


def accept(
    lateness_ms: int | None,
    keys: np.ndarray,
    txids: Any,
    ts: np.ndarray,
    candidates: np.ndarray | None = None,
) -> Acceptance:
    """One entity's acceptance, as its engine decides it in the stream: dedup (the first
    copy per entity key and event id) then too-late routing (older than the key's newest
    accepted event minus ``lateness_ms``), both in file order, as a Kafka partition delivers
    them. ``txids`` is a numpy array or an Arrow array of strings; ``candidates``, when
    given, holds every row whose id may repeat (:func:`maybe_repeated`: shared by the
    entities of one file). Every entity decides on its own events: an event too late for
    one entity may count for another."""
    keys, ts = np.asarray(keys, np.int64), np.asarray(ts, np.int64)
    n = len(ts)
    first = np.ones(n, dtype=bool)
    if n:
        arr = txids if isinstance(txids, pa.Array | pa.ChunkedArray) else pa.array(txids)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        cand = maybe_repeated(arr) if candidates is None else candidates
        codes = pc.dictionary_encode(arr.take(pa.array(cand)), null_encoding="encode").indices
        codes = np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)
        o = np.lexsort((cand, codes, keys[cand]))
        rows, codes = cand[o], codes[o]
        same = (keys[rows][1:] == keys[rows][:-1]) & (codes[1:] == codes[:-1])
        first[rows[1:][same]] = False
    late = np.zeros(n, dtype=bool)
    fast = late_rows(keys, ts, first, lateness_ms) if lateness_ms is not None and n else None
    if fast is not None:
        late = fast
    elif lateness_ms is not None and n:
        idx = np.flatnonzero(first)
        _, ids, _ = dense_ids(keys[idx])
        o = group_order(ids)
        prev = _exclusive_cummax(ids[o], ts[idx][o])
        is_late = (prev != np.iinfo(np.int64).min) & (ts[idx][o] < prev - lateness_ms)
        late[idx[o[is_late]]] = True
    return Acceptance(first & ~late, ~first, late)


# -- the index -------------------------------------------------------------------------


class EventIndex:
    """One entity's events sorted by (key, time), built once and queried many times."""

    def __init__(self, keys: np.ndarray, ts: np.ndarray, fields: dict[str, np.ndarray]) -> None:
        keys, ts = np.asarray(keys, np.int64), np.asarray(ts, np.int64)
        self._keys, self._ts = keys, ts
        self.uniq, ids, self._lut = dense_ids(keys)
        n = len(ts)
        self.tmin = int(ts.min()) if n else 0
        self.stride = (int(ts.max()) - self.tmin + 2) if n else 2
        if len(self.uniq) * self.stride >= 2**61:
            raise ValueError("events: time span × entities too large; split the file by time")
        self._inv: np.ndarray | None = None
        sort = getattr(native, "index_order", None)
        if sort is not None and n:  # one native pass for the order and what follows it
            out = [np.empty(n, np.int64) for _ in range(5)]
            ids = np.ascontiguousarray(ids, np.int64)
            ts_c = np.ascontiguousarray(ts)
            by_time = None if bool(np.all(ts[1:] >= ts[:-1])) else np.argsort(ts, kind="stable")
            cuts = sort(ids, ts_c, len(self.uniq), self.tmin, self.stride, *out, by_time)
            self.order, self.gid, self.ts, self.comp, self._inv = out
            self.starts = np.array(cuts[:-1], np.int64)
            self.ends = np.array(cuts[1:], np.int64)
        else:
            self.order = group_order(ids, ts)
            self.gid, self.ts = ids[self.order], ts[self.order]
            new = np.r_[True, self.gid[1:] != self.gid[:-1]] if n else np.zeros(0, dtype=bool)
            self.starts = np.flatnonzero(new)
            self.ends = np.append(self.starts[1:], n) if n else np.zeros(0, np.int64)
            self.comp = self.gid * self.stride + (self.ts - self.tmin)
        self.values = {f: np.asarray(v, np.float64)[self.order] for f, v in fields.items()}
        self._odd: np.ndarray | None = None  # the events' side of the merge: on first use
        self._memo: dict[tuple[str, bool], Moments | None] = {}
        self._lo_at_events: dict[tuple[int, int], np.ndarray] = {}
        self._extremes_ok: dict[str, bool] = {}
        #: the native spine pass's table once gathered, for the after-event pass to fill
        self.spare: np.ndarray | None = None

    def moments(self, field: str, squares: bool) -> Moments | None:
        """Exact prefix sums of ``field`` (and of its squares), computed once."""
        full = self._memo.get((field, True))
        if full is not None:
            return full
        if (field, squares) not in self._memo:
            self._memo[field, squares] = moments_prefix(self.values[field], squares)
        return self._memo[field, squares]

    def extremes_ok(self, field: str) -> bool:
        """Whether max/min over ``field`` is the same bits in any order (no NaN, no -0.0)."""
        if field not in self._extremes_ok:
            self._extremes_ok[field] = extremes_ok(self.values[field])
        return self._extremes_ok[field]

    def _rank(self, g: np.ndarray, bound: np.ndarray) -> np.ndarray:
        """Per query sorted by (group, bound): the first event position at or after the
        group's ``bound``, found by merging the sorted needles into the sorted events."""
        q = len(g)
        if self._odd is None:
            self._odd = self.comp * 2 + 1
        v = np.empty(q + len(self._odd), np.int64)
        needle = v[:q]
        np.clip(bound, self.tmin, self.tmin + self.stride - 1, out=needle)
        needle += g * self.stride - self.tmin
        if q and g[0] < 0:
            needle[g < 0] = 0  # unknown keys sort first; the caller empties their ranges
        needle *= 2
        v[q:] = self._odd
        v.sort(kind="stable")  # two sorted runs: a linear merge
        r = np.flatnonzero((v & 1) == 0)
        r -= np.arange(q)
        return r

    def features(self, fs: FeatureSet, entity: str, q_keys: Any, q_t: Any) -> dict[str, np.ndarray]:
        """All of ``entity``'s features at query rows ``(q_keys, q_t)`` (any order)."""
        q_keys, q_t = np.asarray(q_keys, np.int64), np.asarray(q_t, np.int64)
        if np.array_equal(q_keys, self._keys) and np.array_equal(q_t, self._ts):
            order, g, t = self.order, self.gid, self.ts  # the spine is the events: sorted
            hi = np.maximum.accumulate(np.where(self._run_start(), np.arange(len(t)), 0))
            memo, inverse = self._lo_at_events, self._inverse()
        else:
            q_gid = _lookup(self.uniq, self._lut, q_keys)
            order = group_order(q_gid + 1, q_t)
            g, t = q_gid[order], q_t[order]
            hi, memo = self._rank(g, t), {}
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
        fast = evaluate(self, fs, entity, g, t, hi, inverse)  # one native pass per window
        if fast is not None:
            return fast

        def lo_of(w: int, h: int) -> np.ndarray:
            if (w, h) not in memo:
                memo[w, h] = self._rank(g, (t // h) * h - w)
            return memo[w, h]

        out = {}
        for name, v in self._evaluate(fs, entity, g, t, hi, lo_of).items():
            out[name] = np.empty_like(v)
            out[name][order] = v
        return out

    def _inverse(self) -> np.ndarray:
        """Where each event (file order) sits in the index, computed once."""
        if self._inv is None:
            self._inv = np.empty_like(self.order)
            self._inv[self.order] = np.arange(len(self.order))
        return self._inv

    def _run_start(self) -> np.ndarray:
        return np.r_[True, self.comp[1:] != self.comp[:-1]] if len(self.comp) else self.comp > 0

    def features_after_events(
        self, fs: FeatureSet, entity: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """One row per (key, event time), sorted: (keys, times, is the key's last row, the
        features just after the event, at t = time + 1)."""
        run = np.flatnonzero(self._run_start())
        hi = np.append(run[1:], len(self.ts)) if len(run) else run
        g, t = self.gid[run], self.ts[run] + 1
        last = np.r_[g[1:] != g[:-1], True] if len(run) else run > 0
        fast = evaluate(self, fs, entity, g, t, hi, None)
        if fast is not None:
            return self.uniq[g], t - 1, last, fast

        def lo_of(w: int, h: int) -> np.ndarray:
            if (w, h) not in self._lo_at_events:  # not computed by a spine pass over the events
                return self._rank(g, (t // h) * h - w)
            lo = self._lo_at_events[w, h][run]  # the same bound unless t crosses a hop
            moved = np.flatnonzero(t % h == 0)
            bound = np.clip(t[moved] - w, self.tmin, self.tmin + self.stride - 1)
            lo[moved] = np.searchsorted(self.comp, g[moved] * self.stride + bound - self.tmin)
            return lo

        return self.uniq[g], t - 1, last, self._evaluate(fs, entity, g, t, hi, lo_of)

    def _evaluate(
        self,
        fs: FeatureSet,
        entity: str,
        g: np.ndarray,
        t: np.ndarray,
        hi: np.ndarray,
        lo_of: Callable[[int, int], np.ndarray],
    ) -> dict[str, np.ndarray]:
        """Features for queries sorted by (group, t): ``hi`` ends each query's ranges,
        ``lo_of(W, H)`` starts them."""
        known = g >= 0
        gs = self.starts[np.maximum(g, 0)] if len(self.starts) else np.zeros(len(g), np.int64)
        everyone = bool(known.all())
        if not everyone:
            hi, gs = np.where(known, hi, 0), np.where(known, gs, 0)
        aggs = fs.for_entity(entity)
        squares = {a.field for a in aggs if a.op is Op.STD}
        out: dict[str, np.ndarray] = {}
        for w, h in sorted({(a.window.length_ms, a.window.hop_ms) for a in aggs if a.window}):
            lo = lo_of(w, h)
            if not everyone:
                lo = np.where(known, lo, 0)
            count = hi - lo
            sums: dict[str, np.ndarray] = {}
            for a in aggs:
                if a.window is None or (a.window.length_ms, a.window.hop_ms) != (w, h):
                    continue
                if a.op is Op.COUNT:
                    out[a.name] = count.astype(np.int64)
                    continue
                assert a.field is not None
                x = self.values[a.field]
                if a.op in (Op.MAX, Op.MIN):
                    out[a.name] = _extreme(x, lo, hi, np.maximum if a.op is Op.MAX else np.minimum)
                    continue
                if a.field not in sums:
                    sums[a.field] = self._sum(a.field, lo, hi, a.field in squares)
                with np.errstate(invalid="ignore", divide="ignore"):
                    if a.op is Op.SUM:
                        out[a.name] = sums[a.field]
                    elif a.op is Op.MEAN:
                        out[a.name] = np.where(count > 0, sums[a.field] / count, np.nan)
                    else:
                        out[a.name] = self._std(a.field, lo, hi, sums[a.field])
        for a in aggs:
            if a.op is Op.SINCE_LAST:
                has = hi > gs
                last = (
                    self.ts[np.maximum(hi - 1, 0)] if len(self.ts) else np.zeros(len(t), np.int64)
                )
                out[a.name] = np.where(has, (t - last) / MS_PER_SECOND, np.nan)
        return {a.name: out[a.name] for a in aggs}

    def _sum(self, field: str, lo: np.ndarray, hi: np.ndarray, squares: bool) -> np.ndarray:
        m = self.moments(field, squares)
        if m is None:
            return _lift(self.values[field], lo, hi)[0]
        return _range_sum(m.s1, lo, hi, m, m.scale)

    def _std(self, field: str, lo: np.ndarray, hi: np.ndarray, s1: np.ndarray) -> np.ndarray:
        n = (hi - lo).astype(np.float64)
        m = self.moments(field, squares=True)
        if m is not None and m.s2 is not None:
            s2 = _range_sum(m.s2, lo, hi, m, m.scale2)
            mean = s1 / n
            var = s2 / n - mean * mean
            hard = np.flatnonzero((n >= 2) & ~(var * _GUARD > s2 / n))
        else:
            var, hard = np.zeros(len(n)), np.flatnonzero(n >= 2)
        if len(hard):
            var[hard] = _lift(self.values[field], lo[hard], hi[hard])[1] / n[hard]
        var[n == 1] = 0.0
        return np.where(n > 0, np.sqrt(np.maximum(var, 0.0)), np.nan)


def window_features(
    fs: FeatureSet,
    entity: str,
    keys: np.ndarray,
    ts: np.ndarray,
    fields: dict[str, np.ndarray],
    q_keys: np.ndarray,
    q_t: np.ndarray,
) -> dict[str, np.ndarray]:
    """All of ``entity``'s features at query rows ``(q_keys, q_t)`` from its accepted
    events ``(keys, ts, fields)`` (any order)."""
    return EventIndex(keys, ts, fields).features(fs, entity, q_keys, q_t)
