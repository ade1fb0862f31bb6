"""Idle eviction (``skewless stream --evict-after SECONDS``): bounded worker memory.

An entity whose key has had no event for ``SECONDS`` of wall-clock time is dropped from
its worker (Bytewax ``notify_at``/``on_notify`` returning ``DISCARD``). Wall clock, not
event time: memory is spent in wall-clock time, and a replay of old data (or a stalled
partition) would never advance an event-time deadline.

What an evicted entity leaves behind is its *exact* snapshot (the big-integer sums, the
dedup ids, the raw events: :meth:`State` ``snapshot``), not its online row: a row's
sums are rounded to f64, and a state decoded from it would not continue byte-identically.
``on_notify`` emits an :class:`Evicted` item; the worker's sink writes it
(``skewless:stream:<project>:evicted:<entity>:<id>``) in the same pipeline as the rows,
so within the same Bytewax epoch as the discard: a recovery snapshot that no longer holds
the key is committed only once the sink wrote its eviction. Until the sink wrote it, the
snapshot stays in :attr:`Evictions.pending` (and the key in the prefetch's ``seen``), so
a key that returns early takes it from there; once written, the key leaves ``seen`` and
the next batch that brings it back prefetches the snapshot (else the bootstrap state)
with the new keys, in one pipelined read.

After a kill -9 the snapshot in Redis can be ahead of the recovery snapshot's epoch (the
key was evicted after the last committed epoch): the replay then re-delivers events it
already holds. Each of them is refused: an event the state applied is either within the
entity's horizon of its newest event, where its id is kept (a duplicate), or older, and
then too late for it (never applied again). So values stay exact; the only trace is such
a replayed event counted as a duplicate, or written again to the late output (which is
at-least-once across a crash anyway). Not covered: Redis losing its data while an
entity is evicted (the worker no longer holds it, so the loss rewrite cannot restore it).
"""

from __future__ import annotations

import struct
import threading
from typing import Any, NamedTuple

_COVER = struct.Struct("<q")
_NONE = -(2**63)


class Evicted(NamedTuple):
    """An entity dropped from its worker: its exact snapshot, for the sink to write."""

    entity: str
    entity_id: int
    blob: bytes


def pack(covered_until: int | None, snapshot: bytes) -> bytes:
    return _COVER.pack(_NONE if covered_until is None else covered_until) + snapshot


def unpack(blob: bytes) -> tuple[int | None, bytes]:
    (covered,) = _COVER.unpack_from(blob)
    return (None if covered == _NONE else covered), blob[_COVER.size :]


def snap_key(project: bytes, entity: str, entity_id: int) -> bytes:
    return b"skewless:stream:%s:evicted:%s:%d" % (project, entity.encode(), entity_id)


class Returned(NamedTuple):
    """A prefetched entity that was evicted before: its packed snapshot."""

    blob: bytes


class Evictions:
    """The flow's evictions not yet written by their sink (shared by the workers)."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self.pending: dict[tuple[str, int], bytes] = {}
        self.lock = threading.Lock()
        self.prefetch: Any = None  # the flow's Prefetch, when there is one

    def evict(self, entity: str, entity_id: int, blob: bytes) -> Evicted:
        with self.lock:
            self.pending[(entity, entity_id)] = blob
        return Evicted(entity, entity_id, blob)

    def take(self, entity: str, entity_id: int) -> bytes | None:
        """The snapshot of a key that returns before its eviction was written."""
        with self.lock:
            return self.pending.pop((entity, entity_id), None)

    def written(self, items: list[Evicted]) -> None:
        """The sink wrote these: a key not taken back since leaves the prefetch's ``seen``
        (its next return reads the snapshot from Redis)."""
        gone: list[tuple[str, int]] = []
        with self.lock:
            for ev in items:
                key = (ev.entity, ev.entity_id)
                if self.pending.get(key) is ev.blob:
                    del self.pending[key]
                    gone.append(key)
        if self.prefetch is not None and gone:
            self.prefetch.forget(gone)


def read_evicted(store: Any, keys: list[tuple[str, int]]) -> list[bytes | None]:
    """Each key's eviction snapshot (None: never evicted), one pipelined read."""
    project: bytes = store.project
    replies = store.write_rows({}, [("GET", snap_key(project, e, i)) for e, i in keys])
    return [r if isinstance(r, bytes) else None for r in replies]


def write_commands(store: Any, items: list[Evicted]) -> list[tuple[str | bytes, ...]]:
    project: bytes = store.project
    return [("SET", snap_key(project, ev.entity, ev.entity_id), ev.blob) for ev in items]
