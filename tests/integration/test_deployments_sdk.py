"""Deployments and monitoring through the SDK against a real server: traffic, telemetry, tenancy."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest

from foedus.client_sdk import (
    AlreadyExists,
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from foedus.client_sdk.agent.histogram import LatencyHistogram
from foedus.client_sdk.testing import LocalServer
from foedus.v1 import agent_pb2, agent_pb2_grpc


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def register_versions(client: Client, onnx_model: Path, model: str = "iris", count: int = 3) -> list[int]:
    return [client.models.register(model, onnx_model).version for _ in range(count)]


def editor_of(server: LocalServer, owner: Client) -> Client:
    return Client.connect(server.target, api_key=owner.keys.create("editor", description="ci").secret)


def test_create_set_traffic_list_and_get(tenant: Client, onnx_model: Path) -> None:
    v1, v2, v3 = register_versions(tenant, onnx_model)
    d = tenant.deployments.create("iris-prod", "iris", traffic={v1: 1.0}, description="production")
    assert (d.name, d.model, d.description, d.generation) == ("iris-prod", "iris", "production", 1)
    assert [(t.version, t.weight) for t in d.traffic] == [(v1, 1.0)]
    assert d.shadow_version == 0

    d = tenant.deployments.set_traffic("iris-prod", {v1: 0.9, v2: 0.1}, shadow_version=v3)
    assert d.generation == 2
    assert sorted((t.version, t.weight) for t in d.traffic) == [(v1, 0.9), (v2, 0.1)]
    assert d.shadow_version == v3

    got = tenant.deployments.get("iris-prod")
    assert got.generation == 2
    assert sorted((t.version, t.weight) for t in got.traffic) == [(v1, 0.9), (v2, 0.1)]
    assert got.shadow_version == v3

    tenant.deployments.create("iris-canary", "iris", traffic={v2: 1})
    tenant.deployments.create("empty", "iris")
    assert [x.name for x in tenant.deployments.list()] == ["empty", "iris-canary", "iris-prod"]
    assert [x.name for x in tenant.deployments.list(limit=2)] == ["empty", "iris-canary"]
    with pytest.raises(AlreadyExists):
        tenant.deployments.create("iris-prod", "iris", traffic={v1: 1})


def test_refusals(tenant: Client, onnx_model: Path) -> None:
    v1, v2 = register_versions(tenant, onnx_model, count=2)
    tenant.models.archive("iris", v2)
    with pytest.raises(FailedPrecondition, match="archived"):
        tenant.deployments.create("d", "iris", traffic={v2: 1})
    with pytest.raises(FailedPrecondition, match="archived"):
        tenant.deployments.create("d", "iris", traffic={v1: 1}, shadow_version=v2)
    tenant.deployments.create("d", "iris", traffic={v1: 1})
    with pytest.raises(FailedPrecondition, match="archived"):
        tenant.deployments.set_traffic("d", {v1: 1, v2: 1})
    assert tenant.deployments.get("d").generation == 1  # nothing changed

    with pytest.raises(NotFound):
        tenant.deployments.create("e", "nope", traffic={1: 1})
    with pytest.raises(NotFound):
        tenant.deployments.create("e", "iris", traffic={99: 1})
    with pytest.raises(NotFound):
        tenant.deployments.set_traffic("d", {99: 1})
    with pytest.raises(NotFound):
        tenant.deployments.get("nope")
    with pytest.raises(NotFound):
        tenant.deployments.set_traffic("nope", {v1: 1})
    with pytest.raises(InvalidArgument):
        tenant.deployments.create("Bad Name", "iris", traffic={v1: 1})
    with pytest.raises(InvalidArgument):
        tenant.deployments.set_traffic("d", {v1: 0.0})
    with pytest.raises(InvalidArgument):
        tenant.deployments.set_traffic("d", {v1: -1.0})


def test_log_metrics_then_query(server: LocalServer, tenant: Client, onnx_model: Path) -> None:
    (v1,) = register_versions(tenant, onnx_model, count=1)
    tenant.deployments.create("d", "iris", traffic={v1: 1})
    with editor_of(server, tenant) as editor:
        start = now_ms() - 600_000
        t0 = start + 10_000
        assert (
            editor.monitoring.log_metrics("d", {"accuracy": 0.9, "loss": 0.3}, step=1, time_unix_ms=t0) == 2
        )
        assert editor.monitoring.log_metrics("d", {"accuracy": 0.95}, step=2, time_unix_ms=t0 + 120_000) == 1
        assert editor.monitoring.log_metrics("d", {"accuracy": 0.7}) == 1  # now
        assert editor.monitoring.log_metrics("d", {}) == 0

    series = tenant.monitoring.query("d", "accuracy", start_unix_ms=start, step_s=60)
    assert [v for _, v in series] == pytest.approx([0.9, 0.95, 0.7])
    assert series[0][0] == start  # step starts, aligned on the range's start
    assert series[1][0] == start + 120_000
    assert tenant.monitoring.query("d", "loss", start_unix_ms=start) == [(start, pytest.approx(0.3))]
    # one step over the whole range: the mean
    (only,) = tenant.monitoring.query("d", "accuracy", start_unix_ms=start, step_s=3600)
    assert only[1] == pytest.approx((0.9 + 0.95 + 0.7) / 3)
    assert tenant.monitoring.query("d", "accuracy", start_unix_ms=t0 + 1, end_unix_ms=t0 + 60_000) == []

    with pytest.raises(InvalidArgument):
        tenant.monitoring.log_metrics("d", {"bad": float("nan")})
    with pytest.raises(NotFound):
        tenant.monitoring.log_metrics("nope", {"accuracy": 1.0})


def test_log_batch_retry_with_the_same_batch_id_stores_once(tenant: Client, onnx_model: Path) -> None:
    (v1,) = register_versions(tenant, onnx_model, count=1)
    tenant.deployments.create("d", "iris", traffic={v1: 1})
    start = now_ms() - 60_000
    points = [("loss", 0.5, start + 1_000, 1), ("loss", 0.25, start + 2_000, 2), ("lr", 0.01, None, 2)]
    batch_id = str(uuid.uuid4())
    assert tenant.monitoring.log_batch("d", points, batch_id=batch_id) == 3
    assert tenant.monitoring.log_batch("d", points, batch_id=batch_id) == 0  # a retry: acknowledged only
    assert tenant.monitoring.log_batch("d", points) == 3  # a fresh id each call

    series = tenant.monitoring.query("d", "loss", start_unix_ms=start, step_s=1)
    assert series == [(start + 1_000, 0.5), (start + 2_000, 0.25)]  # two calls, each point twice: same mean
    (total,) = tenant.monitoring.query("d", "lr", start_unix_ms=start, step_s=3600)
    assert total[1] == pytest.approx(0.01)


def interval(
    version: int, latencies_ms: np.ndarray, *, errors: int, start_ms: int
) -> agent_pb2.IntervalReport:
    hist = LatencyHistogram()
    hist.record_many(latencies_ms)
    buckets, counts = hist.to_sparse()
    return agent_pb2.IntervalReport(
        start_unix_ms=start_ms,
        duration_ms=10_000,
        version=version,
        requests=len(latencies_ms),
        errors=errors,
        latency_ms=agent_pb2.SparseHistogram(
            buckets=buckets.tolist(), counts=counts.tolist(), sum=hist.sum_ms
        ),
    )


def test_status_after_an_editor_reports_intervals(
    server: LocalServer, tenant: Client, onnx_model: Path
) -> None:
    v1, v2 = register_versions(tenant, onnx_model, count=2)
    tenant.deployments.create("d", "iris", traffic={v1: 3, v2: 1})
    rng = np.random.default_rng(7)
    fast = [rng.lognormal(np.log(4.0), 0.3, size=n) for n in (300, 200)]
    slow = rng.lognormal(np.log(20.0), 0.2, size=100)
    start = now_ms() - 60_000
    batch = agent_pb2.TelemetryBatch(
        batch_id=str(uuid.uuid4()),
        deployment="d",
        agent="editor-probe",
        intervals=[
            interval(v1, fast[0], errors=3, start_ms=start),
            interval(v1, fast[1], errors=2, start_ms=start + 10_000),
            interval(v2, slow, errors=10, start_ms=start + 10_000),
            interval(v2, slow, errors=0, start_ms=start - 3_600_000),  # outside the window
        ],
    )
    with editor_of(server, tenant) as editor:
        stub = agent_pb2_grpc.AgentServiceStub(editor._channel)
        metadata = editor._rpc.metadata
        acks = list(
            stub.ReportTelemetry(iter([agent_pb2.ReportTelemetryRequest(batch=batch)]), metadata=metadata)
        )
        assert [(a.batch_id, a.duplicate) for a in acks] == [(batch.batch_id, False)]
        acks = list(
            stub.ReportTelemetry(iter([agent_pb2.ReportTelemetryRequest(batch=batch)]), metadata=metadata)
        )
        assert [(a.batch_id, a.duplicate) for a in acks] == [(batch.batch_id, True)]

    status = tenant.monitoring.status("d", window_s=300)
    assert status.deployment.name == "d"
    stats = {v.version: v for v in status.versions}
    assert sorted(stats) == [v1, v2]
    assert (stats[v1].requests, stats[v1].errors) == (500, 5)  # the duplicate batch counted once
    assert (stats[v2].requests, stats[v2].errors) == (100, 10)
    assert stats[v1].error_rate == pytest.approx(0.01)
    assert stats[v2].error_rate == pytest.approx(0.1)
    assert stats[v1].requests_per_s == pytest.approx(500 / 300)
    both = np.concatenate(fast)
    assert stats[v1].latency_p50_ms == pytest.approx(np.median(both), rel=0.05)
    assert stats[v2].latency_p50_ms == pytest.approx(np.median(slow), rel=0.05)
    assert stats[v1].latency_p50_ms <= stats[v1].latency_p99_ms
    assert stats[v1].latency_p99_ms == pytest.approx(np.quantile(both, 0.99), rel=0.1)

    # the same intervals as series
    series = tenant.monitoring.query("d", "requests", start_unix_ms=start, step_s=10)
    assert series == [(start, 300.0), (start + 10_000, 300.0)]
    series = tenant.monitoring.query("d", "errors", version=v2, start_unix_ms=start, step_s=60)
    assert series == [(start, 10.0)]
    (p50,) = tenant.monitoring.query("d", "latency_p50_ms", version=v1, start_unix_ms=start, step_s=60)
    assert p50[1] == pytest.approx(np.median(both), rel=0.05)
    assert tenant.monitoring.status("d", window_s=1).versions == []  # nothing started that recently
    assert tenant.monitoring.alerts("d") == []


def test_roles_and_tenancy(
    server: LocalServer, tenant: Client, other_tenant: Client, onnx_model: Path
) -> None:
    (v1,) = register_versions(tenant, onnx_model, count=1)
    tenant.deployments.create("shared-name", "iris", traffic={v1: 1})
    tenant.monitoring.log_metrics("shared-name", {"accuracy": 1.0})

    # another tenant sees nothing, exactly as if it did not exist, and cannot write to it
    assert other_tenant.deployments.list() == []
    with pytest.raises(NotFound):
        other_tenant.deployments.get("shared-name")
    with pytest.raises(NotFound):
        other_tenant.deployments.set_traffic("shared-name", {v1: 1})
    with pytest.raises(NotFound):
        other_tenant.monitoring.status("shared-name")
    with pytest.raises(NotFound):
        other_tenant.monitoring.query("shared-name", "accuracy", start_unix_ms=now_ms() - 60_000)
    with pytest.raises(NotFound):
        other_tenant.monitoring.log_metrics("shared-name", {"accuracy": 0.0})
    with pytest.raises(NotFound):  # nor can it point a deployment at the first tenant's model
        other_tenant.deployments.create("mine", "iris", traffic={v1: 1})
    assert other_tenant.monitoring.alerts() == []

    # the same name in the other tenant is its own deployment
    (w1,) = register_versions(other_tenant, onnx_model, count=1)
    other_tenant.deployments.create("shared-name", "iris", traffic={w1: 1}, description="other")
    assert tenant.deployments.get("shared-name").description == ""
    assert [d.name for d in tenant.deployments.list()] == ["shared-name"]

    # viewers read but may not change traffic or log metrics
    with Client.connect(server.target, api_key=tenant.keys.create("viewer").secret) as viewer:
        assert viewer.deployments.get("shared-name").name == "shared-name"
        with pytest.raises(PermissionDenied):
            viewer.deployments.set_traffic("shared-name", {v1: 1})
        with pytest.raises(PermissionDenied):
            viewer.monitoring.log_metrics("shared-name", {"accuracy": 0.5})


def test_grpc_errors_never_leak(tenant: Client) -> None:
    with pytest.raises(NotFound) as exc:
        tenant.monitoring.log_batch("nope", [("x", 1.0, None, 0)])
    assert not isinstance(exc.value, grpc.RpcError)
