"""The stream's prefetch of start states: one pipelined read per batch for the keys a
worker does not hold (bootstrap states; with idle eviction, evicted snapshots first)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from features.definitions import FeatureSet
from features.plan import Plan
from features.store import StoreConfig, StoreUnavailableError
from flows import stream_io
from flows.stream_evict import Evictions, Returned, read_evicted
from flows.stream_io import Ingested
from flows.stream_shard import Poll

log = logging.getLogger("skewless.stream")

MISSING = object()


class Prefetch:
    """Reads the start state of every entity this process does not hold, one pipelined
    round trip per batch, before the batch is keyed; the entity steps then take it from
    here instead of one round trip per new key. (A key resumed from a recovery snapshot
    needs none: its prefetched entry is dropped at its first batch.) With idle eviction an
    entity leaves ``seen`` once its eviction is written (flows/stream_evict.py), so
    ``seen`` stays as small as what the workers hold."""

    def __init__(self, plan: Plan, store: StoreConfig, evictions: Evictions | None) -> None:
        self.store, self.evictions = store, evictions
        self.fs = plan.fs
        self.entities = tuple((p.name, p.key) for p in plan.entities)
        self.seen: dict[str, set[int]] = {name: set() for name, _ in self.entities}
        self.cache: dict[tuple[str, int], bytes | Returned | None] = {}
        self.lock = threading.Lock()
        self.generation = 0  # bumped by each forget: a read that spans one is dropped
        if evictions is not None:  # with eviction, ``seen`` is what the workers hold
            evictions.prefetch = self

    def __call__(self, items: list[Any]) -> list[Any]:
        events = [x.event for x in items if isinstance(x, Ingested)]
        keys: list[tuple[str, int]] = []
        with self.lock:
            generation = self.generation
            for name, key in self.entities:
                seen = self.seen[name]
                for e in events:
                    entity_id = key(e)
                    if entity_id not in seen:
                        seen.add(entity_id)
                        keys.append((name, entity_id))
        self._read(keys, generation)
        return items

    def routed(self, poll: Poll) -> Poll:
        """The sharded layout's poll: the ids are its groups' keys, each once."""
        keys: list[tuple[str, int]] = []
        with self.lock:
            generation = self.generation
            for _, (name, group) in poll.routed:
                seen = self.seen[name]
                for entity_id in group:
                    if entity_id not in seen:
                        seen.add(entity_id)
                        keys.append((name, entity_id))
        self._read(keys, generation)
        return poll

    def _read(self, keys: list[tuple[str, int]], generation: int) -> None:
        if keys:
            raws = read_start(self.store, self.fs, keys, self.evictions is not None)
            with self.lock:
                # an eviction written meanwhile may be newer than what was read: leave the
                # keys to the entity step's own read (they stay in ``seen``)
                if generation == self.generation:
                    self.cache.update(zip(keys, raws, strict=True))

    def forget(self, keys: list[tuple[str, int]]) -> None:
        """Evicted keys whose snapshot is written: the next batch with one reads it again
        (a cached read from before is stale: dropped)."""
        with self.lock:
            self.generation += 1
            for name, entity_id in keys:
                self.seen[name].discard(entity_id)
                self.cache.pop((name, entity_id), None)

    def take(self, key: tuple[str, int]) -> object:
        with self.lock:
            return self.cache.pop(key, MISSING)


def read_start(
    store: StoreConfig, fs: FeatureSet, keys: list[tuple[str, int]], evicting: bool
) -> list[bytes | Returned | None]:
    """Start states: an evicted key's snapshot, else the bootstrap state; retried with
    backoff while the store is down (never skipped: a missing start state would silently
    lose the backfill's history)."""
    backoff = 0.2
    while True:
        try:
            s = stream_io.store_for(store, fs)
            out: list[bytes | Returned | None] = [None] * len(keys)
            if evicting:
                out = [None if b is None else Returned(b) for b in read_evicted(s, keys)]
            todo = [i for i, x in enumerate(out) if x is None]
            boot = s.read_states([keys[i] for i in todo], bootstrap=True) if todo else []
            for i, b in zip(todo, boot, strict=True):
                out[i] = b
            return out
        except StoreUnavailableError as exc:
            log.warning("%s; retrying in %.1fs", exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
