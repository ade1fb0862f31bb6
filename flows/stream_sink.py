"""The stream's online-store sink: one pipelined write per batch, retried while the store
is down, and recovery from a Redis that lost its data.

Redis can come back empty (a restart without persistence, a FLUSHALL) or older (a failover
to a replica that lagged). The stream would then rewrite only the entities it touches
again; the others would stay missing for good. So each worker's sink owns a marker key
(``skewless:stream:<project>:live:<random>``) and rotates its token with every batch, in
the same pipeline after the batch's rows: Redis applies a connection's commands in
order, and a replica replicates them in order, so a marker that is not the token written
last (or is missing) proves that some of this worker's writes are gone. The worker then
rewrites every state it holds (:class:`HeldStates`), the very rows it wrote last. On a
Redis Cluster each master holds such a marker (a pipeline's order holds per node only,
and a master loses its data alone).

Why a marker rather than Redis' ``run_id``: the marker costs one command per batch and
no extra round trip; it also catches a FLUSHALL (same ``run_id``) and a failover to a
replica, lagging or not, that lacks the last token. A persistent per-worker key
(``skewless:stream:<project>:worker:<index>``), read and set by a run's first check,
tells a run resumed from a recovery snapshot that Redis lost the data while the stream
was down: a worker whose key was missing rewrites its resumed states (they may come in
after that first check: Bytewax builds them when the stateful step first runs).

Bytewax workers are threads and a worker's stateful steps and its sink partition run on
that worker's thread (rows are not exchanged before the sink), so the rewrite never reads
a state halfway through an update.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from operator import itemgetter
from typing import Any, Protocol, TypeVar

from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from features.definitions import FeatureSet
from features.store import OnlineRow, StoreConfig, StoreUnavailableError
from features.store.redis import RedisStore
from flows.stream_evict import Evicted, Evictions, write_commands
from flows.stream_io import METRICS, RowOut, observe_many, stop_requested, store_for
from flows.stream_shard import RowBatch

log = logging.getLogger("skewless.stream")

T = TypeVar("T")
REWRITE_CHUNK = 2_000  # rows per pipeline when rewriting (states are a few KB each)
MARKER_TTL_S = 7 * 86_400  # a stream idle longer than this rewrites once, needlessly
TICK_S = 1.0  # an idle worker checks its marker this often


class Tick:
    """A worker's nudge to its own sink: check the marker even when no rows come (an idle
    stream would otherwise notice a loss only at its next event)."""

    __slots__ = ()


TICK = Tick()


class _TickPartition(StatelessSourcePartition[Tick]):
    def __init__(self) -> None:
        self.due = datetime.now(UTC) + timedelta(seconds=TICK_S)

    def next_batch(self) -> list[Tick]:
        if stop_requested():
            raise StopIteration
        now = datetime.now(UTC)
        if now < self.due:
            return []
        self.due = now + timedelta(seconds=TICK_S)
        return [TICK]

    def next_awake(self) -> datetime:
        return self.due


class LossTicks(DynamicSource[Tick]):
    """One :data:`TICK` per second on every worker (a tailing flow only: it never ends but
    on a stop request). Merged straight into the sink's input, so each tick reaches the
    sink of the worker that made it."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _TickPartition:
        return _TickPartition()


class _Holder(Protocol):
    state: Any


class _Held:
    """One worker's held states: per entity, its native core and ``{id: logic}``."""

    def __init__(self) -> None:
        self.by_entity: dict[str, tuple[Any, dict[int, _Holder]]] = {}
        self.resumed = 0

    def add(self, entity: str, core: Any, entity_id: int, logic: _Holder, resumed: bool) -> None:
        held = self.by_entity.get(entity)
        if held is None:
            held = self.by_entity[entity] = (core, {})
        if held[1].setdefault(entity_id, logic) is not logic:
            held[1][entity_id] = logic
        else:
            METRICS.held.inc()
        self.resumed += resumed

    def remove(self, entity: str, entity_id: int) -> None:
        """An evicted entity: no longer held (nor rewritten after a loss)."""
        held = self.by_entity.get(entity)
        if held is not None and held[1].pop(entity_id, None) is not None:
            METRICS.held.dec()
            METRICS.evicted.inc()

    def rows(self) -> dict[str, list[OnlineRow]]:
        """The row of every held state, as the entity step writes it after a change."""
        out: dict[str, list[OnlineRow]] = {}
        for entity, (core, logics) in self.by_entity.items():
            rows = out[entity] = []
            for entity_id, logic in logics.items():
                state = logic.state
                if state is not None:
                    features, blob = core.row(state)
                    rows.append(OnlineRow(entity_id, state.max_seen, features, blob))
        return out


class HeldStates:
    """Every entity state the flow's workers hold, one registry per worker thread. The
    sink partition starts its worker's registry when built (before any state: Bytewax
    builds sinks first, then the resumed states), the entity steps add to it."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.workers: list[_Held] = []  # every worker's registry (for counts)

    def start_worker(self) -> _Held:
        """This thread's registry, made if none: with several workers Bytewax may build a
        sink partition after its worker's first states (a fresh registry here lost them:
        evicted states were then never removed, nor counted)."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = _Held()
            self.workers.append(held)
        return held

    def worker(self) -> _Held:
        held: _Held | None = getattr(self._local, "held", None)
        return held if held is not None else self.start_worker()


class _Marker:
    """One marker key and its worker start key (on the same node), and its last token."""

    __slots__ = ("key", "last", "start_key", "start_missing")

    def __init__(self, key: bytes, start_key: bytes) -> None:
        self.key, self.start_key = key, start_key
        self.last: bytes | None = None  # the token Redis holds after our last write
        self.start_missing: bool | None = None  # the start key, at its first check


class LossWatch:
    """A worker's markers in Redis: rotated with each pipelined write, checked on the
    reply. One marker on a single server; on a Redis Cluster one per master (a hash tag
    of a slot it serves, :meth:`RedisClusterStore.marker_tags`), since a master loses its
    data alone (a restart, a failover to a lagging replica) and the order of a pipeline
    holds per node only. A loss anywhere rewrites every held state."""

    def __init__(self, store: RedisStore, worker_index: int) -> None:
        self.store = store
        self.run = secrets.token_hex(8).encode()
        head = b"skewless:stream:" + store.project
        self.key = head + b":live:" + self.run
        self.start_key = head + b":worker:%d" % worker_index
        self.seq = 0
        self.markers: list[_Marker] = []
        self.tags: list[bytes] = []
        self.covered = 0  # resumed states already checked (or rewritten)

    def _current(self) -> list[_Marker]:
        """The markers, one more for each master that serves none of them (cluster)."""
        tags_for = getattr(self.store, "marker_tags", None)
        if tags_for is None:
            if not self.markers:
                self.markers.append(_Marker(self.key, self.start_key))
            return self.markers
        for tag in tags_for(self.key + b":", self.tags):
            self.tags.append(tag)
            self.markers.append(_Marker(self.key + b":" + tag, self.start_key + b":" + tag))
        return self.markers

    def write(
        self,
        by_entity: Mapping[str, Sequence[OnlineRow]],
        resumed: int,
        extra: Sequence[tuple[str | bytes, ...]] = (),
    ) -> str:
        """Write the rows and rotate the markers; '' if Redis kept everything, else why not.
        ``resumed``: how many states the worker resumed from a snapshot so far."""
        markers = self._current()
        token = b"%s:%d" % (self.run, self.seq + 1)
        ttl = str(MARKER_TTL_S)
        then: list[tuple[str | bytes, ...]] = [
            ("SET", m.key, token, "EX", ttl, "GET") for m in markers
        ]
        first = [m for m in markers if m.start_missing is None]
        then += [("SET", m.start_key, b"1", "GET") for m in first]
        then += extra
        replies = self.store.write_rows(by_entity, then)
        lost = ""
        for m, old in zip(markers, replies, strict=False):
            # the token itself: a retried pipeline whose first try had landed
            if not lost and old not in (m.last, token):
                lost = f"marker {'missing' if old is None else 'stale'}{self._where(m.key)}"
        for m, old in zip(first, replies[len(markers) :], strict=False):
            m.start_missing = old is None
        if resumed > self.covered:
            gone = next((m for m in markers if m.start_missing), None)
            if gone is not None:  # lost while the stream was down
                lost = lost or f"marker missing{self._where(gone.key)}"
        if lost:
            self.covered = resumed  # the rewrite that follows holds them all
        self.seq = self.seq + 1
        for m in markers:
            m.last = token
        return lost

    def _where(self, key: bytes) -> str:
        node_of = getattr(self.store, "node_of", None)
        return "" if node_of is None else f" on {node_of(key)}"

    def close(self) -> None:
        with contextlib.suppress(StoreUnavailableError, OSError, RuntimeError):
            keys = [m.key for m in self.markers]
            if keys:  # else they expire by themselves
                self.store.write_rows({}, [("DEL", k) for k in keys])


def _retrying(write: Callable[[], T]) -> T:
    """``write()`` until the store answers: an outage stalls the flow (and Kafka buffers)
    instead of losing updates."""
    backoff = 0.1
    while True:
        try:
            return write()
        except StoreUnavailableError as exc:
            METRICS.retries.inc()
            log.warning("online store write failed: %s; retrying in %.1fs", exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def _chunks(rows: dict[str, list[OnlineRow]], size: int) -> Iterator[dict[str, list[OnlineRow]]]:
    chunk: dict[str, list[OnlineRow]] = {}
    n = 0
    for entity, entity_rows in rows.items():
        for i in range(0, len(entity_rows), size):
            part = entity_rows[i : i + size]
            chunk.setdefault(entity, []).extend(part)
            n += len(part)
            if n >= size:
                yield chunk
                chunk, n = {}, 0
    yield chunk


_ROW: Callable[[RowOut], OnlineRow] = itemgetter(1)  # RowOut's row
_PRODUCED: Callable[[RowOut], int] = itemgetter(2)  # and its produced_ms


def latest_rows(items: Sequence[RowOut | RowBatch]) -> tuple[dict[str, list[OnlineRow]], list[int]]:
    """The newest row of each ``(entity, id)`` among a write's rows (its last one: it holds
    the newest state), per entity in the order each key first came, and their produced
    times in that order. Shard batches of distinct shards (the sharded layout's write of
    a poll) hold each key once: taken as they are, no per-row dict."""
    batches = [b for b in items if type(b) is RowBatch]
    shards = {b.shard for b in batches}
    if len(batches) == len(items) and len(shards) == len(batches) and None not in shards:
        by_entity: dict[str, list[OnlineRow]] = {}
        produced: list[int] = []
        for b in batches:
            if not b:
                continue
            entity = b[0].entity
            have = by_entity.get(entity)
            if have is None:
                by_entity[entity] = list(map(_ROW, b))
            else:
                have += map(_ROW, b)
            produced += map(_PRODUCED, b)
        return by_entity, produced
    latest: dict[tuple[str, int], tuple[OnlineRow, int]] = {}
    for item in items:
        if type(item) is RowBatch:  # a shard's rows (flows/stream_shard.py)
            for r in item:
                latest[(r.entity, r.row.entity_id)] = (r.row, r.produced_ms)
        elif type(item) is RowOut:
            latest[(item.entity, item.row.entity_id)] = (item.row, item.produced_ms)
    by_entity = {}
    for (entity, _), (row, _) in latest.items():
        by_entity.setdefault(entity, []).append(row)
    return by_entity, [p for _, p in latest.values()]


class _StorePartition(StatelessSinkPartition[RowOut | RowBatch | Tick | Evicted]):
    def __init__(
        self,
        cfg: StoreConfig,
        fs: FeatureSet,
        held: HeldStates,
        worker_index: int,
        evictions: Evictions | None = None,
    ) -> None:
        self.evictions = evictions
        self.store = store_for(cfg, fs)
        self.held = held.start_worker()
        store = self.store
        self.watch = LossWatch(store, worker_index) if isinstance(store, RedisStore) else None
        self.checked = -float("inf")  # when the marker was last checked (monotonic)

    def _write(self, by_entity: dict[str, list[OnlineRow]], evicted: list[Evicted] = []) -> str:  # noqa: B006
        extra = write_commands(self.store, evicted) if evicted else []
        if self.watch is None:
            for entity, rows in by_entity.items():
                self.store.write(entity, rows)
            if extra:
                self.store.write_rows({}, extra)  # type: ignore[attr-defined]
            return ""
        return self.watch.write(by_entity, self.held.resumed, extra)

    def write_batch(self, items: list[RowOut | RowBatch | Tick | Evicted]) -> None:
        rows: list[RowOut | RowBatch] = []
        evicted: list[Evicted] = []
        for item in items:
            kind = type(item)
            if kind is RowBatch or kind is RowOut:
                rows.append(item)  # type: ignore[arg-type]
            elif kind is Evicted:
                evicted.append(item)  # type: ignore[arg-type]
        if evicted and self.evictions is not None:  # written with the rows, same epoch
            lost = _retrying(lambda: self._write({}, evicted))
            self.evictions.written(evicted)
            while lost:
                lost = self._rewrite(lost)
        by_entity, produced = latest_rows(rows)
        if not produced:
            self._tick()
            return
        start = time.perf_counter()
        lost = _retrying(lambda: self._write(by_entity))
        self.checked = time.monotonic()
        METRICS.write_seconds.observe(time.perf_counter() - start)
        METRICS.rows.inc(len(produced))
        now = time.time() * 1000
        observe_many(METRICS.freshness, [max(now - p, 0.0) / 1000 for p in produced if p])
        while lost:
            lost = self._rewrite(lost)

    def _tick(self) -> None:
        """An idle worker's marker check, at most once a second; a store that does not
        answer is tried again at the next tick (rows to write retry until it does)."""
        if self.watch is None or time.monotonic() - self.checked < TICK_S:
            return
        try:
            lost = self._write({})
        except StoreUnavailableError:
            return
        self.checked = time.monotonic()
        while lost:
            lost = self._rewrite(lost)

    def _rewrite(self, why: str) -> str:
        """Every held state's row again; the marker rotates with each chunk, so a loss
        during the rewrite starts it over."""
        rows = self.held.rows()
        n = sum(len(r) for r in rows.values())
        log.warning("Redis lost its data (%s); rewriting %d held states", why, n)
        METRICS.redis_losses.inc()
        again = ""
        for chunk in _chunks(rows, REWRITE_CHUNK):
            again = _retrying(partial(self._write, chunk)) or again
        METRICS.states_rewritten.inc(n)
        return again

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()


class OnlineStoreSink(DynamicSink[RowOut | RowBatch | Tick | Evicted]):
    """Batched writes of each touched entity's latest row; retries with backoff, forever,
    so an outage stalls the flow (and Kafka buffers) instead of losing updates; rewrites
    the worker's held states when Redis lost them."""

    def __init__(
        self, cfg: StoreConfig, fs: FeatureSet, held: HeldStates, evictions: Evictions | None = None
    ) -> None:
        self.cfg, self.fs, self.held, self.evictions = cfg, fs, held, evictions

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StorePartition:
        return _StorePartition(self.cfg, self.fs, self.held, worker_index, self.evictions)
