"""Everything that wraps every RPC, in one place: auth, errors -> status codes, metrics.

:data:`STATUS_CODES` is the single table from domain exceptions to gRPC status codes;
the servicer and the scorer just raise. An unexpected exception becomes ``INTERNAL``
with its traceback in the server log (never a bare ``UNKNOWN`` with no trace).

Request bytes are parsed strictly (:func:`strict_parser`): corrupt protobuf, or a known
field sent with the wrong wire type (which protobuf would file under unknown fields, so
the field read as missing), is ``INVALID_ARGUMENT`` naming the problem, counted in
``skewless_grpc_malformed_requests`` and logged at most once per
:data:`MALFORMED_LOG_EVERY_S` with a count, without a traceback (a client sending garbage
must not flood the log). Unknown field *numbers* are skipped, as proto3 prescribes (a
newer client's fields).

Wrapped method handlers are cached per method, so an interceptor costs one dict lookup
and one coroutine frame per call.

>>> status_for(InvalidEventError("amount: -1.0 must be > 0"))
(<StatusCode.INVALID_ARGUMENT: (3, 'invalid argument')>, 'amount: -1.0 must be > 0')
>>> status_for(StoreUnavailableError("online store: Redis at ... is unreachable"))[0].name
'UNAVAILABLE'
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from grpc import aio

from features.layout import QueryTooOldError
from features.schema import InvalidEventError
from features.store import StoreUnavailableError
from serving.scorer import (
    CorruptStateError,
    DeadlineExceededError,
    InvalidRequestError,
    NotReadyError,
)

log = logging.getLogger("skewless.serving")

Code = grpc.StatusCode

#: domain exception -> status code; the first matching row wins
STATUS_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidEventError, Code.INVALID_ARGUMENT),
    (InvalidRequestError, Code.INVALID_ARGUMENT),
    (QueryTooOldError, Code.FAILED_PRECONDITION),
    (StoreUnavailableError, Code.UNAVAILABLE),
    (NotReadyError, Code.UNAVAILABLE),
    (DeadlineExceededError, Code.DEADLINE_EXCEEDED),
    (CorruptStateError, Code.DATA_LOSS),
)

#: a client sending bad bytes gets one log line per this many seconds, with a count
MALFORMED_LOG_EVERY_S = 10.0

#: methods reachable without a token (load balancers probe health unauthenticated)
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)

#: a ``grpc.RpcMethodHandler`` (grpc ships no type hints)
Handler: TypeAlias = Any
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
#: wraps one behavior: (behavior, method name, streaming response?) -> behavior
Wrap = Callable[[Callable[..., Any], str, bool], Callable[..., Any]]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message for a domain exception (``INTERNAL`` otherwise)."""
    for kind, code in STATUS_CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    return Code.INTERNAL, f"internal error: {type(exc).__name__} (see the server log)"


class MalformedRequestError(InvalidRequestError):
    """The request's bytes are not a valid message: ``problem`` is ``corrupt`` (they do
    not parse) or ``wire_type`` (a known field with the wrong wire type)."""

    def __init__(self, message: str, problem: str = "corrupt") -> None:
        super().__init__(message)
        self.problem = problem


_WIRE = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "group start", 4: "group end",
         5: "32-bit"}  # fmt: skip
_T = FieldDescriptor
_TYPES: dict[int, tuple[str, int]] = {
    _T.TYPE_DOUBLE: ("double", 1), _T.TYPE_FLOAT: ("float", 5), _T.TYPE_INT64: ("int64", 0),
    _T.TYPE_UINT64: ("uint64", 0), _T.TYPE_INT32: ("int32", 0), _T.TYPE_FIXED64: ("fixed64", 1),
    _T.TYPE_FIXED32: ("fixed32", 5), _T.TYPE_BOOL: ("bool", 0), _T.TYPE_STRING: ("string", 2),
    _T.TYPE_GROUP: ("group", 3), _T.TYPE_MESSAGE: ("message", 2), _T.TYPE_BYTES: ("bytes", 2),
    _T.TYPE_UINT32: ("uint32", 0), _T.TYPE_ENUM: ("enum", 0), _T.TYPE_SFIXED32: ("sfixed32", 5),
    _T.TYPE_SFIXED64: ("sfixed64", 1), _T.TYPE_SINT32: ("sint32", 0), _T.TYPE_SINT64: ("sint64", 0),
}  # fmt: skip


def wire_type_problem(msg: Message, path: str = "") -> str | None:
    """The first known field sent with the wrong wire type in ``msg`` or a message inside
    it, named by its path (``transaction: field 2 (card_id) has the wrong wire type: ...``);
    None when there is none. protobuf files such a field under unknown fields, so without
    this it reads as missing (or, for an optional one, silently as its default)."""
    desc: Descriptor = msg.DESCRIPTOR
    for u in UnknownFieldSet(msg):
        fd = desc.fields_by_number.get(u.field_number)
        if fd is None:
            continue  # an unknown field number: skipped, as proto3 prescribes
        type_name, want = _TYPES[fd.type]
        packed = want in (0, 1, 5) and fd.is_repeated and u.wire_type == 2
        if u.wire_type != want and not packed:
            got = _WIRE.get(u.wire_type, f"wire type {u.wire_type}")
            return (
                f"{path or 'request'}: field {u.field_number} ({fd.name}) has the wrong wire "
                f"type: {got}, but {fd.name} ({type_name}) is {_WIRE[want]}"
            )
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        at = f"{path}.{fd.name}" if path else fd.name
        items: Any
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is None:
                continue
            items = ((f"{at}[{k!r}]", value[k]) for k in sorted(value))
        elif fd.is_repeated:
            items = ((f"{at}[{i}]", m) for i, m in enumerate(value))
        else:
            items = ((at, value),)
        for where, sub in items:
            problem = wire_type_problem(sub, where)
            if problem is not None:
                return problem
    return None


def strict_parser(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A request deserializer that never raises: gRPC would log a traceback and answer
    ``UNKNOWN`` with the exception's class. A bad request comes back as a
    :class:`MalformedRequestError` *value*, which the error interceptor raises inside the
    call. Deserializers of non-protobuf handlers are returned as they are.

    Per valid request it costs one recursive ``DiscardUnknownFields`` and one ``ByteSize``
    (~0.3 us for a ScoreRequest, 0.2 us per event in a batch; a walk over every nested
    message's unknown fields costs twice that): a message re-encodes to the bytes' length
    unless something was dropped. Only then (or for a non-canonical encoding, which is
    rare and then accepted) is the request parsed again and walked to name the field."""
    cls = getattr(deserialize, "__self__", None)
    if deserialize is None or not (isinstance(cls, type) and issubclass(cls, Message)):
        return deserialize
    parse = deserialize
    name = cls.DESCRIPTOR.full_name  # type: ignore[attr-defined]

    def strict(data: bytes) -> Any:
        try:
            msg = parse(data)
        except DecodeError:
            return MalformedRequestError(
                f"request: not a valid {name} ({len(data)} bytes that do not parse as protobuf)"
            )
        msg.DiscardUnknownFields()
        if msg.ByteSize() == len(data):
            return msg
        msg = parse(data)
        problem = wire_type_problem(msg)
        if problem is not None:
            return MalformedRequestError(problem, "wire_type")
        msg.DiscardUnknownFields()
        return msg

    return strict


class RateLimitedLog:
    """At most one warning per ``every_s`` for a recurring problem, with the count since
    the previous line and the latest detail."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.what, self.every_s, self.clock = logger, what, every_s, clock
        self._count = 0
        self._next = float("-inf")

    def add(self, detail: str) -> None:
        self._count += 1
        now = self.clock()
        if now < self._next:
            return
        self.logger.warning(
            "%s: %d since the previous report (one report per %g s at most); latest: %s",
            self.what, self._count, self.every_s, detail,
        )  # fmt: skip
        self._count = 0
        self._next = now + self.every_s


def _rewrap(handler: Handler, method: str, wrap: Wrap, strict: bool = False) -> Handler:
    """A handler of the same kind whose behavior is ``wrap(behavior, ...)`` (and, with
    ``strict``, whose request deserializer is :func:`strict_parser`)."""
    deserialize = handler.request_deserializer
    kw = {
        "request_deserializer": strict_parser(deserialize) if strict else deserialize,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, method, False), **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, method, True), **kw)
    check = _stream_checked if strict else lambda b: b
    if handler.stream_unary:
        stream_unary = wrap(check(handler.stream_unary), method, False)
        return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)
    stream_stream = wrap(check(handler.stream_stream), method, True)
    return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)


class _Wrapping(aio.ServerInterceptor):
    """Base: wraps each method's handler once and caches it."""

    #: replace the request deserializer with :func:`strict_parser`
    strict = False

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Handler, Handler]] = {}

    def wrap(self, behavior: Callable[..., Any], method: str, streaming: bool) -> Any:
        raise NotImplementedError

    def _wrapped(self, handler: Handler, method: str) -> Handler:
        hit = self._cache.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = _rewrap(handler, method, self.wrap, self.strict)
        self._cache[method] = (handler, wrapped)
        return wrapped

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._wrapped(handler, handler_call_details.method)


class ErrorInterceptor(_Wrapping):
    """Domain exceptions -> status codes (:data:`STATUS_CODES`); malformed request bytes
    (:func:`strict_parser`) -> ``INVALID_ARGUMENT``, counted and rate-limited in the log."""

    strict = True

    def __init__(
        self, metrics: Metrics | None = None, log_every_s: float = MALFORMED_LOG_EVERY_S
    ) -> None:
        super().__init__()
        self.metrics = metrics
        self.malformed_log = RateLimitedLog(log, "malformed requests", log_every_s)

    def wrap(self, behavior: Callable[..., Any], method: str, streaming: bool) -> Any:
        name = method.rsplit("/", 1)[-1]

        async def fail(exc: Exception, context: aio.ServicerContext[Any, Any]) -> None:
            code, message = status_for(exc)
            if code is Code.INTERNAL:
                log.exception("%s failed", method, exc_info=exc)
            elif isinstance(exc, MalformedRequestError):
                if self.metrics is not None:
                    self.metrics.malformed.labels(name, exc.problem).inc()
                self.malformed_log.add(f"{name} from {context.peer()}: {message}")
            await context.abort(code, message)

        if streaming:

            async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                try:
                    if type(request) is MalformedRequestError:
                        raise request
                    async for response in behavior(request, context):
                        yield response
                except aio.AbortError:
                    raise
                except Exception as exc:
                    await fail(exc, context)

            return stream

        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                if type(request) is MalformedRequestError:
                    raise request
                return await behavior(request, context)
            except aio.AbortError:
                raise
            except Exception as exc:
                await fail(exc, context)

        return unary


def _stream_checked(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """``behavior`` with its request stream checked: a malformed message raises
    :class:`MalformedRequestError` at its position (``message 4: request: ...``)."""

    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        n = 0
        async for r in requests:
            if type(r) is MalformedRequestError:
                raise MalformedRequestError(f"message {n}: {r}", r.problem)
            yield r
            n += 1

    return lambda requests, context: behavior(checked(requests), context)


class AuthInterceptor(aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` metadata (constant-time compare)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("auth_token: must not be empty when auth is enabled")
        self._expected = f"Bearer {token}".encode()
        self._deny: dict[str, Handler] = {}

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(got, self._expected)
        return False

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = handler_call_details.method
        if method.startswith(PUBLIC_PREFIXES) or self._authorized(
            handler_call_details.invocation_metadata
        ):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        deny = self._deny.get(method)
        if deny is None:
            deny = self._deny[method] = _rewrap(handler, method, _denied)
        return deny


def _denied(behavior: Callable[..., Any], method: str, streaming: bool) -> Any:
    message = "authorization: missing or wrong bearer token (metadata 'authorization: Bearer …')"

    if streaming:

        async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(Code.UNAUTHENTICATED, message)
            yield  # pragma: no cover - makes this an async generator

        return stream

    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(Code.UNAUTHENTICATED, message)

    return unary


class Metrics:
    """Prometheus latency histogram and status counter per method, in its own registry
    (several servers in one process, e.g. tests, never collide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        if values.ValueClass is not values.MutexValue:
            # importing feast.metrics before prometheus_client flips the whole process into
            # multiprocess (mmap) mode: ~4x slower observations; import order fixes it
            log.warning("prometheus_client is in multiprocess mode (feast imported first)")
        self.registry = CollectorRegistry()
        self._http: Any = None
        self._version: str | None = None
        self.latency = Histogram(
            "skewless_grpc_server_handling_seconds",
            "Time to handle an RPC, by method",
            ["method"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )
        self.handled = Counter(
            "skewless_grpc_server_handled",
            "RPCs completed, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.model_reloads = Counter(
            "skewless_model_reloads", "Model reload attempts, by outcome", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.model_info = Gauge(
            "skewless_model_info", "1 for the model version being served", ["version"],
            registry=self.registry,
        )  # fmt: skip
        self.serving = Gauge(
            "skewless_serving", "1 when model and store are ready", registry=self.registry
        )
        self.malformed = Counter(
            "skewless_grpc_malformed_requests",
            "Requests whose bytes are not a valid message, by method and problem "
            "(corrupt: they do not parse; wire_type: a known field with the wrong wire type)",
            ["method", "problem"],
            registry=self.registry,
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``addr:port`` (a daemon thread)."""
        from prometheus_client import start_http_server

        self._http, _ = start_http_server(port, addr=addr, registry=self.registry)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def model_loaded(self, version: str) -> None:
        if self._version is not None and self._version != version:
            self.model_info.remove(self._version)
        self.model_info.labels(version).set(1)
        self._version = version


class MetricsInterceptor(_Wrapping):
    """Latency and final status code of every RPC (outermost, so it sees auth denials)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def wrap(self, behavior: Callable[..., Any], method: str, streaming: bool) -> Any:
        name = method.rsplit("/", 1)[-1]
        latency = self.metrics.latency.labels(name)
        handled = self.metrics.handled

        def done(started: float, context: aio.ServicerContext[Any, Any]) -> None:
            latency.observe(time.perf_counter() - started)
            code = context.code()
            handled.labels(name, getattr(code, "name", None) or "OK").inc()

        if streaming:

            async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                started = time.perf_counter()
                try:
                    gen: AsyncIterator[Any] = behavior(request, context)
                    async for response in gen:
                        yield response
                finally:
                    done(started, context)

            return stream

        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            try:
                return await behavior(request, context)
            finally:
                done(started, context)

        return unary


def interceptors(auth_token: str, metrics: Metrics | None) -> list[aio.ServerInterceptor]:
    """In call order: metrics (sees everything), auth, then error mapping."""
    chain: list[aio.ServerInterceptor] = []
    if metrics is not None:
        chain.append(MetricsInterceptor(metrics))
    if auth_token:
        chain.append(AuthInterceptor(auth_token))
    chain.append(ErrorInterceptor(metrics))
    return chain
