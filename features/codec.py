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

import struct
import zlib
from typing import Any

import numpy as np

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
        ms = state.max_seen or 0
        flags = (_HAS_MAX if state.max_seen is not None else 0) | (
            _HAS_LAST if state.last_before_raw is not None else 0
        )
        levels = [sorted(level.items()) for level in state.levels]
        ids = sorted((ts, h) for h, ts in state.ids.items())
        parts = [
            _HEAD.pack(
                MAGIC,
                VERSION,
                flags,
                self.crc,
                ms,
                state.last_before_raw or 0,
                len(state.raw_ts),
                len(ids),
            ),
            self._levels.pack(*(len(level) for level in levels)),
            np.array([ms - ts for ts in state.raw_ts], dtype="<u4").tobytes(),
            np.array(state.raw_vals, dtype="<f8").reshape(-1, self.nf).T.tobytes(),
            np.array([ms - ts for ts, _ in ids], dtype="<u4").tobytes(),
            np.array([h for _, h in ids], dtype="<u8").tobytes(),
        ]
        for j, (hop, level) in enumerate(zip(self.layout.hops, levels, strict=True)):
            cur = ms // hop
            parts.append(np.array([cur - b for b, _ in level], dtype="<u4").tobytes())
            parts.append(
                np.array([tiles[0][moments.N] for _, tiles in level], dtype="<u4").tobytes()
            )
            for f in range(self.nf):
                for comp in self.needs[j]:
                    parts.append(
                        np.array([_component(t[f], comp) for _, t in level], dtype="<f8").tobytes()
                    )
        return b"".join(parts)

    def decode(self, data: bytes) -> EntityState:
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
        off = _HEAD.size
        counts = self._levels.unpack_from(data, off)
        off += self._levels.size
        reader = _Reader(data, off)
        state = self.layout.new_state()
        state.max_seen = ms if flags & _HAS_MAX else None
        state.last_before_raw = last if flags & _HAS_LAST else None
        raw_off = reader.take("<u4", n_raw)
        vals = [reader.take("<f8", n_raw) for _ in range(self.nf)]
        state.raw_ts = [ms - d for d in raw_off]
        state.raw_vals = list(zip(*vals, strict=True)) if n_raw else []
        id_off = reader.take("<u4", n_ids)
        hashes = reader.take("<u8", n_ids)
        state.ids = {h: ms - d for d, h in zip(id_off, hashes, strict=True)}
        for j, (hop, count) in enumerate(zip(self.layout.hops, counts, strict=True)):
            cur = ms // hop
            buckets = reader.take("<u4", count)
            ns = reader.take("<u4", count)
            comps = [{c: reader.take("<f8", count) for c in self.needs[j]} for _ in range(self.nf)]
            level = state.levels[j]
            for i, (d, n) in enumerate(zip(buckets, ns, strict=True)):
                level[cur - d] = [_tile(n, comps[f], i) for f in range(self.nf)]
        if reader.off != len(data):
            raise ValueError(
                f"state: {len(data) - reader.off} trailing bytes; the state is corrupt"
            )
        return state


class _Reader:
    def __init__(self, data: bytes, off: int) -> None:
        self.data, self.off = data, off

    def take(self, dtype: str, count: int) -> list[Any]:
        size = np.dtype(dtype).itemsize * count
        if self.off + size > len(self.data):
            raise ValueError("state: truncated; the state is corrupt")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.off).tolist()
        self.off += size
        return out


def _component(tile: moments.Tile, comp: str) -> float:
    if comp == SUM:
        return moments.total(tile)
    if comp == M2:
        return moments.m2(tile)
    if comp == MIN:
        return float(tile[moments.MIN])
    return float(tile[moments.MAX])


def _tile(n: int, comps: dict[str, list[float]], i: int) -> moments.Tile:
    def get(c: str, default: float) -> float:
        return comps[c][i] if c in comps else default

    return moments.from_summary(
        n, get(SUM, 0.0), get(M2, 0.0), get(MIN, float("inf")), get(MAX, float("-inf"))
    )
