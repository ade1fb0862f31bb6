"""``Score`` calls in flight together share one store round trip and one predict, and a
call alone takes the direct path.

Scored inline with a blocking store read, a ``Score`` holds the event loop for the round
trip: with many calls in flight each waits for the one before, and the server does
nothing while Redis answers (half the do-nothing gRPC floor's rate at 32 in flight).
Handing each call to a worker thread fixed that but cost a call alone ~0.2 ms of thread
hops (p50 0.56 -> 0.75 ms; docs/perf-plan.md).

Here the read is awaited on the loop itself (its own connection:
:func:`features.store.redis_async.async_reader`), so no thread is involved:

* a call that finds nothing in progress scores its event at once (a batch of one:
  :meth:`serving.scorer.Scorer.score`), in its own handler — the direct path; its read
  is sent before the request is validated, so validation overlaps the round trip;
* calls that arrive while a batch waits on the store queue up; when it is answered, what
  is waiting (and only that) is the next batch: one pipelined read for all, and from
  :data:`COLUMNS_FROM` events one predict (:meth:`~serving.scorer.Scorer.score_batch`,
  whose values the tests hold equal to ``score``'s; smaller batches cost less one event
  at a time), scored by a drain task until the queue is empty;
* answers go out first; the batch's results reach the prediction log in the next loop
  turn (each call logged once);
* on the server a typed request's bytes are read natively into its event
  (:meth:`score_bytes`); a request the native reader leaves is parsed strictly, and on
  the direct path its read is sent before it is validated.

Each call gets the answer or the error it would get alone: an event the batch refuses
(its time too old for the state) is scored alone and the rest stay a batch; any other
failure (a corrupt state) scores the batch's events one by one, from the states read.
A store without an awaitable read (SQLite, Redis Cluster, TLS) is read on the worker
thread instead; the rest is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from features.layout import QueryTooOldError
from features.native import score_batch_encoder
from features.store.redis_async import async_reader
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import score_response
from serving.scorer import BatchItemError, Read, ScoreResult
from serving.servicer import ScorerServicer, _at, _kind
from serving.wire import MalformedRequestError, strict_parser

#: at most this many events per coalesced batch (the rest wait for the next turn)
MAX_COALESCED = 64
#: smaller batches are scored one event at a time over their shared read: the columnar
#: path costs more per event below ~6 (µs per event, single vs columnar, states read:
#: n=2 18 vs 33, n=4 18 vs 21, n=8 18 vs 15, n=16 19 vs 12; docs/perf-plan.md)
COLUMNS_FROM = 6

_Pending = tuple[Any, str, "asyncio.Future[ScoreResult]"]
#: a result's fields the native encoder writes (serving.convert.batch_response_bytes's)
_ENCODED = itemgetter(
    *map(ScoreResult._fields.index, ("transaction_id", "score", "decision", "warnings"))
)


def response_bytes(r: ScoreResult, include_features: bool) -> bytes:
    """The serialized ScoreResponse of ``r`` (:func:`~serving.convert.score_response`'s
    message; a test holds them equal); without features, the native batch encoder's one
    response unwrapped (no message object)."""
    if include_features:
        return score_response(r, include_features).SerializeToString()
    data = score_batch_encoder(pb.ScoreBatchResponse.DESCRIPTOR).encode(
        [_ENCODED(r)], r.threshold, r.model_version
    )
    i = 0  # one `responses` entry: its tag, its length, then the ScoreResponse
    while data[i] & 0x80:
        i += 1
    i += 1
    while data[i] & 0x80:
        i += 1
    return data[i + 1 :]


class CoalescingServicer(ScorerServicer):
    """:class:`ScorerServicer` whose ``Score`` calls in flight are scored together."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: list[_Pending] = []
        #: a batch is being read or scored (by a handler or the drain task)
        self._busy = False
        self._drainer: asyncio.Task[None] | None = None
        self._store: Any = None
        self._async: Any = None
        self._entities = self.scorer.plan.entities
        typed = pb.Transaction.DESCRIPTOR.fields_by_name
        keyed = all(p.join_key in typed and typed[p.join_key].has_presence for p in self._entities)
        #: (entity, Transaction field) of each key, when the typed message carries them all
        self._typed_keys = [(p.name, p.join_key) for p in self._entities] if keyed else None
        self._strict_one = strict_parser(pb.ScoreRequest.FromString)
        #: batches scored and the events in them (a direct call is a batch of one)
        self.batches = self.batched_events = 0

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:
        return await self._score_call(request, None)

    async def score_bytes(self, data: bytes, context: Any) -> bytes:
        """``Score`` as the server runs it: request bytes in, response bytes out; a typed
        request is read natively (:meth:`BatchRequestReader.parse_one`), anything else
        parsed strictly as before (its errors name the field)."""
        native = self._native_reader
        got = None if native is None else native.parse_one(data)
        if got is not None:
            if not self._busy and (reader := self._reader()) is not None:
                return await self._direct_bytes(got[0], got[1], reader)
            return (await self._score_call(None, got)).SerializeToString()
        assert self._strict_one is not None
        request = self._strict_one(data)
        if type(request) is MalformedRequestError:
            raise request
        return (await self._score_call(request, None)).SerializeToString()

    async def _direct_bytes(self, event: Any, include: bool, reader: Any) -> bytes:
        """The direct path of a natively read request, in as few steps as it takes: the
        read sent first, the states handed to the scorer as they come, the answer encoded
        natively (without features), the log after the answer."""
        self._busy = True
        self.batches += 1
        self.batched_events += 1
        try:
            keys = [(p.name, p.key(event)) for p in self._entities]
            raws = await reader.read_states(keys)
            try:
                result = self.scorer.score_read(event, keys, raws)
            except QueryTooOldError as exc:
                raise _at("transaction", exc) from None
        finally:
            self._next()
        if self.scorer.sink is not None:  # after the answer: it goes out first
            asyncio.get_running_loop().call_soon(self.scorer.sink, (event,), (result,))
        return response_bytes(result, include)

    async def _score_call(
        self, request: pb.ScoreRequest | None, parsed: tuple[Any, bool] | None
    ) -> pb.ScoreResponse:
        """One call: ``request`` as a message, or ``parsed`` (its event, already
        validated, and ``include_features``)."""
        loop = asyncio.get_running_loop()
        if parsed is not None:
            event, include, kind = parsed[0], parsed[1], "transaction"
        else:
            assert request is not None
            event, include, kind = None, request.include_features, _kind(request)
        if self._busy:  # a batch is in progress: join the next one
            if request is not None:
                event = self.convert.request_event(request)
            future: asyncio.Future[ScoreResult] = loop.create_future()
            self._queue.append((event, kind, future))
            return score_response(await future, include)
        self._busy = True  # the direct path: nothing in progress, this handler scores it
        self.batches += 1
        self.batched_events += 1
        try:
            if request is not None:
                event, read = await self._direct(request)
            else:
                read = await self._read_states((event,))
            result = self._score_one(event, kind, read, log=False)
        finally:
            self._next()
        if self.scorer.sink is not None:  # after the answer: it goes out first
            loop.call_soon(self.scorer.sink, (event,), (result,))
        return score_response(result, include)

    async def _direct(self, request: pb.ScoreRequest) -> tuple[Any, Read | None]:
        """The event of a direct call and its states. When the keys can be read off the
        typed Transaction, the read is sent first and the request validated while Redis
        answers (the keys are checked against the validated event's)."""
        reader = self._reader()
        keys = None if reader is None else self._request_keys(request)
        if reader is None or keys is None:
            event = self.convert.request_event(request)
            return event, await self._read_states((event,))
        reader.send(keys)
        try:
            event = self.convert.request_event(request)
        except BaseException:
            with contextlib.suppress(Exception):
                await reader.receive()  # keeps the connection in step
            raise
        raws = await reader.receive()
        if [(p.name, p.key(event)) for p in self._entities] != keys:
            return event, await self._read_states((event,))
        states = dict(zip(keys, raws, strict=True))
        return event, lambda wanted: [states[k] for k in wanted]

    def _request_keys(self, request: pb.ScoreRequest) -> list[tuple[str, int]] | None:
        """The entity keys as the typed Transaction carries them (None: not all there)."""
        if self._typed_keys is None or request.WhichOneof("event_kind") != "transaction":
            return None
        tx = request.transaction
        keys = []
        for name, field in self._typed_keys:
            if not tx.HasField(field):
                return None
            keys.append((name, getattr(tx, field)))
        return keys

    def _reader(self) -> Any:
        """The store's awaitable reader (None: no store yet, or it offers none)."""
        store = self.scorer.store
        if store is not self._store:  # attached or replaced
            self._store, self._async = store, async_reader(store)
        return self._async

    def _next(self) -> None:
        """After a direct call: a drain task takes what queued meanwhile."""
        if self._queue:  # a reference kept: the loop holds tasks only weakly
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._score_queued()
        finally:
            self._busy = False

    async def _score_queued(self) -> None:
        """Read, score and answer what is queued now (up to :data:`MAX_COALESCED`)."""
        batch, self._queue = self._queue[:MAX_COALESCED], self._queue[MAX_COALESCED:]
        batch = [p for p in batch if not p[2].done()]  # a cancelled call is not scored
        if not batch:
            return
        self.batches += 1
        self.batched_events += len(batch)
        outcomes: list[tuple[bool, Any]]
        try:
            states = await self._read_states([p[0] for p in batch])
        except asyncio.CancelledError:  # the handler reading went away; the rest still wait
            self._queue[:0] = batch
            raise
        except Exception as exc:  # e.g. the store is unreachable: every call's answer
            outcomes = [(False, exc)] * len(batch)
        else:
            outcomes = self._score(batch, states)
        events: list[Any] = []
        results: list[ScoreResult] = []
        for (event, _, future), (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                events.append(event)
                results.append(value)
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        sink = self.scorer.sink
        if sink is not None and results:  # after the answers: they go out first
            asyncio.get_running_loop().call_soon(sink, events, results)

    async def _read_states(self, events: Sequence[Any]) -> Read | None:
        """The batch's states, read once each, as a read for the scorer (None: no store
        yet; scoring says so)."""
        store, reader = self.scorer.store, self._reader()
        if store is None:
            return None
        keys = list(dict.fromkeys((p.name, p.key(e)) for e in events for p in self._entities))
        if reader is not None:
            raws = await reader.read_states(keys)
        elif self.executor is not None:
            loop = asyncio.get_running_loop()
            raws = await loop.run_in_executor(self.executor, store.read_states, keys)
        else:
            raws = store.read_states(keys)
        states = dict(zip(keys, raws, strict=True))
        return lambda wanted: [states[k] for k in wanted]

    def _score(self, batch: list[_Pending], states: Read | None) -> list[tuple[bool, Any]]:
        """(ok, result or exception) per call, in order."""
        if len(batch) < COLUMNS_FROM:
            return [self._alone(p, states) for p in batch]
        outcomes: dict[int, tuple[bool, Any]] = {}
        rest = list(range(len(batch)))
        while len(rest) > 1:
            try:
                events = [batch[i][0] for i in rest]
                results = self.scorer.score_batch(events, read=states, log=False)
            except BatchItemError as exc:  # that event alone fails: the rest stay a batch
                i = rest.pop(exc.index)
                outcomes[i] = self._alone(batch[i], states)
                continue
            except Exception:  # e.g. a corrupt state: each call alone, each its own answer
                break
            outcomes.update((i, (True, r)) for i, r in zip(rest, results, strict=True))
            rest = []
        for i in rest:
            outcomes[i] = self._alone(batch[i], states)
        return [outcomes[i] for i in range(len(batch))]

    def _alone(self, pending: _Pending, states: Read | None) -> tuple[bool, Any]:
        event, path, _ = pending
        try:
            return True, self._score_one(event, path, states, log=False)
        except Exception as exc:
            return False, exc
