"""MonitoringService."""

from __future__ import annotations

from typing import Any

import grpc

from foedus.client_sdk.drift import API_THRESHOLDS, thresholds_message
from foedus.server.interceptors import current_principal
from foedus.server.monitoring.service import MonitoringService
from foedus.server.servicers import convert
from foedus.server.servicers.base import BlockingRunner, ServicerBase
from foedus.v1 import monitoring_pb2, monitoring_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class MonitoringServicer(ServicerBase, monitoring_pb2_grpc.MonitoringServiceServicer):
    def __init__(self, monitoring: MonitoringService, runner: BlockingRunner) -> None:
        super().__init__(runner)
        self._monitoring = monitoring

    async def GetDeploymentStatus(
        self, request: monitoring_pb2.GetDeploymentStatusRequest, context: Ctx
    ) -> monitoring_pb2.GetDeploymentStatusResponse:
        deployment, agents, stats = await self.read(
            self._monitoring.status, current_principal(), request.name, request.window_s
        )
        return monitoring_pb2.GetDeploymentStatusResponse(
            deployment=convert.deployment(deployment),
            agents=[convert.agent_status(a) for a in agents],
            versions=[
                monitoring_pb2.VersionStats(
                    version=s.version,
                    shadow=s.shadow,
                    requests=s.requests,
                    errors=s.errors,
                    invalid=s.invalid,
                    error_rate=s.error_rate,
                    latency_p50_ms=s.latency_p50_ms,
                    latency_p99_ms=s.latency_p99_ms,
                    requests_per_s=s.requests_per_s,
                    max_anomaly_score=s.max_anomaly_score,
                )
                for s in stats
            ],
        )

    async def QueryMetrics(
        self, request: monitoring_pb2.QueryMetricsRequest, context: Ctx
    ) -> monitoring_pb2.QueryMetricsResponse:
        points = await self.read(
            self._monitoring.query,
            current_principal(),
            request.deployment,
            request.metric,
            request.version,
            request.start_unix_ms,
            request.end_unix_ms,
            request.step_s,
        )
        return monitoring_pb2.QueryMetricsResponse(
            points=[monitoring_pb2.Point(time_unix_ms=t, value=v) for t, v in points]
        )

    async def ListAlerts(
        self, request: monitoring_pb2.ListAlertsRequest, context: Ctx
    ) -> monitoring_pb2.ListAlertsResponse:
        page = await self.read(
            self._monitoring.alerts,
            current_principal(),
            request.deployment,
            request.page.page_token,
            request.page.page_size,
        )
        return monitoring_pb2.ListAlertsResponse(
            alerts=[convert.alert(a) for a in page.items], next_page_token=page.next_token
        )

    async def GetDriftReport(
        self, request: monitoring_pb2.GetDriftReportRequest, context: Ctx
    ) -> monitoring_pb2.GetDriftReportResponse:
        # In the thread pool: an hour of intervals from many agents is more than a cheap read.
        result = await self.run(
            self._monitoring.drift,
            current_principal(),
            request.deployment,
            request.version,
            request.window_s,
            request.end_unix_ms,
            request.method,
            {name: getattr(request.thresholds, name) for name in API_THRESHOLDS},
        )
        report = result.report
        return monitoring_pb2.GetDriftReportResponse(
            deployment=result.deployment,
            model=result.model,
            version=result.version,
            start_unix_ms=result.start_ms,
            end_unix_ms=result.end_ms,
            intervals=result.intervals,
            features=[
                monitoring_pb2.FeatureDrift(
                    name=f.name,
                    kind=f.kind,
                    method=f.method,
                    score=f.score,
                    threshold=f.threshold,
                    drifted=f.drifted,
                    reference_count=f.reference_count,
                    current_count=f.current_count,
                    current_missing=f.current_missing,
                    psi=f.psi,
                    js_distance=f.js_distance,
                    chi2=f.chi2,
                    chi2_p_value=f.chi2_p_value,
                    ks_statistic=f.ks_statistic,
                    ks_p_value=f.ks_p_value,
                    wasserstein=f.wasserstein,
                )
                for f in report.features
            ],
            compared_features=report.compared_features,
            drifted_features=report.drifted_features,
            drift_share=report.drift_share,
            dataset_drift=report.dataset_drift,
            thresholds=thresholds_message(report.thresholds),
        )
