"""``Score`` calls in flight together share one store round trip and one predict.

:class:`~serving.servicer.ScorerServicer` scores a ``Score`` inline on the event loop,
which is the fastest path for one call alone, but the loop is blocked for the store round
trip: with many calls in flight, each waits for the one before, and the server does
nothing while Redis answers (a third of the do-nothing gRPC floor's rate at 32 in flight).

Here a call only queues its validated event. One drain task hands the queue, as one
batch, to the worker thread (:meth:`serving.scorer.Scorer.score_batch`: ``score``'s
values, which the tests hold equal; one event is ``score`` itself); while the thread
waits on the store, the loop keeps taking calls, which form the next batch. The thread
hop costs tens of microseconds for a call alone, and the batch turns N round trips and N
predicts into one each.

Each call gets the answer or the error it would get alone: an event the batch refuses
(its time too old for the state) is scored alone and the rest stay a batch; any other
failure (a corrupt state) scores the batch's events one by one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import score_response
from serving.scorer import BatchItemError, ScoreResult
from serving.servicer import ScorerServicer, _kind

#: at most this many events per coalesced batch (the rest wait for the next turn)
MAX_COALESCED = 64

_Pending = tuple[Any, str, "asyncio.Future[ScoreResult]"]


class CoalescingServicer(ScorerServicer):
    """:class:`ScorerServicer` whose ``Score`` calls in flight are scored together."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: list[_Pending] = []
        self._drainer: asyncio.Task[None] | None = None

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:
        event = self.convert.request_event(request)
        if self.executor is None:
            return score_response(self._score_one(event, _kind(request)), request.include_features)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ScoreResult] = loop.create_future()
        self._queue.append((event, _kind(request), future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return score_response(await future, request.include_features)

    async def _drain(self) -> None:
        """Score what is queued on the worker thread, one batch at a time; calls that
        arrive meanwhile (the event loop stays free) form the next batch."""
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_COALESCED], self._queue[MAX_COALESCED:]
                batch = [p for p in batch if not p[2].done()]  # a cancelled call is not scored
                outcomes = await loop.run_in_executor(self.executor, self._score, batch)
                for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._drainer = None

    def _score(self, batch: list[_Pending]) -> list[tuple[bool, Any]]:
        """(ok, result or exception) per call, in order (on the worker thread)."""
        outcomes: dict[int, tuple[bool, Any]] = {}
        rest = list(range(len(batch)))
        while len(rest) > 1:
            try:
                results = self.scorer.score_batch([batch[i][0] for i in rest])
            except BatchItemError as exc:  # that event alone fails: the rest stay a batch
                i = rest.pop(exc.index)
                outcomes[i] = self._alone(batch[i])
                continue
            except Exception:  # e.g. a corrupt state: each call alone, each its own answer
                break
            outcomes.update((i, (True, r)) for i, r in zip(rest, results, strict=True))
            rest = []
        for i in rest:
            outcomes[i] = self._alone(batch[i])
        return [outcomes[i] for i in range(len(batch))]

    def _alone(self, pending: _Pending) -> tuple[bool, Any]:
        event, path, _ = pending
        try:
            return True, self._score_one(event, path)
        except Exception as exc:
            return False, exc
