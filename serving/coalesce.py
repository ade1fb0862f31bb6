"""``Score`` calls that are in flight together share one store round trip and one predict.

A ``Score`` runs inline on the event loop (see :mod:`serving.servicer`), so with many
calls in flight each waited for the one before it, store round trip included. Here a call
only queues its validated event; one callback per event-loop turn scores everything
queued since the last turn with :meth:`serving.scorer.Scorer.score_batch` (the values
:meth:`~serving.scorer.Scorer.score` gives, which the tests hold equal). Alone, a call is
a batch of one, on ``score``'s own path: the latency at one in flight does not change.

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
        self._scheduled = False

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:
        event = self.convert.request_event(request)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ScoreResult] = loop.create_future()
        self._queue.append((event, _kind(request), future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return score_response(await future, request.include_features)

    def _flush(self) -> None:
        batch, self._queue = self._queue[:MAX_COALESCED], self._queue[MAX_COALESCED:]
        if self._queue:
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._scheduled = False
        batch = [p for p in batch if not p[2].done()]  # a cancelled call is not scored
        while len(batch) > 1:
            try:
                results = self.scorer.score_batch([event for event, _, _ in batch])
            except BatchItemError as exc:  # that event alone fails: the rest stay a batch
                self._alone(batch.pop(exc.index))
                continue
            except Exception:  # e.g. a corrupt state: each call alone, each its own answer
                break
            for (_, _, future), result in zip(batch, results, strict=True):
                future.set_result(result)
            return
        for pending in batch:
            self._alone(pending)

    def _alone(self, pending: _Pending) -> None:
        event, path, future = pending
        try:
            future.set_result(self._score_one(event, path))
        except Exception as exc:
            future.set_exception(exc)
