"""The prediction log's queue: scored batches in, one writer thread out, bounded.

The request path only appends one entry per scored batch: the events, their results and,
from ``ScoreBatch``, the model input matrix ``X`` as the model saw it (the log takes those
columns as they are; nothing is converted per row on the request path). A writer thread
takes everything queued every ``flush_rows`` rows or ``flush_interval_s`` seconds and hands
it to :meth:`BatchQueue._write` (Parquet or Kafka: :mod:`serving.predlog`).

Back-pressure, never loss: when ``max_pending_rows`` rows wait (the writer cannot keep up),
the caller blocks until the writer has taken them; ``blocked_calls`` and ``blocked_s``
count it. :meth:`BatchQueue.close` (server shutdown, SIGTERM) writes every queued row
before it returns. A failed write is counted in ``errors`` and logged with the number of
rows it lost.

>>> from serving.scorer import ScoreResult
>>> q = BatchQueue(flush_rows=2)
>>> q([("e",)], [ScoreResult("e", 0.5, True, 0.5, "v1", ("x",), [1.0], (), ())])
>>> q.pending_rows, q._buf[0].columns["score"]
(1, (0.5,))
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from serving.score_types import RequestEvents, ScoreResults

log = logging.getLogger("skewless.serving.predlog")

Event = Any


class ScoredBatch(NamedTuple):
    """One scorer call as queued. ``columns``: the results' fields by name, one tuple per
    field (a C-level transpose at call time), without the per-row objects the log does not
    keep (entity infos; the feature lists when ``X`` is there): a queue holding thousands
    of rows must not hold them as live Python objects for the garbage collector to walk.
    ``X`` (n, F) float64 is the model input when the scorer passed it (``ScoreBatch``),
    else None (``columns["features"]`` is kept instead). ``request``: the events' values
    by schema field as Arrow buffers when the native request reader built them
    (:class:`~serving.score_types.RequestEvents`), else None."""

    at_ms: int
    events: Sequence[Event]
    feature_names: tuple[str, ...]
    columns: dict[str, Sequence[Any]]
    X: np.ndarray | None
    request: list[tuple[Any, ...]] | None = None

    @property
    def n(self) -> int:
        return len(self.events)

    @staticmethod
    def of(events: Sequence[Event], results: Sequence[Any], X: np.ndarray | None) -> ScoredBatch:
        at = time.time_ns() // 1_000_000
        if not results:
            return ScoredBatch(at, (), (), {}, X)
        request = events.columns if type(events) is RequestEvents else None
        if type(results) is ScoreResults and results.columns is not None and X is not None:
            # the batch's own columns, as they are (its result objects are not built)
            return ScoredBatch(at, events, results.feature_names, dict(results.columns), X, request)
        names = results[0].feature_names
        columns = dict(zip(results[0]._fields, zip(*results, strict=True), strict=True))
        for dropped in ("entities", "feature_names", *(("features",) if X is not None else ())):
            columns.pop(dropped, None)
        return ScoredBatch(at, events, names, columns, X, request)


class BatchQueue:
    """Bounded queue + writer thread; subclasses implement :meth:`_write`."""

    def __init__(
        self,
        flush_rows: int = 10_000,
        flush_interval_s: float = 60.0,
        max_pending_rows: int | None = None,
    ) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows: must be >= 1, got {flush_rows}")
        self.flush_rows, self.flush_interval_s = flush_rows, flush_interval_s
        self.max_pending_rows = max(max_pending_rows or 10 * flush_rows, flush_rows)
        if max_pending_rows is not None and max_pending_rows < flush_rows:
            raise ValueError(
                f"max_pending_rows: must be >= flush_rows ({flush_rows}), got {max_pending_rows}"
            )
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._buf: list[ScoredBatch] = []
        self.pending_rows = 0
        self._stop = self._closed = False
        self._thread: threading.Thread | None = None
        self.rows_written = 0
        self.errors = 0
        self.blocked_calls = 0
        self.blocked_s = 0.0

    def __call__(
        self, events: Sequence[Event], results: Sequence[Any], X: np.ndarray | None = None
    ) -> None:
        """The scorer's sink: appends one entry; blocks only while the queue is full."""
        entry = ScoredBatch.of(events, results, X)
        with self._cond:
            if self.pending_rows >= self.max_pending_rows and self._writing():
                self.blocked_calls += 1
                t0 = time.monotonic()
                while self.pending_rows >= self.max_pending_rows and self._writing():
                    self._cond.wait(0.1)
                self.blocked_s += time.monotonic() - t0
            self._buf.append(entry)
            self.pending_rows += len(results)
            if self.pending_rows >= self.flush_rows:
                self._cond.notify_all()
            late = self._closed
        if late:  # scored after close: written now, not left in a queue nobody drains
            log.warning("prediction log: %d rows scored after close; writing them now", entry.n)
            self.flush()

    def _writing(self) -> bool:
        """A writer thread runs that will drain the queue (else appending never blocks)."""
        return self._thread is not None and self._thread.is_alive() and not self._stop

    def start(self) -> BatchQueue:
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def _take(self) -> list[ScoredBatch]:
        with self._cond:
            entries, self._buf = self._buf, []
            self.pending_rows = 0
            self._cond.notify_all()  # callers blocked on a full queue may go on
        return entries

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stop or self.pending_rows >= self.flush_rows,
                    timeout=self.flush_interval_s,
                )
                stopping = self._stop
            self.flush()
            if stopping:
                return

    def flush(self) -> None:
        """Write everything queued now (the writer thread calls it; so does close)."""
        with self._write_lock:
            entries = self._take()
            if not entries:
                return
            try:
                self.rows_written += self._write(entries)
            except Exception:  # the log must never take the server down
                self.errors += 1
                log.exception(
                    "prediction log: write failed; %d rows lost",
                    sum(e.n for e in entries),
                )

    def close(self) -> None:
        """Stop the writer and write every queued row before returning."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._cond:
            self._closed = True
        self.flush()
        self._close()

    def register(self, registry: Any) -> None:
        """Expose the queue's counters in a Prometheus ``registry`` (the server's)."""
        registry.register(_Collector(self))

    def _write(self, entries: list[ScoredBatch]) -> int:
        raise NotImplementedError

    def _close(self) -> None:
        pass


class _Collector:
    """The queue's counters, read at scrape time (nothing on the request path)."""

    def __init__(self, queue: BatchQueue) -> None:
        self.queue = queue

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        q, p = self.queue, "skewless_prediction_log_"
        yield GaugeMetricFamily(f"{p}pending_rows", "Rows queued, not yet written", q.pending_rows)
        yield CounterMetricFamily(f"{p}rows_written", "Rows written", q.rows_written)
        yield CounterMetricFamily(f"{p}write_errors", "Writes that failed", q.errors)
        yield CounterMetricFamily(
            f"{p}blocked_calls", "Scorer calls that waited for a full queue", q.blocked_calls
        )
        yield CounterMetricFamily(
            f"{p}blocked_seconds", "Time scorer calls waited for a full queue", q.blocked_s
        )
