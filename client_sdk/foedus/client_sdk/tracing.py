"""OpenTelemetry for gRPC calls: spans, W3C trace context in metadata, and call-duration metrics.

Needs only `opentelemetry-api`; without an SDK configured in the process the spans and metrics are
no-ops, but a caller's trace context is still passed on. The interceptors follow the RPC semantic
conventions of semantic-conventions 1.44 (the `opentelemetry-semantic-conventions` 0.66b2 package):

- span name `rpc.method`, the fully qualified `package.Service/Method`; kind SERVER or CLIENT;
- attributes `rpc.system.name=grpc`, `rpc.method`, `rpc.response.status_code` (the status name,
  e.g. `NOT_FOUND`) and `error.type` on errors; for backends that still read the older names, spans
  also carry `rpc.system`, `rpc.service` and `rpc.grpc.status_code` (the number);
- metrics `rpc.server.call.duration` and `rpc.client.call.duration`, histograms in seconds,
  attributed by `rpc.system.name`, `rpc.method` and `rpc.response.status_code`.

A server span is an error for the codes the conventions name (UNKNOWN, DEADLINE_EXCEEDED,
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS); a client span for every code but OK.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

try:  # what `metrics.get_meter_provider()` returns while the process has set no provider
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    _UNSET_METER_PROVIDERS: tuple[type, ...] = (_ProxyMeterProvider,)
except ImportError:  # pragma: no cover - another opentelemetry-api layout: metrics count as set
    _UNSET_METER_PROVIDERS = ()

SCOPE = "foedus"
SCOPE_VERSION = "0.1.0"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"

RPC_SYSTEM_NAME = "rpc.system.name"
RPC_METHOD = "rpc.method"
RPC_RESPONSE_STATUS_CODE = "rpc.response.status_code"
ERROR_TYPE = "error.type"
TENANT = "foedus.tenant"
"""The caller's tenant, set on server spans once the API key is checked (never the key itself)."""

SERVER_DURATION = "rpc.server.call.duration"
CLIENT_DURATION = "rpc.client.call.duration"
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""The bucket boundaries the conventions advise for RPC durations."""

SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

Metadata = Sequence[tuple[str, str | bytes]]


class _MetadataGetter(Getter[Metadata]):
    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        return [k for k, _ in carrier]


class _MetadataSetter(Setter[list[tuple[str, str | bytes]]]):
    def set(self, carrier: list[tuple[str, str | bytes]], key: str, value: str) -> None:
        carrier.append((key, value))


METADATA_GETTER = _MetadataGetter()
METADATA_SETTER = _MetadataSetter()


def rpc_attributes(full_method: str) -> dict[str, str]:
    """Span attributes of a call to `/package.Service/Method`."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return {
        RPC_SYSTEM_NAME: "grpc",
        RPC_METHOD: f"{service}/{method}",
        "rpc.system": "grpc",
        "rpc.service": service,
    }


def with_trace_context(metadata: Metadata | None, span: Span) -> list[tuple[str, str | bytes]]:
    """`metadata` plus the W3C trace context (traceparent, tracestate) of `span`."""
    out = list(metadata or ())
    propagate.inject(out, context=trace.set_span_in_context(span), setter=METADATA_SETTER)
    return out


class _RpcInstruments:
    """A tracer and a call-duration histogram, and how a finished call is recorded with them."""

    def __init__(
        self,
        kind: SpanKind,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
    ) -> None:
        self.kind = kind
        self.tracer = trace.get_tracer(SCOPE, SCOPE_VERSION, tracer_provider, schema_url=SCHEMA_URL)
        meter = metrics.get_meter(SCOPE, SCOPE_VERSION, meter_provider, schema_url=SCHEMA_URL)
        server = kind is SpanKind.SERVER
        self.duration = meter.create_histogram(
            SERVER_DURATION if server else CLIENT_DURATION,
            unit="s",
            description=f"Duration of {'incoming' if server else 'outgoing'} gRPC calls.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.errors = SERVER_ERRORS if server else frozenset(set(grpc.StatusCode) - {grpc.StatusCode.OK})

    def start(self, attributes: dict[str, str], parent: otel_context.Context | None = None) -> Span:
        return self.tracer.start_span(
            attributes[RPC_METHOD], context=parent, kind=self.kind, attributes=attributes
        )

    def finish(
        self, span: Span, attributes: dict[str, str], code: grpc.StatusCode, started: float, details: str = ""
    ) -> None:
        name = code.name
        # Measured before the span ends: whoever waits for the span finds the measurement too.
        self.duration.record(
            time.perf_counter() - started,
            {
                RPC_SYSTEM_NAME: "grpc",
                RPC_METHOD: attributes[RPC_METHOD],
                RPC_RESPONSE_STATUS_CODE: name,
            },
        )
        if span.is_recording():
            span.set_attribute(RPC_RESPONSE_STATUS_CODE, name)
            span.set_attribute("rpc.grpc.status_code", int(code.value[0]))
            if code in self.errors:
                span.set_attribute(ERROR_TYPE, name)
                span.set_status(Status(StatusCode.ERROR, details or name))
        span.end()


class _Instrumented:
    """Interceptors made with the providers to report to (default: the process's global ones)."""

    kind = SpanKind.CLIENT

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._rpc = _RpcInstruments(self.kind, tracer_provider, meter_provider)
        self.own_providers = tracer_provider is not None or meter_provider is not None
        """Made with providers of its own: it has something to report whatever the process set."""


# --- server ------------------------------------------------------------------------------------------
def _server_code(context: Any, error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


class ServerTracing(_Instrumented, grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """A SERVER span and a duration measurement for every call an asyncio gRPC server serves.

    The parent is the W3C trace context of the incoming metadata; the span is the current span
    while the handler runs (so inner interceptors and servicers may add attributes to it).
    Put it first among the server's interceptors, so that it sees what the others reject.
    """

    kind = SpanKind.SERVER

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is not None:  # type: ignore[redundant-expr,unused-ignore]  # None: no such method
            handler = self._wrap(handler, handler_call_details.method)
        return handler

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        rpc = self._rpc
        attributes = rpc_attributes(method)
        h: Any = handler
        inner = h.unary_unary or h.stream_unary or h.unary_stream or h.stream_stream
        if not (inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner)):
            return handler  # a synchronous handler runs in a thread; left as it is

        def begin(context: Any) -> tuple[Span, otel_context.Context, float]:
            parent = propagate.extract(context.invocation_metadata() or (), getter=METADATA_GETTER)
            span = rpc.start(attributes, parent)
            return span, trace.set_span_in_context(span, parent), time.perf_counter()

        async def unary_response(request: Any, context: Any) -> Any:
            span, ctx, started = begin(context)
            token = otel_context.attach(ctx)
            error: BaseException | None = None
            try:
                return await inner(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                otel_context.detach(token)
                rpc.finish(span, attributes, _server_code(context, error), started, _details(context))

        async def stream_response(request: Any, context: Any) -> AsyncIterator[Any]:
            span, ctx, started = begin(context)
            error: BaseException | None = None
            items = inner(request, context)
            try:
                while True:
                    # The span is current only while the handler runs, not across the yield: the
                    # consumer may close this generator from another context.
                    token = otel_context.attach(ctx)
                    try:
                        item = await items.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        otel_context.detach(token)
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                await items.aclose()
                rpc.finish(span, attributes, _server_code(context, error), started, _details(context))

        if h.unary_unary or h.stream_unary:
            factory = (
                grpc.unary_unary_rpc_method_handler if h.unary_unary else grpc.stream_unary_rpc_method_handler
            )
            return factory(unary_response, h.request_deserializer, h.response_serializer)
        factory = (
            grpc.unary_stream_rpc_method_handler if h.unary_stream else grpc.stream_stream_rpc_method_handler
        )
        return factory(stream_response, h.request_deserializer, h.response_serializer)


def _details(context: Any) -> str:
    details = context.details()
    if isinstance(details, bytes):
        return details.decode(errors="replace")
    return details or ""


def set_tenant(tenant: str | None) -> None:
    """Marks the current server span with the caller's tenant (no-op without a span or a tenant)."""
    span = trace.get_current_span()
    if tenant and span.is_recording():
        span.set_attribute(TENANT, tenant)


# --- clients -----------------------------------------------------------------------------------------
class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):
    pass


class ClientTracing(
    _Instrumented,
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """A CLIENT span per call of a (synchronous) channel, whose context travels in the metadata.

    Without an OpenTelemetry SDK in the process no span is made, and the caller's current trace
    context (if any) is passed on as it is.
    """

    def _intercept(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        attributes = rpc_attributes(details.method)
        span = self._rpc.start(attributes)
        started = time.perf_counter()
        traced = _ClientCallDetails(
            details.method,
            details.timeout,
            with_trace_context(details.metadata, span),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )
        try:
            call = continuation(traced, request)
        except BaseException:
            self._rpc.finish(span, attributes, grpc.StatusCode.UNKNOWN, started)
            raise
        call.add_done_callback(
            lambda done: self._rpc.finish(span, attributes, done.code(), started, done.details() or "")
        )
        return call

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator)


class _AioClientTracing:
    """`ClientTracing` for asyncio channels; one per call shape (see `aio_client_tracing`)."""

    def __init__(self, rpc: _RpcInstruments, pending: set[asyncio.Task[None]]) -> None:
        self._rpc = rpc
        self._pending = pending

    async def _intercept(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        attributes = rpc_attributes(_method_name(details.method))
        span = self._rpc.start(attributes)
        started = time.perf_counter()
        traced = grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*with_trace_context(tuple(details.metadata or ()), span)),
            details.credentials,
            details.wait_for_ready,
        )
        try:
            call = await continuation(traced, request)
        except BaseException:
            self._rpc.finish(span, attributes, grpc.StatusCode.UNKNOWN, started)
            raise

        async def record(done: Any) -> None:
            code = await done.code()
            self._rpc.finish(span, attributes, code, started, await done.details() or "")

        def on_done(done: Any) -> None:
            # An asyncio call's status is read with `await`: a task reads it once the call is done.
            task = asyncio.get_running_loop().create_task(record(done))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        call.add_done_callback(on_done)
        return call


class _AioUnaryUnary(_AioClientTracing, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class _AioUnaryStream(_AioClientTracing, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class _AioStreamUnary(_AioClientTracing, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


class _AioStreamStream(_AioClientTracing, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


def aio_client_tracing(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> list[Any]:
    """Interceptors for `grpc.aio.insecure_channel(..., interceptors=...)`: client spans and trace
    context for the four call shapes (an asyncio channel gives each interceptor one shape only)."""
    rpc = _RpcInstruments(SpanKind.CLIENT, tracer_provider, meter_provider)
    pending: set[asyncio.Task[None]] = set()
    return [cls(rpc, pending) for cls in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)]


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


# --- a synchronous channel that pays for tracing only when it has something to do ----------------
class TracingInUse:
    """Whether client calls have anything to trace: the process has set a tracer or meter provider
    (then always, as providers are set once), or the caller's context holds something to pass on
    (a span, baggage). Otherwise ClientTracing would make a no-op span, inject nothing and record
    into a no-op histogram: about a fifth of a small call's client CPU, for nothing."""

    __slots__ = ("_configured",)

    def __init__(self, *, configured: bool = False) -> None:
        self._configured = configured
        """Known to be in use from now on (`configured=True`: always, e.g. for own providers)."""

    def __call__(self) -> bool:
        if self._configured:
            return True
        if otel_context.get_current():
            return True
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider) or not isinstance(
            metrics.get_meter_provider(), _UNSET_METER_PROVIDERS
        ):
            self._configured = True
            return True
        return False


class _Either:
    """A multi-callable that sends each call through `traced` while `in_use()`, else `plain`."""

    __slots__ = ("_in_use", "_plain", "_traced")

    def __init__(self, plain: Any, traced: Any, in_use: Callable[[], bool]) -> None:
        self._plain = plain
        self._traced = traced
        self._in_use = in_use

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return (self._traced if self._in_use() else self._plain)(*args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return (self._traced if self._in_use() else self._plain).with_call(*args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return (self._traced if self._in_use() else self._plain).future(*args, **kwargs)


def _either(shape: str) -> Any:
    """The channel method for one call shape: a multi-callable of both channels, as `_Either`."""

    def multi_callable(
        self: TracedChannel,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> _Either:
        args = (method, request_serializer, response_deserializer, _registered_method)
        return _Either(getattr(self._plain, shape)(*args), getattr(self._traced, shape)(*args), self._in_use)

    return multi_callable


class TracedChannel(grpc.Channel):
    """`channel` with `ClientTracing` on every call made while tracing is in use (`TracingInUse`),
    decided call by call: a provider set after the channel was made, or a span the caller starts
    later, is honoured. A `tracing` made with providers of its own sees every call. Both paths
    share the one channel and its connections."""

    def __init__(self, channel: grpc.Channel, tracing: ClientTracing | None = None) -> None:
        tracing = tracing or ClientTracing()
        self._plain = channel
        self._traced = grpc.intercept_channel(channel, tracing)
        self._in_use = TracingInUse(configured=tracing.own_providers)

    unary_unary = _either("unary_unary")
    unary_stream = _either("unary_stream")
    stream_unary = _either("stream_unary")
    stream_stream = _either("stream_stream")

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        self._plain.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self._plain.unsubscribe(callback)

    def close(self) -> None:
        self._plain.close()

    def __enter__(self) -> TracedChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
