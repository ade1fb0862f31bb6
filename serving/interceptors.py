"""Everything that wraps every RPC, in one place: auth, errors -> status codes, metrics.

:data:`STATUS_CODES` is the single table from domain exceptions to gRPC status codes;
the servicer and the scorer just raise. An unexpected exception becomes ``INTERNAL``
with its traceback in the server log (never a bare ``UNKNOWN`` with no trace).

Request bytes are parsed strictly (:func:`serving.wire.strict_parser`): corrupt protobuf, or a known
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
from serving.wire import MalformedRequestError, RateLimitedLog, strict_parser

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
#: server reflection (both versions' paths), public only with ``open_reflection``
REFLECTION_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

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
    """Requires ``authorization: Bearer <token>`` metadata (constant-time compare), except
    on the ``public`` method prefixes."""

    def __init__(self, token: str, public: tuple[str, ...] = PUBLIC_PREFIXES) -> None:
        if not token:
            raise ValueError("auth_token: must not be empty when auth is enabled")
        self._expected = f"Bearer {token}".encode()
        self._public = public
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
        if method.startswith(self._public) or self._authorized(
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
        ok = handled.labels(name, "OK")  # the common case without a labels() lookup (~3 µs)

        def done(started: float, context: aio.ServicerContext[Any, Any]) -> None:
            latency.observe(time.perf_counter() - started)
            code = context.code()
            if code is None or code is Code.OK:
                ok.inc()
            else:
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


def interceptors(
    auth_token: str, metrics: Metrics | None, *, open_reflection: bool = False
) -> list[aio.ServerInterceptor]:
    """In call order: metrics (sees everything), auth, then error mapping. Health is
    always public; reflection too with ``open_reflection``."""
    chain: list[aio.ServerInterceptor] = []
    if metrics is not None:
        chain.append(MetricsInterceptor(metrics))
    if auth_token:
        public = PUBLIC_PREFIXES + (REFLECTION_PREFIXES if open_reflection else ())
        chain.append(AuthInterceptor(auth_token, public))
    chain.append(ErrorInterceptor(metrics))
    return chain
