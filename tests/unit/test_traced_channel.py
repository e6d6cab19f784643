"""`TracedChannel`: the SDK's calls pay for OpenTelemetry only when there is something to trace.

Each case runs in a fresh interpreter: OpenTelemetry's global providers can be set once per process,
and other tests set them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("opentelemetry.sdk")

PRELUDE = textwrap.dedent(
    """
    from concurrent import futures

    import grpc
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from foedus.client_sdk.tracing import ClientTracing, TracedChannel

    def traceparent(request, context):
        return dict(context.invocation_metadata()).get("traceparent", "-").encode()

    def twice(request, context):
        yield traceparent(request, context)
        yield b"again"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(traceparent),
        "Stream": grpc.unary_stream_rpc_method_handler(twice),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    class Counting(ClientTracing):
        calls = 0
        def _intercept(self, continuation, details, request):
            Counting.calls += 1
            return super()._intercept(continuation, details, request)

    channel = TracedChannel(grpc.insecure_channel(f"127.0.0.1:{port}"), Counting())
    unary = channel.unary_unary("/test.Echo/Unary", _registered_method=True)
    stream = channel.unary_stream("/test.Echo/Stream")
    """
)


def run(body: str) -> None:
    code = PRELUDE + textwrap.dedent(body) + "\nchannel.close()\nserver.stop(None)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_without_providers_or_a_context_calls_skip_the_tracing_interceptor() -> None:
    run(
        """
        assert unary(b"") == b"-"
        assert unary.with_call(b"")[0] == b"-"
        assert unary.future(b"").result() == b"-"
        assert list(stream(b"")) == [b"-", b"again"]
        assert Counting.calls == 0, Counting.calls
        """
    )


def test_a_callers_context_is_passed_on_without_an_sdk() -> None:
    run(
        """
        context = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1))
        with trace.use_span(NonRecordingSpan(context)):
            sent = unary(b"").decode()
            streamed = next(iter(stream(b""))).decode()
        assert sent.split("-")[1] == f"{0x1234:032x}", sent
        assert streamed.split("-")[1] == f"{0x1234:032x}", streamed
        assert Counting.calls == 2, Counting.calls
        assert unary(b"") == b"-"  # outside the context again: nothing to trace
        assert Counting.calls == 2, Counting.calls
        """
    )


def test_a_provider_set_after_the_channel_was_made_gets_its_client_spans() -> None:
    run(
        """
        assert unary(b"") == b"-"
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(provider)
        sent = unary(b"").decode()
        (span,) = spans.get_finished_spans()
        assert span.name == "test.Echo/Unary" and span.kind is trace.SpanKind.CLIENT, span
        assert sent.split("-")[1] == f"{span.context.trace_id:032x}", sent
        assert Counting.calls == 1, Counting.calls
        """
    )


def test_a_meter_provider_alone_turns_the_interceptor_on() -> None:
    run(
        """
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        assert unary(b"") == b"-"  # no tracer provider: nothing to propagate, but a duration
        assert Counting.calls == 1, Counting.calls
        names = [m.name for rm in reader.get_metrics_data().resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics]
        assert "rpc.client.call.duration" in names, names
        """
    )


def test_a_tracing_with_its_own_provider_sees_every_call() -> None:
    run(
        """
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        own = TracedChannel(grpc.insecure_channel(f"127.0.0.1:{port}"), Counting(tracer_provider=provider))
        sent = own.unary_unary("/test.Echo/Unary")(b"").decode()
        (span,) = spans.get_finished_spans()  # the process's providers are still unset
        assert sent.split("-")[1] == f"{span.context.trace_id:032x}", sent
        assert unary(b"") == b"-" and Counting.calls == 1, Counting.calls
        own.close()
        """
    )
