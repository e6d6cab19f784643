"""Authentication, authorization, tenant isolation and input validation of every Foedus RPC.

Every RPC of every service the server serves (foedus.server.interceptors.SERVICE_MODULES, walked from
the descriptors, so a new service or RPC fails the coverage guard until it is listed here) is called
through raw gRPC stubs, so status codes are observed as the server sends them:

1. without a key, with a malformed, unknown, wrongly signed or revoked key -> UNAUTHENTICATED;
2. with each role its `(foedus.v1.access)` policy does not allow -> PERMISSION_DENIED;
3. by tenant B naming tenant A's resources -> NOT_FOUND, indistinguishable from a resource that does
   not exist and without A's data; lists and identities of B never contain A's items;
4. with malformed input -> INVALID_ARGUMENT, and a rejected upload leaves no version and no file.

Tenant A owns model "m" (version 1, a real ONNX model, alias "production") and deployment "dep" of
"m" (traffic [(1, 1.0)]) with a registered agent, one telemetry batch and one alert (so one
incident), and a webhook; tenant B owns
"b-model" (two small "custom" versions), "b-other" and deployment "b-dep" of "b-model" (agent,
telemetry, alert); "ghost" names never exist.

Streams: WatchAssignments (and WatchAlerts) never ends by itself, so a call reads its first message (with a short
deadline) and is cancelled; ReportTelemetry sends the request list and collects the acknowledgements.
Every streaming call is cancelled once read, and none may be left open at the end.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor

from foedus.client_sdk import Client
from foedus.client_sdk.agent.histogram import NUM_BUCKETS
from foedus.client_sdk.testing import LocalServer
from foedus.server.interceptors import SERVICE_MODULES
from foedus.v1 import (
    admin_pb2,
    agent_pb2,
    common_pb2,
    deployment_pb2,
    federation_pb2,
    monitoring_pb2,
    performance_pb2,
    registry_pb2,
    rollout_pb2,
)

TIMEOUT_S = 20.0
WATCH_TIMEOUT_S = 3.0  # WatchAssignments never ends: its first message comes at once, or an error

ADMIN = "/foedus.v1.AdminService/"
KEYS = "/foedus.v1.KeyService/"
REG = "/foedus.v1.RegistryService/"
DEP = "/foedus.v1.DeploymentService/"
AGENT = "/foedus.v1.AgentService/"
MON = "/foedus.v1.MonitoringService/"
ROL = "/foedus.v1.RolloutService/"
FED = "/foedus.v1.FederationService/"
PERF = "/foedus.v1.PerformanceService/"
PULL_LABELS = AGENT + "PullLabels"
REPORT_PERFORMANCE = AGENT + "ReportPerformance"
CREATE_VERSION = REG + "CreateModelVersion"
WATCH = AGENT + "WatchAssignments"
TELEMETRY = AGENT + "ReportTelemetry"
WATCH_ROLLOUT = ROL + "WatchRollout"
WATCH_ALERTS = MON + "WatchAlerts"
# Server streams that never end by themselves (a rollout's watch ends only when the rollout does).
ENDLESS = frozenset({WATCH, WATCH_ROLLOUT, WATCH_ALERTS})

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


# --- the RPCs, from the descriptors ---------------------------------------------------------------
def _walk_rpcs() -> dict[str, tuple[type, MethodDescriptor]]:
    """`/package.Service/Method` -> (stub class, method descriptor), for every Foedus RPC."""
    out: dict[str, tuple[type, MethodDescriptor]] = {}
    for module in SERVICE_MODULES:
        grpc_module = importlib.import_module(f"{module.__name__}_grpc")
        for service in module.DESCRIPTOR.services_by_name.values():
            stub = getattr(grpc_module, f"{service.name}Stub")
            for method in service.methods:
                out[f"/{service.full_name}/{method.name}"] = (stub, method)
    return out


METHODS = _walk_rpcs()
ALL_RPCS = sorted(METHODS)

ROLE_VALUES = {
    "viewer": common_pb2.ROLE_VIEWER,
    "editor": common_pb2.ROLE_EDITOR,
    "owner": common_pb2.ROLE_OWNER,
    "agent": common_pb2.ROLE_AGENT,
    "admin": common_pb2.ROLE_ADMIN,
}
ALL_ROLES = tuple(ROLE_VALUES)
TENANT_ROLES = ("viewer", "editor", "owner", "agent")
HIERARCHY = ("viewer", "editor", "owner")  # each includes the ones before it


def declared_roles(rpc: str) -> set[str]:
    options = METHODS[rpc][1].GetOptions()
    if not options.HasExtension(common_pb2.access):
        return set()
    values = set(options.Extensions[common_pb2.access].roles)
    return {name for name, value in ROLE_VALUES.items() if value in values}


def allowed_roles(rpc: str) -> frozenset[str]:
    """The declared roles with the hierarchy applied: owner ⊇ editor ⊇ viewer."""
    declared = declared_roles(rpc)
    allowed = set(declared)
    for i, role in enumerate(HIERARCHY):
        if role in declared:
            allowed.update(HIERARCHY[i:])
    return frozenset(allowed)


def short(rpc: str) -> str:
    return rpc.removeprefix("/foedus.v1.").replace("/", ".")


# --- requests ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Names:
    """The resources a request names: tenant A's, or ghosts that exist nowhere."""

    tenant: str
    model: str
    key_id: str
    version: int = 1
    alias: str = "production"
    deployment: str = "dep"
    agent: str = "probe-agent"  # not A's agent: B names it itself, so it is no secret of A's
    rollout: int = 999_999_999  # ids are server-wide; this one never exists
    run: int = 999_999_999  # a federation run
    incident: int = 999_999_999
    webhook: int = 999_999_999


GHOST = Names(tenant="ghost-tenant", model="ghost", key_id="ghost0000000", deployment="ghost-dep")
PAYLOAD = b"a small artifact of the access tests"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def traffic(*splits: tuple[int, float]) -> list[deployment_pb2.TrafficSplit]:
    return [deployment_pb2.TrafficSplit(version=v, weight=w) for v, w in splits]


def interval(**fields: Any) -> agent_pb2.IntervalReport:
    """A well-formed report of 10 requests (1 failed) of version 1 over the last 10 s, unless told otherwise."""
    values: dict[str, Any] = {
        "start_unix_ms": now_ms() - 10_000,
        "duration_ms": 10_000,
        "version": 1,
        "requests": 10,
        "errors": 1,
        "latency_ms": agent_pb2.SparseHistogram(buckets=[100, 101], counts=[6, 4], sum=12.5),
        "scores": {"anomaly": 0.5},
    }
    values.update(fields)
    return agent_pb2.IntervalReport(**values)


def telemetry(
    deployment: str,
    *,
    batch_id: str | None = None,
    agent: str = "probe-agent",
    intervals: list[agent_pb2.IntervalReport] | None = None,
    **batch_fields: Any,
) -> list[agent_pb2.ReportTelemetryRequest]:
    """The one message of a well-formed ReportTelemetry stream (a fresh batch id), unless told otherwise."""
    batch = agent_pb2.TelemetryBatch(
        batch_id=f"batch-{secrets.token_hex(8)}" if batch_id is None else batch_id,
        deployment=deployment,
        agent=agent,
        intervals=[interval()] if intervals is None else intervals,
        **batch_fields,
    )
    return [agent_pb2.ReportTelemetryRequest(batch=batch)]


def upload(
    model: str,
    payload: bytes = PAYLOAD,
    *,
    framework: str = "custom",
    create_model: bool = False,
    size_bytes: int | None = None,
    sha256: str | None = None,
    **spec_fields: Any,
) -> list[registry_pb2.CreateModelVersionRequest]:
    """The messages of a well-formed CreateModelVersion stream, unless told otherwise."""
    spec = registry_pb2.VersionSpec(
        model=model,
        create_model=create_model,
        framework=framework,
        size_bytes=len(payload) if size_bytes is None else size_bytes,
        **spec_fields,
    )
    digest = hashlib.sha256(payload).hexdigest() if sha256 is None else sha256
    return [
        registry_pb2.CreateModelVersionRequest(spec=spec),
        registry_pb2.CreateModelVersionRequest(chunk=payload),
        registry_pb2.CreateModelVersionRequest(sha256=digest),
    ]


# The request each RPC is probed with: it names tenant A's resources (or ghosts). Streams are lists.
REQUESTS: dict[str, Callable[[Names], Any]] = {
    ADMIN + "CreateTenant": lambda n: admin_pb2.CreateTenantRequest(name=n.tenant),
    ADMIN + "GetTenant": lambda n: admin_pb2.GetTenantRequest(name=n.tenant),
    ADMIN + "ListTenants": lambda n: admin_pb2.ListTenantsRequest(),
    ADMIN + "DisableTenant": lambda n: admin_pb2.DisableTenantRequest(name=n.tenant),
    ADMIN + "EnableTenant": lambda n: admin_pb2.EnableTenantRequest(name=n.tenant),
    ADMIN + "WhoAmI": lambda n: admin_pb2.WhoAmIRequest(),
    ADMIN + "ListAuditEntries": lambda n: admin_pb2.ListAuditEntriesRequest(tenant=n.tenant),
    KEYS + "CreateKey": lambda n: admin_pb2.CreateKeyRequest(tenant=n.tenant, role=common_pb2.ROLE_VIEWER),
    KEYS + "ListKeys": lambda n: admin_pb2.ListKeysRequest(tenant=n.tenant, include_revoked=True),
    KEYS + "RevokeKey": lambda n: admin_pb2.RevokeKeyRequest(tenant=n.tenant, key_id=n.key_id),
    REG + "CreateModel": lambda n: registry_pb2.CreateModelRequest(name=n.model),
    REG + "GetModel": lambda n: registry_pb2.GetModelRequest(name=n.model),
    REG + "ListModels": lambda n: registry_pb2.ListModelsRequest(),
    CREATE_VERSION: lambda n: upload(n.model),
    REG + "GetModelVersion": lambda n: registry_pb2.GetModelVersionRequest(model=n.model, version=n.version),
    REG + "ListModelVersions": lambda n: registry_pb2.ListModelVersionsRequest(
        model=n.model, include_archived=True
    ),
    REG + "SetAlias": lambda n: registry_pb2.SetAliasRequest(model=n.model, alias=n.alias, version=n.version),
    REG + "DeleteAlias": lambda n: registry_pb2.DeleteAliasRequest(model=n.model, alias=n.alias),
    REG + "ArchiveModelVersion": lambda n: registry_pb2.ArchiveModelVersionRequest(
        model=n.model, version=n.version
    ),
    REG + "DownloadArtifact": lambda n: registry_pb2.DownloadArtifactRequest(
        model=n.model, version=n.version
    ),
    # B creating a deployment of A's model: the model is what it names of A.
    DEP + "CreateDeployment": lambda n: deployment_pb2.CreateDeploymentRequest(
        name=n.deployment, model=n.model, traffic=traffic((n.version, 1.0))
    ),
    DEP + "GetDeployment": lambda n: deployment_pb2.GetDeploymentRequest(name=n.deployment),
    DEP + "ListDeployments": lambda n: deployment_pb2.ListDeploymentsRequest(),
    DEP + "SetTraffic": lambda n: deployment_pb2.SetTrafficRequest(
        name=n.deployment, traffic=traffic((n.version, 1.0))
    ),
    AGENT + "RegisterAgent": lambda n: agent_pb2.RegisterAgentRequest(
        deployment=n.deployment, agent=agent_pb2.AgentInfo(name=n.agent, host="probe-host", cpu_count=2)
    ),
    WATCH: lambda n: agent_pb2.WatchAssignmentsRequest(deployment=n.deployment, agent=n.agent),
    TELEMETRY: lambda n: telemetry(n.deployment, agent=n.agent),
    MON + "GetDeploymentStatus": lambda n: monitoring_pb2.GetDeploymentStatusRequest(name=n.deployment),
    MON + "QueryMetrics": lambda n: monitoring_pb2.QueryMetricsRequest(
        deployment=n.deployment, metric="requests", start_unix_ms=now_ms() - 3_600_000
    ),
    MON + "ListAlerts": lambda n: monitoring_pb2.ListAlertsRequest(deployment=n.deployment),
    MON + "GetDriftReport": lambda n: monitoring_pb2.GetDriftReportRequest(deployment=n.deployment),
    MON + "ListIncidents": lambda n: monitoring_pb2.ListIncidentsRequest(deployment=n.deployment),
    MON + "GetIncident": lambda n: monitoring_pb2.GetIncidentRequest(id=n.incident),
    MON + "AcknowledgeIncident": lambda n: monitoring_pb2.AcknowledgeIncidentRequest(id=n.incident),
    MON + "ResolveIncident": lambda n: monitoring_pb2.ResolveIncidentRequest(id=n.incident),
    WATCH_ALERTS: lambda n: monitoring_pb2.WatchAlertsRequest(deployment=n.deployment),
    MON + "ExplainIncident": lambda n: monitoring_pb2.ExplainIncidentRequest(id=n.incident),
    MON + "SetWebhook": lambda n: monitoring_pb2.SetWebhookRequest(
        url=PROBE_HOOK, secret="probe-secret-" * 2
    ),
    MON + "ListWebhooks": lambda n: monitoring_pb2.ListWebhooksRequest(),
    MON + "DeleteWebhook": lambda n: monitoring_pb2.DeleteWebhookRequest(id=n.webhook),
    REG + "RecordEvaluation": lambda n: registry_pb2.RecordEvaluationRequest(
        model=n.model,
        version=n.version,
        evaluation=registry_pb2.Evaluation(dataset="probe", metrics={"accuracy": 0.5}),
    ),
    ROL + "StartRollout": lambda n: rollout_pb2.StartRolloutRequest(
        spec=rollout_pb2.RolloutSpec(deployment=n.deployment, version=2)
    ),
    ROL + "GetRollout": lambda n: rollout_pb2.GetRolloutRequest(id=n.rollout),
    ROL + "ListRollouts": lambda n: rollout_pb2.ListRolloutsRequest(deployment=n.deployment),
    ROL + "ListRolloutEvents": lambda n: rollout_pb2.ListRolloutEventsRequest(id=n.rollout),
    WATCH_ROLLOUT: lambda n: rollout_pb2.WatchRolloutRequest(id=n.rollout),
    ROL + "PauseRollout": lambda n: rollout_pb2.PauseRolloutRequest(id=n.rollout),
    ROL + "ResumeRollout": lambda n: rollout_pb2.ResumeRolloutRequest(id=n.rollout),
    ROL + "PromoteRollout": lambda n: rollout_pb2.PromoteRolloutRequest(id=n.rollout),
    ROL + "AbortRollout": lambda n: rollout_pb2.AbortRolloutRequest(id=n.rollout),
    ROL + "SuggestWindows": lambda n: rollout_pb2.SuggestWindowsRequest(deployment=n.deployment),
    ROL + "GetDoraReport": lambda n: rollout_pb2.GetDoraReportRequest(model=n.model),
    FED + "RegisterNodeKey": lambda n: federation_pb2.RegisterNodeKeyRequest(
        tenant=n.tenant, public_key=PROBE_KEY
    ),
    FED + "ListNodeKeys": lambda n: federation_pb2.ListNodeKeysRequest(tenant=n.tenant, include_revoked=True),
    FED + "RevokeNodeKey": lambda n: federation_pb2.RevokeNodeKeyRequest(
        tenant=n.tenant, fingerprint="0" * 64
    ),
    FED + "CreateRun": lambda n: federation_pb2.CreateRunRequest(
        model_kind="anomaly", strategy="fedavg", rounds=1, tenants=[n.tenant]
    ),
    FED + "RecordRound": lambda n: federation_pb2.RecordRoundRequest(
        id=n.run, round=federation_pb2.FederationRound(round=9)
    ),
    FED + "FinishRun": lambda n: federation_pb2.FinishRunRequest(
        id=n.run, state=federation_pb2.FEDERATION_RUN_STATE_FAILED
    ),
    FED + "GetRun": lambda n: federation_pb2.GetRunRequest(id=n.run),
    FED + "ListRuns": lambda n: federation_pb2.ListRunsRequest(),
    FED + "SetOptIn": lambda n: federation_pb2.SetOptInRequest(model_kind="anomaly", deployment=n.deployment),
    FED + "ListOptIns": lambda n: federation_pb2.ListOptInsRequest(),
    FED + "DeliverResult": lambda n: federation_pb2.DeliverResultRequest(id=n.run),
}
REQUESTS.update(
    {
        PULL_LABELS: lambda n: agent_pb2.PullLabelsRequest(deployment=n.deployment),
        REPORT_PERFORMANCE: lambda n: performance_report(n.deployment, agent=n.agent),
        PERF + "LogLabels": lambda n: performance_pb2.LogLabelsRequest(
            deployment=n.deployment, request_ids=["probe-request"], labels=["1"]
        ),
        PERF + "GetPerformance": lambda n: performance_pb2.GetPerformanceRequest(deployment=n.deployment),
    }
)


def performance_report(
    deployment: str, *, agent: str = "probe-agent", batch_id: str | None = None, **counts: Any
) -> agent_pb2.ReportPerformanceRequest:
    """A well-formed ReportPerformance call (a fresh batch id): one labelled prediction of version 1."""
    values: dict[str, Any] = {
        "version": 1,
        "window_start_unix_ms": now_ms() - now_ms() % 60_000,
        "task": "classification",
        "predictions": 1,
        "labelled": 1,
        "confusion": [agent_pb2.ConfusionCell(true_label="1", predicted_label="1", weight=1.0)],
    }
    values.update(counts)
    return agent_pb2.ReportPerformanceRequest(
        batch_id=f"perf-{secrets.token_hex(8)}" if batch_id is None else batch_id,
        deployment=deployment,
        agent=agent,
        counts=[agent_pb2.PerformanceCounts(**values)],
    )


PROBE_HOOK = "https://hooks.example.com/probe"
# A PEM public key (the DER bytes need not be a real key for the registry: it fingerprints them).
PROBE_KEY = (
    "-----BEGIN PUBLIC KEY-----\n"
    + base64.b64encode(b"probe public key of a supernode, 48 bytes long!!").decode()
    + "\n-----END PUBLIC KEY-----\n"
)

# How tenant isolation is checked for each RPC:
#   names    - the request names a resource of tenant A: B gets NOT_FOUND, the same as for a ghost;
#              where the admin may call it, the admin naming a ghost tenant gets NOT_FOUND;
#   admin    - admin-only, names a tenant: the admin naming a ghost tenant gets NOT_FOUND;
#   scoped   - names nothing of another tenant; results stay inside the caller's tenant (SCOPED_CHECKS);
#   platform - admin-only and platform-wide (the tenants themselves).
ISOLATION: dict[str, str] = {
    ADMIN + "CreateTenant": "platform",
    ADMIN + "GetTenant": "names",
    ADMIN + "ListTenants": "platform",
    ADMIN + "DisableTenant": "admin",
    ADMIN + "EnableTenant": "admin",
    ADMIN + "WhoAmI": "scoped",
    ADMIN + "ListAuditEntries": "names",
    KEYS + "CreateKey": "names",
    KEYS + "ListKeys": "names",
    KEYS + "RevokeKey": "names",
    REG + "CreateModel": "scoped",
    REG + "GetModel": "names",
    REG + "ListModels": "scoped",
    CREATE_VERSION: "names",
    REG + "GetModelVersion": "names",
    REG + "ListModelVersions": "names",
    REG + "SetAlias": "names",
    REG + "DeleteAlias": "names",
    REG + "ArchiveModelVersion": "names",
    REG + "DownloadArtifact": "names",
    DEP + "CreateDeployment": "names",
    DEP + "GetDeployment": "names",
    DEP + "ListDeployments": "scoped",
    DEP + "SetTraffic": "names",
    AGENT + "RegisterAgent": "names",
    WATCH: "names",
    TELEMETRY: "names",
    MON + "GetDeploymentStatus": "names",
    MON + "QueryMetrics": "names",
    MON + "ListAlerts": "names",
    MON + "GetDriftReport": "names",
    PULL_LABELS: "names",
    REPORT_PERFORMANCE: "names",
    PERF + "LogLabels": "names",
    PERF + "GetPerformance": "names",
    MON + "ListIncidents": "names",
    MON + "GetIncident": "names",
    MON + "AcknowledgeIncident": "names",
    MON + "ResolveIncident": "names",
    WATCH_ALERTS: "names",
    MON + "ExplainIncident": "names",
    MON + "SetWebhook": "scoped",
    MON + "ListWebhooks": "scoped",
    MON + "DeleteWebhook": "names",
    REG + "RecordEvaluation": "names",
    **{
        ROL + name: "names"
        for name in rollout_pb2.DESCRIPTOR.services_by_name["RolloutService"].methods_by_name
    },
    FED + "RegisterNodeKey": "admin",
    FED + "ListNodeKeys": "names",
    FED + "RevokeNodeKey": "admin",
    FED + "CreateRun": "admin",
    FED + "RecordRound": "platform",
    FED + "FinishRun": "platform",
    FED + "GetRun": "names",
    FED + "ListRuns": "scoped",
    FED + "SetOptIn": "names",
    FED + "ListOptIns": "scoped",
    FED + "DeliverResult": "platform",
}


# --- the world: a server, tenants A and B, their keys and models -------------------------------------
@dataclass
class Tenant:
    name: str
    display_name: str
    keys: dict[str, str] = field(default_factory=dict)  # role -> secret
    key_ids: dict[str, str] = field(default_factory=dict)  # role -> key id


@dataclass
class World:
    server: LocalServer
    channel: grpc.Channel
    admin_key: str
    a: Tenant
    b: Tenant
    a_sha256: str
    onnx_bytes: bytes
    revoked: dict[str, str] = field(default_factory=dict)  # role -> revoked key of tenant B
    str_token: str = ""  # a next_page_token of a list sorted by name (ListKeys)
    int_token: str = ""  # a next_page_token of a list sorted by number (ListAuditEntries)
    a_rollout: int = 0  # tenant A's rollout (scheduled far ahead, on "dep-r" of model "ma")
    a_run: int = 0  # a federation run tenant A takes part in (B does not)
    a_incident: int = 0  # the incident of A's alert
    a_webhook: int = 0
    streams: list[Any] = field(default_factory=list)  # every streaming call made, to check they ended

    @property
    def a_names(self) -> Names:
        return Names(
            tenant=self.a.name,
            model="m",
            key_id=self.a.key_ids["owner"],
            rollout=self.a_rollout,
            run=self.a_run,
            incident=self.a_incident,
            webhook=self.a_webhook,
        )

    @property
    def a_secrets(self) -> tuple[str, ...]:
        """What tenant B must never learn from any answer."""
        return (
            self.a.display_name,
            A_MODEL_DESCRIPTION,
            A_TAG_VALUE,
            self.a_sha256,
            A_DEPLOYMENT_DESCRIPTION,
            A_AGENT,
            A_HOST,
            A_ALERT_KIND,
            A_METRIC,
            A_WEBHOOK_URL,
            A_WEBHOOK_SECRET,
            *self.a.keys.values(),
            *self.a.key_ids.values(),
        )

    def key(self, role: str, tenant: Tenant | None = None) -> str:
        return self.admin_key if role == "admin" else (tenant or self.b).keys[role]

    def call(self, rpc: str, request: Any, key: str | None = None, *, metadata: Any = None) -> Any:
        """Calls `rpc` through its generated stub; streams are sent from / collected into lists.

        An endless stream (WatchAssignments) yields a list of its first message only; an error
        raises from the first read. Every streaming call is cancelled once read.
        """
        stub_class, method = METHODS[rpc]
        fn = getattr(stub_class(self.channel), method.name)
        md = metadata if metadata is not None else (("authorization", f"Bearer {key}"),)
        if not method.server_streaming:
            arg = iter(request) if method.client_streaming else request
            return fn(arg, metadata=md, timeout=TIMEOUT_S)
        endless = rpc in ENDLESS
        arg = iter(request) if method.client_streaming else request
        stream = fn(arg, metadata=md, timeout=WATCH_TIMEOUT_S if endless else TIMEOUT_S)
        self.streams.append(stream)
        try:
            if endless:
                first = next(iter(stream), None)
                return [] if first is None else [first]
            return list(stream)
        finally:
            stream.cancel()

    def ok(self, rpc: str, request: Any, key: str) -> Any:
        try:
            return self.call(rpc, request, key)
        except grpc.RpcError as exc:
            pytest.fail(f"{short(rpc)} failed: {exc.code().name}: {exc.details()}")

    def b_models(self) -> dict[str, int]:
        """B's models -> latest version."""
        resp = self.ok(REG + "ListModels", registry_pb2.ListModelsRequest(), self.b.keys["viewer"])
        assert not resp.next_page_token
        return {m.name: m.latest_version for m in resp.models}

    def assert_a_intact(self) -> None:
        """Tenant A's model, version, alias, keys and state are as the fixture left them."""
        owner = self.a.keys["owner"]
        model = self.ok(REG + "GetModel", registry_pb2.GetModelRequest(name="m"), owner).model
        assert model.latest_version == 1
        assert dict(model.aliases) == {"production": 1}
        assert model.description == A_MODEL_DESCRIPTION
        version = self.ok(
            REG + "GetModelVersion", registry_pb2.GetModelVersionRequest(model="m", version=1), owner
        ).version
        assert version.state == registry_pb2.VERSION_STATE_READY
        assert version.artifact.sha256 == self.a_sha256
        keys = self.ok(KEYS + "ListKeys", admin_pb2.ListKeysRequest(include_revoked=True), owner).keys
        assert sorted(k.key_id for k in keys) == sorted(self.a.key_ids.values())
        assert not any(k.HasField("revoked_at") for k in keys)
        tenant = self.ok(ADMIN + "GetTenant", admin_pb2.GetTenantRequest(name=self.a.name), self.admin_key)
        assert tenant.tenant.state == admin_pb2.TENANT_STATE_ACTIVE
        viewer = self.a.keys["viewer"]
        dep = self.ok(
            DEP + "GetDeployment", deployment_pb2.GetDeploymentRequest(name="dep"), viewer
        ).deployment
        assert (dep.name, dep.model, dep.description) == ("dep", "m", A_DEPLOYMENT_DESCRIPTION)
        assert ([(t.version, t.weight) for t in dep.traffic], dep.shadow_version, dep.generation) == (
            [(1, 1.0)],
            0,
            1,
        )
        status = self.ok(
            MON + "GetDeploymentStatus", monitoring_pb2.GetDeploymentStatusRequest(name="dep"), viewer
        )
        assert [a.info.name for a in status.agents] == [A_AGENT]
        alerts = self.ok(MON + "ListAlerts", monitoring_pb2.ListAlertsRequest(), viewer).alerts
        assert [(a.deployment, a.alert.alert_id, a.alert.kind) for a in alerts] == [
            ("dep", "a-alert-1", A_ALERT_KIND)
        ]
        incident = self.ok(MON + "GetIncident", monitoring_pb2.GetIncidentRequest(id=self.a_incident), viewer)
        assert (incident.incident.deployment, incident.incident.alert_count) == ("dep", 1)
        # Acknowledged or resolved only by A (nothing in these tests does; it may resolve when quiet).
        assert not incident.incident.acknowledged_by
        assert incident.incident.resolved_by in ("", "auto")
        hooks = self.ok(MON + "ListWebhooks", monitoring_pb2.ListWebhooksRequest(), viewer).webhooks
        assert [(h.id, h.url) for h in hooks] == [(self.a_webhook, A_WEBHOOK_URL)]

    def b_status(self) -> monitoring_pb2.GetDeploymentStatusResponse:
        return self.ok(
            MON + "GetDeploymentStatus",
            monitoring_pb2.GetDeploymentStatusRequest(name=B_DEPLOYMENT),
            self.b.keys["viewer"],
        )


A_DISPLAY_NAME = "Alpha Industries Confidential"
A_MODEL_DESCRIPTION = "alpha churn model, trained on q3 secrets"
A_TAG_VALUE = "alpha-private-tag-value"
A_DEPLOYMENT_DESCRIPTION = "alpha churn scoring in the eu region, confidential"
A_AGENT = "alpha-edge-agent-7"
A_HOST = "alpha-gpu-host.internal"
A_ALERT_KIND = "alpha-latency-regression"
A_METRIC = "alpha_private_auc"
A_BATCH_ID = "batch-of-a-0001"
A_WEBHOOK_URL = "https://alpha-oncall.internal/hooks/foedus"
A_WEBHOOK_SECRET = "alpha-webhook-signing-secret-0001"
B_DEPLOYMENT = "b-dep"


def _tenant_with_keys(server: LocalServer, name: str, display_name: str) -> Tenant:
    with server.client() as admin:
        created = admin.tenants.create(name, display_name=display_name)
    tenant = Tenant(name=name, display_name=display_name)
    tenant.keys["owner"] = created.owner_key_secret
    tenant.key_ids["owner"] = created.owner_key.key_id
    with Client.connect(server.target, api_key=created.owner_key_secret) as owner:
        for role in ("viewer", "editor", "agent"):
            new = owner.keys.create(role, description=f"{role} of {name}")
            tenant.keys[role] = new.secret
            tenant.key_ids[role] = new.key.key_id
    return tenant


@pytest.fixture(scope="module")
def world(server: LocalServer, onnx_model: Path) -> Iterator[World]:
    a = _tenant_with_keys(server, "tenant-a", A_DISPLAY_NAME)
    b = _tenant_with_keys(server, "tenant-b", "Tenant B")
    with Client.connect(server.target, api_key=a.keys["editor"]) as client:
        client.models.create("m", description=A_MODEL_DESCRIPTION, tags={"owner-note": A_TAG_VALUE})
        registered = client.models.register("m", onnx_model, aliases=["production"], create_model=False)
    assert registered.version == 1
    channel = grpc.insecure_channel(server.target)
    w = World(
        server=server,
        channel=channel,
        admin_key=server.admin_key,
        a=a,
        b=b,
        a_sha256=registered.artifact.sha256,
        onnx_bytes=onnx_model.read_bytes(),
    )
    # B: a model with two small versions, and a second model.
    editor = b.keys["editor"]
    for i in (1, 2):
        w.ok(CREATE_VERSION, upload("b-model", b"b-model v%d" % i, create_model=True), editor)
    w.ok(REG + "CreateModel", registry_pb2.CreateModelRequest(name="b-other"), editor)
    # Revoked keys of B, each used once before (so that it sits in the server's key cache).
    for role in ("owner", "agent"):
        new = w.ok(KEYS + "CreateKey", admin_pb2.CreateKeyRequest(role=ROLE_VALUES[role]), b.keys["owner"])
        w.ok(ADMIN + "WhoAmI", admin_pb2.WhoAmIRequest(), new.secret)
        w.ok(KEYS + "RevokeKey", admin_pb2.RevokeKeyRequest(key_id=new.key.key_id), b.keys["owner"])
        w.revoked[role] = new.secret
    # Page tokens of a list sorted by name and of one sorted by number.
    page = common_pb2.PageRequest(page_size=1)
    w.str_token = w.ok(
        KEYS + "ListKeys", admin_pb2.ListKeysRequest(page=page), b.keys["owner"]
    ).next_page_token
    w.int_token = w.ok(
        ADMIN + "ListAuditEntries", admin_pb2.ListAuditEntriesRequest(page=page), b.keys["owner"]
    ).next_page_token
    assert w.str_token
    assert w.int_token
    # A: deployment "dep" of "m", its agent, one telemetry batch with an alert and a logged metric.
    w.ok(
        DEP + "CreateDeployment",
        deployment_pb2.CreateDeploymentRequest(
            name="dep", model="m", description=A_DEPLOYMENT_DESCRIPTION, traffic=traffic((1, 1.0))
        ),
        a.keys["editor"],
    )
    a_agent = a.keys["agent"]
    info = agent_pb2.AgentInfo(name=A_AGENT, host=A_HOST, cpu_count=8)
    w.ok(AGENT + "RegisterAgent", agent_pb2.RegisterAgentRequest(deployment="dep", agent=info), a_agent)
    alert = agent_pb2.AgentAlert(
        alert_id="a-alert-1", time_unix_ms=now_ms(), version=1, kind=A_ALERT_KIND, score=9.0, threshold=3.0
    )
    metric = agent_pb2.MetricPoint(name=A_METRIC, value=0.97, time_unix_ms=now_ms())
    acks = w.ok(
        TELEMETRY,
        telemetry("dep", batch_id=A_BATCH_ID, agent=A_AGENT, alerts=[alert], metrics=[metric]),
        a_agent,
    )
    assert [(ack.batch_id, ack.duplicate) for ack in acks] == [(A_BATCH_ID, False)]
    (a_incident,) = w.ok(
        MON + "ListIncidents", monitoring_pb2.ListIncidentsRequest(), a.keys["viewer"]
    ).incidents
    w.a_incident = a_incident.id
    w.a_webhook = w.ok(
        MON + "SetWebhook",
        monitoring_pb2.SetWebhookRequest(url=A_WEBHOOK_URL, secret=A_WEBHOOK_SECRET),
        a.keys["owner"],
    ).webhook.id
    # A: model "ma" (two versions), deployment "dep-r" of version 1, and a rollout of version 2
    # scheduled far ahead (it never touches the traffic during the tests).
    for i in (1, 2):
        w.ok(CREATE_VERSION, upload("ma", b"a-model v%d" % i, create_model=True), a.keys["editor"])
    w.ok(
        DEP + "CreateDeployment",
        deployment_pb2.CreateDeploymentRequest(name="dep-r", model="ma", traffic=traffic((1, 1.0))),
        a.keys["editor"],
    )
    spec = rollout_pb2.RolloutSpec(deployment="dep-r", version=2)
    spec.start_at.FromSeconds(4_102_444_800)  # 2100-01-01
    started = w.ok(ROL + "StartRollout", rollout_pb2.StartRolloutRequest(spec=spec), a.keys["editor"]).rollout
    assert started.phase == rollout_pb2.ROLLOUT_PHASE_SCHEDULED
    w.a_rollout = started.id
    # A federation run that tenant A takes part in, with A's SuperNode key registered.
    a_key = PROBE_KEY.replace("cHJvYmU", "YWxwaGE")  # another key: "alpha" instead of "probe"
    w.ok(
        FED + "RegisterNodeKey",
        federation_pb2.RegisterNodeKeyRequest(tenant=a.name, public_key=a_key),
        w.admin_key,
    )
    fed_run = federation_pb2.CreateRunRequest(
        model_kind="anomaly", strategy="fedavg", rounds=3, tenants=[a.name]
    )
    w.a_run = w.ok(FED + "CreateRun", fed_run, w.admin_key).run.id
    # B: deployment "b-dep" of both versions of "b-model", its agent, telemetry and an alert. Its
    # batch reuses A's batch id: batch ids are per tenant, so it is new (and stored) for B.
    w.ok(
        DEP + "CreateDeployment",
        deployment_pb2.CreateDeploymentRequest(
            name=B_DEPLOYMENT, model="b-model", traffic=traffic((1, 0.5), (2, 0.5))
        ),
        editor,
    )
    b_agent = b.keys["agent"]
    info = agent_pb2.AgentInfo(name="b-agent", host="b-host")
    w.ok(
        AGENT + "RegisterAgent", agent_pb2.RegisterAgentRequest(deployment=B_DEPLOYMENT, agent=info), b_agent
    )
    alert = agent_pb2.AgentAlert(alert_id="b-alert-1", time_unix_ms=now_ms(), version=2, kind="b-kind")
    acks = w.ok(
        TELEMETRY, telemetry(B_DEPLOYMENT, batch_id=A_BATCH_ID, agent="b-agent", alerts=[alert]), b_agent
    )
    assert [(ack.batch_id, ack.duplicate) for ack in acks] == [(A_BATCH_ID, False)]
    try:
        yield w
    finally:
        for stream in w.streams:
            stream.cancel()
        channel.close()


def expect(code: grpc.StatusCode, fn: Callable[[], Any]) -> grpc.RpcError:
    """Runs `fn`, which must fail with `code`; returns the error."""
    with pytest.raises(grpc.RpcError) as info:
        fn()
    err: Any = info.value
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
    return err


def request_text(request: Any) -> str:
    return "\n".join(str(m) for m in request) if isinstance(request, list) else str(request)


def assert_no_leak(world: World, text: str, request: Any = None) -> None:
    """`text` (an answer to tenant B) contains nothing of A that B did not send itself."""
    sent = request_text(request) if request is not None else ""
    leaked = [s for s in world.a_secrets if s in text and s not in sent]
    assert not leaked, f"answer reveals tenant A's data {leaked}: {text}"


def normalize(text: str, names: Names) -> str:
    """The message with the names the request gave replaced by placeholders."""
    for value, placeholder in (
        (names.deployment, "<deployment>"),
        (names.tenant, "<tenant>"),
        (names.model, "<model>"),
        (names.key_id, "<key>"),
    ):
        text = re.sub(rf"(?<![\w.-]){re.escape(value)}(?![\w.-])", placeholder, text)
    text = re.sub(rf"\brun {names.run}\b", "run <run>", text)
    text = re.sub(rf"\bincident {names.incident}\b", "incident <incident>", text)
    text = re.sub(rf"\bwebhook {names.webhook}\b", "webhook <webhook>", text)
    return re.sub(rf"\brollout {names.rollout}\b", "rollout <rollout>", text)


# --- 0. coverage guard -----------------------------------------------------------------------------
def test_every_rpc_is_covered() -> None:
    """A new RPC fails here until it has a probe request, an isolation rule and validation cases."""
    assert set(REQUESTS) == set(ALL_RPCS)
    assert set(ISOLATION) == set(ALL_RPCS)
    assert all(kind in ("names", "admin", "scoped", "platform") for kind in ISOLATION.values())
    assert {r for r, kind in ISOLATION.items() if kind == "scoped"} <= set(SCOPED_CHECKS)
    for rpc in ALL_RPCS:
        assert declared_roles(rpc), f"{rpc} declares no roles in its (foedus.v1.access) option"
        if ISOLATION[rpc] in ("admin", "platform"):
            assert allowed_roles(rpc) == {"admin"}, f"{rpc} is classified admin-only but is not"
        if ISOLATION[rpc] == "names":
            assert allowed_roles(rpc) & set(TENANT_ROLES), f"{rpc}: no tenant role may call it"
    with_page = {r for r in ALL_RPCS if "page" in METHODS[r][1].input_type.fields_by_name}
    assert with_page == set(LIST_RPCS)
    with_fields = {r for r in ALL_RPCS if METHODS[r][1].input_type.fields}
    validated = {p.values[0] for p in INVALID_CASES} | {CREATE_VERSION}
    assert with_fields <= validated, f"no INVALID_ARGUMENT cases for {sorted(with_fields - validated)}"


# --- 1. authentication -----------------------------------------------------------------------------
def _bearer(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", value),)


def _revoked_role(rpc: str) -> str:
    """A revoked key of a role the RPC allows, where there is one (agent-only RPCs get the agent's)."""
    allowed = allowed_roles(rpc)
    return "agent" if "agent" in allowed and "owner" not in allowed else "owner"


BAD_CREDENTIALS: dict[str, Callable[[World, str], Any]] = {
    "missing": lambda w, rpc: (),
    "empty-bearer": lambda w, rpc: _bearer("Bearer "),
    "no-scheme": lambda w, rpc: _bearer(w.admin_key),
    "basic-scheme": lambda w, rpc: _bearer(f"Basic {w.admin_key}"),
    "other-header": lambda w, rpc: (("x-api-key", w.admin_key),),
    "malformed": lambda w, rpc: _bearer("Bearer not-a-foedus-key"),
    "malformed-short-id": lambda w, rpc: _bearer("Bearer fds_abc_" + "s" * 43),
    "malformed-no-separator": lambda w, rpc: _bearer(f"Bearer fds_{w.b.key_ids['owner']}x{'s' * 43}"),
    "unknown": lambda w, rpc: _bearer(f"Bearer fds_{'q' * 12}_{secrets.token_urlsafe(32)}"),
    "wrong-secret": lambda w, rpc: _bearer(f"Bearer fds_{w.b.key_ids['owner']}_{secrets.token_urlsafe(32)}"),
    "revoked": lambda w, rpc: _bearer(f"Bearer {w.revoked[_revoked_role(rpc)]}"),
}


@pytest.mark.parametrize("credential", list(BAD_CREDENTIALS))
@pytest.mark.parametrize("rpc", ALL_RPCS, ids=short)
def test_bad_credentials_are_unauthenticated(world: World, rpc: str, credential: str) -> None:
    metadata = BAD_CREDENTIALS[credential](world, rpc)
    request = REQUESTS[rpc](world.a_names)
    err = expect(UNAUTHENTICATED, lambda: world.call(rpc, request, metadata=metadata))
    assert_no_leak(world, err.details())


def test_live_keys_still_authenticate(world: World) -> None:
    """B's live keys authenticate (the revoked ones did too, in the fixture, before their revocation)."""
    for role in ("viewer", "editor", "owner", "agent"):
        me = world.ok(ADMIN + "WhoAmI", admin_pb2.WhoAmIRequest(), world.b.keys[role])
        assert (me.tenant, me.role, me.key_id) == (world.b.name, ROLE_VALUES[role], world.b.key_ids[role])
    listed = world.ok(
        KEYS + "ListKeys", admin_pb2.ListKeysRequest(include_revoked=True), world.b.keys["owner"]
    ).keys
    assert sum(k.HasField("revoked_at") for k in listed) == len(world.revoked)


# --- 2. authorization ------------------------------------------------------------------------------
DENIED = [(rpc, role) for rpc in ALL_RPCS for role in ALL_ROLES if role not in allowed_roles(rpc)]


@pytest.mark.parametrize(
    ("rpc", "role"), [pytest.param(r, role, id=f"{short(r)}-{role}") for r, role in DENIED]
)
def test_roles_outside_the_policy_are_denied(world: World, rpc: str, role: str) -> None:
    request = REQUESTS[rpc](world.a_names if role != "admin" else GHOST)
    err = expect(PERMISSION_DENIED, lambda: world.call(rpc, request, world.key(role)))
    assert_no_leak(world, err.details())
    if role in ("viewer", "editor", "owner", "agent"):
        world.assert_a_intact()


def test_policy_matrix_matches_the_proto() -> None:
    """The hierarchy is applied as documented: a few anchors of the matrix."""
    assert allowed_roles(ADMIN + "WhoAmI") == set(ALL_ROLES)
    assert allowed_roles(REG + "GetModel") == {"viewer", "editor", "owner", "agent"}
    assert allowed_roles(REG + "SetAlias") == {"editor", "owner"}
    assert allowed_roles(KEYS + "CreateKey") == {"owner", "admin"}
    assert allowed_roles(ADMIN + "CreateTenant") == {"admin"}
    assert allowed_roles(DEP + "GetDeployment") == {"viewer", "editor", "owner", "agent"}
    assert allowed_roles(DEP + "SetTraffic") == {"editor", "owner"}
    assert allowed_roles(AGENT + "RegisterAgent") == {"agent"}
    assert allowed_roles(WATCH) == {"agent"}
    assert allowed_roles(TELEMETRY) == {"agent", "editor", "owner"}
    assert allowed_roles(MON + "QueryMetrics") == {"viewer", "editor", "owner"}
    assert allowed_roles(MON + "GetDriftReport") == {"viewer", "editor", "owner"}
    assert allowed_roles(PERF + "LogLabels") == {"editor", "owner"}
    assert allowed_roles(PERF + "GetPerformance") == {"viewer", "editor", "owner"}
    assert allowed_roles(PULL_LABELS) == {"agent"}
    assert allowed_roles(REPORT_PERFORMANCE) == {"agent"}
    assert allowed_roles(WATCH_ALERTS) == {"viewer", "editor", "owner"}
    assert allowed_roles(MON + "AcknowledgeIncident") == {"editor", "owner"}
    assert allowed_roles(MON + "SetWebhook") == {"owner"}


# --- 3. tenant isolation ---------------------------------------------------------------------------
CROSS_TENANT = [
    pytest.param(rpc, role, id=f"{short(rpc)}-{role}")
    for rpc in ALL_RPCS
    if ISOLATION[rpc] == "names"
    for role in TENANT_ROLES
    if role in allowed_roles(rpc)
]


@pytest.mark.parametrize(("rpc", "role"), CROSS_TENANT)
def test_other_tenants_resources_are_not_found(world: World, rpc: str, role: str) -> None:
    key = world.b.keys[role]
    request = REQUESTS[rpc](world.a_names)
    err = expect(NOT_FOUND, lambda: world.call(rpc, request, key))
    assert_no_leak(world, err.details(), request)
    ghost = expect(NOT_FOUND, lambda: world.call(rpc, REQUESTS[rpc](GHOST), key))
    # Indistinguishable from a resource that does not exist: A's existence is not revealed.
    assert normalize(err.details(), world.a_names) == normalize(ghost.details(), GHOST)
    world.assert_a_intact()


SELECTORS = [
    pytest.param(rpc, role, id=f"{short(rpc)}-alias-{role}")
    for rpc in (REG + "GetModelVersion", REG + "DownloadArtifact")
    for role in TENANT_ROLES
    if role in allowed_roles(rpc)
]


@pytest.mark.parametrize(("rpc", "role"), SELECTORS)
def test_other_tenants_aliases_are_not_found(world: World, rpc: str, role: str) -> None:
    request_type = type(REQUESTS[rpc](world.a_names))
    err = expect(
        NOT_FOUND, lambda: world.call(rpc, request_type(model="m", alias="production"), world.b.keys[role])
    )
    ghost = expect(
        NOT_FOUND,
        lambda: world.call(rpc, request_type(model="ghost", alias="production"), world.b.keys[role]),
    )
    assert_no_leak(world, err.details())
    assert normalize(err.details(), world.a_names) == normalize(ghost.details(), GHOST)


ADMIN_GHOSTS = [
    pytest.param(rpc, id=short(rpc))
    for rpc in ALL_RPCS
    if ISOLATION[rpc] in ("names", "admin") and "admin" in allowed_roles(rpc)
]


@pytest.mark.parametrize("rpc", ADMIN_GHOSTS)
def test_admin_naming_a_nonexistent_tenant_is_not_found(world: World, rpc: str) -> None:
    expect(NOT_FOUND, lambda: world.call(rpc, REQUESTS[rpc](GHOST), world.admin_key))


def test_owner_cannot_revoke_another_tenants_key(world: World) -> None:
    owner_b = world.b.keys["owner"]
    for key_id in world.a.key_ids.values():
        err = expect(
            NOT_FOUND,
            lambda key_id=key_id: world.call(
                KEYS + "RevokeKey", admin_pb2.RevokeKeyRequest(key_id=key_id), owner_b
            ),
        )
        ghost = expect(
            NOT_FOUND,
            lambda: world.call(KEYS + "RevokeKey", admin_pb2.RevokeKeyRequest(key_id=GHOST.key_id), owner_b),
        )
        assert err.details().replace(key_id, "<key>") == ghost.details().replace(GHOST.key_id, "<key>")
    # Nor can the admin, naming tenant B for a key of A.
    expect(
        NOT_FOUND,
        lambda: world.call(
            KEYS + "RevokeKey",
            admin_pb2.RevokeKeyRequest(tenant=world.b.name, key_id=world.a.key_ids["owner"]),
            world.admin_key,
        ),
    )
    for role, key in world.a.keys.items():
        me = world.ok(ADMIN + "WhoAmI", admin_pb2.WhoAmIRequest(), key)
        assert (me.tenant, me.key_id) == (world.a.name, world.a.key_ids[role])
    world.assert_a_intact()


def _check_whoami(world: World) -> None:
    for role in ALL_ROLES:
        me = world.ok(ADMIN + "WhoAmI", admin_pb2.WhoAmIRequest(), world.key(role))
        assert me.role == ROLE_VALUES[role]
        assert me.tenant == ("" if role == "admin" else world.b.name)
        assert me.key_id
        if role != "admin":
            assert me.key_id == world.b.key_ids[role]
        assert_no_leak(world, str(me))


def _check_list_models(world: World) -> None:
    for role in ("viewer", "editor", "owner"):
        for prefix in ("", "m", "b"):
            resp = world.ok(
                REG + "ListModels", registry_pb2.ListModelsRequest(name_prefix=prefix), world.b.keys[role]
            )
            names = {m.name for m in resp.models}
            assert "m" not in names
            assert names >= ({"b-model", "b-other"} if prefix in ("", "b") else set())
            assert_no_leak(world, str(resp))


def _check_list_keys(world: World) -> None:
    b_ids = set(world.b.key_ids.values())
    for key, tenant in (
        (world.b.keys["owner"], ""),
        (world.b.keys["owner"], world.b.name),
        (world.admin_key, world.b.name),
    ):
        req = admin_pb2.ListKeysRequest(tenant=tenant, include_revoked=True)
        resp = world.ok(KEYS + "ListKeys", req, key)
        assert {k.tenant for k in resp.keys} == {world.b.name}
        assert {k.key_id for k in resp.keys} >= b_ids
        assert_no_leak(world, str(resp))


def _check_list_audit(world: World) -> None:
    for key, tenant in (
        (world.b.keys["owner"], ""),
        (world.b.keys["owner"], world.b.name),
        (world.admin_key, world.b.name),
    ):
        req = admin_pb2.ListAuditEntriesRequest(tenant=tenant, page=common_pb2.PageRequest(page_size=1000))
        resp = world.ok(ADMIN + "ListAuditEntries", req, key)
        assert resp.entries
        assert {e.tenant for e in resp.entries} == {world.b.name}
        assert not {e.key_id for e in resp.entries} & set(world.a.key_ids.values())
        # B's own failed calls name A's key ids (RevokeKey probes); those B sent itself.
        named_by_b = " ".join(world.a.key_ids.values())
        text = "\n".join(f"{e.tenant} {e.key_id} {e.resource} {e.detail}" for e in resp.entries)
        assert_no_leak(world, text, named_by_b)


def _check_get_own_tenant(world: World) -> None:
    for role in ("viewer", "editor", "owner"):
        tenant = world.ok(ADMIN + "GetTenant", admin_pb2.GetTenantRequest(), world.b.keys[role]).tenant
        assert tenant.name == world.b.name
        assert_no_leak(world, str(tenant))


def _check_create_in_another_tenant(world: World) -> None:
    """A third tenant creates "m" as its own: no ALREADY_EXISTS, no version 2, nothing of A's."""
    with world.server.client() as admin:
        created = admin.tenants.create("tenant-c")
    with Client.connect(world.server.target, api_key=created.owner_key_secret) as owner:
        editor = owner.keys.create("editor").secret
    model = world.ok(REG + "CreateModel", registry_pb2.CreateModelRequest(name="m"), editor).model
    assert (model.latest_version, dict(model.aliases), dict(model.tags)) == (0, {}, {})
    assert_no_leak(world, str(model))
    version = world.ok(CREATE_VERSION, upload("m", aliases=["production"]), editor).version
    assert version.version == 1
    assert_no_leak(world, str(version))
    other = world.ok(CREATE_VERSION, upload("other", create_model=True), created.owner_key_secret).version
    assert (other.model, other.version) == ("other", 1)
    world.assert_a_intact()


def _check_list_deployments(world: World) -> None:
    for role in ("viewer", "editor", "owner"):
        for size in (0, 1):
            req = deployment_pb2.ListDeploymentsRequest(page=common_pb2.PageRequest(page_size=size))
            resp = world.ok(DEP + "ListDeployments", req, world.b.keys[role])
            assert [d.name for d in resp.deployments] == [B_DEPLOYMENT]
            assert not resp.next_page_token
            assert_no_leak(world, str(resp))
    mine = world.ok(DEP + "ListDeployments", deployment_pb2.ListDeploymentsRequest(), world.a.keys["viewer"])
    assert [d.name for d in mine.deployments] == ["dep", "dep-r"]


def _check_list_alerts(world: World) -> None:
    """Without a deployment, the alerts of every deployment of the caller's tenant, and only those."""
    for role in ("viewer", "editor", "owner"):
        resp = world.ok(MON + "ListAlerts", monitoring_pb2.ListAlertsRequest(), world.b.keys[role])
        assert [(a.deployment, a.alert.alert_id) for a in resp.alerts] == [(B_DEPLOYMENT, "b-alert-1")]
        assert_no_leak(world, str(resp))


def _check_incidents_and_webhooks(world: World) -> None:
    """B sees its own incident and webhooks only; setting one never touches A's (even for A's URL)."""
    for role in ("viewer", "editor", "owner"):
        resp = world.ok(MON + "ListIncidents", monitoring_pb2.ListIncidentsRequest(), world.b.keys[role])
        assert [(i.deployment, i.alert_count) for i in resp.incidents] == [(B_DEPLOYMENT, 1)]
        assert_no_leak(world, str(resp))
    owner_b = world.b.keys["owner"]
    for url in (PROBE_HOOK, A_WEBHOOK_URL):
        set_ = monitoring_pb2.SetWebhookRequest(url=url, secret="b-secret-" * 3)
        hook = world.ok(MON + "SetWebhook", set_, owner_b).webhook
        assert hook.id != world.a_webhook
        listed = world.ok(MON + "ListWebhooks", monitoring_pb2.ListWebhooksRequest(), world.b.keys["viewer"])
        assert [h.url for h in listed.webhooks] == [url]
        assert "b-secret-" not in str(listed)
        world.ok(MON + "DeleteWebhook", monitoring_pb2.DeleteWebhookRequest(id=hook.id), owner_b)
    world.assert_a_intact()


def _check_federation_runs(world: World) -> None:
    """B took part in no run: it lists none and A's run is not found; A sees only itself named."""
    for role in ("viewer", "editor", "owner"):
        resp = world.ok(FED + "ListRuns", federation_pb2.ListRunsRequest(), world.b.keys[role])
        assert list(resp.runs) == []
    mine = world.ok(FED + "ListRuns", federation_pb2.ListRunsRequest(), world.a.keys["viewer"]).runs
    assert [(r.id, list(r.tenants), r.tenant_count) for r in mine] == [(world.a_run, [world.a.name], 1)]
    everything = world.ok(FED + "ListRuns", federation_pb2.ListRunsRequest(), world.admin_key).runs
    assert world.a_run in [r.id for r in everything]


def _check_opt_ins(world: World) -> None:
    owner_b = world.b.keys["owner"]
    got = world.ok(
        FED + "SetOptIn",
        federation_pb2.SetOptInRequest(model_kind="resource", deployment=B_DEPLOYMENT),
        owner_b,
    ).opt_ins
    assert [(o.tenant, o.model_kind, o.deployment) for o in got] == [(world.b.name, "resource", B_DEPLOYMENT)]
    for role in ("viewer", "editor", "owner"):
        listed = world.ok(FED + "ListOptIns", federation_pb2.ListOptInsRequest(), world.b.keys[role]).opt_ins
        assert {o.tenant for o in listed} == {world.b.name}
    cleared = world.ok(
        FED + "SetOptIn", federation_pb2.SetOptInRequest(model_kind="resource"), owner_b
    ).opt_ins
    assert list(cleared) == []


SCOPED_CHECKS: dict[str, Callable[[World], None]] = {
    ADMIN + "WhoAmI": _check_whoami,
    ADMIN + "GetTenant": _check_get_own_tenant,
    ADMIN + "ListAuditEntries": _check_list_audit,
    KEYS + "ListKeys": _check_list_keys,
    REG + "ListModels": _check_list_models,
    REG + "CreateModel": _check_create_in_another_tenant,
    DEP + "ListDeployments": _check_list_deployments,
    MON + "ListAlerts": _check_list_alerts,
    MON + "SetWebhook": _check_incidents_and_webhooks,
    MON + "ListWebhooks": _check_incidents_and_webhooks,
    FED + "ListRuns": _check_federation_runs,
    FED + "ListOptIns": _check_opt_ins,
}


@pytest.mark.parametrize("rpc", list(SCOPED_CHECKS), ids=short)
def test_results_stay_inside_the_callers_tenant(world: World, rpc: str) -> None:
    SCOPED_CHECKS[rpc](world)


# --- 4. malformed input ----------------------------------------------------------------------------
def _enc(value: object) -> str:
    """A page token as the server encodes one, around any value."""
    return base64.urlsafe_b64encode(json.dumps([value]).encode()).decode().rstrip("=")


# List RPCs: the role that lists, the request around a PageRequest, and the kind of their tokens.
LIST_RPCS: dict[str, tuple[str, Callable[[common_pb2.PageRequest], Any], str]] = {
    ADMIN + "ListTenants": ("admin", lambda p: admin_pb2.ListTenantsRequest(page=p), "str"),
    ADMIN + "ListAuditEntries": ("owner", lambda p: admin_pb2.ListAuditEntriesRequest(page=p), "int"),
    KEYS + "ListKeys": ("owner", lambda p: admin_pb2.ListKeysRequest(page=p), "str"),
    REG + "ListModels": ("viewer", lambda p: registry_pb2.ListModelsRequest(page=p), "str"),
    REG + "ListModelVersions": (
        "viewer",
        lambda p: registry_pb2.ListModelVersionsRequest(model="b-model", page=p),
        "int",
    ),
    DEP + "ListDeployments": ("viewer", lambda p: deployment_pb2.ListDeploymentsRequest(page=p), "str"),
    MON + "ListAlerts": ("viewer", lambda p: monitoring_pb2.ListAlertsRequest(page=p), "int"),
    MON + "ListIncidents": ("viewer", lambda p: monitoring_pb2.ListIncidentsRequest(page=p), "int"),
    ROL + "ListRollouts": ("viewer", lambda p: rollout_pb2.ListRolloutsRequest(page=p), "int"),
    FED + "ListRuns": ("viewer", lambda p: federation_pb2.ListRunsRequest(page=p), "int"),
}


def _paging_cases() -> Iterator[tuple[str, str, str, Callable[[World], Any]]]:
    for rpc, (role, make, kind) in LIST_RPCS.items():
        yield rpc, "page-size-negative", role, lambda w, m=make: m(common_pb2.PageRequest(page_size=-1))
        yield rpc, "page-token-garbage", role, lambda w, m=make: m(common_pb2.PageRequest(page_token="!!!"))
        yield (
            rpc,
            "page-token-not-json",
            role,
            lambda w, m=make: m(common_pb2.PageRequest(page_token="bm90IGpzb24")),
        )
        yield (
            rpc,
            "page-token-not-a-list",
            role,
            lambda w, m=make: m(common_pb2.PageRequest(page_token="e30")),
        )
        foreign: Callable[[World], str] = (
            (lambda w: w.int_token) if kind == "str" else (lambda w: w.str_token)
        )
        yield (
            rpc,
            "page-token-of-another-list",
            role,
            lambda w, m=make, f=foreign: m(common_pb2.PageRequest(page_token=f(w))),
        )
        if kind == "int":
            yield (
                rpc,
                "page-token-beyond-int64",
                role,
                lambda w, m=make: m(common_pb2.PageRequest(page_token=_enc(2**63))),
            )


A_ = admin_pb2
R_ = registry_pb2
D_ = deployment_pb2
G_ = agent_pb2
M_ = monitoring_pb2
BAD_NAME = "Bad Name!"
TOO_MANY_TAGS = {f"k{i}": "v" for i in range(65)}
NAN = float("nan")
INF = float("inf")
Case = tuple[str, str, str, Callable[[World], Any]]

BAD_DEPLOYMENT_NAMES = {
    "bad-chars": BAD_NAME,
    "empty": "",
    "uppercase": "Dep",
    "leading-digit": "9dep",
    "leading-dash": "-dep",
    "underscore": "my_dep",
    "too-long": "d" * 64,
    "trailing-newline": "b-dep\n",
}
BAD_AGENT_NAMES = {
    "bad-chars": BAD_NAME,
    "empty": "",
    "too-long": "a" * 129,
    "leading-dot": ".agent",
    "with-slash": "a/b",
    "trailing-newline": "b-agent\n",
}
# (traffic, shadow_version) that no deployment may have; b-model has versions 1 and 2.
BAD_TRAFFIC: dict[str, tuple[tuple[tuple[int, float], ...], int]] = {
    "version-zero": (((0, 1.0),), 0),
    "version-negative": (((-1, 1.0),), 0),
    "weight-negative": (((1, -0.5), (2, 1.0)), 0),
    "weight-nan": (((1, NAN),), 0),
    "weight-infinite": (((1, INF),), 0),
    "versions-repeated": (((1, 0.5), (1, 0.5)), 0),
    "weights-sum-zero": (((1, 0.0), (2, 0.0)), 0),
    "shadow-version-negative": (((1, 1.0),), -1),
}


def _deployment_cases() -> Iterator[Case]:
    create, get, set_traffic = DEP + "CreateDeployment", DEP + "GetDeployment", DEP + "SetTraffic"
    for case, name in BAD_DEPLOYMENT_NAMES.items():
        yield (
            create,
            f"name-{case}",
            "editor",
            lambda w, d=name: D_.CreateDeploymentRequest(name=d, model="b-model", traffic=traffic((1, 1.0))),
        )
        yield get, f"name-{case}", "viewer", lambda w, d=name: D_.GetDeploymentRequest(name=d)
        yield (
            set_traffic,
            f"name-{case}",
            "editor",
            lambda w, d=name: D_.SetTrafficRequest(name=d, traffic=traffic((1, 1.0))),
        )
    yield (
        create,
        "model-bad-chars",
        "editor",
        lambda w: D_.CreateDeploymentRequest(name="new-dep", model=BAD_NAME, traffic=traffic((1, 1.0))),
    )
    yield (
        create,
        "model-empty",
        "editor",
        lambda w: D_.CreateDeploymentRequest(name="new-dep", traffic=traffic((1, 1.0))),
    )
    yield (
        create,
        "description-too-long",
        "editor",
        lambda w: D_.CreateDeploymentRequest(
            name="new-dep", model="b-model", description="x" * 10_001, traffic=traffic((1, 1.0))
        ),
    )
    for case, (splits, shadow) in BAD_TRAFFIC.items():
        yield (
            create,
            case,
            "editor",
            lambda w, t=splits, s=shadow, c=case: D_.CreateDeploymentRequest(
                name=f"new-{c}", model="b-model", traffic=traffic(*t), shadow_version=s
            ),
        )
        yield (
            set_traffic,
            case,
            "editor",
            lambda w, t=splits, s=shadow: D_.SetTrafficRequest(
                name=B_DEPLOYMENT, traffic=traffic(*t), shadow_version=s
            ),
        )


BAD_BATCHES: dict[str, Callable[[], list[agent_pb2.ReportTelemetryRequest]]] = {
    "batch-id-empty": lambda: telemetry(B_DEPLOYMENT, agent="b-agent", batch_id=""),
    "batch-id-too-long": lambda: telemetry(B_DEPLOYMENT, agent="b-agent", batch_id="x" * 129),
    "interval-version-zero": lambda: _bad_interval(version=0),
    "interval-version-negative": lambda: _bad_interval(version=-1),
    "interval-duration-zero": lambda: _bad_interval(duration_ms=0),
    "interval-duration-over-a-day": lambda: _bad_interval(duration_ms=86_400_001),
    "interval-start-negative": lambda: _bad_interval(start_unix_ms=-1),
    "requests-negative": lambda: _bad_interval(requests=-1, errors=0),
    "errors-negative": lambda: _bad_interval(errors=-1),
    "invalid-negative": lambda: _bad_interval(invalid=-1),
    "errors-exceed-requests": lambda: _bad_interval(requests=1, errors=2),
    "histogram-bucket-negative": lambda: _bad_interval(
        latency_ms=G_.SparseHistogram(buckets=[-1], counts=[1])
    ),
    "histogram-bucket-out-of-range": lambda: _bad_interval(
        latency_ms=G_.SparseHistogram(buckets=[NUM_BUCKETS], counts=[1])
    ),
    "histogram-counts-length-mismatch": lambda: _bad_interval(
        latency_ms=G_.SparseHistogram(buckets=[1, 2], counts=[1])
    ),
    "histogram-count-negative": lambda: _bad_interval(
        latency_ms=G_.SparseHistogram(buckets=[1], counts=[-1])
    ),
    "score-nan": lambda: _bad_interval(scores={"anomaly": NAN}),
    "resource-infinite": lambda: _bad_interval(resources=G_.Resources(process_cpu_percent=INF)),
    "metric-name-empty": lambda: telemetry(
        B_DEPLOYMENT, agent="b-agent", metrics=[G_.MetricPoint(name="", value=1.0)]
    ),
    "metric-name-too-long": lambda: telemetry(
        B_DEPLOYMENT, agent="b-agent", metrics=[G_.MetricPoint(name="m" * 129, value=1.0)]
    ),
    "metric-value-nan": lambda: telemetry(
        B_DEPLOYMENT, agent="b-agent", metrics=[G_.MetricPoint(name="auc", value=NAN)]
    ),
    "alert-id-empty": lambda: telemetry(
        B_DEPLOYMENT, agent="b-agent", alerts=[G_.AgentAlert(alert_id="", version=1, score=5.0)]
    ),
    "alert-score-nan": lambda: telemetry(
        B_DEPLOYMENT, agent="b-agent", alerts=[G_.AgentAlert(alert_id="b-alert-x", version=1, score=NAN)]
    ),
}


def _bad_interval(**fields: Any) -> list[agent_pb2.ReportTelemetryRequest]:
    return telemetry(B_DEPLOYMENT, agent="b-agent", intervals=[interval(), interval(**fields)])


def _agent_cases() -> Iterator[Case]:
    register = AGENT + "RegisterAgent"
    info = G_.AgentInfo
    for case, name in BAD_DEPLOYMENT_NAMES.items():
        yield (
            register,
            f"deployment-{case}",
            "agent",
            lambda w, d=name: G_.RegisterAgentRequest(deployment=d, agent=info(name="b-agent")),
        )
        yield (
            WATCH,
            f"deployment-{case}",
            "agent",
            lambda w, d=name: G_.WatchAssignmentsRequest(deployment=d, agent="b-agent"),
        )
        yield TELEMETRY, f"deployment-{case}", "agent", lambda w, d=name: telemetry(d, agent="b-agent")
    for case, name in BAD_AGENT_NAMES.items():
        yield (
            register,
            f"agent-{case}",
            "agent",
            lambda w, a=name: G_.RegisterAgentRequest(deployment=B_DEPLOYMENT, agent=info(name=a)),
        )
        if name:  # a watch need not say who watches; a malformed name is still malformed
            yield (
                WATCH,
                f"agent-{case}",
                "agent",
                lambda w, a=name: G_.WatchAssignmentsRequest(deployment=B_DEPLOYMENT, agent=a),
            )
        yield TELEMETRY, f"agent-{case}", "agent", lambda w, a=name: telemetry(B_DEPLOYMENT, agent=a)
    yield register, "no-agent-info", "agent", lambda w: G_.RegisterAgentRequest(deployment=B_DEPLOYMENT)
    for case, make in BAD_BATCHES.items():
        yield TELEMETRY, case, "agent", lambda w, m=make: m()
    yield (
        TELEMETRY,
        "batch-id-empty-by-editor",
        "editor",
        lambda w: telemetry(B_DEPLOYMENT, agent="b-agent", batch_id=""),
    )


def _query(**fields: Any) -> monitoring_pb2.QueryMetricsRequest:
    values: dict[str, Any] = {
        "deployment": B_DEPLOYMENT,
        "metric": "requests",
        "start_unix_ms": now_ms() - 3_600_000,
    }
    values.update(fields)
    return M_.QueryMetricsRequest(**values)


def _monitoring_cases() -> Iterator[Case]:
    status, query, alerts = MON + "GetDeploymentStatus", MON + "QueryMetrics", MON + "ListAlerts"
    for case, name in BAD_DEPLOYMENT_NAMES.items():
        yield status, f"name-{case}", "viewer", lambda w, d=name: M_.GetDeploymentStatusRequest(name=d)
        yield query, f"deployment-{case}", "viewer", lambda w, d=name: _query(deployment=d)
        if name:  # empty: the alerts of every deployment
            yield alerts, f"deployment-{case}", "viewer", lambda w, d=name: M_.ListAlertsRequest(deployment=d)
    yield (
        status,
        "window-negative",
        "viewer",
        lambda w: M_.GetDeploymentStatusRequest(name=B_DEPLOYMENT, window_s=-1),
    )
    yield (
        status,
        "window-over-31-days",
        "viewer",
        lambda w: M_.GetDeploymentStatusRequest(name=B_DEPLOYMENT, window_s=31 * 86_400 + 1),
    )
    yield query, "metric-empty", "viewer", lambda w: _query(metric="")
    yield query, "metric-too-long", "viewer", lambda w: _query(metric="m" * 129)
    yield query, "version-negative", "viewer", lambda w: _query(version=-1)
    yield query, "step-negative", "viewer", lambda w: _query(step_s=-1)
    yield query, "start-negative", "viewer", lambda w: _query(start_unix_ms=-1)
    yield query, "end-negative", "viewer", lambda w: _query(end_unix_ms=-1)
    yield query, "end-before-start", "viewer", lambda w: _query(end_unix_ms=now_ms() - 7_200_000)
    yield query, "too-many-steps", "viewer", lambda w: _query(start_unix_ms=1, step_s=1)
    yield from _drift_cases()
    yield from _incident_cases()


def _incident_cases() -> Iterator[Case]:
    for case, name in BAD_DEPLOYMENT_NAMES.items():
        if name:  # empty: every deployment
            yield (
                MON + "ListIncidents",
                f"deployment-{case}",
                "viewer",
                lambda w, d=name: M_.ListIncidentsRequest(deployment=d),
            )
            yield (
                WATCH_ALERTS,
                f"deployment-{case}",
                "viewer",
                lambda w, d=name: M_.WatchAlertsRequest(deployment=d),
            )
    yield WATCH_ALERTS, "after-event-negative", "viewer", lambda w: M_.WatchAlertsRequest(after_event_id=-1)
    for rpc, role, make in (
        (MON + "GetIncident", "viewer", M_.GetIncidentRequest),
        (MON + "AcknowledgeIncident", "editor", M_.AcknowledgeIncidentRequest),
        (MON + "ResolveIncident", "editor", M_.ResolveIncidentRequest),
        (MON + "ExplainIncident", "viewer", M_.ExplainIncidentRequest),
        (MON + "DeleteWebhook", "owner", M_.DeleteWebhookRequest),
    ):
        yield rpc, "id-zero", role, lambda w, m=make: m()
        yield rpc, "id-negative", role, lambda w, m=make: m(id=-2)
    explain = MON + "ExplainIncident"
    yield explain, "window-negative", "viewer", lambda w: M_.ExplainIncidentRequest(id=1, window_s=-1)
    yield (
        explain,
        "window-over-7-days",
        "viewer",
        lambda w: M_.ExplainIncidentRequest(id=1, window_s=7 * 86_400 + 1),
    )
    good = {"url": PROBE_HOOK, "secret": "s" * 16}
    bad: dict[str, dict[str, Any]] = {
        "url-empty": {"url": ""},
        "url-file-scheme": {"url": "file:///etc/passwd"},
        "url-no-host": {"url": "https:///path"},
        "url-too-long": {"url": PROBE_HOOK + "/" + "x" * 2048},
        "secret-empty": {"secret": ""},
        "secret-too-short": {"secret": "s" * 15},
        "secret-too-long": {"secret": "s" * 257},
        "description-too-long": {"description": "d" * 10_001},
    }
    for case, fields in bad.items():
        yield MON + "SetWebhook", case, "owner", lambda w, f=fields: M_.SetWebhookRequest(**{**good, **f})


def _drift(**fields: Any) -> monitoring_pb2.GetDriftReportRequest:
    return M_.GetDriftReportRequest(**{"deployment": B_DEPLOYMENT, **fields})


def _drift_cases() -> Iterator[Case]:
    rpc = MON + "GetDriftReport"
    for case, name in BAD_DEPLOYMENT_NAMES.items():
        yield rpc, f"deployment-{case}", "viewer", lambda w, d=name: _drift(deployment=d)
    bad: dict[str, dict[str, Any]] = {
        "version-negative": {"version": -1},
        "window-negative": {"window_s": -1},
        "window-over-31-days": {"window_s": 31 * 86_400 + 1},
        "end-negative": {"end_unix_ms": -1},
        "method-unknown": {"method": "magic"},
        "p-value-over-1": {"thresholds": M_.DriftThresholds(p_value=1.5)},
        "drift-share-over-1": {"thresholds": M_.DriftThresholds(drift_share=2.0)},
        "js-negative": {"thresholds": M_.DriftThresholds(js_distance=-0.1)},
        "wasserstein-nan": {"thresholds": M_.DriftThresholds(wasserstein=float("nan"))},
    }
    for case, fields in bad.items():
        yield rpc, case, "viewer", lambda w, f=fields: _drift(**f)


P_ = performance_pb2


def _labels(
    ids: list[str], labels: list[str], deployment: str = B_DEPLOYMENT
) -> performance_pb2.LogLabelsRequest:
    return P_.LogLabelsRequest(deployment=deployment, request_ids=ids, labels=labels)


def _performance_cases() -> Iterator[Case]:
    log, get = PERF + "LogLabels", PERF + "GetPerformance"
    for case, name in BAD_DEPLOYMENT_NAMES.items():
        yield log, f"deployment-{case}", "editor", lambda w, d=name: _labels(["r"], ["1"], d)
        yield get, f"deployment-{case}", "viewer", lambda w, d=name: P_.GetPerformanceRequest(deployment=d)
        yield PULL_LABELS, f"deployment-{case}", "agent", lambda w, d=name: G_.PullLabelsRequest(deployment=d)
        yield (
            REPORT_PERFORMANCE,
            f"deployment-{case}",
            "agent",
            lambda w, d=name: performance_report(d, agent="b-agent"),
        )
    bad_labels = {
        "no-labels": ([], []),
        "lengths-differ": (["r1", "r2"], ["1"]),
        "request-id-empty": (["r1", ""], ["1", "0"]),
        "request-id-too-long": (["r" * 257], ["1"]),
        "label-empty": (["r1"], [""]),
        "label-nan": (["r1"], ["nan"]),
        "label-infinite": (["r1"], ["-inf"]),
        "too-many": ([f"r{i}" for i in range(10_001)], ["1"] * 10_001),
    }
    for case, (ids, labels) in bad_labels.items():
        yield log, case, "editor", lambda w, i=ids, v=labels: _labels(i, v)
    bad_queries: dict[str, dict[str, Any]] = {
        "version-negative": {"version": -1},
        "window-negative": {"window_s": -60},
        "window-not-whole-minutes": {"window_s": 90},
        "start-negative": {"start_unix_ms": -1},
        "end-before-start": {"start_unix_ms": now_ms(), "end_unix_ms": now_ms() - 3_600_000},
    }
    for case, fields in bad_queries.items():
        yield get, case, "viewer", lambda w, f=fields: P_.GetPerformanceRequest(deployment=B_DEPLOYMENT, **f)
    yield (
        PULL_LABELS,
        "after-negative",
        "agent",
        lambda w: G_.PullLabelsRequest(deployment=B_DEPLOYMENT, after_sequence=-1),
    )
    yield (
        PULL_LABELS,
        "page-size-negative",
        "agent",
        lambda w: G_.PullLabelsRequest(deployment=B_DEPLOYMENT, page_size=-1),
    )
    bad_counts: dict[str, dict[str, Any]] = {
        "version-zero": {"version": 0},
        "window-negative": {"window_start_unix_ms": -1},
        "task-unknown": {"task": "ranking"},
        "predictions-negative": {"predictions": -1},
        "confusion-negative": {
            "confusion": [G_.ConfusionCell(true_label="1", predicted_label="1", weight=-1.0)]
        },
        "sum-nan": {"task": "regression", "sum_abs_error": NAN},
        "score-infinite": {"scores": [G_.ClassScores(label="1", scores=[INF], positives=[1], negatives=[0])]},
        "scores-length-mismatch": {
            "scores": [G_.ClassScores(label="1", scores=[0.5], positives=[1, 2], negatives=[0])]
        },
    }
    for case, fields in bad_counts.items():
        yield (
            REPORT_PERFORMANCE,
            case,
            "agent",
            lambda w, f=fields: performance_report(B_DEPLOYMENT, agent="b-agent", **f),
        )
    yield (
        REPORT_PERFORMANCE,
        "batch-id-empty",
        "agent",
        lambda w: performance_report(B_DEPLOYMENT, agent="b-agent", batch_id=""),
    )
    for case, name in BAD_AGENT_NAMES.items():
        yield (
            REPORT_PERFORMANCE,
            f"agent-{case}",
            "agent",
            lambda w, a=name: performance_report(B_DEPLOYMENT, agent=a),
        )


O_ = rollout_pb2


def _start(**fields: Any) -> rollout_pb2.StartRolloutRequest:
    values: dict[str, Any] = {"deployment": B_DEPLOYMENT, "version": 2}
    values.update(fields)
    return O_.StartRolloutRequest(spec=O_.RolloutSpec(**values))


def _steps(*weights: float) -> list[rollout_pb2.CanaryStep]:
    return [O_.CanaryStep(weight=w) for w in weights]


BAD_SPECS: dict[str, Callable[[], rollout_pb2.StartRolloutRequest]] = {
    "version-zero": lambda: _start(version=0),
    "version-negative": lambda: _start(version=-1),
    "strategy-unknown": lambda: _start(strategy=99),
    "steps-decreasing": lambda: _start(steps=_steps(50, 25, 100)),
    "steps-repeated": lambda: _start(steps=_steps(50, 50, 100)),
    "last-step-not-100": lambda: _start(steps=_steps(10, 50)),
    "step-over-100": lambda: _start(steps=_steps(10, 150)),
    "step-weight-nan": lambda: _start(steps=_steps(NAN, 100)),
    "step-duration-negative": lambda: _start(steps=[O_.CanaryStep(weight=100, min_duration_s=-5)]),
    "step-requests-negative": lambda: _start(steps=[O_.CanaryStep(weight=100, min_requests=-1)]),
    "too-many-steps": lambda: _start(steps=_steps(*range(1, 22), 100)),
    "ab-weight-100": lambda: _start(strategy=O_.ROLLOUT_STRATEGY_AB_TEST, ab_weight=100),
    "ab-metric-unknown": lambda: _start(strategy=O_.ROLLOUT_STRATEGY_AB_TEST, ab_metric="vibes"),
    "duration-negative": lambda: _start(strategy=O_.ROLLOUT_STRATEGY_SHADOW, duration_s=-1),
    "preview-negative": lambda: _start(strategy=O_.ROLLOUT_STRATEGY_BLUE_GREEN, preview_s=-1),
    "alpha-zero": lambda: _start(analysis=O_.AnalysisSettings(alpha=0.0)),
    "alpha-one": lambda: _start(analysis=O_.AnalysisSettings(alpha=1.0)),
    "alpha-nan": lambda: _start(analysis=O_.AnalysisSettings(alpha=NAN)),
    "margin-negative": lambda: _start(analysis=O_.AnalysisSettings(latency_p99_margin=-0.5)),
    "points-margin-nan": lambda: _start(analysis=O_.AnalysisSettings(error_rate_margin_points=NAN)),
    "deadline-zero": lambda: _start(analysis=O_.AnalysisSettings(step_deadline_s=0)),
    "slo-error-rate-over-1": lambda: _start(analysis=O_.AnalysisSettings(slo_error_rate=1.5)),
    "breach-probability-low": lambda: _start(analysis=O_.AnalysisSettings(breach_probability=0.2)),
    "quality-gate-without-metric": lambda: _start(gates=O_.GateSpec(quality_dataset="holdout")),
    "latency-budget-negative": lambda: _start(gates=O_.GateSpec(latency_budget_ms=-1)),
    "max-cpu-over-1": lambda: _start(max_cpu_utilisation=1.5),
    "description-too-long": lambda: _start(description="x" * 2001),
}


def _rollout_cases() -> Iterator[Case]:
    start = ROL + "StartRollout"
    for case, name in BAD_DEPLOYMENT_NAMES.items():
        yield start, f"deployment-{case}", "editor", lambda w, d=name: _start(deployment=d)
        if name:
            yield (
                ROL + "GetRollout",
                f"deployment-{case}",
                "viewer",
                lambda w, d=name: O_.GetRolloutRequest(deployment=d),
            )
            yield (
                ROL + "ListRollouts",
                f"deployment-{case}",
                "viewer",
                lambda w, d=name: O_.ListRolloutsRequest(deployment=d),
            )
        yield (
            ROL + "SuggestWindows",
            f"deployment-{case}",
            "viewer",
            lambda w, d=name: O_.SuggestWindowsRequest(deployment=d),
        )
    for case, make in BAD_SPECS.items():
        yield start, case, "editor", lambda w, m=make: m()
    yield ROL + "GetRollout", "no-id-no-deployment", "viewer", lambda w: O_.GetRolloutRequest()
    yield ROL + "GetRollout", "id-negative", "viewer", lambda w: O_.GetRolloutRequest(id=-1)
    yield ROL + "ListRolloutEvents", "id-zero", "viewer", lambda w: O_.ListRolloutEventsRequest()
    yield ROL + "ListRolloutEvents", "id-negative", "viewer", lambda w: O_.ListRolloutEventsRequest(id=-3)
    yield (
        ROL + "ListRolloutEvents",
        "after-seq-negative",
        "viewer",
        lambda w: O_.ListRolloutEventsRequest(id=1, after_seq=-1),
    )
    yield WATCH_ROLLOUT, "id-zero", "viewer", lambda w: O_.WatchRolloutRequest()
    for name, request in (
        ("PauseRollout", O_.PauseRolloutRequest),
        ("ResumeRollout", O_.ResumeRolloutRequest),
        ("PromoteRollout", O_.PromoteRolloutRequest),
        ("AbortRollout", O_.AbortRolloutRequest),
    ):
        yield ROL + name, "id-zero", "editor", lambda w, r=request: r()
        yield ROL + name, "id-negative", "editor", lambda w, r=request: r(id=-1)
    for name, request in (
        ("PauseRollout", O_.PauseRolloutRequest),
        ("PromoteRollout", O_.PromoteRolloutRequest),
        ("AbortRollout", O_.AbortRolloutRequest),
    ):
        yield ROL + name, "reason-too-long", "editor", lambda w, r=request: r(id=1, reason="x" * 2001)
    windows = ROL + "SuggestWindows"
    yield (
        windows,
        "duration-too-short",
        "viewer",
        lambda w: O_.SuggestWindowsRequest(deployment=B_DEPLOYMENT, duration_s=10),
    )
    yield (
        windows,
        "count-too-large",
        "viewer",
        lambda w: O_.SuggestWindowsRequest(deployment=B_DEPLOYMENT, count=1000),
    )
    yield windows, "days-nan", "viewer", lambda w: O_.SuggestWindowsRequest(deployment=B_DEPLOYMENT, days=NAN)
    yield (
        windows,
        "days-negative",
        "viewer",
        lambda w: O_.SuggestWindowsRequest(deployment=B_DEPLOYMENT, days=-1),
    )
    dora = ROL + "GetDoraReport"
    yield dora, "model-bad-chars", "viewer", lambda w: O_.GetDoraReportRequest(model=BAD_NAME)
    yield dora, "days-negative", "viewer", lambda w: O_.GetDoraReportRequest(days=-1)
    yield dora, "days-too-many", "viewer", lambda w: O_.GetDoraReportRequest(days=100_000)
    record = REG + "RecordEvaluation"

    def evaluation(**fields: Any) -> registry_pb2.RecordEvaluationRequest:
        values: dict[str, Any] = {"dataset": "holdout", "metrics": {"accuracy": 0.9}}
        values.update(fields)
        return R_.RecordEvaluationRequest(model="b-model", version=2, evaluation=R_.Evaluation(**values))

    yield (
        record,
        "model-bad-chars",
        "editor",
        lambda w: R_.RecordEvaluationRequest(
            model=BAD_NAME, version=1, evaluation=R_.Evaluation(dataset="d", metrics={"a": 1.0})
        ),
    )
    yield (
        record,
        "version-zero",
        "editor",
        lambda w: R_.RecordEvaluationRequest(
            model="b-model", version=0, evaluation=R_.Evaluation(dataset="d", metrics={"a": 1.0})
        ),
    )
    yield record, "dataset-empty", "editor", lambda w: evaluation(dataset="")
    yield record, "dataset-too-long", "editor", lambda w: evaluation(dataset="d" * 201)
    yield record, "metrics-empty", "editor", lambda w: evaluation(metrics={})
    yield record, "metric-nan", "editor", lambda w: evaluation(metrics={"accuracy": NAN})
    yield record, "metric-name-empty", "editor", lambda w: evaluation(metrics={"": 1.0})
    yield (
        record,
        "baseline-metric-infinite",
        "editor",
        lambda w: evaluation(baseline_metrics={"accuracy": INF}),
    )
    yield record, "rows-negative", "editor", lambda w: evaluation(rows=-1)


F_ = federation_pb2


def _run_request(**fields: Any) -> federation_pb2.CreateRunRequest:
    values: dict[str, Any] = {"model_kind": "anomaly", "strategy": "fedavg", "rounds": 2}
    values.update(fields)
    return F_.CreateRunRequest(**values)


def _federation_cases() -> Iterator[Case]:
    register, create = FED + "RegisterNodeKey", FED + "CreateRun"
    yield (
        register,
        "tenant-bad-chars",
        "admin",
        lambda w: F_.RegisterNodeKeyRequest(tenant=BAD_NAME, public_key=PROBE_KEY),
    )
    yield (
        register,
        "key-not-pem",
        "admin",
        lambda w: F_.RegisterNodeKeyRequest(tenant=w.b.name, public_key="ssh-rsa AAAA"),
    )
    yield register, "key-empty", "admin", lambda w: F_.RegisterNodeKeyRequest(tenant=w.b.name)
    yield (
        register,
        "key-bad-base64",
        "admin",
        lambda w: F_.RegisterNodeKeyRequest(
            tenant=w.b.name, public_key="-----BEGIN PUBLIC KEY-----\n@@@@\n-----END PUBLIC KEY-----\n"
        ),
    )
    yield (
        register,
        "key-too-long",
        "admin",
        lambda w: F_.RegisterNodeKeyRequest(tenant=w.b.name, public_key=PROBE_KEY + "x" * 20_000),
    )
    yield (
        register,
        "description-too-long",
        "admin",
        lambda w: F_.RegisterNodeKeyRequest(tenant=w.b.name, public_key=PROBE_KEY, description="x" * 10_001),
    )
    yield FED + "ListNodeKeys", "admin-without-tenant", "admin", lambda w: F_.ListNodeKeysRequest()
    yield FED + "ListNodeKeys", "tenant-bad-chars", "admin", lambda w: F_.ListNodeKeysRequest(tenant=BAD_NAME)
    yield (
        FED + "RevokeNodeKey",
        "fingerprint-bad",
        "admin",
        lambda w: F_.RevokeNodeKeyRequest(tenant=w.b.name, fingerprint="xyz"),
    )
    yield (
        FED + "RevokeNodeKey",
        "tenant-bad-chars",
        "admin",
        lambda w: F_.RevokeNodeKeyRequest(tenant=BAD_NAME, fingerprint="0" * 64),
    )
    yield (
        create,
        "model-kind-unknown",
        "admin",
        lambda w: _run_request(model_kind="vibes", tenants=[w.a.name]),
    )
    yield create, "strategy-unknown", "admin", lambda w: _run_request(strategy="fedmagic", tenants=[w.a.name])
    yield create, "rounds-zero", "admin", lambda w: _run_request(rounds=0, tenants=[w.a.name])
    yield create, "rounds-too-many", "admin", lambda w: _run_request(rounds=100_000, tenants=[w.a.name])
    yield create, "no-tenants", "admin", lambda w: _run_request()
    yield create, "tenants-repeated", "admin", lambda w: _run_request(tenants=[w.a.name, w.a.name])
    yield create, "tenant-bad-chars", "admin", lambda w: _run_request(tenants=[BAD_NAME])
    yield (
        create,
        "privacy-mode-unknown",
        "admin",
        lambda w: _run_request(tenants=[w.a.name], privacy=F_.FederationPrivacy(mode="magic")),
    )
    yield (
        create,
        "dp-without-clipping",
        "admin",
        lambda w: _run_request(
            tenants=[w.a.name], privacy=F_.FederationPrivacy(mode="central-server", noise_multiplier=1.0)
        ),
    )
    yield (
        create,
        "noise-negative",
        "admin",
        lambda w: _run_request(
            tenants=[w.a.name],
            privacy=F_.FederationPrivacy(mode="local", noise_multiplier=-1, clipping_norm=1),
        ),
    )
    yield (
        create,
        "noise-nan",
        "admin",
        lambda w: _run_request(
            tenants=[w.a.name],
            privacy=F_.FederationPrivacy(mode="local", noise_multiplier=NAN, clipping_norm=1),
        ),
    )
    yield (
        create,
        "dp-sgd-without-sample-rate",
        "admin",
        lambda w: _run_request(
            tenants=[w.a.name],
            privacy=F_.FederationPrivacy(mode="record", noise_multiplier=1, clipping_norm=1),
        ),
    )
    yield (
        create,
        "sample-rate-above-one",
        "admin",
        lambda w: _run_request(
            tenants=[w.a.name],
            privacy=F_.FederationPrivacy(mode="record", noise_multiplier=1, clipping_norm=1, sample_rate=2),
        ),
    )
    record, finish = FED + "RecordRound", FED + "FinishRun"
    yield (
        record,
        "round-zero",
        "admin",
        lambda w: F_.RecordRoundRequest(id=w.a_run, round=F_.FederationRound()),
    )
    yield (
        record,
        "metric-nan",
        "admin",
        lambda w: F_.RecordRoundRequest(id=w.a_run, round=F_.FederationRound(round=1, metrics={"loss": NAN})),
    )
    yield (
        record,
        "bytes-negative",
        "admin",
        lambda w: F_.RecordRoundRequest(id=w.a_run, round=F_.FederationRound(round=1, bytes=-1)),
    )
    yield record, "id-zero", "admin", lambda w: F_.RecordRoundRequest(round=F_.FederationRound(round=1))
    yield finish, "id-zero", "admin", lambda w: F_.FinishRunRequest(state=F_.FEDERATION_RUN_STATE_FAILED)
    yield (
        finish,
        "state-running",
        "admin",
        lambda w: F_.FinishRunRequest(id=w.a_run, state=F_.FEDERATION_RUN_STATE_RUNNING),
    )
    yield (
        finish,
        "succeeded-without-result",
        "admin",
        lambda w: F_.FinishRunRequest(id=w.a_run, state=F_.FEDERATION_RUN_STATE_SUCCEEDED),
    )
    yield (
        finish,
        "epsilon-negative",
        "admin",
        lambda w: F_.FinishRunRequest(id=w.a_run, state=F_.FEDERATION_RUN_STATE_FAILED, epsilon=-1),
    )
    yield (
        finish,
        "result-model-bad-chars",
        "admin",
        lambda w: F_.FinishRunRequest(
            id=w.a_run, state=F_.FEDERATION_RUN_STATE_SUCCEEDED, result_model=BAD_NAME, result_version=1
        ),
    )
    yield FED + "DeliverResult", "id-zero", "admin", lambda w: F_.DeliverResultRequest()
    yield FED + "DeliverResult", "id-negative", "admin", lambda w: F_.DeliverResultRequest(id=-3)
    yield (
        FED + "DeliverResult",
        "step-weight-zero",
        "admin",
        lambda w: F_.DeliverResultRequest(id=w.a_run, steps=[rollout_pb2.CanaryStep(weight=0.0)]),
    )
    yield FED + "GetRun", "id-zero", "viewer", lambda w: F_.GetRunRequest()
    yield (
        FED + "SetOptIn",
        "model-kind-unknown",
        "owner",
        lambda w: F_.SetOptInRequest(model_kind="vibes", deployment=B_DEPLOYMENT),
    )
    yield (
        FED + "SetOptIn",
        "deployment-bad-chars",
        "owner",
        lambda w: F_.SetOptInRequest(model_kind="anomaly", deployment=BAD_NAME),
    )
    yield (
        FED + "ListOptIns",
        "model-kind-unknown",
        "viewer",
        lambda w: F_.ListOptInsRequest(model_kind="vibes"),
    )


_CASES: list[tuple[str, str, str, Callable[[World], Any]]] = [
    # AdminService (the admin is the one who names tenants)
    (ADMIN + "CreateTenant", "name-bad-chars", "admin", lambda w: A_.CreateTenantRequest(name=BAD_NAME)),
    (ADMIN + "CreateTenant", "name-empty", "admin", lambda w: A_.CreateTenantRequest(name="")),
    (ADMIN + "CreateTenant", "name-too-short", "admin", lambda w: A_.CreateTenantRequest(name="a")),
    (ADMIN + "CreateTenant", "name-leading-digit", "admin", lambda w: A_.CreateTenantRequest(name="9lives")),
    (ADMIN + "CreateTenant", "name-too-long", "admin", lambda w: A_.CreateTenantRequest(name="a" * 64)),
    (ADMIN + "CreateTenant", "name-uppercase", "admin", lambda w: A_.CreateTenantRequest(name="Upper")),
    (
        ADMIN + "CreateTenant",
        "name-trailing-newline",
        "admin",
        lambda w: A_.CreateTenantRequest(name="newline-tenant\n"),
    ),
    (
        ADMIN + "CreateTenant",
        "display-name-too-long",
        "admin",
        lambda w: A_.CreateTenantRequest(name="long-display", display_name="x" * 201),
    ),
    (ADMIN + "GetTenant", "name-bad-chars", "admin", lambda w: A_.GetTenantRequest(name=BAD_NAME)),
    (ADMIN + "GetTenant", "name-empty", "admin", lambda w: A_.GetTenantRequest(name="")),
    (
        ADMIN + "GetTenant",
        "name-trailing-newline",
        "admin",
        lambda w: A_.GetTenantRequest(name=w.b.name + "\n"),
    ),
    (ADMIN + "DisableTenant", "name-bad-chars", "admin", lambda w: A_.DisableTenantRequest(name=BAD_NAME)),
    (ADMIN + "DisableTenant", "name-empty", "admin", lambda w: A_.DisableTenantRequest(name="")),
    (ADMIN + "EnableTenant", "name-bad-chars", "admin", lambda w: A_.EnableTenantRequest(name=BAD_NAME)),
    (ADMIN + "EnableTenant", "name-empty", "admin", lambda w: A_.EnableTenantRequest(name="")),
    (
        ADMIN + "ListAuditEntries",
        "tenant-bad-chars",
        "admin",
        lambda w: A_.ListAuditEntriesRequest(tenant=BAD_NAME),
    ),
    # KeyService
    (KEYS + "CreateKey", "role-unknown", "owner", lambda w: A_.CreateKeyRequest(role=99)),  # type: ignore[arg-type]
    (KEYS + "CreateKey", "role-unspecified", "owner", lambda w: A_.CreateKeyRequest(role=0)),  # type: ignore[arg-type]
    (KEYS + "CreateKey", "role-admin", "owner", lambda w: A_.CreateKeyRequest(role=common_pb2.ROLE_ADMIN)),
    (
        KEYS + "CreateKey",
        "role-admin-by-admin",
        "admin",
        lambda w: A_.CreateKeyRequest(tenant=w.b.name, role=common_pb2.ROLE_ADMIN),
    ),
    (
        KEYS + "CreateKey",
        "description-too-long",
        "owner",
        lambda w: A_.CreateKeyRequest(role=common_pb2.ROLE_VIEWER, description="x" * 10_001),
    ),
    (
        KEYS + "CreateKey",
        "admin-without-tenant",  # a tenant's role: without a tenant the admin makes admin keys only
        "admin",
        lambda w: A_.CreateKeyRequest(role=common_pb2.ROLE_VIEWER),
    ),
    (
        KEYS + "CreateKey",
        "tenant-bad-chars",
        "admin",
        lambda w: A_.CreateKeyRequest(tenant=BAD_NAME, role=common_pb2.ROLE_VIEWER),
    ),
    (KEYS + "ListKeys", "tenant-bad-chars", "admin", lambda w: A_.ListKeysRequest(tenant=BAD_NAME)),
    (KEYS + "RevokeKey", "key-id-empty", "owner", lambda w: A_.RevokeKeyRequest()),
    # RegistryService
    (REG + "CreateModel", "name-bad-chars", "editor", lambda w: R_.CreateModelRequest(name=BAD_NAME)),
    (REG + "CreateModel", "name-empty", "editor", lambda w: R_.CreateModelRequest(name="")),
    (REG + "CreateModel", "name-too-long", "editor", lambda w: R_.CreateModelRequest(name="x" * 129)),
    (REG + "CreateModel", "name-leading-dot", "editor", lambda w: R_.CreateModelRequest(name=".hidden")),
    (REG + "CreateModel", "name-with-slash", "editor", lambda w: R_.CreateModelRequest(name="a/b")),
    (
        REG + "CreateModel",
        "name-trailing-newline",
        "editor",
        lambda w: R_.CreateModelRequest(name="newline-model\n"),
    ),
    (
        REG + "CreateModel",
        "tag-key-bad-chars",
        "editor",
        lambda w: R_.CreateModelRequest(name="tagged1", tags={"bad key!": "v"}),
    ),
    (
        REG + "CreateModel",
        "tag-key-empty",
        "editor",
        lambda w: R_.CreateModelRequest(name="tagged2", tags={"": "v"}),
    ),
    (
        REG + "CreateModel",
        "tag-key-too-long",
        "editor",
        lambda w: R_.CreateModelRequest(name="tagged3", tags={"k" * 129: "v"}),
    ),
    (
        REG + "CreateModel",
        "tag-key-trailing-newline",
        "editor",
        lambda w: R_.CreateModelRequest(name="tagged4", tags={"key\n": "v"}),
    ),
    (
        REG + "CreateModel",
        "tag-value-too-long",
        "editor",
        lambda w: R_.CreateModelRequest(name="tagged5", tags={"k": "v" * 1025}),
    ),
    (
        REG + "CreateModel",
        "too-many-tags",
        "editor",
        lambda w: R_.CreateModelRequest(name="tagged6", tags=TOO_MANY_TAGS),
    ),
    (
        REG + "CreateModel",
        "description-too-long",
        "editor",
        lambda w: R_.CreateModelRequest(name="described", description="x" * 10_001),
    ),
    (REG + "GetModel", "name-bad-chars", "viewer", lambda w: R_.GetModelRequest(name=BAD_NAME)),
    (REG + "GetModel", "name-empty", "viewer", lambda w: R_.GetModelRequest(name="")),
    (
        REG + "ListModels",
        "name-prefix-too-long",
        "viewer",
        lambda w: R_.ListModelsRequest(name_prefix="x" * 129),
    ),
    (
        REG + "GetModelVersion",
        "version-zero",
        "viewer",
        lambda w: R_.GetModelVersionRequest(model="b-model", version=0),
    ),
    (
        REG + "GetModelVersion",
        "version-negative",
        "viewer",
        lambda w: R_.GetModelVersionRequest(model="b-model", version=-1),
    ),
    (REG + "GetModelVersion", "no-selector", "viewer", lambda w: R_.GetModelVersionRequest(model="b-model")),
    (
        REG + "GetModelVersion",
        "alias-bad-chars",
        "viewer",
        lambda w: R_.GetModelVersionRequest(model="b-model", alias="Bad Alias!"),
    ),
    (
        REG + "GetModelVersion",
        "alias-empty",
        "viewer",
        lambda w: R_.GetModelVersionRequest(model="b-model", alias=""),
    ),
    (
        REG + "GetModelVersion",
        "model-bad-chars",
        "viewer",
        lambda w: R_.GetModelVersionRequest(model=BAD_NAME, version=1),
    ),
    (
        REG + "ListModelVersions",
        "model-bad-chars",
        "viewer",
        lambda w: R_.ListModelVersionsRequest(model=BAD_NAME),
    ),
    (REG + "ListModelVersions", "model-empty", "viewer", lambda w: R_.ListModelVersionsRequest(model="")),
    (
        REG + "SetAlias",
        "version-zero",
        "editor",
        lambda w: R_.SetAliasRequest(model="b-model", alias="staging", version=0),
    ),
    (
        REG + "SetAlias",
        "version-negative",
        "editor",
        lambda w: R_.SetAliasRequest(model="b-model", alias="staging", version=-1),
    ),
    (
        REG + "SetAlias",
        "alias-bad-chars",
        "editor",
        lambda w: R_.SetAliasRequest(model="b-model", alias="Bad Alias!", version=1),
    ),
    (
        REG + "SetAlias",
        "alias-empty",
        "editor",
        lambda w: R_.SetAliasRequest(model="b-model", alias="", version=1),
    ),
    (
        REG + "SetAlias",
        "alias-trailing-newline",
        "editor",
        lambda w: R_.SetAliasRequest(model="b-model", alias="staging\n", version=1),
    ),
    (
        REG + "SetAlias",
        "model-bad-chars",
        "editor",
        lambda w: R_.SetAliasRequest(model=BAD_NAME, alias="staging", version=1),
    ),
    (
        REG + "DeleteAlias",
        "alias-bad-chars",
        "editor",
        lambda w: R_.DeleteAliasRequest(model="b-model", alias="Bad Alias!"),
    ),
    (
        REG + "DeleteAlias",
        "alias-empty",
        "editor",
        lambda w: R_.DeleteAliasRequest(model="b-model", alias=""),
    ),
    (
        REG + "DeleteAlias",
        "model-bad-chars",
        "editor",
        lambda w: R_.DeleteAliasRequest(model=BAD_NAME, alias="staging"),
    ),
    (
        REG + "ArchiveModelVersion",
        "version-zero",
        "editor",
        lambda w: R_.ArchiveModelVersionRequest(model="b-model", version=0),
    ),
    (
        REG + "ArchiveModelVersion",
        "version-negative",
        "editor",
        lambda w: R_.ArchiveModelVersionRequest(model="b-model", version=-1),
    ),
    (
        REG + "ArchiveModelVersion",
        "model-bad-chars",
        "editor",
        lambda w: R_.ArchiveModelVersionRequest(model=BAD_NAME, version=1),
    ),
    (
        REG + "DownloadArtifact",
        "version-zero",
        "viewer",
        lambda w: R_.DownloadArtifactRequest(model="b-model", version=0),
    ),
    (
        REG + "DownloadArtifact",
        "version-negative",
        "viewer",
        lambda w: R_.DownloadArtifactRequest(model="b-model", version=-1),
    ),
    (
        REG + "DownloadArtifact",
        "no-selector",
        "viewer",
        lambda w: R_.DownloadArtifactRequest(model="b-model"),
    ),
    (
        REG + "DownloadArtifact",
        "alias-bad-chars",
        "viewer",
        lambda w: R_.DownloadArtifactRequest(model="b-model", alias="Bad Alias!"),
    ),
    (
        REG + "DownloadArtifact",
        "model-bad-chars",
        "viewer",
        lambda w: R_.DownloadArtifactRequest(model=BAD_NAME, version=1),
    ),
    *_deployment_cases(),
    *_agent_cases(),
    *_monitoring_cases(),
    *_performance_cases(),
    *_rollout_cases(),
    *_federation_cases(),
    *_paging_cases(),
]
INVALID_CASES = [pytest.param(rpc, role, make, id=f"{short(rpc)}-{case}") for rpc, case, role, make in _CASES]


@pytest.mark.parametrize(("rpc", "role", "make"), INVALID_CASES)
def test_malformed_input_is_invalid_argument(
    world: World, rpc: str, role: str, make: Callable[[World], Any]
) -> None:
    assert role in allowed_roles(rpc)
    request = make(world)
    err = expect(INVALID_ARGUMENT, lambda: world.call(rpc, request, world.key(role)))
    assert err.details(), "an INVALID_ARGUMENT must say what is wrong"


def _profile(*feature_edges: list[float]) -> common_pb2.ReferenceProfile:
    profile = common_pb2.ReferenceProfile(row_count=10)
    for i, edges in enumerate(feature_edges):
        feature = profile.features.add(name=f"f{i}")
        feature.numeric.edges.extend(edges)
        feature.numeric.counts.extend([1] * (len(edges) - 1))
    return profile


NOT_ONNX = b"this is not an ONNX model, whatever the framework says"
Req = registry_pb2.CreateModelVersionRequest


# CreateModelVersion streams that must be refused; each gets its own model name (`m`).
UPLOADS: dict[str, Callable[[World, str], list[registry_pb2.CreateModelVersionRequest]]] = {
    "empty-stream": lambda w, m: [],
    "spec-not-first": lambda w, m: [upload(m, create_model=True)[i] for i in (1, 0, 2)],
    "only-sha256": lambda w, m: [Req(sha256=hashlib.sha256(PAYLOAD).hexdigest())],
    "spec-twice": lambda w, m: [upload(m, create_model=True)[i] for i in (0, 0, 1, 2)],
    "chunk-after-sha256": lambda w, m: [upload(m, create_model=True)[i] for i in (0, 1, 2, 1)],
    "sha256-twice": lambda w, m: [upload(m, create_model=True)[i] for i in (0, 1, 2, 2)],
    "size-bytes-zero": lambda w, m: upload(m, create_model=True, size_bytes=0),
    "size-bytes-negative": lambda w, m: upload(m, create_model=True, size_bytes=-1),
    "size-bytes-over-limit": lambda w, m: upload(m, create_model=True, size_bytes=2**62),
    "sha256-mismatch": lambda w, m: upload(m, create_model=True, sha256="0" * 64),
    "sha256-malformed": lambda w, m: upload(m, create_model=True, sha256="not-a-digest"),
    "sha256-empty": lambda w, m: upload(m, create_model=True, sha256=""),
    "sha256-of-other-bytes": lambda w, m: upload(
        m, create_model=True, sha256=hashlib.sha256(b"other").hexdigest()
    ),
    "chunks-larger-than-declared": lambda w, m: upload(m, create_model=True, size_bytes=4),
    "chunks-smaller-than-declared": lambda w, m: upload(m, create_model=True, size_bytes=len(PAYLOAD) + 10),
    "no-sha256": lambda w, m: upload(m, create_model=True)[:2],
    "no-chunks-no-sha256": lambda w, m: upload(m, create_model=True)[:1],
    "model-bad-chars": lambda w, m: upload(BAD_NAME, create_model=True),
    "model-empty": lambda w, m: upload("", create_model=True),
    "framework-bad-chars": lambda w, m: upload(m, create_model=True, framework="ONNX!"),
    "framework-empty": lambda w, m: upload(m, create_model=True, framework=""),
    # "onnx\n" is not a framework name; were it accepted, the ONNX gates would be skipped.
    "framework-trailing-newline": lambda w, m: upload(m, NOT_ONNX, create_model=True, framework="onnx\n"),
    "alias-bad-chars": lambda w, m: upload(m, create_model=True, aliases=["Bad Alias!"]),
    "aliases-repeated": lambda w, m: upload(m, create_model=True, aliases=["prod", "prod"]),
    "tag-key-bad-chars": lambda w, m: upload(m, create_model=True, tags={"bad key!": "v"}),
    "tag-value-too-long": lambda w, m: upload(m, create_model=True, tags={"k": "v" * 1025}),
    "too-many-tags": lambda w, m: upload(m, create_model=True, tags=TOO_MANY_TAGS),
    "lineage-parent-negative": lambda w, m: upload(
        m, create_model=True, lineage=registry_pb2.Lineage(parent_version=-1)
    ),
    "lineage-property-bad-key": lambda w, m: upload(
        m, create_model=True, lineage=registry_pb2.Lineage(properties={"bad key!": "v"})
    ),
    "reference-profile-inconsistent": lambda w, m: upload(
        m, create_model=True, reference_profile=_profile([1.0, 0.0])
    ),
    "invalid-onnx": lambda w, m: upload(m, NOT_ONNX, create_model=True, framework="onnx"),
    "invalid-onnx-existing-model": lambda w, m: upload("b-model", NOT_ONNX, framework="onnx"),
    # A valid model, but its profile describes 2 features where the input has 4 columns.
    "onnx-profile-mismatch": lambda w, m: upload(
        m, w.onnx_bytes, create_model=True, framework="onnx", reference_profile=_profile([0, 1], [0, 1])
    ),
}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", list(UPLOADS))
def test_malformed_upload_is_invalid_argument_and_leaves_nothing(world: World, case: str) -> None:
    artifacts = world.server.data_dir / "artifacts"
    before_files = _files(artifacts)
    before_models = world.b_models()
    messages = UPLOADS[case](world, f"upload-{case}")
    err = expect(INVALID_ARGUMENT, lambda: world.call(CREATE_VERSION, messages, world.b.keys["editor"]))
    assert err.details(), "an INVALID_ARGUMENT must say what is wrong"
    # No model was created, no version added, and no file (blob or partial upload) remains.
    assert world.b_models() == before_models
    assert _files(artifacts) == before_files


def test_platform_calls_of_the_admin(world: World) -> None:
    """The admin-only platform calls work for the admin (the other side of their PERMISSION_DENIED)."""
    tenants = world.ok(ADMIN + "ListTenants", admin_pb2.ListTenantsRequest(), world.admin_key).tenants
    assert {world.a.name, world.b.name} <= {t.name for t in tenants}
    expect(
        grpc.StatusCode.ALREADY_EXISTS,
        lambda: world.call(
            ADMIN + "CreateTenant", admin_pb2.CreateTenantRequest(name=world.a.name), world.admin_key
        ),
    )


def test_keys_of_a_disabled_tenant_are_refused(world: World) -> None:
    """Every RPC refuses the keys of a disabled tenant, also when they were used (cached) just before."""
    with world.server.client() as admin:
        created = admin.tenants.create("tenant-d")
    with Client.connect(world.server.target, api_key=created.owner_key_secret) as owner:
        agent = owner.keys.create("agent").secret
    keys = {"owner": created.owner_key_secret, "agent": agent}
    for key in keys.values():
        world.ok(ADMIN + "WhoAmI", admin_pb2.WhoAmIRequest(), key)
    disable = admin_pb2.DisableTenantRequest(name="tenant-d")
    assert (
        world.ok(ADMIN + "DisableTenant", disable, world.admin_key).tenant.state
        == admin_pb2.TENANT_STATE_DISABLED
    )
    try:
        for rpc in ALL_RPCS:
            for key in keys.values():
                expect(
                    PERMISSION_DENIED,
                    lambda rpc=rpc, key=key: world.call(rpc, REQUESTS[rpc](world.a_names), key),
                )
    finally:
        world.ok(ADMIN + "EnableTenant", admin_pb2.EnableTenantRequest(name="tenant-d"), world.admin_key)
    for key in keys.values():
        assert world.ok(ADMIN + "WhoAmI", admin_pb2.WhoAmIRequest(), key).tenant == "tenant-d"
    world.assert_a_intact()


# --- 5. deployments, agents and telemetry: the allowed side ------------------------------------------
def _requests_of(status: monitoring_pb2.GetDeploymentStatusResponse) -> dict[tuple[int, bool], int]:
    return {(v.version, v.shadow): v.requests for v in status.versions}


def _a_status(world: World) -> monitoring_pb2.GetDeploymentStatusResponse:
    req = monitoring_pb2.GetDeploymentStatusRequest(name="dep")
    return world.ok(MON + "GetDeploymentStatus", req, world.a.keys["viewer"])


def _acks(world: World, messages: list[agent_pb2.ReportTelemetryRequest], key: str) -> list[tuple[str, bool]]:
    return [(ack.batch_id, ack.duplicate) for ack in world.ok(TELEMETRY, messages, key)]


def test_an_agent_serves_its_own_tenants_deployment(world: World) -> None:
    """A's agent key registers, watches and reports for A's deployment; a retried batch is acknowledged
    as a duplicate and stored once."""
    key = world.a.keys["agent"]
    info = agent_pb2.AgentInfo(name=A_AGENT, host=A_HOST, cpu_count=8)
    registered = world.ok(
        AGENT + "RegisterAgent", agent_pb2.RegisterAgentRequest(deployment="dep", agent=info), key
    ).deployment
    assert (registered.name, registered.model, registered.generation) == ("dep", "m", 1)
    [first] = world.ok(WATCH, agent_pb2.WatchAssignmentsRequest(deployment="dep", agent=A_AGENT), key)
    assignment = first.assignment
    assert (assignment.deployment.name, assignment.deployment.generation) == ("dep", 1)
    assert [(t.version, t.weight) for t in assignment.deployment.traffic] == [(1, 1.0)]
    assert [(v.version, v.artifact.sha256) for v in assignment.versions] == [(1, world.a_sha256)]
    # The agent may also read its deployment.
    got = world.ok(DEP + "GetDeployment", deployment_pb2.GetDeploymentRequest(name="dep"), key).deployment
    assert got == assignment.deployment

    before = _requests_of(_a_status(world)).get((1, False), 0)
    batch = telemetry("dep", agent=A_AGENT)
    batch_id = batch[0].batch.batch_id
    assert _acks(world, batch, key) == [(batch_id, False)]
    assert _acks(world, batch, key) == [(batch_id, True)]
    # The same batch twice in one stream: one acknowledgement each, the second a duplicate.
    twice = telemetry("dep", agent=A_AGENT)
    twice_id = twice[0].batch.batch_id
    assert _acks(world, twice * 2, key) == [(twice_id, False), (twice_id, True)]
    # Stored once each: two batches of 10 requests.
    assert _requests_of(_a_status(world)).get((1, False), 0) == before + 20
    world.assert_a_intact()


def test_a_rejected_batch_stores_nothing_and_leaves_its_id_unused(world: World) -> None:
    key = world.a.keys["agent"]
    before = _requests_of(_a_status(world))
    bad = telemetry("dep", agent=A_AGENT, intervals=[interval(), interval(requests=1, errors=2)])
    batch_id = bad[0].batch.batch_id
    expect(INVALID_ARGUMENT, lambda: world.call(TELEMETRY, bad, key))
    assert _requests_of(_a_status(world)) == before
    good = telemetry("dep", agent=A_AGENT, batch_id=batch_id)
    assert _acks(world, good, key) == [(batch_id, False)]
    after = _requests_of(_a_status(world))
    assert after[(1, False)] == before[(1, False)] + 10


AGENT_CALLS: dict[str, Callable[[str], Any]] = {
    AGENT + "RegisterAgent": lambda d: agent_pb2.RegisterAgentRequest(
        deployment=d, agent=agent_pb2.AgentInfo(name=A_AGENT, host=A_HOST)
    ),
    WATCH: lambda d: agent_pb2.WatchAssignmentsRequest(deployment=d, agent=A_AGENT),
    TELEMETRY: lambda d: telemetry(d, agent=A_AGENT),
    PULL_LABELS: lambda d: agent_pb2.PullLabelsRequest(deployment=d),
    REPORT_PERFORMANCE: lambda d: performance_report(d, agent=A_AGENT),
}


@pytest.mark.parametrize("rpc", list(AGENT_CALLS), ids=short)
def test_an_agent_cannot_reach_another_tenants_deployment(world: World, rpc: str) -> None:
    """A's agent naming B's deployment gets NOT_FOUND, the same as for a ghost; B's is untouched."""
    key = world.a.keys["agent"]
    before = world.b_status()
    err = expect(NOT_FOUND, lambda: world.call(rpc, AGENT_CALLS[rpc](B_DEPLOYMENT), key))
    ghost = expect(NOT_FOUND, lambda: world.call(rpc, AGENT_CALLS[rpc](GHOST.deployment), key))
    assert err.details().replace(B_DEPLOYMENT, "<d>") == ghost.details().replace(GHOST.deployment, "<d>")
    after = world.b_status()
    assert [a.info.name for a in after.agents] == ["b-agent"]
    assert after.agents == before.agents
    assert _requests_of(after) == _requests_of(before)
    assert "b-dep" not in str(_a_status(world))


def test_deployment_names_are_per_tenant(world: World) -> None:
    """Another tenant creates its own "dep" of its own "m": no ALREADY_EXISTS, nothing of A's in it."""
    with world.server.client() as admin:
        created = admin.tenants.create("tenant-e")
    owner = created.owner_key_secret
    agent = world.ok(KEYS + "CreateKey", admin_pb2.CreateKeyRequest(role=common_pb2.ROLE_AGENT), owner).secret
    world.ok(CREATE_VERSION, upload("m", create_model=True), owner)
    dep = world.ok(
        DEP + "CreateDeployment",
        deployment_pb2.CreateDeploymentRequest(name="dep", model="m", traffic=traffic((1, 1.0))),
        owner,
    ).deployment
    assert (dep.name, dep.description, dep.generation) == ("dep", "", 1)
    [first] = world.ok(WATCH, agent_pb2.WatchAssignmentsRequest(deployment="dep", agent="e-agent"), agent)
    versions = first.assignment.versions
    assert [(v.version, v.artifact.sha256) for v in versions] == [(1, hashlib.sha256(PAYLOAD).hexdigest())]
    status = world.ok(
        MON + "GetDeploymentStatus", monitoring_pb2.GetDeploymentStatusRequest(name="dep"), owner
    )
    assert (list(status.agents), list(status.versions)) == ([], [])
    alerts = world.ok(MON + "ListAlerts", monitoring_pb2.ListAlertsRequest(deployment="dep"), owner)
    assert list(alerts.alerts) == []
    for text in (str(dep), str(first), str(status)):
        assert_no_leak(world, text)
    world.assert_a_intact()


def test_a_is_intact_after_all(world: World) -> None:
    world.assert_a_intact()
    versions = world.ok(
        REG + "ListModelVersions",
        registry_pb2.ListModelVersionsRequest(model="b-model", include_archived=True),
        world.b.keys["viewer"],
    ).versions
    assert [v.version for v in versions] == [2, 1]
    dep = world.ok(
        DEP + "GetDeployment", deployment_pb2.GetDeploymentRequest(name=B_DEPLOYMENT), world.b.keys["viewer"]
    ).deployment
    assert ([(t.version, t.weight) for t in dep.traffic], dep.generation) == ([(1, 0.5), (2, 0.5)], 1)


def test_no_stream_is_left_open(world: World) -> None:
    """Every streaming call of this module ended (read to its end, failed, or cancelled once read)."""
    assert world.streams
    assert all(stream.done() for stream in world.streams)
