"""AgentService: registration, the assignment stream, and telemetry ingest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from foedus.client_sdk.agent.labels import totals_from_message
from foedus.client_sdk.tracing import TENANT
from foedus.server.deployments.feed import ChangeFeed
from foedus.server.deployments.service import DeploymentService
from foedus.server.errors import InvalidArgument
from foedus.server.interceptors import current_call, current_principal
from foedus.server.monitoring.performance import AgentCounts, PerformanceService
from foedus.server.monitoring.service import MonitoringService, TelemetryBatch
from foedus.server.observability import ControlPlaneMetrics
from foedus.server.servicers import convert
from foedus.server.servicers.base import BlockingRunner, ServicerBase
from foedus.server.tenancy.limits import RateLimiter, take_ingest
from foedus.v1 import agent_pb2, agent_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class AgentServicer(ServicerBase, agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        deployments: DeploymentService,
        monitoring: MonitoringService,
        feed: ChangeFeed,
        runner: BlockingRunner,
        *,
        metrics: ControlPlaneMetrics | None = None,
        ingest_limiter: RateLimiter | None = None,
        performance: PerformanceService,
    ) -> None:
        super().__init__(runner)
        self._performance = performance
        self._deployments = deployments
        self._monitoring = monitoring
        self._feed = feed
        self._ingest_limiter = ingest_limiter
        self._metrics = metrics

    async def RegisterAgent(
        self, request: agent_pb2.RegisterAgentRequest, context: Ctx
    ) -> agent_pb2.RegisterAgentResponse:
        current_call().resource = f"deployments/{request.deployment}/agents/{request.agent.name}"
        record = await self.run(
            self._monitoring.register_agent,
            current_principal(),
            request.deployment,
            request.agent.name,
            convert.agent_info_to_dict(request.agent),
        )
        return agent_pb2.RegisterAgentResponse(deployment=convert.deployment(record))

    async def WatchAssignments(
        self, request: agent_pb2.WatchAssignmentsRequest, context: Ctx
    ) -> AsyncIterator[agent_pb2.WatchAssignmentsResponse]:
        principal = current_principal()
        tenant = principal.own_tenant()
        generation = -1
        if self._metrics is not None:
            self._metrics.watch_streams.add(1, {TENANT: tenant})
        try:
            while True:
                deployment, versions = await self.read(
                    self._deployments.assignment, principal, request.deployment, request.agent
                )
                if deployment.generation != generation:
                    generation = deployment.generation
                    yield agent_pb2.WatchAssignmentsResponse(
                        assignment=agent_pb2.Assignment(
                            deployment=convert.deployment(deployment),
                            versions=[convert.assigned_version(v) for v in versions],
                        )
                    )
                await self._feed.wait(tenant, request.deployment)
        finally:
            if self._metrics is not None:
                self._metrics.watch_streams.add(-1, {TENANT: tenant})

    async def ReportTelemetry(
        self, request_iterator: AsyncIterator[agent_pb2.ReportTelemetryRequest], context: Ctx
    ) -> AsyncIterator[agent_pb2.ReportTelemetryResponse]:
        principal = current_principal()
        async for request in request_iterator:
            b = request.batch
            points = len(b.intervals) + len(b.alerts) + len(b.metrics) + sum(len(s.values) for s in b.series)
            take_ingest(self._ingest_limiter, principal.tenant, points, f"batch {b.batch_id!r}")
            batch = TelemetryBatch(
                batch_id=b.batch_id,
                deployment=b.deployment,
                agent=b.agent,
                intervals=[convert.interval_from_proto(b.agent, i) for i in b.intervals],
                alerts=[convert.alert_from_proto(b.agent, a) for a in b.alerts],
                series=convert.series_from_proto(b),
            )
            duplicate = await self.run(self._monitoring.ingest, principal, batch)
            if self._metrics is not None:
                self._metrics.ingested(principal.tenant or "", b, duplicate=duplicate)
            yield agent_pb2.ReportTelemetryResponse(batch_id=b.batch_id, duplicate=duplicate)

    async def PullLabels(
        self, request: agent_pb2.PullLabelsRequest, context: Ctx
    ) -> agent_pb2.PullLabelsResponse:
        labels = await self.read(
            self._performance.pull_labels,
            current_principal(),
            request.deployment,
            request.after_sequence,
            request.page_size,
        )
        return agent_pb2.PullLabelsResponse(
            labels=[
                agent_pb2.Label(
                    sequence=r.sequence,
                    request_id=r.request_id,
                    label=r.label,
                    logged_unix_ms=r.logged_at_us // 1000,
                )
                for r in labels
            ]
        )

    async def ReportPerformance(
        self, request: agent_pb2.ReportPerformanceRequest, context: Ctx
    ) -> agent_pb2.ReportPerformanceResponse:
        try:
            counts = [
                AgentCounts(c.version, c.window_start_unix_ms, c.segment, totals_from_message(c))
                for c in request.counts
            ]
        except ValueError:
            raise InvalidArgument("class scores need one positive and one negative count per score") from None
        duplicate = await self.run(
            self._performance.report,
            current_principal(),
            request.deployment,
            request.agent,
            request.batch_id,
            request.sensitive_feature,
            counts,
        )
        return agent_pb2.ReportPerformanceResponse(duplicate=duplicate)
