"""The gRPC servicer: protobuf in, :class:`~serving.scorer.Scorer` call, protobuf out.

Nothing else lives here: validation is :mod:`serving.convert` (the event schema's own
rules), scoring is the plain scorer, and errors become status codes in
:mod:`serving.interceptors`. A servicer method only adds the request *path* to an error
(``transactions[3].event_time: ...``), because only it knows the request's shape.

Single requests run inline on the event loop: the work is a few hundred microseconds of
CPU plus one store round trip, and a thread hop would cost more than it saves. Large
batches run on a worker thread so health checks and small calls stay responsive.

On the server, ``ScoreBatch`` (and ``Score``: :mod:`serving.coalesce`) takes the
request's bytes and returns the response's (:func:`add_to_server`,
:meth:`ScorerServicer.score_batch_bytes`): a typed request is read natively into events
(:mod:`serving.request_native`; anything else parsed strictly as before) and the batch
response is sent as the native encoder wrote it, with no message object either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Any

import grpc

from features.layout import QueryTooOldError
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc
from serving.convert import (
    EventConverter,
    batch_response,
    batch_response_bytes,
    feature_protos,
    features_request,
    score_response,
    state_proto,
)
from serving.request_native import BatchRequestReader
from serving.scorer import BatchItemError, Read, Scorer, ScoreResult
from serving.wire import MalformedRequestError, strict_parser

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
        self._native_reader = BatchRequestReader.of(scorer.plan)
        self._strict_batch = strict_parser(pb.ScoreBatchRequest.FromString)

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
        include = request.include_features
        results = await self._batch(events, _deadline(context), what, include)
        return batch_response(results, include)

    def batch_request(self, data: bytes) -> tuple[list[Any], bool, str]:
        """``(events, include_features, what)`` of a serialized ScoreBatchRequest: read
        natively when it is typed and plainly valid, else parsed strictly and converted in
        Python, whose errors name the field (the same errors either way)."""
        native = self._native_reader
        got = None if native is None else native.parse(data, self.max_batch_size)
        if got is not None:
            return got[0], got[1], "transactions"
        assert self._strict_batch is not None
        request = self._strict_batch(data)
        if type(request) is MalformedRequestError:
            raise request
        events = self.convert.batch_events(request, self.max_batch_size)
        what = "events" if len(request.events) else "transactions"
        return events, request.include_features, what

    async def score_batch_bytes(self, data: bytes, context: Any) -> bytes:
        """``ScoreBatch`` as the server runs it: request bytes in, response bytes out."""
        events, include_features, what = self.batch_request(data)
        if not events:
            return b""
        results = await self._batch(events, _deadline(context), what, include_features)
        return batch_response_bytes(results, include_features)

    async def _batch(
        self, events: Sequence[Any], deadline: float | None, what: str, infos: bool
    ) -> Sequence[ScoreResult]:
        """The events' results; ``infos``: with each result's entity states (only a
        response with features carries them)."""
        try:
            if len(events) == 1:
                return [self._score_one(events[0], f"{what}[0]")]
            score = partial(self.scorer.score_columns, events, deadline, infos=infos)
            if len(events) <= INLINE_BATCH or self.executor is None:
                return score()
            return await asyncio.get_running_loop().run_in_executor(self.executor, score)
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


def add_to_server(servicer: Any, server: Any, raw: dict[str, Callable[..., Any]]) -> None:
    """``servicer`` (a generated ``ScorerServicer``) on ``server`` as the generated
    ``add_ScorerServicer_to_server`` adds it, except the unary methods named in ``raw``:
    each of those receives the request's bytes and returns the response's (no deserializer
    or serializer; the strict parser leaves such a handler alone, so it raises its own
    errors, e.g. :meth:`ScorerServicer.score_batch_bytes`)."""
    handlers: dict[str, Any] = {}

    class _Collect:  # the generated handlers, collected instead of added
        def add_generic_rpc_handlers(self, _: Any) -> None:
            pass

        def add_registered_method_handlers(self, _: str, found: dict[str, Any]) -> None:
            handlers.update(found)

    pb_grpc.add_ScorerServicer_to_server(servicer, _Collect())
    for method, behavior in raw.items():
        if method not in handlers or handlers[method].unary_unary is None:
            raise ValueError(f"{method}: not a unary method of the Scorer service")
        handlers[method] = grpc.unary_unary_rpc_method_handler(behavior)
    name = pb.DESCRIPTOR.services_by_name["Scorer"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
