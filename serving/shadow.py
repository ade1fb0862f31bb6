"""Shadow scoring: a second model scores every request off the response path.

:class:`Shadow` is a prediction sink (:data:`serving.scorer.PredictionSink`) placed in front
of the prediction log. On the request path it only appends the scored events and their
results (the model input vectors included) to a buffer, O(1). Its own thread takes what is
buffered, scores the vectors with the shadow model in one ``predict`` per drain, and hands
the results, now carrying ``shadow_score`` and ``shadow_version``, to the prediction log.
So the response never waits for the shadow model and never fails because of it.

A shadow failure (a model that raises) is counted and logged at most once per
``log_every_s``; the predictions still reach the log, without a shadow score. If the
thread falls more than ``max_pending`` rows behind, new rows skip the shadow (counted) and
go straight to the log: the log loses nothing and memory stays bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from serving.score_types import ScoreResults

if TYPE_CHECKING:
    from serving.scorer import PredictionSink, ScoreResult, _Plan

log = logging.getLogger("skewless.serving.shadow")

#: one scorer call: its events, results and (from a batch) the model input as scored
_Entry = tuple[Sequence[Any], Sequence["ScoreResult"], Any]


class Shadow:
    """Scores every prediction with :attr:`plan`'s model and forwards it to ``downstream``.

    ``on_error`` is called once per failed drain (e.g. a Prometheus counter's ``inc``).
    """

    def __init__(
        self,
        downstream: PredictionSink | None = None,
        *,
        max_pending: int = 100_000,
        interval_s: float = 0.05,
        log_every_s: float = 60.0,
        on_error: Callable[[], Any] | None = None,
    ) -> None:
        self.downstream = downstream
        self.max_pending, self.interval_s, self.log_every_s = max_pending, interval_s, log_every_s
        self.on_error = on_error
        self.plan: _Plan | None = None
        self._buf: deque[_Entry] = deque()
        self._pending = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one drain at a time (the thread, or close)
        self._thread: threading.Thread | None = None
        self._last_log = -float("inf")
        self._unlogged = 0
        self.scored = 0
        self.errors = 0
        self.skipped = 0

    def install(self, plan: _Plan) -> None:
        """The model to shadow (atomic; called by the alias watcher)."""
        self.plan = plan

    @property
    def version(self) -> str | None:
        plan = self.plan
        return None if plan is None else plan.version

    def __call__(
        self, events: Sequence[Any], results: Sequence[ScoreResult], X: Any = None
    ) -> None:
        """The scorer's sink: O(1), never blocks."""
        if self._pending >= self.max_pending:
            self.skipped += len(results)
            if self.downstream is not None:
                self.downstream(events, results, X)
            return
        self._buf.append((events, results, X))
        self._pending += len(results)

    def start(self) -> Shadow:
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self.drain()

    def drain(self) -> int:
        """Score and forward everything buffered; returns the rows handled."""
        with self._lock:
            entries: list[_Entry] = []
            while self._buf:
                entries.append(self._buf.popleft())
            if not entries:
                return 0
            n = sum(len(r) for _, r, _ in entries)
            self._pending = max(self._pending - n, 0)
            plan = self.plan
            if plan is not None:
                entries = self._scored(plan, entries, n)
            if self.downstream is not None:
                for events, results, X in entries:
                    self.downstream(events, results, X)
            return n

    def _scored(self, plan: _Plan, entries: list[_Entry], n: int) -> list[_Entry]:
        """``entries`` with the shadow's score in every result (unchanged on failure). A
        batch's results by column keep their columns, a shadow score column added, and
        their result objects unbuilt: its model input is the matrix as scored."""
        try:
            X = np.empty((n, plan.n), dtype=np.float64)
            at = 0
            for _, rs, Xe in entries:
                if _by_column(rs, Xe):
                    X[at : at + len(rs)] = Xe[:, plan.order_from(rs.feature_names)]
                else:
                    groups: dict[tuple[str, ...], list[int]] = {}
                    for k, r in enumerate(rs):
                        groups.setdefault(r.feature_names, []).append(at + k)
                    for names, rows in groups.items():  # one unless a canary decides too
                        features = [rs[k - at].features for k in rows]
                        X[rows] = np.array(features)[:, plan.order_from(names)]
                at += len(rs)
            scores = plan.model.predict(X).tolist()
        except Exception as exc:  # the shadow must never cost a prediction
            self._failed(plan.version, exc, n)
            return entries
        version, at = plan.version, 0
        out: list[_Entry] = []
        for events, rs, Xe in entries:
            got = scores[at : at + len(rs)]
            out.append((events, _with_shadow(rs, Xe, got, version), Xe))
            at += len(rs)
        self.scored += n
        return out

    def _failed(self, version: str, exc: Exception, n: int) -> None:
        self.errors += 1
        self._unlogged += 1
        if self.on_error is not None:
            self.on_error()
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            log.error(
                "shadow model %s failed (%d failure(s) since the last report; %d rows "
                "logged without a shadow score): %s", version, self._unlogged, n, exc,
            )  # fmt: skip
            self._unlogged = 0

    def close(self) -> None:
        """Stop the thread and forward what is buffered (call before closing the log)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.drain()


def _by_column(results: Sequence[Any], X: Any) -> TypeGuard[ScoreResults]:
    return type(results) is ScoreResults and results.columns is not None and X is not None


def _with_shadow(
    results: Sequence[ScoreResult], X: Any, scores: list[float], version: str
) -> Sequence[ScoreResult]:
    """``results`` carrying the shadow's ``scores`` (by column when they came so)."""

    def built() -> list[ScoreResult]:
        return [r._replace(shadow_score=s, shadow_version=version)
                for r, s in zip(results, scores, strict=True)]  # fmt: skip

    if not _by_column(results, X):
        return built()
    assert results.columns is not None
    columns = {**results.columns, "shadow_score": scores,
               "shadow_version": [version] * len(scores)}  # fmt: skip
    return ScoreResults.by_column(columns, results.feature_names, built)
