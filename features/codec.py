"""Compact, versioned bytes for an entity's state (no pickle).

The bytes are canonical: the same multiset of accepted events gives the same bytes,
whatever order they arrived in. Times are stored as unsigned offsets behind the newest
event, tiles only with the components their level's ops read.

Layout v1 (little-endian)::

    header  magic "SK", version u8, flags u8, layout crc32 u32, max_seen i64,
            last_before_raw i64, n_raw u32, n_ids u32, n_tiles u32 × levels
    raw     ts offsets u32[n_raw], values f64[n_raw] per field
    ids     ts offsets u32[n_ids], hashes u64[n_ids]          (primary entity only)
    tiles   per level: bucket offsets u32, n u32, then per field the level's components
            of sum, m2, min, max as f64

>>> from features.engine import Engine
>>> from features.reference import REFERENCE
>>> layout = Engine(REFERENCE).layout("merchant")
>>> codec = StateCodec(layout)
>>> s = layout.new_state()
>>> _ = layout.update(s, 5_000, (3.5,))
>>> codec.decode(codec.encode(s)).raw_vals
[(3.5,)]
>>> codec.decode(b"nope")
Traceback (most recent call last):
...
ValueError: state: 4 bytes is not a skewless state (bad magic or too short)
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any

from features import moments
from features.definitions import Op
from features.engine import EntityLayout, EntityState

MAGIC = b"SK"
VERSION = 1
_HAS_MAX, _HAS_LAST = 1, 2
_HEAD = struct.Struct("<2sBBIqqII")
_U32_MAX = 2**32 - 1

# tile components, in serialized order
SUM, M2, MIN, MAX = "sum", "m2", "min", "max"
_OP_NEEDS = {
    Op.COUNT: (),
    Op.SUM: (SUM,),
    Op.MEAN: (SUM,),
    Op.STD: (SUM, M2),
    Op.MIN: (MIN,),
    Op.MAX: (MAX,),
}


class StateCodec:
    """Encodes/decodes one entity layout's states."""

    def __init__(self, layout: EntityLayout) -> None:
        self.layout = layout
        self.nf = len(layout.fields)
        needs: list[tuple[str, ...]] = []
        for j in range(len(layout.hops)):
            wanted = {
                c
                for g in layout.groups
                if g.level >= j
                for _, op, _ in g.outputs
                for c in _OP_NEEDS[op]
            }
            needs.append(tuple(c for c in (SUM, M2, MIN, MAX) if c in wanted))
        self.needs = tuple(needs)
        if layout.horizon_ms + layout.fine_hop > _U32_MAX or (layout.lateness_ms or 0) > _U32_MAX:
            raise ValueError("exact_horizon: too long to encode time offsets in 32 bits")
        signature = repr(
            (layout.entity.name, layout.hops, layout.fields, self.needs, layout.primary)
        )
        self.crc = zlib.crc32(signature.encode())
        self._levels = struct.Struct(f"<{len(layout.hops)}I")

    def encode(self, state: EntityState) -> bytes:
        """Canonical bytes (compacts the state first: what is dropped is unreadable)."""
        self.layout.compact(state)
        ms = state.max_seen or 0
        flags = (_HAS_MAX if state.max_seen is not None else 0) | (
            _HAS_LAST if state.last_before_raw is not None else 0
        )
        levels = [sorted(level.items()) for level in state.levels]
        ids = sorted(zip(state.ids.values(), state.ids.keys(), strict=True))
        n_raw, n_ids = len(state.raw_ts), len(ids)
        fmt = [f"{len(self.layout.hops)}I{n_raw}I{self.nf * n_raw}d{n_ids}I{n_ids}Q"]
        vals: list[Any] = [len(level) for level in levels]
        vals += [ms - ts for ts in state.raw_ts]
        for f in range(self.nf):
            vals += [v[f] for v in state.raw_vals]
        vals += [ms - ts for ts, _ in ids]
        vals += [h for _, h in ids]
        for needs, hop, level in zip(self.needs, self.layout.hops, levels, strict=True):
            if not level:
                continue
            cur = ms // hop
            count = len(level)
            fmt.append(f"{2 * count}I{count * len(needs) * self.nf}d")
            vals += [cur - b for b, _ in level]
            vals += [tiles[0][moments.N] for _, tiles in level]
            for f in range(self.nf):
                tiles_f = [t[f] for _, t in level]
                for comp in needs:
                    vals += _components(tiles_f, comp)
        head = _HEAD.pack(
            MAGIC, VERSION, flags, self.crc, ms, state.last_before_raw or 0, n_raw, n_ids
        )
        return head + struct.pack("<" + "".join(fmt), *vals)

    def decode(self, data: bytes, readonly: bool = False) -> EntityState:
        """The state back. ``readonly`` (serving) skips the dedup ids and the exact tile
        sums: such a state finalizes to the same values but must not be updated."""
        if len(data) < _HEAD.size or data[:2] != MAGIC:
            raise ValueError(
                f"state: {len(data)} bytes is not a skewless state (bad magic or too short)"
            )
        _, version, flags, crc, ms, last, n_raw, n_ids = _HEAD.unpack_from(data)
        if version != VERSION:
            raise ValueError(f"state: version {version} is not supported (expected {VERSION})")
        if crc != self.crc:
            raise ValueError(
                f"state: written for other {self.layout.entity.name} definitions "
                f"(layout {crc:08x}, running {self.crc:08x}); rebuild it with a backfill"
            )
        counts = self._levels.unpack_from(data, _HEAD.size)
        r = _Reader(data, _HEAD.size + self._levels.size)
        state = self.layout.new_state()
        state.max_seen = ms if flags & _HAS_MAX else None
        state.last_before_raw = last if flags & _HAS_LAST else None
        raw_off = r.take("I", n_raw)
        vals = [r.take("d", n_raw) for _ in range(self.nf)]
        state.raw_ts = [ms - d for d in raw_off]
        state.raw_vals = list(zip(*vals, strict=True)) if n_raw else []
        if readonly:
            r.off += 12 * n_ids
        else:
            id_off = r.take("I", n_ids)
            state.ids = {h: ms - d for d, h in zip(id_off, r.take("Q", n_ids), strict=True)}
        for needs, hop, count, level in zip(
            self.needs, self.layout.hops, counts, state.levels, strict=True
        ):
            if not count:
                continue
            cur = ms // hop
            width = len(needs)
            flat = r.take("I", 2 * count)
            comps = r.take("d", count * width * self.nf)
            make = _light_tile if readonly else _tile
            for i in range(count):
                tiles = []
                for f in range(self.nf):
                    base = f * width * count + i
                    got = {c: comps[base + ci * count] for ci, c in enumerate(needs)}
                    tiles.append(make(flat[count + i], got))
                level[cur - flat[i]] = tiles
        if r.off != len(data):
            raise ValueError(f"state: {len(data) - r.off} trailing bytes; the state is corrupt")
        return state


def _pack(code: str, values: list[Any]) -> bytes:
    return struct.pack(f"<{len(values)}{code}", *values) if values else b""


class _Reader:
    def __init__(self, data: bytes, off: int) -> None:
        self.data, self.off = data, off

    def take(self, code: str, count: int) -> tuple[Any, ...]:
        if not count:
            return ()
        fmt = struct.Struct(f"<{count}{code}")
        if self.off + fmt.size > len(self.data):
            raise ValueError("state: truncated; the state is corrupt")
        out = fmt.unpack_from(self.data, self.off)
        self.off += fmt.size
        return out


def _components(tiles: list[moments.Tile], comp: str) -> list[float]:
    if comp == SUM:
        return [moments.summary(t)[0] for t in tiles]
    if comp == M2:
        return [moments.summary(t)[1] for t in tiles]
    slot = moments.MIN if comp == MIN else moments.MAX
    return [float(t[slot]) for t in tiles]


def _tile(n: int, comps: dict[str, float]) -> moments.Tile:
    return moments.from_summary(
        n,
        comps.get(SUM, 0.0),
        comps.get(M2, 0.0),
        comps.get(MIN, math.inf),
        comps.get(MAX, -math.inf),
    )


def _light_tile(n: int, comps: dict[str, float]) -> moments.Tile:
    """Summary only: enough to finalize, not to add to."""
    return [
        n, 0, 0, 0, comps.get(MIN, math.inf), comps.get(MAX, -math.inf), 1,
        (comps.get(SUM, 0.0), comps.get(M2, 0.0)),
    ]  # fmt: skip
