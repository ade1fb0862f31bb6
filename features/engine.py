"""The aggregation engine shared by the streaming flow and the scoring service.

Per entity it keeps *tiles*: exact partial aggregates per hop bucket, one level per
distinct hop (the hops form a divisibility chain, e.g. 1m | 5m | 1h | 1d), plus the raw
events of the last ``exact_horizon`` (rounded down to the finest hop). A window
``[floor(t/H)*H - W, t)`` is answered as: whole buckets of its own level, then ever finer
levels for the partial head, then raw events for the last, unfinished finest bucket.
The head is exact, so values are request-time correct (R2) and nothing at or after ``t``
leaks in (R1), for any ``t >= max_seen - exact_horizon``.

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

import enum
import hashlib
import math
from bisect import bisect_left
from dataclasses import dataclass

from features import moments
from features.definitions import MS_PER_SECOND, Aggregation, FeatureSet, Op

Value = float | int


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


class QueryTooOldError(ValueError):
    """The query time is older than the state can answer exactly."""


def txid_hash(transaction_id: str) -> int:
    """64-bit hash of a transaction id, the dedup key kept in state."""
    digest = hashlib.blake2b(transaction_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


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


@dataclass(frozen=True)
class _Group:
    """Features sharing one window: computed from one merged tile."""

    length_ms: int
    hop_ms: int
    level: int
    outputs: tuple[tuple[int, Op, int], ...]  # (feature position, op, field index)
    need_m2: bool  # some output is a std


class EntityLayout:
    """The compiled engine for one entity of a feature set."""

    def __init__(self, fs: FeatureSet, entity_name: str) -> None:
        aggs: tuple[Aggregation, ...] = fs.for_entity(entity_name)
        self.entity = fs.entity(entity_name)
        self.names = tuple(a.name for a in aggs)
        self.fields = tuple(sorted({a.field for a in aggs if a.field})) or ("__count__",)
        # every entity decides duplicates and too-late events on its own events (DESIGN.md)
        self.primary = True
        self.horizon_ms = int(fs.exact_horizon.total_seconds() * MS_PER_SECOND)
        windowed = [a for a in aggs if a.window is not None]
        self.hops = tuple(sorted({a.window.hop_ms for a in windowed if a.window}))
        lateness = fs.lateness_ms(entity_name)
        # too-late bound: older events can reach no window queried at t >= max_seen - horizon
        self.lateness_ms = None if lateness is None else lateness + self.horizon_ms
        # buckets each level keeps behind the oldest answerable query time
        keep: list[int] = []
        for j, hop in enumerate(self.hops):
            own = [a.window.length_ms for a in windowed if a.window and a.window.hop_ms == hop]
            head = self.hops[j + 1] if j + 1 < len(self.hops) else 0
            keep.append(max([*own, head]) // hop)
        self.keep = tuple(keep)
        groups: dict[tuple[int, int], list[tuple[int, Op, int]]] = {}
        self.since_last: int | None = None
        for pos, a in enumerate(aggs):
            if a.window is None:
                self.since_last = pos
                continue
            fidx = self.fields.index(a.field) if a.field else 0
            groups.setdefault((a.window.length_ms, a.window.hop_ms), []).append((pos, a.op, fidx))
        self.groups = tuple(
            _Group(w, h, self.hops.index(h), tuple(outs), any(o[1] is Op.STD for o in outs))
            for (w, h), outs in groups.items()
        )
        self.fine_hop = self.hops[0] if self.hops else 1

    # -- lifecycle -------------------------------------------------------------------
    def new_state(self) -> EntityState:
        return EntityState(len(self.hops))

    def raw_floor(self, max_seen: int) -> int:
        return ((max_seen - self.horizon_ms) // self.fine_hop) * self.fine_hop

    def level_floor(self, max_seen: int, j: int) -> int:
        return (max_seen - self.horizon_ms) // self.hops[j] - self.keep[j]

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
        self._layouts = {e.name: EntityLayout(fs, e.name) for e in fs.entities}

    def layout(self, entity_name: str) -> EntityLayout:
        return self._layouts[entity_name]

    @property
    def layouts(self) -> tuple[EntityLayout, ...]:
        return tuple(self._layouts.values())
