"""Incidents: agents' alerts grouped per deployment, their states, their ranked causes, and webhooks.

Grouping happens in the store (`Store.group_alerts`), right after a batch with alerts is stored
and again on every sweep, which also groups alerts written by other paths (the rollout controller)
and resolves incidents that stayed quiet. Every change is an incident event: watchers are woken and
webhooks are sent from here.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from foedus.server import validation
from foedus.server.errors import InvalidArgument
from foedus.server.monitoring.webhooks import WebhookDispatcher
from foedus.server.store.base import Store
from foedus.server.store.records import (
    AlertRecord,
    AuditRecord,
    IncidentEventRecord,
    IncidentRecord,
    IncidentState,
    Page,
    RolloutRecord,
    WebhookRecord,
)
from foedus.server.tenancy.principal import Principal
from foedus.server.tenancy.service import now_us

log = logging.getLogger("foedus.server.incidents")

DEFAULT_EXPLAIN_WINDOW_S = 1800
MAX_EXPLAIN_WINDOW_S = 7 * 86_400
# Agents' clocks and the server's differ a little, and a detector needs an interval or two of
# evidence: a change up to this long after the first alert still counts as before onset.
ONSET_SLACK_MS = 10_000
# A change that brought in no alerting version still counts, this much less.
OTHER_VERSION_FACTOR = 0.25
# Rollout events and the version each one brings into traffic (None: none).
_ROLLOUT_BRINGS = {
    "started": "candidate",
    "step": "candidate",
    "resumed": "candidate",
    "promoted": "candidate",
    "succeeded": "candidate",
    "rolled_back": "stable",
    "aborted": "stable",
}
_TRAFFIC = re.compile(r"v(\d+)=([0-9.eE+-]+)")
_SHADOW = re.compile(r"shadow v(\d+)")
WEBHOOK_KINDS = frozenset({"opened", "acknowledged", "resolved"})
MAX_AUDIT_PAGES = 20
MAX_ROLLOUTS = 50


class Severity(enum.IntEnum):
    """Values match foedus.v1.Severity."""

    INFO = 1
    WARNING = 2
    CRITICAL = 3


def severity(incident: IncidentRecord) -> Severity:
    """Critical at a score/threshold ratio of 2 or 10 alerts, warning at 1.25 or 3 alerts, else info."""
    if incident.max_ratio >= 2.0 or incident.alert_count >= 10:
        return Severity.CRITICAL
    if incident.max_ratio >= 1.25 or incident.alert_count >= 3:
        return Severity.WARNING
    return Severity.INFO


def metric_weights(incident: IncidentRecord) -> list[tuple[str, float]]:
    """Each metric's share of the incident's summed absolute attributions, largest first."""
    total = sum(incident.attributions.values())
    if not total > 0:
        return []
    return sorted(
        ((m, v / total) for m, v in incident.attributions.items() if v > 0), key=lambda mw: (-mw[1], mw[0])
    )


@dataclass(frozen=True, slots=True)
class IncidentSettings:
    gap_s: float = 600.0
    """An alert joins the open incident when it comes at most this long after its last alert."""
    quiet_s: float = 600.0
    """An open incident no alert joined for this long resolves by itself."""
    sweep_s: float = 5.0
    """How often the server groups stray alerts and resolves quiet incidents."""


@dataclass(frozen=True, slots=True)
class Cause:
    kind: str
    """"metric" or "change"."""
    name: str
    score: float
    detail: str
    time_ms: int = 0
    version: int = 0
    rollout_id: int = 0
    actor: str = ""


@dataclass(frozen=True, slots=True)
class Explanation:
    incident: IncidentRecord
    causes: list[Cause]
    window_start_ms: int


def incident_json(incident: IncidentRecord) -> dict[str, object]:
    """The incident as webhooks carry it."""
    return {
        "id": incident.id,
        "deployment": incident.deployment,
        "state": incident.state.name.lower(),
        "severity": severity(incident).name.lower(),
        "first_alert_unix_ms": incident.first_ms,
        "last_alert_unix_ms": incident.last_ms,
        "alert_count": incident.alert_count,
        "versions": list(incident.versions),
        "kinds": list(incident.kinds),
        "metrics": [{"metric": m, "weight": w} for m, w in metric_weights(incident)],
        "max_score_ratio": incident.max_ratio,
        "acknowledged_by": incident.acknowledged_by,
        "resolved_by": incident.resolved_by,
    }


class IncidentService:
    def __init__(
        self,
        store: Store,
        settings: IncidentSettings = IncidentSettings(),
        *,
        clock: Callable[[], int] = now_us,
        on_change: Callable[[str], None] | None = None,
        webhooks: WebhookDispatcher | None = None,
    ) -> None:
        """`on_change(tenant)` is called (from any thread) after the tenant's incidents changed."""
        self._store = store
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._webhooks = webhooks

    # --- grouping ------------------------------------------------------------------------------
    def group(self, tenant: str, deployment: str) -> None:
        """Groups the deployment's new alerts (after a batch with alerts was stored)."""
        try:
            events = self._store.group_alerts(
                tenant, deployment, int(self.settings.gap_s * 1000), self._clock()
            )
        except Exception:  # the batch is stored; the next sweep groups its alerts
            log.exception("grouping the alerts of %s/%s failed", tenant, deployment)
            return
        self._emit(events)

    def sweep(self) -> int:
        """Groups every ungrouped alert and resolves quiet incidents; returns the events made."""
        made = 0
        gap_ms = int(self.settings.gap_s * 1000)
        for tenant, deployment in self._store.ungrouped_alert_deployments():
            events = self._store.group_alerts(tenant, deployment, gap_ms, self._clock())
            self._emit(events)
            made += len(events)
        now = self._clock()
        events = self._store.resolve_quiet_incidents(now - int(self.settings.quiet_s * 1e6), now)
        self._emit(events)
        return made + len(events)

    def _emit(self, events: list[IncidentEventRecord]) -> None:
        for tenant in sorted({e.tenant for e in events}):
            if self._on_change is not None:
                self._on_change(tenant)
        if self._webhooks is None:
            return
        for e in events:
            if e.kind not in WEBHOOK_KINDS:
                continue
            try:
                hooks = self._store.list_webhooks(e.tenant)
                if not hooks:
                    continue
                body = json.dumps(
                    {
                        "type": f"incident.{e.kind}",
                        "event_id": e.id,
                        "time_unix_ms": e.time_us // 1000,
                        "tenant": e.tenant,
                        "incident": incident_json(self._store.get_incident(e.tenant, e.incident_id)),
                    },
                    sort_keys=True,
                ).encode()
            except Exception:
                log.exception("preparing the webhooks of incident event %s failed", e.id)
                continue
            for hook in hooks:
                self._webhooks.submit(hook.url, hook.secret, body, f"incident.{e.kind}")

    # --- reading -------------------------------------------------------------------------------
    def list_page(
        self, caller: Principal, deployment: str, open_only: bool, page_token: str, page_size: int
    ) -> Page[IncidentRecord]:
        tenant = caller.own_tenant()
        if deployment:
            validation.deployment_name(deployment)
        return self._store.list_incidents(tenant, deployment or None, open_only, page_token, page_size)

    def get(self, caller: Principal, incident_id: int) -> tuple[IncidentRecord, list[AlertRecord]]:
        tenant = caller.own_tenant()
        _check_id(incident_id)
        return self._store.get_incident(tenant, incident_id), self._store.incident_alerts(
            tenant, incident_id, 100
        )

    def watch_start(
        self, caller: Principal, deployment: str, after_event_id: int
    ) -> tuple[str, list[IncidentRecord], int]:
        """(tenant, the incidents open now when `after_event_id` is 0, the cursor to read after)."""
        tenant = caller.own_tenant()
        if after_event_id < 0:
            raise InvalidArgument("after_event_id must not be negative")
        if deployment:
            self._store.get_deployment(tenant, validation.deployment_name(deployment))
        if after_event_id:
            return tenant, [], after_event_id
        cursor = self._store.last_incident_event_id(tenant)  # first: a change meanwhile is sent again
        opened: list[IncidentRecord] = []
        token = ""
        while True:
            page = self._store.list_incidents(tenant, deployment or None, True, token, 1000)
            opened += page.items
            token = page.next_token
            if not token:
                break
        return tenant, sorted(opened, key=lambda i: i.id), cursor

    def events(
        self, caller: Principal, deployment: str, after_event_id: int, limit: int
    ) -> tuple[list[IncidentEventRecord], dict[int, IncidentRecord]]:
        """Events after the cursor, and their incidents as they are now."""
        tenant = caller.own_tenant()
        events = self._store.incident_events_after(tenant, deployment or None, after_event_id, limit)
        incidents = {i: self._store.get_incident(tenant, i) for i in {e.incident_id for e in events}}
        return events, incidents

    # --- states --------------------------------------------------------------------------------
    def acknowledge(self, caller: Principal, incident_id: int) -> IncidentRecord:
        return self._move(caller, incident_id, IncidentState.ACKNOWLEDGED, (IncidentState.FIRING,))

    def resolve(self, caller: Principal, incident_id: int) -> IncidentRecord:
        return self._move(
            caller, incident_id, IncidentState.RESOLVED, (IncidentState.FIRING, IncidentState.ACKNOWLEDGED)
        )

    def _move(
        self, caller: Principal, incident_id: int, state: IncidentState, allowed: tuple[IncidentState, ...]
    ) -> IncidentRecord:
        tenant = caller.own_tenant()
        _check_id(incident_id)
        record, event = self._store.set_incident_state(
            tenant, incident_id, state, allowed, caller.key_id, self._clock()
        )
        if event is not None:
            self._emit([event])
        return record

    # --- root cause ----------------------------------------------------------------------------
    def explain(self, caller: Principal, incident_id: int, window_s: int) -> Explanation:
        """Ranked causes: the metrics the alerts' SHAP attributions blame (score: their share), and
        the deployment's changes in the `window_s` before onset (score: proximity to onset, times
        OTHER_VERSION_FACTOR unless the change brought in an alerting version).

        A change that brought in an alerting version is measured against that version's first
        alert, so a release that starts alerting inside an incident already open (another
        version's alerts) is still traced to it; any other change against the incident's onset.
        """
        tenant = caller.own_tenant()
        _check_id(incident_id)
        if not 0 <= window_s <= MAX_EXPLAIN_WINDOW_S:
            raise InvalidArgument(f"window_s must be between 0 and {MAX_EXPLAIN_WINDOW_S} (0: 1800)")
        incident = self._store.get_incident(tenant, incident_id)
        window_ms = (window_s or DEFAULT_EXPLAIN_WINDOW_S) * 1000
        onsets = {
            v: self._store.first_alert_ms(
                tenant, incident.deployment, v, incident.first_ms, incident.last_ms + 1
            )
            or incident.first_ms
            for v in incident.versions
        }
        start, end = incident.first_ms - window_ms, incident.last_ms + ONSET_SLACK_MS
        causes = [
            Cause("metric", metric, weight, f"{weight:.0%} of the alerts' SHAP attributions")
            for metric, weight in metric_weights(incident)
        ]

        def change(
            name: str, t_ms: int, version: int, detail: str, *, rollout_id: int = 0, actor: str = ""
        ) -> None:
            matched = version in onsets
            onset = onsets[version] if matched else incident.first_ms
            if not onset - window_ms <= t_ms <= onset + ONSET_SLACK_MS:
                return
            proximity = min(1.0, max(0.0, 1.0 - (onset - t_ms) / window_ms))
            score = proximity * (1.0 if matched else OTHER_VERSION_FACTOR)
            gap = onset - t_ms
            when = _ago(gap) + (f" v{version}'s first alert; v{version} is alerting" if matched else " onset")
            causes.append(
                Cause("change", name, score, f"{detail} ({when})", t_ms, version, rollout_id, actor)
            )

        for r in self._rollouts(tenant, incident.deployment, start):
            for e in self._store.list_rollout_events(tenant, r.id, 0, 10_000):
                brings = _ROLLOUT_BRINGS.get(e.kind)
                version = {"candidate": r.candidate_version, "stable": r.stable_version}.get(brings or "", 0)
                detail = f"rollout {r.id} of v{r.candidate_version} over v{r.stable_version}: {e.kind}"
                if e.message:
                    detail += f" - {e.message}"
                change(
                    f"rollout_{e.kind}",
                    e.time_us // 1000,
                    version,
                    detail,
                    rollout_id=r.id,
                    actor=r.created_by,
                )
        for entry in self._deployment_audit(tenant, incident.deployment, start, end):
            t_ms = entry.time_us // 1000
            if entry.method.endswith("/SetTraffic"):
                live = [int(v) for v, w in _TRAFFIC.findall(entry.detail) if _positive(w)]
                live += [int(v) for v in _SHADOW.findall(entry.detail)]
                version = next((v for v in live if v in onsets), live[0] if live else 0)
                change("traffic_set", t_ms, version, f"traffic set: {entry.detail}", actor=entry.key_id)
            else:
                change("deployment_created", t_ms, 0, "deployment created", actor=entry.key_id)
        causes.sort(key=lambda c: (-c.score, c.kind, -c.time_ms, c.name))
        return Explanation(incident, causes, start)

    def _rollouts(self, tenant: str, deployment: str, start_ms: int) -> list[RolloutRecord]:
        out: list[RolloutRecord] = []
        token = ""
        while len(out) < MAX_ROLLOUTS:
            page = self._store.list_rollouts(tenant, deployment, False, token, 20)
            for r in page.items:
                if r.updated_at_us // 1000 >= start_ms:
                    out.append(r)
            token = page.next_token
            if not token or (page.items and page.items[-1].updated_at_us // 1000 < start_ms):
                break
        return out

    def _deployment_audit(
        self, tenant: str, deployment: str, start_ms: int, end_ms: int
    ) -> list[AuditRecord]:
        out: list[AuditRecord] = []
        token = ""
        for _ in range(MAX_AUDIT_PAGES):
            page = self._store.list_audit(tenant, token, 500)
            for entry in page.items:
                t_ms = entry.time_us // 1000
                if (
                    start_ms <= t_ms <= end_ms
                    and entry.outcome == "OK"
                    and entry.resource == f"deployments/{deployment}"
                    and entry.method.endswith(("/SetTraffic", "/CreateDeployment"))
                ):
                    out.append(entry)
            token = page.next_token
            if not token or (page.items and page.items[-1].time_us // 1000 < start_ms):
                break
        return out

    # --- webhooks ------------------------------------------------------------------------------
    def set_webhook(self, caller: Principal, url: str, secret: str, description: str) -> WebhookRecord:
        tenant = caller.own_tenant()
        parts = urlsplit(url)
        if len(url) > 2048 or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument("url must be an http:// or https:// URL of at most 2048 characters")
        if not 16 <= len(secret) <= 256:
            raise InvalidArgument("secret must be 16-256 characters: it signs every delivery")
        validation.description(description)
        return self._store.set_webhook(
            WebhookRecord(0, tenant, url, secret, description, self._clock(), caller.key_id)
        )

    def webhooks(self, caller: Principal) -> list[WebhookRecord]:
        return self._store.list_webhooks(caller.own_tenant())

    def delete_webhook(self, caller: Principal, webhook_id: int) -> None:
        tenant = caller.own_tenant()
        if webhook_id <= 0:
            raise InvalidArgument("id is required (a webhook id, from ListWebhooks)")
        self._store.delete_webhook(tenant, webhook_id)


def _check_id(incident_id: int) -> None:
    if incident_id <= 0:
        raise InvalidArgument("id is required (an incident id, from ListIncidents or WatchAlerts)")


def _positive(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and value > 0


def _ago(ms: int) -> str:
    if ms < 0:
        return f"{-ms / 1000:.0f} s after"
    if ms < 120_000:
        return f"{ms / 1000:.0f} s before"
    return f"{ms / 60_000:.0f} min before"
