"""The gRPC servicer: protobuf in, :class:`~serving.scorer.Scorer` call, protobuf out.

Nothing else lives here: validation is :mod:`serving.convert` (the event schema's own
rules), scoring is the plain scorer, and errors become status codes in
:mod:`serving.interceptors`. A servicer method only adds the request *path* to an error
(``transactions[3].event_time: ...``), because only it knows the request's shape.

Single requests run inline on the event loop: the work is a few hundred microseconds of
CPU plus one store round trip, and a thread hop would cost more than it saves. Large
batches run on a worker thread so health checks and small calls stay responsive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from typing import Any

from features.layout import QueryTooOldError
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc
from serving.convert import (
    EventConverter,
    batch_response,
    feature_protos,
    features_request,
    score_response,
    state_proto,
)
from serving.scorer import BatchItemError, Read, Scorer, ScoreResult

#: batches up to this size are scored inline; larger ones on the worker thread
INLINE_BATCH = 32


def _at(path: str, exc: Exception) -> Exception:
    """``exc`` of the same type with its message prefixed by the request path."""
    return type(exc)(f"{path}.{exc}")


def _kind(request: pb.ScoreRequest) -> str:
    return request.WhichOneof("event_kind") or "transaction"


def _deadline(context: Any) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class ScorerServicer(pb_grpc.ScorerServicer):
    def __init__(
        self, scorer: Scorer, max_batch_size: int, executor: Executor | None = None
    ) -> None:
        self.scorer = scorer
        self.convert = EventConverter(scorer.plan)
        self.max_batch_size = max_batch_size
        self.executor = executor

    def _score_one(
        self, event: Any, path: str, read: Read | None = None, log: bool = True
    ) -> ScoreResult:
        try:
            return self.scorer.score(event, read, log)
        except QueryTooOldError as exc:
            raise _at(path, exc) from None

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:
        result = self._score_one(self.convert.request_event(request), _kind(request))
        return score_response(result, request.include_features)

    async def ScoreBatch(
        self, request: pb.ScoreBatchRequest, context: Any
    ) -> pb.ScoreBatchResponse:
        events = self.convert.batch_events(request, self.max_batch_size)
        if not events:
            return pb.ScoreBatchResponse()
        what = "events" if len(request.events) else "transactions"
        results = await self._batch(events, _deadline(context), what)
        return batch_response(results, request.include_features)

    async def _batch(
        self, events: Sequence[Any], deadline: float | None, what: str
    ) -> list[ScoreResult]:
        try:
            if len(events) == 1:
                return [self._score_one(events[0], f"{what}[0]")]
            if len(events) <= INLINE_BATCH or self.executor is None:
                return self.scorer.score_batch(events, deadline)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self.executor, self.scorer.score_batch, events, deadline
            )
        except BatchItemError as exc:
            raise _at(f"{what}[{exc.index}]", exc.error) from None

    async def ScoreStream(
        self, request_iterator: AsyncIterator[pb.ScoreRequest], context: Any
    ) -> AsyncIterator[pb.ScoreResponse]:
        n = 0
        async for request in request_iterator:
            event = self.convert.request_event(request, f"message {n}: ")
            result = self._score_one(event, f"message {n}: {_kind(request)}")
            yield score_response(result, request.include_features)
            n += 1

    async def GetFeatures(
        self, request: pb.GetFeaturesRequest, context: Any
    ) -> pb.GetFeaturesResponse:
        entity, entity_id, at = features_request(request)
        try:
            f = self.scorer.entity_features(entity, entity_id, at)
        except QueryTooOldError as exc:
            field = self.scorer.fs.schema.event_time
            raise QueryTooOldError(f"at{str(exc).removeprefix(field)}") from None
        return pb.GetFeaturesResponse(
            state=state_proto(f.state),
            features=feature_protos(f.names, f.values),
            warnings=f.warnings,
        )
