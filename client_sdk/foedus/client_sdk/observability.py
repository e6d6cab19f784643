"""OpenTelemetry export for the server and the agent: OTLP to a collector, a Prometheus scrape endpoint.

Off unless asked for: with no OTLP endpoint (flag or OTEL_EXPORTER_OTLP_ENDPOINT) and no metrics
listener, `Observability.start` returns None and nothing is installed, unless the process already
configured an OpenTelemetry SDK of its own (an embedding application, a test), whose providers are
then used. OTLP goes over gRPC; the service name is OTEL_SERVICE_NAME when set.
Needs `opentelemetry-sdk`, and `opentelemetry-exporter-otlp-proto-grpc` / `-prometheus` for those.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace

log = logging.getLogger("foedus.observability")


@dataclass(frozen=True, slots=True)
class ObservabilitySettings:
    service_name: str
    """service.name of the resource, unless OTEL_SERVICE_NAME says otherwise."""
    otlp_endpoint: str = ""
    """OTLP/gRPC collector, e.g. http://collector:4317; empty: OTEL_EXPORTER_OTLP_ENDPOINT, or none."""
    metrics_listen: str = ""
    """HOST:PORT of a Prometheus scrape endpoint (/metrics, text format); empty: none."""


@dataclass
class Observability:
    """The providers a process reports with, and what has to be shut down with it."""

    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    metrics_port: int = 0
    """Bound port of the Prometheus endpoint (0: none)."""
    _owned: list[Any] = field(default_factory=list)

    @classmethod
    def start(
        cls, settings: ObservabilitySettings, *, env: dict[str, str] | None = None
    ) -> Observability | None:
        env = dict(os.environ) if env is None else env
        endpoint = settings.otlp_endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        if not endpoint and not settings.metrics_listen:
            return cls.configured()
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: settings.service_name}
        resource = Resource.create(attributes)
        tracer_provider = TracerProvider(resource=resource)
        readers: list[MetricReader] = []
        owned: list[Any] = [tracer_provider]
        if endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint)))
        metrics_port = 0
        if settings.metrics_listen:
            reader, server, metrics_port = _prometheus_endpoint(settings.metrics_listen)
            readers.append(reader)
            owned.append(server)
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        owned.insert(0, meter_provider)
        log.info(
            "OpenTelemetry: OTLP %s, Prometheus %s",
            endpoint or "off",
            f"on port {metrics_port}" if metrics_port else "off",
        )
        return cls(tracer_provider, meter_provider, metrics_port, owned)

    @classmethod
    def configured(cls) -> Observability | None:
        """The process's own OpenTelemetry SDK providers, when it set any; None otherwise."""
        tracer_provider = trace.get_tracer_provider()
        meter_provider = metrics.get_meter_provider()
        if _is_sdk(tracer_provider) or _is_sdk(meter_provider):
            return cls(tracer_provider, meter_provider)
        return None

    def shutdown(self) -> None:
        """Flushes and stops what `start` created (the process's own providers stay as they are)."""
        for item in self._owned:
            try:
                item.shutdown()
            except Exception:
                log.exception("shutting down %s failed", type(item).__name__)
        self._owned.clear()


def _is_sdk(provider: object) -> bool:
    return type(provider).__module__.startswith("opentelemetry.sdk")


def _prometheus_endpoint(listen: str) -> tuple[Any, Any, int]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, start_http_server

    host, _, port = listen.rpartition(":")
    # A registry of its own: two servers in one process (tests) must not collect each other.
    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry)
    server, thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=registry)  # noqa: S104
    return reader, _HttpEndpoint(server, thread), int(server.server_port)


class _HttpEndpoint:
    def __init__(self, server: Any, thread: Any) -> None:
        self._server, self._thread = server, thread

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
