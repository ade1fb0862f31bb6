"""Entity layouts: the definitions of one entity compiled into what its state holds.

The native core (:mod:`features.native`) runs on these; so does the Python reference
engine that the tests hold it to (:mod:`features.reference_engine`). Per entity the state
keeps *tiles*: exact partial aggregates per hop bucket, one level per distinct hop (the hops
form a divisibility chain, e.g. 1m | 5m | 1h | 1d), plus the raw events of the last
``exact_horizon`` (rounded down to the finest hop). A window ``[floor(t/H)*H - W, t)`` is
answered from whole buckets of its own level, then ever finer levels for the partial head,
then raw events for the last, unfinished finest bucket.

>>> from features.reference import REFERENCE
>>> card = compile_layouts(REFERENCE)["card"]
>>> card.hops, card.fields
((60000, 300000, 3600000, 86400000), ('amount',))
"""

from __future__ import annotations

import enum
import hashlib
import zlib
from dataclasses import dataclass

from features.definitions import MS_PER_SECOND, Aggregation, FeatureSet, Op

_U32_MAX = 2**32 - 1

# tile components, in serialized order
SUM, M2, MIN, MAX = "sum", "m2", "min", "max"
COMPONENTS = (SUM, M2, MIN, MAX)
#: the components each op reads
OP_NEEDS = {
    Op.COUNT: (),
    Op.SUM: (SUM,),
    Op.MEAN: (SUM,),
    Op.STD: (SUM, M2),
    Op.MIN: (MIN,),
    Op.MAX: (MAX,),
}


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


@dataclass(frozen=True)
class _Group:
    """Features sharing one window: computed from one merged tile."""

    length_ms: int
    hop_ms: int
    level: int
    outputs: tuple[tuple[int, Op, int], ...]  # (feature position, op, field index)
    need_m2: bool  # some output is a std


class EntityLayout:
    """The compiled layout of one entity of a feature set: its feature names, the fields
    it reads, its hop levels and retention, its window groups, and what its state bytes
    hold per level (``needs``) under which signature (``crc``). The native core is built
    from it; so is the Python reference engine (:mod:`features.reference_engine`)."""

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
        # per level, the tile components it stores, in serialized order
        needs: list[tuple[str, ...]] = []
        for j in range(len(self.hops)):
            wanted = {
                c
                for g in self.groups
                if g.level >= j
                for _, op, _ in g.outputs
                for c in OP_NEEDS[op]
            }
            needs.append(tuple(c for c in COMPONENTS if c in wanted))
        self.needs = tuple(needs)
        if self.horizon_ms + self.fine_hop > _U32_MAX or (self.lateness_ms or 0) > _U32_MAX:
            raise ValueError(
                f"{self.entity.name}: the exact horizon plus the largest window and hop is too "
                "long to encode time offsets in 32 bits (about 49 days)"
            )
        signature = repr((self.entity.name, self.hops, self.fields, self.needs, self.primary))
        self.crc = zlib.crc32(signature.encode())

    def raw_floor(self, max_seen: int) -> int:
        return ((max_seen - self.horizon_ms) // self.fine_hop) * self.fine_hop

    def level_floor(self, max_seen: int, j: int) -> int:
        return (max_seen - self.horizon_ms) // self.hops[j] - self.keep[j]


def compile_layouts(fs: FeatureSet) -> dict[str, EntityLayout]:
    """Every entity's layout, by entity name, in definition order."""
    return {e.name: EntityLayout(fs, e.name) for e in fs.entities}
