"""The Python reference engine: the stream and serving semantics, written plainly, that
the native core (:mod:`features.native`) is held to bit for bit by the tests. No production
path runs it (an import-linter contract in pyproject.toml says so).

Per entity it keeps *tiles* per hop level plus the raw events of the exact horizon (see
:mod:`features.layout`). The head is exact, so values are request-time correct (R2) and
nothing at or after ``t`` leaks in (R1), for any ``t >= max_seen - exact_horizon``.

>>> from features.reference import REFERENCE
>>> card = Engine(REFERENCE).layout("card")
>>> s = card.new_state()
>>> card.update(s, 1_000_000, (10.0,), txid_hash("a")).name
'APPLIED'
>>> card.update(s, 1_000_000, (10.0,), txid_hash("a")).name
'DUPLICATE'
>>> card.finalize(s, 1_000_000)[:2]   # the event never sees itself
[0, 0]
>>> card.finalize(s, 1_000_001)[:2]
[1, 1]
"""

from __future__ import annotations

import math
from bisect import bisect_left

from features import moments
from features.definitions import MS_PER_SECOND, FeatureSet
from features.layout import (
    EntityLayout,
    Outcome,
    QueryTooOldError,
    _Group,
    txid_hash,
)

__all__ = ["Engine", "EntityState", "Outcome", "QueryTooOldError", "ReferenceLayout", "txid_hash"]

Value = float | int


class EntityState:
    """Mutable per-entity state. Plain attributes so Bytewax can snapshot it by pickle."""

    __slots__ = ("ids", "last_before_raw", "levels", "max_seen", "raw_ts", "raw_vals")

    def __init__(self, n_levels: int) -> None:
        self.max_seen: int | None = None
        self.last_before_raw: int | None = None
        self.raw_ts: list[int] = []
        self.raw_vals: list[tuple[float, ...]] = []
        self.ids: dict[int, int] = {}
        self.levels: list[dict[int, list[moments.Tile]]] = [{} for _ in range(n_levels)]

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, a) for a in self.__slots__)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for a, v in zip(self.__slots__, state, strict=True):
            setattr(self, a, v)


class ReferenceLayout(EntityLayout):
    """An entity layout with the Python engine's update, compact and finalize."""

    # -- lifecycle -------------------------------------------------------------------
    def new_state(self) -> EntityState:
        return EntityState(len(self.hops))

    def oldest_query_ms(self, state: EntityState) -> int | None:
        """Queries at or after this time are exact; None when the state is empty."""
        return None if state.max_seen is None else state.max_seen - self.horizon_ms

    def update(
        self, state: EntityState, ts: int, values: tuple[float, ...], txid: int | None = None
    ) -> Outcome:
        """Apply one event (event time ``ts`` in epoch ms, field ``values`` in
        ``self.fields`` order). Duplicates and too-late events are decided on this
        entity's own events (lateness is per entity)."""
        if self.primary and txid is not None and txid in state.ids:
            return Outcome.DUPLICATE
        ms = state.max_seen
        if (
            self.primary
            and ms is not None
            and self.lateness_ms is not None
            and ts < ms - self.lateness_ms
        ):
            return Outcome.LATE
        if ms is None or ts > ms:
            state.max_seen = ms = ts
        if not values:
            values = (0.0,)
        exacts = [moments.exact(x) for x in values]
        base = ms - self.horizon_ms
        for hop, keep, level in zip(self.hops, self.keep, state.levels, strict=True):
            bucket = ts // hop
            if bucket < base // hop - keep:
                continue
            tiles = level.get(bucket)
            if tiles is None:
                tiles = level[bucket] = [moments.empty() for _ in self.fields]
            for tile, x, mk in zip(tiles, values, exacts, strict=True):
                moments.add(tile, x, mk)
        if ts >= self.raw_floor(ms):
            pos = bisect_left(state.raw_ts, ts)
            # canonical order for ties: by value, so arrival order never shows in the bytes
            while (
                pos < len(state.raw_ts)
                and state.raw_ts[pos] == ts
                and state.raw_vals[pos] <= values
            ):
                pos += 1
            state.raw_ts.insert(pos, ts)
            state.raw_vals.insert(pos, values)
        elif state.last_before_raw is None or ts > state.last_before_raw:
            state.last_before_raw = ts
        if self.primary and txid is not None:
            state.ids[txid] = ts
        return Outcome.APPLIED

    def compact(self, state: EntityState) -> None:
        """Drop what no answerable query can read: raw events below the raw floor (their
        newest time is kept for ``seconds_since_last``), tiles below each level's floor,
        dedup ids of events already too late. Depends only on the newest event time, so
        it may run whenever (the codec runs it before every encode)."""
        ms = state.max_seen
        if ms is None:
            return
        floor = self.raw_floor(ms)
        if state.raw_ts and state.raw_ts[0] < floor:
            cut = bisect_left(state.raw_ts, floor)
            last = state.raw_ts[cut - 1]
            if state.last_before_raw is None or last > state.last_before_raw:
                state.last_before_raw = last
            del state.raw_ts[:cut]
            del state.raw_vals[:cut]
        base = ms - self.horizon_ms
        for hop, keep, level in zip(self.hops, self.keep, state.levels, strict=True):
            lf = base // hop - keep
            if level and min(level) < lf:
                for b in [b for b in level if b < lf]:
                    del level[b]
        if self.lateness_ms is not None and state.ids:
            id_floor = ms - self.lateness_ms
            ids = state.ids
            if min(ids.values()) < id_floor:
                for h in [h for h, ts in ids.items() if ts < id_floor]:
                    del ids[h]

    # -- reading ---------------------------------------------------------------------
    def finalize(self, state: EntityState, t: int) -> list[Value]:
        """Feature values at query time ``t`` (epoch ms), in ``self.names`` order."""
        out: list[Value] = [math.nan] * len(self.names)
        ms = state.max_seen
        if ms is not None and t < ms - self.horizon_ms:
            raise QueryTooOldError(
                f"event_time: {t} is more than {self.horizon_ms} ms before the newest "
                f"{self.entity.name} event in state ({ms}); it cannot be answered exactly"
            )
        nf = len(self.fields)
        for g in self.groups:
            accs = [moments.acc_empty() for _ in range(nf)]
            if ms is not None:
                self._collect(state, g, t, accs)
            for pos, op, fidx in g.outputs:
                out[pos] = moments.acc_finalize(accs[fidx], op)
        if self.since_last is not None:
            last = self._last_before(state, t)
            out[self.since_last] = math.nan if last is None else (t - last) / MS_PER_SECOND
        return out

    def _collect(self, state: EntityState, g: _Group, t: int, accs: list[list[float]]) -> None:
        """Merge, in a canonical order (by bucket, then raw by time), the tiles then raw
        events that make up g's window. Same arithmetic as ``moments.acc_merge_tile`` and
        ``moments.acc_add``, inlined: this is the serving and streaming hot path."""
        need_m2 = g.need_m2
        hops, levels = self.hops, state.levels
        cursor = (t // g.hop_ms) * g.hop_ms - g.length_ms
        found: list[list[moments.Tile]] = []
        for j in range(g.level, -1, -1):
            hop = hops[j]
            end = (t // hop) * hop
            if end <= cursor:
                continue
            level = levels[j]
            if level:
                lo, hi = cursor // hop, end // hop
                if hi - lo < len(level):
                    found += [level[b] for b in range(lo, hi) if b in level]
                else:
                    found += [v for b, v in sorted(level.items()) if lo <= b < hi]
            cursor = end
        raw_ts = state.raw_ts
        i0, i1 = bisect_left(raw_ts, cursor), bisect_left(raw_ts, t)
        for f, acc in enumerate(accs):
            n, total, mean, m2, mn, mx = acc
            for tiles in found:
                tile = tiles[f]
                nb = tile[0]
                if not nb:
                    continue
                summ = tile[7]
                if summ is None:
                    summ = moments.summary(tile)
                sb = summ[0]
                if need_m2:
                    mb = sb / nb
                    if n:
                        tot = n + nb
                        delta = mb - mean
                        mean += delta * nb / tot
                        m2 += summ[1] + delta * delta * n * nb / tot
                    else:
                        mean, m2 = mb, summ[1]
                n += nb
                total += sb
                if tile[4] < mn:
                    mn = tile[4]
                if tile[5] > mx:
                    mx = tile[5]
            for vals in state.raw_vals[i0:i1]:
                x = vals[f]
                n += 1
                total += x
                if need_m2:
                    delta = x - mean
                    mean += delta / n
                    m2 += delta * (x - mean)
                if x < mn:
                    mn = x
                if x > mx:
                    mx = x
            acc[:] = [n, total, mean, m2, mn, mx]

    def _last_before(self, state: EntityState, t: int) -> int | None:
        i = bisect_left(state.raw_ts, t)
        last = state.last_before_raw  # always < the raw floor <= t
        if i and (last is None or state.raw_ts[i - 1] > last):
            return state.raw_ts[i - 1]
        return last

    def as_of_last(self, state: EntityState) -> list[Value]:
        """Values just after the newest event (what Feast's plain read returns)."""
        return self.finalize(state, (state.max_seen or 0) + 1)


class Engine:
    """All entity layouts of a feature set."""

    def __init__(self, fs: FeatureSet) -> None:
        self.feature_set = fs
        self._layouts = {e.name: ReferenceLayout(fs, e.name) for e in fs.entities}

    def layout(self, entity_name: str) -> ReferenceLayout:
        return self._layouts[entity_name]

    @property
    def layouts(self) -> tuple[ReferenceLayout, ...]:
        return tuple(self._layouts.values())
