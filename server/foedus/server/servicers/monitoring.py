"""MonitoringService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from foedus.client_sdk.drift import API_THRESHOLDS, thresholds_message
from foedus.server.deployments.feed import ChangeFeed
from foedus.server.interceptors import current_call, current_principal
from foedus.server.monitoring.incidents import Cause, IncidentService, metric_weights, severity
from foedus.server.monitoring.service import MonitoringService
from foedus.server.servicers import convert
from foedus.server.servicers.base import BlockingRunner, ServicerBase
from foedus.server.store.records import IncidentRecord, WebhookRecord
from foedus.v1 import monitoring_pb2, monitoring_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]

ALERTS_FEED_KEY = "alerts/"
"""The ChangeFeed key a tenant's WatchAlerts streams wait on (deployment names never contain '/')."""
WATCH_PAGE = 100
_EVENT_KINDS = {
    "opened": monitoring_pb2.INCIDENT_EVENT_KIND_OPENED,
    "updated": monitoring_pb2.INCIDENT_EVENT_KIND_UPDATED,
    "acknowledged": monitoring_pb2.INCIDENT_EVENT_KIND_ACKNOWLEDGED,
    "resolved": monitoring_pb2.INCIDENT_EVENT_KIND_RESOLVED,
}


def incident(rec: IncidentRecord) -> monitoring_pb2.Incident:
    return monitoring_pb2.Incident(
        id=rec.id,
        deployment=rec.deployment,
        state=int(rec.state),  # type: ignore[arg-type]
        severity=int(severity(rec)),  # type: ignore[arg-type]
        first_alert_unix_ms=rec.first_ms,
        last_alert_unix_ms=rec.last_ms,
        alert_count=rec.alert_count,
        versions=rec.versions,
        kinds=rec.kinds,
        metrics=[monitoring_pb2.MetricWeight(metric=m, weight=w) for m, w in metric_weights(rec)],
        max_score_ratio=rec.max_ratio,
        opened_unix_ms=rec.opened_at_us // 1000,
        updated_unix_ms=rec.updated_at_us // 1000,
        acknowledged_by=rec.acknowledged_by,
        resolved_by=rec.resolved_by,
        state_changed_unix_ms=rec.state_changed_at_us // 1000,
    )


def cause(c: Cause) -> monitoring_pb2.Cause:
    return monitoring_pb2.Cause(
        kind=c.kind,
        name=c.name,
        score=c.score,
        detail=c.detail,
        time_unix_ms=c.time_ms,
        version=c.version,
        rollout_id=c.rollout_id,
        actor=c.actor,
    )


def webhook(rec: WebhookRecord) -> monitoring_pb2.Webhook:
    """Without its secret: the API never returns one."""
    return monitoring_pb2.Webhook(
        id=rec.id,
        url=rec.url,
        description=rec.description,
        created_unix_ms=rec.created_at_us // 1000,
        created_by=rec.created_by,
    )


class MonitoringServicer(ServicerBase, monitoring_pb2_grpc.MonitoringServiceServicer):
    def __init__(
        self,
        monitoring: MonitoringService,
        incidents: IncidentService,
        feed: ChangeFeed,
        runner: BlockingRunner,
    ) -> None:
        super().__init__(runner)
        self._monitoring = monitoring
        self._incidents = incidents
        self._feed = feed

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

    async def ListIncidents(
        self, request: monitoring_pb2.ListIncidentsRequest, context: Ctx
    ) -> monitoring_pb2.ListIncidentsResponse:
        page = await self.read(
            self._incidents.list_page,
            current_principal(),
            request.deployment,
            request.open_only,
            request.page.page_token,
            request.page.page_size,
        )
        return monitoring_pb2.ListIncidentsResponse(
            incidents=[incident(i) for i in page.items], next_page_token=page.next_token
        )

    async def GetIncident(
        self, request: monitoring_pb2.GetIncidentRequest, context: Ctx
    ) -> monitoring_pb2.GetIncidentResponse:
        record, alerts = await self.read(self._incidents.get, current_principal(), request.id)
        return monitoring_pb2.GetIncidentResponse(
            incident=incident(record), alerts=[convert.alert(a) for a in alerts]
        )

    async def AcknowledgeIncident(
        self, request: monitoring_pb2.AcknowledgeIncidentRequest, context: Ctx
    ) -> monitoring_pb2.AcknowledgeIncidentResponse:
        current_call().resource = f"incidents/{request.id}"
        record = await self.run(self._incidents.acknowledge, current_principal(), request.id)
        return monitoring_pb2.AcknowledgeIncidentResponse(incident=incident(record))

    async def ResolveIncident(
        self, request: monitoring_pb2.ResolveIncidentRequest, context: Ctx
    ) -> monitoring_pb2.ResolveIncidentResponse:
        current_call().resource = f"incidents/{request.id}"
        record = await self.run(self._incidents.resolve, current_principal(), request.id)
        return monitoring_pb2.ResolveIncidentResponse(incident=incident(record))

    async def WatchAlerts(
        self, request: monitoring_pb2.WatchAlertsRequest, context: Ctx
    ) -> AsyncIterator[monitoring_pb2.WatchAlertsResponse]:
        principal = current_principal()
        tenant, still_open, cursor = await self.read(
            self._incidents.watch_start, principal, request.deployment, request.after_event_id
        )
        for record in still_open:
            yield monitoring_pb2.WatchAlertsResponse(
                event=monitoring_pb2.IncidentEvent(
                    id=cursor,
                    kind=monitoring_pb2.INCIDENT_EVENT_KIND_OPEN,
                    time_unix_ms=record.updated_at_us // 1000,
                    incident=incident(record),
                )
            )
        caught_up = False
        while True:
            events, records = await self.read(
                self._incidents.events, principal, request.deployment, cursor, WATCH_PAGE
            )
            for e in events:
                cursor = e.id
                yield monitoring_pb2.WatchAlertsResponse(
                    event=monitoring_pb2.IncidentEvent(
                        id=e.id,
                        kind=_EVENT_KINDS.get(e.kind, monitoring_pb2.INCIDENT_EVENT_KIND_UNSPECIFIED),
                        time_unix_ms=e.time_us // 1000,
                        incident=incident(records[e.incident_id]),
                    )
                )
            if len(events) == WATCH_PAGE:
                continue
            if not caught_up:
                caught_up = True
                yield monitoring_pb2.WatchAlertsResponse(
                    event=monitoring_pb2.IncidentEvent(
                        id=cursor, kind=monitoring_pb2.INCIDENT_EVENT_KIND_CAUGHT_UP
                    )
                )
            await self._feed.wait(tenant, ALERTS_FEED_KEY)

    async def ExplainIncident(
        self, request: monitoring_pb2.ExplainIncidentRequest, context: Ctx
    ) -> monitoring_pb2.ExplainIncidentResponse:
        result = await self.run(self._incidents.explain, current_principal(), request.id, request.window_s)
        return monitoring_pb2.ExplainIncidentResponse(
            incident=incident(result.incident),
            causes=[cause(c) for c in result.causes],
            window_start_unix_ms=result.window_start_ms,
        )

    async def SetWebhook(
        self, request: monitoring_pb2.SetWebhookRequest, context: Ctx
    ) -> monitoring_pb2.SetWebhookResponse:
        current_call().resource = "webhooks"
        current_call().detail = request.url[:200]
        record = await self.run(
            self._incidents.set_webhook,
            current_principal(),
            request.url,
            request.secret,
            request.description,
        )
        current_call().resource = f"webhooks/{record.id}"
        return monitoring_pb2.SetWebhookResponse(webhook=webhook(record))

    async def ListWebhooks(
        self, request: monitoring_pb2.ListWebhooksRequest, context: Ctx
    ) -> monitoring_pb2.ListWebhooksResponse:
        records = await self.read(self._incidents.webhooks, current_principal())
        return monitoring_pb2.ListWebhooksResponse(webhooks=[webhook(r) for r in records])

    async def DeleteWebhook(
        self, request: monitoring_pb2.DeleteWebhookRequest, context: Ctx
    ) -> monitoring_pb2.DeleteWebhookResponse:
        current_call().resource = f"webhooks/{request.id}"
        await self.run(self._incidents.delete_webhook, current_principal(), request.id)
        return monitoring_pb2.DeleteWebhookResponse()
