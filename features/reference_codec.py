"""The Python reference codec: compact, versioned bytes for a reference engine state (no
pickle). The native core writes and reads the very same bytes (held equal by the tests);
no production path runs this module.

The bytes are canonical: the same multiset of accepted events gives the same bytes,
whatever order they arrived in. Times are stored as unsigned offsets behind the newest
event, tiles only with the components their level's ops read.

Layout v1 (little-endian)::

    header  magic "SK", version u8, flags u8, layout crc32 u32, max_seen i64,
            last_before_raw i64, n_raw u32, n_ids u32, n_tiles u32 × levels
    raw     ts offsets u32[n_raw], values f64[n_raw] per field
    ids     ts offsets u32[n_ids], hashes u64[n_ids]          (every entity dedups)
    tiles   per level: bucket offsets u32, n u32, then per field the level's components
            of sum, m2, min, max as f64

>>> from features.reference_engine import Engine
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
from typing import Any

from features import moments
from features.layout import COMPONENTS, M2, MIN, SUM
from features.reference_engine import EntityState, ReferenceLayout

MAGIC = b"SK"
VERSION = 1
_HAS_MAX, _HAS_LAST = 1, 2
_HEAD = struct.Struct("<2sBBIqqII")
_U32_MAX = 2**32 - 1


class StateCodec:
    """Encodes/decodes one entity layout's states."""

    def __init__(self, layout: ReferenceLayout) -> None:
        self.layout = layout
        self.nf = len(layout.fields)
        self.needs, self.crc = layout.needs, layout.crc
        self._slots = tuple(
            tuple(nd.index(c) if c in nd else -1 for c in COMPONENTS) for nd in self.needs
        )
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
        nf = self.nf
        # one unpack for the whole body: the header's counts give its exact layout
        fmt = [f"<{n_raw}I{nf * n_raw}d{n_ids}I{n_ids}Q"]
        fmt += [f"{2 * c}I{c * len(nd) * nf}d" for nd, c in zip(self.needs, counts, strict=True)]
        body = "".join(fmt)
        off = _HEAD.size + self._levels.size
        if off + struct.calcsize(body) != len(data):
            raise ValueError(
                f"state: {len(data)} bytes do not match its header; the state is corrupt"
            )
        v = struct.unpack_from(body, data, off)
        state = self.layout.new_state()
        state.max_seen = ms if flags & _HAS_MAX else None
        state.last_before_raw = last if flags & _HAS_LAST else None
        state.raw_ts = [ms - d for d in v[:n_raw]]
        p = n_raw
        if n_raw:
            state.raw_vals = list(
                zip(*(v[p + f * n_raw : p + (f + 1) * n_raw] for f in range(nf)), strict=True)
            )
        p += nf * n_raw
        if not readonly:
            state.ids = {
                h: ms - d
                for d, h in zip(v[p : p + n_ids], v[p + n_ids : p + 2 * n_ids], strict=True)
            }
        p += 2 * n_ids
        for needs, slots, hop, count, level in zip(
            self.needs, self._slots, self.layout.hops, counts, state.levels, strict=True
        ):
            if not count:
                continue
            cur, width = ms // hop, len(needs)
            buckets, ns = v[p : p + count], v[p + count : p + 2 * count]
            p += 2 * count
            for f in range(nf):
                comps = [
                    v[p + (f * width + ci) * count : p + (f * width + ci + 1) * count]
                    for ci in range(width)
                ]
                isum, im2, imin, imax = slots
                for i in range(count):
                    sm = comps[isum][i] if isum >= 0 else 0.0
                    m2 = comps[im2][i] if im2 >= 0 else 0.0
                    mn = comps[imin][i] if imin >= 0 else math.inf
                    mx = comps[imax][i] if imax >= 0 else -math.inf
                    tile = (
                        [ns[i], 0, 0, 0, mn, mx, 1, (sm, m2)]
                        if readonly
                        else moments.from_summary(ns[i], sm, m2, mn, mx)
                    )
                    b = cur - buckets[i]
                    if f == 0:
                        level[b] = [tile]
                    else:
                        level[b].append(tile)
            p += count * width * nf
        return state


def _components(tiles: list[moments.Tile], comp: str) -> list[float]:
    if comp == SUM:
        return [moments.summary(t)[0] for t in tiles]
    if comp == M2:
        return [moments.summary(t)[1] for t in tiles]
    slot = moments.MIN if comp == MIN else moments.MAX
    return [float(t[slot]) for t in tiles]
