"""OpenTelemetry through a real server: an SDK call continues the caller's trace on the server,
failures record their status, RPC durations are measured, and the Prometheus endpoint serves them."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from foedus_testdata import iris_data, iris_onnx
from opentelemetry import metrics, trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from testkit import wait_for

from foedus.client_sdk import Client, NotFound, Unauthenticated
from foedus.client_sdk.agent.runtime import Agent, AgentConfig
from foedus.client_sdk.testing import LocalServer
from foedus.client_sdk.tracing import ClientTracing
from foedus.oip.v2 import inference_pb2, inference_pb2_grpc


class Telemetry:
    """The process's OpenTelemetry SDK: every span in memory, metrics read on demand."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[self.reader]))
        self.tracer = trace.get_tracer("test")

    def finished(self, name: str, kind: SpanKind, count: int = 1) -> list[ReadableSpan]:
        """The finished spans of that name and kind, once there are `count` of them: an aborted
        call's status reaches the client just before the server's span ends."""

        def spans() -> list[ReadableSpan]:
            return [s for s in self.spans.get_finished_spans() if s.name == name and s.kind == kind]

        wait_for(lambda: len(spans()) >= count, 10, f"{count} {kind.name} span(s) {name}")
        return spans()

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == metric
            for point in m.data.data_points
        ]


_TELEMETRY: Telemetry | None = None


@pytest.fixture(scope="module")
def otel() -> Telemetry:
    # A process sets its global providers once; every test of this module shares them.
    global _TELEMETRY
    if _TELEMETRY is None:
        _TELEMETRY = Telemetry()
    return _TELEMETRY


@pytest.fixture(scope="module")
def traced_server(otel: Telemetry, make_server: Callable[..., LocalServer]) -> LocalServer:
    """A server (or replicas, with --replicas) started after the process configured OpenTelemetry:
    it reports with those providers."""
    return make_server(latency_runs=3)


@pytest.fixture
def tenant_name(traced_server: LocalServer) -> str:
    return f"otel-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def owner(otel: Telemetry, traced_server: LocalServer, tenant_name: str) -> Iterator[Client]:
    """An owner client of a new tenant; the spans of setting it up are cleared."""
    key = traced_server.create_tenant(tenant_name)
    otel.spans.clear()
    with Client.connect(traced_server.target, api_key=key) as client:
        yield client


def test_sdk_call_continues_the_callers_trace_on_the_server(
    otel: Telemetry, owner: Client, tenant_name: str
) -> None:
    with otel.tracer.start_as_current_span("user-operation") as user:
        owner.models.list()
    method = "foedus.v1.RegistryService/ListModels"
    (client_span,) = otel.finished(method, SpanKind.CLIENT)
    (server_span,) = otel.finished(method, SpanKind.SERVER)
    trace_id = user.get_span_context().trace_id
    assert client_span.context is not None and server_span.context is not None
    assert client_span.context.trace_id == trace_id
    assert client_span.parent is not None and client_span.parent.span_id == user.get_span_context().span_id
    assert server_span.context.trace_id == trace_id
    assert server_span.parent is not None and server_span.parent.span_id == client_span.context.span_id
    assert server_span.parent.is_remote
    attributes = dict(server_span.attributes or {})
    assert attributes["rpc.system.name"] == "grpc"
    assert attributes["rpc.method"] == method
    assert attributes["rpc.response.status_code"] == "OK"
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "foedus.v1.RegistryService"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["foedus.tenant"] == tenant_name
    assert server_span.status.status_code is not StatusCode.ERROR
    token = owner._rpc.metadata[0][1].removeprefix("Bearer ")
    assert len(token) > 24
    for span in (client_span, server_span):  # neither the key nor its secret tail (secrets hold "_")
        values = [str(v) for v in (span.attributes or {}).values()]
        assert not any(token in v or token[-16:] in v for v in values)


def test_a_failing_call_records_its_status_code(
    otel: Telemetry, traced_server: LocalServer, owner: Client
) -> None:
    with pytest.raises(NotFound):
        owner.models.get("no-such-model")
    method = "foedus.v1.RegistryService/GetModel"
    (server_span,) = otel.finished(method, SpanKind.SERVER)
    (client_span,) = otel.finished(method, SpanKind.CLIENT)
    attributes = dict(server_span.attributes or {})
    assert attributes["rpc.response.status_code"] == "NOT_FOUND"
    assert attributes["rpc.grpc.status_code"] == 5
    # NOT_FOUND is the caller's mistake: an error on the client's span, not on the server's.
    assert server_span.status.status_code is not StatusCode.ERROR
    assert client_span.status.status_code is StatusCode.ERROR
    assert dict(client_span.attributes or {})["error.type"] == "NOT_FOUND"
    (duration,) = [
        p
        for p in otel.points("rpc.server.call.duration")
        if p.attributes["rpc.method"] == method and p.attributes["rpc.response.status_code"] == "NOT_FOUND"
    ]
    assert duration.count >= 1

    with (
        Client.connect(traced_server.target, api_key="fds_wrong") as stranger,
        pytest.raises(Unauthenticated),
    ):
        stranger.whoami()
    (rejected,) = otel.finished("foedus.v1.AdminService/WhoAmI", SpanKind.SERVER)
    assert dict(rejected.attributes or {})["rpc.response.status_code"] == "UNAUTHENTICATED"
    assert "foedus.tenant" not in (rejected.attributes or {})


def test_streaming_calls_are_traced_and_their_durations_measured(
    otel: Telemetry, owner: Client, tenant_name: str, onnx_model: Path, tmp_path: Path
) -> None:
    with otel.tracer.start_as_current_span("release") as release:
        owner.models.register("iris", onnx_model)  # client streaming
        owner.models.download("iris", tmp_path, version=1)  # server streaming
    trace_id = release.get_span_context().trace_id
    for method in (
        "foedus.v1.RegistryService/CreateModelVersion",
        "foedus.v1.RegistryService/DownloadArtifact",
    ):
        (span,) = otel.finished(method, SpanKind.SERVER)
        assert span.context is not None and span.context.trace_id == trace_id
        assert dict(span.attributes or {})["rpc.response.status_code"] == "OK"
        assert dict(span.attributes or {})["foedus.tenant"] == tenant_name

    points = {
        (p.attributes["rpc.method"], p.attributes["rpc.response.status_code"]): p
        for p in otel.points("rpc.server.call.duration")
    }
    for method in ("CreateModelVersion", "DownloadArtifact"):
        point = points[(f"foedus.v1.RegistryService/{method}", "OK")]
        assert point.count >= 1 and point.sum > 0
        assert point.attributes["rpc.system.name"] == "grpc"
    assert any(p.count >= 1 for p in otel.points("rpc.client.call.duration"))
    phases = {p.attributes["foedus.rollout.phase"] for p in otel.points("foedus.rollouts")}
    assert phases == {"scheduled", "progressing", "paused"}


def test_prometheus_endpoint_serves_rpc_durations(
    otel: Telemetry, make_server: Callable[..., LocalServer]
) -> None:
    srv = make_server(metrics_listen="127.0.0.1:0")
    assert srv.metrics_urls  # one endpoint per server process (per replica)
    with srv.client() as admin:
        admin.whoami()
        admin.whoami()
    served = 0.0
    texts = []
    for url in srv.metrics_urls:  # the calls may all have gone to one replica
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
            content_type = response.headers["Content-Type"]
            text = response.read().decode()
        assert content_type.startswith("text/plain")
        texts.append(text)
        served += sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("rpc_server_call_duration_seconds_count")
            and 'rpc_method="foedus.v1.AdminService/WhoAmI"' in line
            and 'rpc_response_status_code="OK"' in line
        )
    assert served >= 2, texts
    assert any("# TYPE rpc_server_call_duration_seconds histogram" in text for text in texts)
    srv.halt()


def test_agent_inference_and_its_calls_to_the_server_carry_the_trace(
    otel: Telemetry, traced_server: LocalServer, owner: Client, tenant_name: str, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    x, _ = iris_data()
    owner.models.register("iris", iris_onnx(tmp_path, c=1.0, name="a.onnx"), reference_data=x)
    owner.deployments.create("iris-prod", "iris", traffic={1: 1.0})
    agent_key = owner.keys.create("agent", description="agent").secret
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    async def start() -> Agent:
        agent = Agent(
            AgentConfig(
                deployment="iris-prod",
                server=traced_server.target,
                api_key=agent_key,
                listen="127.0.0.1:0",
                data_dir=tmp_path / "agent",
                name="agent-0",
                interval_s=0.2,
            )
        )
        await agent.start()
        return agent

    agent = on_loop(start())
    try:
        wait_for(lambda: agent.generation >= 1, 60, "the agent to load generation 1")
        request = inference_pb2.ModelInferRequest(model_name="iris-prod")
        request.inputs.add(name="input", datatype="FP32", shape=[2, 4])
        request.raw_input_contents.append(x[:2].astype("<f4").tobytes())
        channel = grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{agent.port}"), ClientTracing())
        with channel, otel.tracer.start_as_current_span("predict") as predict:
            inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        (infer,) = otel.finished("inference.GRPCInferenceService/ModelInfer", SpanKind.SERVER)
        assert infer.context is not None and infer.context.trace_id == predict.get_span_context().trace_id
        assert dict(infer.attributes or {})["rpc.response.status_code"] == "OK"

        # The agent's own calls: each client span is the parent of the control plane's server span.
        for method in ("RegisterAgent", "DownloadArtifact", "ReportTelemetry"):
            service = "RegistryService" if method == "DownloadArtifact" else "AgentService"
            name = f"foedus.v1.{service}/{method}"
            (sent, *_) = otel.finished(name, SpanKind.CLIENT)
            served = otel.finished(name, SpanKind.SERVER)
            assert sent.context is not None
            assert any(s.parent is not None and s.parent.span_id == sent.context.span_id for s in served), (
                method
            )
            assert all(dict(s.attributes or {})["foedus.tenant"] == tenant_name for s in served)

        wait_for(
            lambda: any(
                p.attributes["foedus.deployment"] == "iris-prod"
                and p.attributes["foedus.model.version"] == "1"
                for p in otel.points("foedus.model.inference.duration")
            ),
            30,
            "the model latency of version 1",
        )
        wait_for(
            lambda: any(
                p.attributes.get("foedus.tenant") == tenant_name and p.value >= 1
                for p in otel.points("foedus.telemetry.requests")
            ),
            30,
            "the server to count the reported requests",
        )
        streams = [
            p
            for p in otel.points("foedus.agent.watch_streams")
            if p.attributes["foedus.tenant"] == tenant_name
        ]
        assert streams and streams[0].value == 1
        latency = [
            p
            for p in otel.points("foedus.model.latency")
            if p.attributes.get("foedus.tenant") == tenant_name and p.attributes["foedus.quantile"] == "0.99"
        ]
        assert latency and latency[0].attributes["foedus.model.version"] == "1" and latency[0].value > 0
    finally:
        on_loop(agent.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it receives."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, str]]:
        """(service.name, span name) of every span received."""
        out = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                out += [(service, s.name) for ss in resource_spans.scope_spans for s in ss.spans]
        return out


def test_otlp_endpoint_exports_the_servers_spans(
    otel: Telemetry, tmp_path: Path, make_server: Callable[..., LocalServer]
) -> None:
    collector = Collector()
    receiver = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    try:
        # Stopping the server flushes its spans to the collector.
        srv = make_server(otlp_endpoint=f"http://127.0.0.1:{port}")
        with srv.client() as admin:
            admin.whoami()
        srv.halt()
        assert ("foedus-server", "foedus.v1.AdminService/WhoAmI") in collector.spans()
    finally:
        receiver.stop(None)


def test_telemetry_settings_are_checked() -> None:
    from foedus.server.config import ConfigError, load_config

    assert load_config(env={}).metrics_listen == ""
    assert load_config(env={"FOEDUS_OTLP_ENDPOINT": "http://c:4317"}).otlp_endpoint == "http://c:4317"
    with pytest.raises(ConfigError, match="metrics_listen must be HOST:PORT"):
        load_config(env={}, metrics_listen="9464")
    with pytest.raises(ConfigError, match="workers > 1"):
        load_config(env={}, listen="127.0.0.1:50051", metrics_listen="127.0.0.1:9464", workers=2)
