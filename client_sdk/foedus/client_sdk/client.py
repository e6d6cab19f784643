"""The Foedus client: `Client.connect(target, api_key=...)`, then `client.models`, `client.tenants`, ..."""

from __future__ import annotations

import builtins
import datetime
import hashlib
import numbers
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from foedus.client_sdk.drift import DriftThresholds, thresholds_message
from foedus.client_sdk.errors import (
    FoedusError,
    IntegrityError,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from foedus.client_sdk.federation import FederationAPI
from foedus.client_sdk.profile import compute_reference_profile
from foedus.client_sdk.rollouts import RolloutsAPI
from foedus.client_sdk.targets import resolve_target
from foedus.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    deployment_pb2,
    deployment_pb2_grpc,
    monitoring_pb2,
    monitoring_pb2_grpc,
    performance_pb2,
    performance_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

T = TypeVar("T")
CHUNK_SIZE = 1024 * 1024
SDK_AGENT = "sdk"
"""The agent name under which `MonitoringAPI.log_metrics` / `log_batch` report their batches."""

ROLES = {
    "viewer": common_pb2.ROLE_VIEWER,
    "editor": common_pb2.ROLE_EDITOR,
    "owner": common_pb2.ROLE_OWNER,
    "agent": common_pb2.ROLE_AGENT,
    "admin": common_pb2.ROLE_ADMIN,
}


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS settings of the channel. Leave a field empty to use the default."""

    ca_cert: str | Path | None = None
    """PEM file of the CA that signed the server's certificate; the system roots when empty."""
    client_cert: str | Path | None = None
    """PEM client certificate, for servers that require mutual TLS."""
    client_key: str | Path | None = None
    """PEM private key of the client certificate."""
    server_name: str | None = None
    """Name to check the server's certificate against, when it differs from the target's host."""

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The gRPC channel credentials these settings describe (files are read now)."""
        if (self.client_cert is None) != (self.client_key is None):
            raise InvalidArgument("client_cert and client_key go together")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_cert),
            private_key=_read(self.client_key),
            certificate_chain=_read(self.client_cert),
        )


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def _traced(channel: grpc.Channel) -> grpc.Channel:
    """The channel with OpenTelemetry client spans and W3C trace context in the metadata, so that a
    caller's trace goes on in the server, whenever the process traces or the caller has a context to
    pass on; as it is when opentelemetry-api is not installed."""
    try:
        from foedus.client_sdk.tracing import TracedChannel
    except ImportError:
        return channel
    return TracedChannel(channel)


def _framework_of(path: Path) -> str:
    return "onnx" if path.suffix.lower() == ".onnx" else "custom"


class _Rpc:
    """Calls stubs with the key and timeout, and turns gRPC errors into the SDK's exceptions."""

    def __init__(self, channel: grpc.Channel, api_key: str, timeout: float | None) -> None:
        self.channel = channel
        self.metadata = (("authorization", f"Bearer {api_key}"),)
        self.timeout = timeout

    def __call__(self, method: Callable[..., T], request: Any, *, timeout: float | None = None) -> T:
        try:
            return method(request, metadata=self.metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None


def _pages(fetch: Callable[[str], tuple[Sequence[T], str]], limit: int | None) -> list[T]:
    if limit is not None and limit < 0:
        raise InvalidArgument(f"limit must not be negative, got {limit} (None: no limit)")
    out: list[T] = []
    token = ""
    while True:
        items, token = fetch(token)
        out.extend(items)
        if not token or (limit is not None and len(out) >= limit):
            return out if limit is None else out[:limit]


class ModelsAPI:
    """The model registry of the caller's tenant."""

    def __init__(self, rpc: _Rpc, chunk_size: int) -> None:
        self._rpc = rpc
        self._stub = registry_pb2_grpc.RegistryServiceStub(rpc.channel)
        self._chunk_size = chunk_size

    def create(
        self, name: str, *, description: str = "", tags: Mapping[str, str] | None = None
    ) -> registry_pb2.Model:
        req = registry_pb2.CreateModelRequest(name=name, description=description, tags=dict(tags or {}))
        return self._rpc(self._stub.CreateModel, req).model

    def register(
        self,
        name: str,
        path: str | Path,
        *,
        aliases: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
        lineage: Mapping[str, Any] | None = None,
        reference_data: Any = None,
        feature_names: Sequence[str] | None = None,
        description: str = "",
        framework: str | None = None,
        create_model: bool = True,
        timeout: float | None = None,
    ) -> registry_pb2.ModelVersion:
        """Uploads `path` as the next version of model `name` and returns it.

        `lineage` takes the structured keys `data_fingerprint`, `code_revision`, `parent_version`
        and `code_revision_time` (an aware datetime or Unix seconds, used for DORA lead time); any
        other key goes to its free key/values. `reference_data` (a 2-D array,
        a mapping of column -> values, or a DataFrame) is profiled here, and only the profile is
        sent. The framework is `onnx` for .onnx files unless given; ONNX versions pass the
        registry's gates (validity, signature, CPU latency) or are rejected with InvalidArgument.
        The file is streamed in chunks and never held in memory.
        """
        file = Path(path)
        if not file.is_file():
            raise InvalidArgument(f"no such file: {file}")
        if file.stat().st_size == 0:
            raise InvalidArgument(f"the artifact file {file} is empty")
        lin = dict(lineage or {})
        spec = registry_pb2.VersionSpec(
            model=name,
            create_model=create_model,
            description=description,
            tags=dict(tags or {}),
            aliases=list(aliases),
            framework=framework or _framework_of(file),
            size_bytes=file.stat().st_size,
            lineage=registry_pb2.Lineage(
                data_fingerprint=str(lin.pop("data_fingerprint", "")),
                code_revision=str(lin.pop("code_revision", "")),
                parent_version=_parent_version(lin.pop("parent_version", 0)),
                code_revision_time=_timestamp(lin.pop("code_revision_time", None)),
                properties={str(k): str(v) for k, v in lin.items()},
            ),
        )
        if reference_data is not None:
            try:
                profile = compute_reference_profile(reference_data, feature_names=feature_names)
            except ValueError as exc:
                raise InvalidArgument(f"reference_data: {exc}") from None
            spec.reference_profile.CopyFrom(profile)

        def messages() -> Iterator[registry_pb2.CreateModelVersionRequest]:
            yield registry_pb2.CreateModelVersionRequest(spec=spec)
            digest = hashlib.sha256()
            with open(file, "rb") as f:
                while chunk := f.read(self._chunk_size):
                    digest.update(chunk)
                    yield registry_pb2.CreateModelVersionRequest(chunk=chunk)
            yield registry_pb2.CreateModelVersionRequest(sha256=digest.hexdigest())

        return self._rpc(self._stub.CreateModelVersion, messages(), timeout=timeout or 3600.0).version

    def get(self, name: str) -> registry_pb2.Model:
        return self._rpc(self._stub.GetModel, registry_pb2.GetModelRequest(name=name)).model

    def list(self, *, name_prefix: str = "", limit: int | None = None) -> list[registry_pb2.Model]:
        def fetch(token: str) -> tuple[Sequence[registry_pb2.Model], str]:
            req = registry_pb2.ListModelsRequest(
                name_prefix=name_prefix, page=common_pb2.PageRequest(page_token=token)
            )
            resp = self._rpc(self._stub.ListModels, req)
            return resp.models, resp.next_page_token

        return _pages(fetch, limit)

    def get_version(
        self, name: str, version: int | None = None, *, alias: str | None = None
    ) -> registry_pb2.ModelVersion:
        """One version by number, or by alias (`alias="production"`)."""
        req = registry_pb2.GetModelVersionRequest(model=name)
        if _select(version, alias) == "alias":
            req.alias = alias or ""
        elif version is not None:
            req.version = version
        return self._rpc(self._stub.GetModelVersion, req).version

    def versions(
        self, name: str, *, include_archived: bool = False, limit: int | None = None
    ) -> builtins.list[registry_pb2.ModelVersion]:
        """Versions newest first (reference profiles left out; `get_version` has them)."""

        def fetch(token: str) -> tuple[Sequence[registry_pb2.ModelVersion], str]:
            req = registry_pb2.ListModelVersionsRequest(
                model=name, include_archived=include_archived, page=common_pb2.PageRequest(page_token=token)
            )
            resp = self._rpc(self._stub.ListModelVersions, req)
            return resp.versions, resp.next_page_token

        return _pages(fetch, limit)

    def set_alias(self, name: str, alias: str, version: int) -> int:
        """Points `alias` at `version`; returns where it pointed before (0 if new)."""
        req = registry_pb2.SetAliasRequest(model=name, alias=alias, version=version)
        return self._rpc(self._stub.SetAlias, req).previous_version

    def delete_alias(self, name: str, alias: str) -> None:
        self._rpc(self._stub.DeleteAlias, registry_pb2.DeleteAliasRequest(model=name, alias=alias))

    def archive(self, name: str, version: int) -> registry_pb2.ModelVersion:
        req = registry_pb2.ArchiveModelVersionRequest(model=name, version=version)
        return self._rpc(self._stub.ArchiveModelVersion, req).version

    def record_evaluation(
        self,
        name: str,
        version: int,
        dataset: str,
        metrics: Mapping[str, float],
        *,
        rows: int = 0,
        baseline_version: int = 0,
        baseline_metrics: Mapping[str, float] | None = None,
        dataset_fingerprint: str = "",
    ) -> registry_pb2.ModelVersion:
        """Records an offline evaluation in the version's lineage (read by rollout quality gates)."""
        req = registry_pb2.RecordEvaluationRequest(
            model=name,
            version=version,
            evaluation=registry_pb2.Evaluation(
                dataset=dataset,
                metrics={k: float(v) for k, v in metrics.items()},
                rows=rows,
                baseline_version=baseline_version,
                baseline_metrics={k: float(v) for k, v in (baseline_metrics or {}).items()},
                dataset_fingerprint=dataset_fingerprint,
            ),
        )
        return self._rpc(self._stub.RecordEvaluation, req).version

    def evaluate(
        self,
        name: str,
        version: int,
        x: Any,
        y: Any,
        *,
        dataset: str,
        baseline_version: int | None = None,
        baseline_alias: str | None = "production",
        task: str | None = None,
        metrics: Sequence[str] | None = None,
        record: bool = True,
    ) -> registry_pb2.Evaluation:
        """Scores `version` (and its baseline) on rows `x` with labels `y`, here, with onnxruntime.

        The baseline is `baseline_version`, else the version `baseline_alias` points at (if any).
        `task` is classification or regression (inferred from `y`: integers and strings are
        classes). Metrics: accuracy, f1_macro, precision_macro, recall_macro, auc (binary, when the
        model outputs probabilities) or rmse, mae, r2. With `record`, the result goes into the
        version's lineage as an evaluation on `dataset`, with a fingerprint of the rows.
        """
        import numpy as np

        from foedus.client_sdk import evaluation as ev

        xs = np.asarray(x)
        ys = np.asarray(y)
        if xs.ndim != 2 or len(xs) != len(ys) or not len(xs):
            raise InvalidArgument("x must be a non-empty 2-D array with one label in y per row")
        kind = task or ev.infer_task(ys)
        base = baseline_version
        if base is None and baseline_alias:
            model = self.get(name)
            base = model.aliases.get(baseline_alias)
        with tempfile.TemporaryDirectory(prefix="foedus-eval-") as tmp:
            mine = ev.evaluate_arrays(
                ev.onnx_predictor(self.download(name, tmp, version)), xs, ys, kind, metrics
            )
            theirs: dict[str, float] = {}
            if base and base != version:
                theirs = ev.evaluate_arrays(
                    ev.onnx_predictor(self.download(name, tmp, base)), xs, ys, kind, metrics
                )
        result = registry_pb2.Evaluation(
            dataset=dataset,
            metrics=mine,
            rows=len(xs),
            baseline_version=base if theirs and base else 0,
            baseline_metrics=theirs,
            dataset_fingerprint=ev.fingerprint(xs, ys),
        )
        if record:
            recorded = self.record_evaluation(
                name,
                version,
                dataset,
                mine,
                rows=len(xs),
                baseline_version=result.baseline_version,
                baseline_metrics=theirs,
                dataset_fingerprint=result.dataset_fingerprint,
            )
            return recorded.lineage.evaluations[-1]
        return result

    def download(
        self,
        name: str,
        dest: str | Path,
        version: int | None = None,
        *,
        alias: str | None = None,
        timeout: float | None = None,
    ) -> Path:
        """Streams a version's artifact to `dest` (a file, or a directory to put it in).

        The file appears only complete and verified against the registry's sha256; a mismatch
        raises IntegrityError and leaves nothing behind.
        """
        req = registry_pb2.DownloadArtifactRequest(model=name)
        if _select(version, alias) == "alias":
            req.alias = alias or ""
        elif version is not None:
            req.version = version
        target = Path(dest)
        # A path that names a directory (it is one, or ends with a separator) gets the file inside.
        into_dir = target.is_dir() or str(dest).endswith(("/", os.sep))
        folder = target if into_dir else target.parent
        if not folder.is_dir():
            what = "the directory" if into_dir else "the parent directory of"
            raise InvalidArgument(f"cannot download to {dest}: {what} {folder} does not exist")
        try:
            stream = self._stub.DownloadArtifact(req, metadata=self._rpc.metadata, timeout=timeout or 3600.0)
            header = next(iter(stream)).header
            if into_dir:
                suffix = ".onnx" if header.artifact.framework == "onnx" else ".bin"
                target = target / f"{name}-v{header.version}{suffix}"
            # created as open() would (0o666 less the umask), not 0o600 as tempfile.mkstemp does
            tmp = str(target.parent / f".{target.name}.{secrets.token_hex(8)}.part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            digest = hashlib.sha256()
            size = 0
            try:
                with os.fdopen(fd, "wb") as f:
                    for message in stream:
                        digest.update(message.chunk)
                        size += len(message.chunk)
                        f.write(message.chunk)
                if digest.hexdigest() != header.artifact.sha256 or size != header.artifact.size_bytes:
                    raise IntegrityError(
                        f"downloaded artifact does not match the registry: sha256 {digest.hexdigest()} "
                        f"({size} bytes), expected {header.artifact.sha256} ({header.artifact.size_bytes} bytes)"
                    )
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return target


def _select(version: int | None, alias: str | None) -> str:
    """Which selector a version/alias pair names: "alias", "version", or "" (neither: the server
    refuses the call, asking for one)."""
    if alias is not None and version is not None:
        raise InvalidArgument(f"give a version or an alias, not both (version {version}, alias {alias!r})")
    return "alias" if alias is not None else "version" if version is not None else ""


def _parent_version(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"lineage parent_version must be a version number, not {value!r}") from None
    if number < 0:
        raise InvalidArgument(f"lineage parent_version must not be negative, got {number}")
    return number


def _timestamp(value: Any) -> Timestamp | None:
    if value is None or value == "":
        return None
    out = Timestamp()
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise InvalidArgument("lineage code_revision_time needs a time zone")
        out.FromDatetime(value.astimezone(datetime.UTC))
    else:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise InvalidArgument(
                f"lineage code_revision_time must be a datetime or Unix seconds, not {value!r}"
            ) from None
        # Timestamp's range: years 1 to 9999.
        if not -62_135_596_800 <= seconds <= 253_402_300_799:
            raise InvalidArgument(
                f"lineage code_revision_time must be Unix seconds within years 1-9999, not {value!r}"
            )
        out.FromNanoseconds(int(seconds * 1e9))
    return out


def _traffic(traffic: Mapping[int, float] | None) -> list[deployment_pb2.TrafficSplit]:
    return [
        deployment_pb2.TrafficSplit(version=int(version), weight=float(weight))
        for version, weight in (traffic or {}).items()
    ]


class DeploymentsAPI:
    """Deployments of the caller's tenant: which versions of a model serve, with which weights."""

    def __init__(self, rpc: _Rpc) -> None:
        self._rpc = rpc
        self._stub = deployment_pb2_grpc.DeploymentServiceStub(rpc.channel)

    def create(
        self,
        name: str,
        model: str,
        *,
        traffic: Mapping[int, float] | None = None,
        shadow_version: int = 0,
        description: str = "",
    ) -> deployment_pb2.Deployment:
        """Creates deployment `name` serving versions of `model`.

        `traffic` maps version -> relative weight (>= 0, adding up to more than 0), e.g.
        `{3: 0.9, 4: 0.1}`; `shadow_version` receives a copy of every request (0 for none).
        Unknown models or versions raise NotFound, archived versions FailedPrecondition.
        """
        req = deployment_pb2.CreateDeploymentRequest(
            name=name,
            model=model,
            description=description,
            traffic=_traffic(traffic),
            shadow_version=shadow_version,
        )
        return self._rpc(self._stub.CreateDeployment, req).deployment

    def get(self, name: str) -> deployment_pb2.Deployment:
        return self._rpc(self._stub.GetDeployment, deployment_pb2.GetDeploymentRequest(name=name)).deployment

    def list(self, *, limit: int | None = None) -> builtins.list[deployment_pb2.Deployment]:
        """The tenant's deployments, by name."""

        def fetch(token: str) -> tuple[Sequence[deployment_pb2.Deployment], str]:
            req = deployment_pb2.ListDeploymentsRequest(page=common_pb2.PageRequest(page_token=token))
            resp = self._rpc(self._stub.ListDeployments, req)
            return resp.deployments, resp.next_page_token

        return _pages(fetch, limit)

    def set_traffic(
        self, name: str, traffic: Mapping[int, float], *, shadow_version: int = 0
    ) -> deployment_pb2.Deployment:
        """Replaces the traffic split (and the shadow version) atomically; bumps `generation`.

        Versions left out of `traffic` stop serving; `shadow_version=0` removes the shadow.
        """
        req = deployment_pb2.SetTrafficRequest(
            name=name, traffic=_traffic(traffic), shadow_version=shadow_version
        )
        return self._rpc(self._stub.SetTraffic, req).deployment


MetricTuple = tuple[str, float, int | None, int]
"""A logged metric point: (name, value, time in Unix ms or None for now, step)."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class MonitoringAPI:
    """What agents measured (status, series, alerts), and metric series logged by tenant code."""

    def __init__(self, rpc: _Rpc) -> None:
        self._rpc = rpc
        self._stub = monitoring_pb2_grpc.MonitoringServiceStub(rpc.channel)
        self._agent = agent_pb2_grpc.AgentServiceStub(rpc.channel)
        self._performance = performance_pb2_grpc.PerformanceServiceStub(rpc.channel)

    def status(self, deployment: str, *, window_s: int = 300) -> monitoring_pb2.GetDeploymentStatusResponse:
        """The deployment, its agents, and per-version requests, errors and latency over the last
        `window_s` seconds."""
        req = monitoring_pb2.GetDeploymentStatusRequest(name=deployment, window_s=window_s)
        return self._rpc(self._stub.GetDeploymentStatus, req)

    def query(
        self,
        deployment: str,
        metric: str,
        *,
        version: int = 0,
        start_unix_ms: int = 0,
        end_unix_ms: int = 0,
        step_s: int = 60,
    ) -> builtins.list[tuple[int, float]]:
        """One metric as (step start in Unix ms, value) pairs, oldest first.

        `metric` is requests, errors, invalid, latency_p50_ms, latency_p99_ms, a resource
        (process_cpu_percent, ...), a score (anomaly, ...) or a name logged with `log_metrics`.
        `version=0` means every version together; `end_unix_ms=0` means now. The server accepts
        at most 100000 steps, so give `start_unix_ms` (0 is the Unix epoch) with a fitting `step_s`.
        """
        req = monitoring_pb2.QueryMetricsRequest(
            deployment=deployment,
            metric=metric,
            version=version,
            start_unix_ms=start_unix_ms,
            end_unix_ms=end_unix_ms,
            step_s=step_s,
        )
        return [(p.time_unix_ms, p.value) for p in self._rpc(self._stub.QueryMetrics, req).points]

    def alerts(self, deployment: str = "", limit: int | None = 100) -> builtins.list[monitoring_pb2.Alert]:
        """Alerts agents raised, newest first: of one deployment, or of all with `deployment=""`."""

        def fetch(token: str) -> tuple[Sequence[monitoring_pb2.Alert], str]:
            req = monitoring_pb2.ListAlertsRequest(
                deployment=deployment, page=common_pb2.PageRequest(page_token=token)
            )
            resp = self._rpc(self._stub.ListAlerts, req)
            return resp.alerts, resp.next_page_token

        return _pages(fetch, limit)

    def incidents(
        self, deployment: str = "", *, open_only: bool = False, limit: int | None = 100
    ) -> builtins.list[monitoring_pb2.Incident]:
        """Incidents (alerts grouped per deployment while they keep coming), newest first."""

        def fetch(token: str) -> tuple[Sequence[monitoring_pb2.Incident], str]:
            req = monitoring_pb2.ListIncidentsRequest(
                deployment=deployment, open_only=open_only, page=common_pb2.PageRequest(page_token=token)
            )
            resp = self._rpc(self._stub.ListIncidents, req)
            return resp.incidents, resp.next_page_token

        return _pages(fetch, limit)

    def incident(self, incident_id: int) -> monitoring_pb2.GetIncidentResponse:
        """One incident and its newest alerts."""
        return self._rpc(self._stub.GetIncident, monitoring_pb2.GetIncidentRequest(id=incident_id))

    def acknowledge(self, incident_id: int) -> monitoring_pb2.Incident:
        """Firing -> acknowledged; FailedPrecondition once resolved."""
        req = monitoring_pb2.AcknowledgeIncidentRequest(id=incident_id)
        return self._rpc(self._stub.AcknowledgeIncident, req).incident

    def resolve(self, incident_id: int) -> monitoring_pb2.Incident:
        """Firing or acknowledged -> resolved."""
        req = monitoring_pb2.ResolveIncidentRequest(id=incident_id)
        return self._rpc(self._stub.ResolveIncident, req).incident

    def explain(self, incident_id: int, *, window_s: int = 0) -> monitoring_pb2.ExplainIncidentResponse:
        """Ranked causes of an incident: blamed metrics and the deployment's changes before onset
        (`window_s` before it; 0 means 1800 s)."""
        req = monitoring_pb2.ExplainIncidentRequest(id=incident_id, window_s=window_s)
        return self._rpc(self._stub.ExplainIncident, req)

    def watch_alerts(
        self, deployment: str = "", *, after_event_id: int = 0, timeout: float | None = None
    ) -> Iterator[monitoring_pb2.IncidentEvent]:
        """Yields incident events as they happen: first (with `after_event_id=0`) the incidents open
        now (kind OPEN), or the events after `after_event_id`; then one CAUGHT_UP; then live events.
        Never ends by itself; `timeout` bounds the whole watch."""
        req = monitoring_pb2.WatchAlertsRequest(deployment=deployment, after_event_id=after_event_id)
        stream = self._stub.WatchAlerts(req, metadata=self._rpc.metadata, timeout=timeout)
        try:
            for message in stream:
                yield message.event
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]

    def set_webhook(self, url: str, secret: str, *, description: str = "") -> monitoring_pb2.Webhook:
        """Adds the tenant's webhook for `url` (or replaces its secret). Incidents opened,
        acknowledged and resolved are POSTed there, signed with `secret` (see
        `foedus.client_sdk.webhooks`)."""
        req = monitoring_pb2.SetWebhookRequest(url=url, secret=secret, description=description)
        return self._rpc(self._stub.SetWebhook, req).webhook

    def webhooks(self) -> builtins.list[monitoring_pb2.Webhook]:
        """The tenant's webhooks (never their secrets)."""
        return builtins.list(
            self._rpc(self._stub.ListWebhooks, monitoring_pb2.ListWebhooksRequest()).webhooks
        )

    def delete_webhook(self, webhook_id: int) -> None:
        self._rpc(self._stub.DeleteWebhook, monitoring_pb2.DeleteWebhookRequest(id=webhook_id))

    def drift(
        self,
        deployment: str,
        *,
        version: int = 0,
        window_s: int = 3600,
        end_unix_ms: int = 0,
        method: str = "auto",
        thresholds: DriftThresholds | None = None,
    ) -> monitoring_pb2.GetDriftReportResponse:
        """Input drift of one version over the `window_s` seconds before `end_unix_ms` (0: now).

        The agents' counts of every input feature on the version's reference-profile bins against
        the profile's own counts: PSI, Jensen-Shannon, chi-square, KS and Wasserstein per feature,
        each feature's verdict by `method` (see `foedus.client_sdk.drift`), and whether the dataset
        drifted. `version=0` is the version with the largest traffic weight. The same computation
        on two in-memory datasets is `foedus.client_sdk.drift.compare_datasets`.
        """
        req = monitoring_pb2.GetDriftReportRequest(
            deployment=deployment,
            version=version,
            window_s=window_s,
            end_unix_ms=end_unix_ms,
            method=method,
            thresholds=thresholds_message(thresholds or DriftThresholds()),
        )
        return self._rpc(self._stub.GetDriftReport, req)

    def log_metrics(
        self,
        deployment: str,
        metrics: Mapping[str, float],
        *,
        step: int = 0,
        time_unix_ms: int | None = None,
        batch_id: str | None = None,
    ) -> int:
        """Logs one point of each metric (like MLflow's log_metric) at `time_unix_ms` (default now).

        Returns the number of points stored: 0 when `batch_id` names a batch stored before, so
        retrying a call with the same `batch_id` never counts its points twice.
        """
        at = _now_ms() if time_unix_ms is None else time_unix_ms
        return self.log_batch(
            deployment, [(name, value, at, step) for name, value in metrics.items()], batch_id=batch_id
        )

    def log_batch(
        self,
        deployment: str,
        points: Sequence[MetricTuple],
        *,
        batch_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Logs (name, value, time_ms, step) points in one batch and waits for the server's commit.

        A time of None means now. The batch carries `batch_id` (a fresh uuid by default), which the
        server stores once: pass the same id to retry safely. Returns the number of points stored
        (0 for a batch stored before, and for no points).
        """
        if not points:
            return 0
        now = _now_ms()
        batch = agent_pb2.TelemetryBatch(
            batch_id=batch_id or uuid.uuid4().hex,
            deployment=deployment,
            agent=SDK_AGENT,
            metrics=[
                agent_pb2.MetricPoint(
                    name=name, value=float(value), time_unix_ms=now if at is None else int(at), step=int(step)
                )
                for name, value, at, step in points
            ],
        )
        acked: bool | None = None
        try:
            responses = self._agent.ReportTelemetry(
                iter([agent_pb2.ReportTelemetryRequest(batch=batch)]),
                metadata=self._rpc.metadata,
                timeout=timeout or self._rpc.timeout,
            )
            # One batch in, then the request side closes: the server acknowledges it and ends the stream.
            for ack in responses:
                if ack.batch_id == batch.batch_id:
                    acked = not ack.duplicate
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        if acked is None:
            raise Unavailable(
                f"the server closed the telemetry stream without acknowledging batch {batch.batch_id}"
            )
        return len(batch.metrics) if acked else 0

    def log_labels(
        self, deployment: str, request_ids: Sequence[str], labels: Sequence[Any]
    ) -> performance_pb2.LogLabelsResponse:
        """Logs the true labels of answered requests, by inference request id (OIP `id`; a request of
        N > 1 rows is `<id>/0` ... `<id>/<N-1>`).

        Labels are classes (any value; numbers that are integers compare equal whatever their type)
        or, for a regression, true values. The agent that served a request joins its label with the
        prediction it kept on its own disk and reports counts only. The call is checked whole:
        lengths must match, ids and labels must be non-empty, numbers finite, at most 10000 labels
        per call; otherwise InvalidArgument and nothing is stored. Each label counts as one point
        against the tenant's ingest limit: over it, ResourceExhausted (`retry_after_s` says when to
        send the call again) and nothing is stored. Returns how many were stored and their
        sequence numbers.
        """
        req = performance_pb2.LogLabelsRequest(
            deployment=deployment,
            request_ids=[str(r) for r in request_ids],
            labels=[_label_text(v) for v in labels],
        )
        return self._rpc(self._performance.LogLabels, req)

    def performance(
        self,
        deployment: str,
        *,
        version: int = 0,
        window_s: int = 0,
        start_unix_ms: int = 0,
        end_unix_ms: int = 0,
        positive_class: str = "",
    ) -> performance_pb2.GetPerformanceResponse:
        """Model performance per version and window of prediction times, from the joined labels.

        Classifiers: accuracy, macro precision/recall/F1 with per-class values, ROC-AUC (binary, or
        one-vs-rest macro), the label coverage, a CBPE estimate of the unlabelled predictions
        (`estimate`, an estimate from the predicted probabilities), and fairness across the segments of
        the version's sensitive feature (tag `sensitive_feature`). Regressors: MAE, RMSE, bias.
        `window_s=0` is one window over the range; the range defaults to the last 7 days.
        """
        req = performance_pb2.GetPerformanceRequest(
            deployment=deployment,
            version=version,
            window_s=window_s,
            start_unix_ms=start_unix_ms,
            end_unix_ms=end_unix_ms,
            positive_class=positive_class,
        )
        return self._rpc(self._performance.GetPerformance, req)


def _label_text(value: Any) -> str:
    """A label as the API carries it: integers as integers, other numbers in full precision."""
    if isinstance(value, bool | np.bool_):
        return str(int(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return value.decode() if isinstance(value, bytes) else str(value)


class TenantsAPI:
    """Platform administration of tenants (admin key)."""

    def __init__(self, rpc: _Rpc) -> None:
        self._rpc = rpc
        self._stub = admin_pb2_grpc.AdminServiceStub(rpc.channel)

    def create(
        self, name: str, *, display_name: str = "", owner_key: bool = True
    ) -> admin_pb2.CreateTenantResponse:
        """Creates a tenant; with `owner_key`, the response carries its first owner key's secret."""
        req = admin_pb2.CreateTenantRequest(name=name, display_name=display_name, create_owner_key=owner_key)
        return self._rpc(self._stub.CreateTenant, req)

    def get(self, name: str = "") -> admin_pb2.Tenant:
        return self._rpc(self._stub.GetTenant, admin_pb2.GetTenantRequest(name=name)).tenant

    def list(self, *, limit: int | None = None) -> list[admin_pb2.Tenant]:
        def fetch(token: str) -> tuple[Sequence[admin_pb2.Tenant], str]:
            resp = self._rpc(
                self._stub.ListTenants,
                admin_pb2.ListTenantsRequest(page=common_pb2.PageRequest(page_token=token)),
            )
            return resp.tenants, resp.next_page_token

        return _pages(fetch, limit)

    def disable(self, name: str) -> admin_pb2.Tenant:
        return self._rpc(self._stub.DisableTenant, admin_pb2.DisableTenantRequest(name=name)).tenant

    def enable(self, name: str) -> admin_pb2.Tenant:
        return self._rpc(self._stub.EnableTenant, admin_pb2.EnableTenantRequest(name=name)).tenant


class KeysAPI:
    """API keys: owners manage their tenant's, the admin any tenant's (pass `tenant`)."""

    def __init__(self, rpc: _Rpc) -> None:
        self._rpc = rpc
        self._stub = admin_pb2_grpc.KeyServiceStub(rpc.channel)

    def create(self, role: str, *, description: str = "", tenant: str = "") -> admin_pb2.CreateKeyResponse:
        """Creates a key with role owner | editor | viewer | agent in a tenant, or, by the platform
        admin without a tenant, a platform admin key (role admin); `.secret` is shown only here."""
        if role not in ROLES:
            raise InvalidArgument(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        req = admin_pb2.CreateKeyRequest(tenant=tenant, role=ROLES[role], description=description)
        return self._rpc(self._stub.CreateKey, req)

    def list(self, *, tenant: str = "", include_revoked: bool = False) -> builtins.list[admin_pb2.ApiKey]:
        def fetch(token: str) -> tuple[Sequence[admin_pb2.ApiKey], str]:
            req = admin_pb2.ListKeysRequest(
                tenant=tenant, include_revoked=include_revoked, page=common_pb2.PageRequest(page_token=token)
            )
            resp = self._rpc(self._stub.ListKeys, req)
            return resp.keys, resp.next_page_token

        return _pages(fetch, None)

    def revoke(self, key_id: str, *, tenant: str = "") -> admin_pb2.ApiKey:
        return self._rpc(self._stub.RevokeKey, admin_pb2.RevokeKeyRequest(tenant=tenant, key_id=key_id)).key


class Client:
    """A connection to a Foedus control plane. Use `Client.connect(...)`; close it or use `with`."""

    def __init__(
        self, channel: grpc.Channel, api_key: str, *, timeout: float | None, chunk_size: int
    ) -> None:
        self._channel = channel
        self._rpc = _Rpc(channel, api_key, timeout)
        self._admin = admin_pb2_grpc.AdminServiceStub(channel)
        self.models = ModelsAPI(self._rpc, chunk_size)
        self.tenants = TenantsAPI(self._rpc)
        self.keys = KeysAPI(self._rpc)
        self.deployments = DeploymentsAPI(self._rpc)
        self.monitoring = MonitoringAPI(self._rpc)
        self.rollouts = RolloutsAPI(self._rpc)
        self.federation = FederationAPI(self._rpc)

    @classmethod
    def connect(
        cls,
        target: str,
        *,
        api_key: str,
        tls: TlsConfig | bool | None = None,
        timeout: float | None = 30.0,
        chunk_size: int = CHUNK_SIZE,
        options: Sequence[tuple[str, Any]] = (),
    ) -> Client:
        """Connects to `target` with an API key: HOST:PORT, a gRPC URI (dns:///name:port), or
        several replicas as `HOST:PORT,HOST:PORT`: calls are spread over them and fail over to the
        others when one goes away, reads are retried there (see `foedus.client_sdk.targets`).

        `tls=True` uses the system's CA roots, a TlsConfig a given CA and/or a client certificate;
        None or False is plaintext (for loopback and trusted networks). `timeout` applies to each
        unary call; uploads and downloads have their own, longer default.
        """
        # A key read from a file or pasted may carry a line end; gRPC refuses such metadata.
        api_key = (api_key or "").strip()
        if not api_key:
            raise InvalidArgument("api_key is required (FOEDUS_API_KEY for the CLI)")
        if not (api_key.isascii() and api_key.isprintable()):
            raise Unauthenticated("malformed API key: it holds characters no Foedus key has")
        target, failover = resolve_target(target)
        opts = [
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.max_send_message_length", 8 * 1024 * 1024),
            *failover,
            *options,
        ]
        if tls:
            config = tls if isinstance(tls, TlsConfig) else TlsConfig()
            if config.server_name:
                opts.append(("grpc.ssl_target_name_override", config.server_name))
            channel = grpc.secure_channel(target, config.channel_credentials(), options=opts)
        else:
            channel = grpc.insecure_channel(target, options=opts)
        return cls(_traced(channel), api_key, timeout=timeout, chunk_size=chunk_size)

    def whoami(self) -> admin_pb2.WhoAmIResponse:
        return self._rpc(self._admin.WhoAmI, admin_pb2.WhoAmIRequest())

    def audit(self, *, tenant: str = "", limit: int | None = 100) -> list[admin_pb2.AuditEntry]:
        """Audit entries, newest first: of the caller's tenant (owner) or of `tenant` (admin)."""

        def fetch(token: str) -> tuple[Sequence[admin_pb2.AuditEntry], str]:
            req = admin_pb2.ListAuditEntriesRequest(
                tenant=tenant, page=common_pb2.PageRequest(page_token=token)
            )
            resp = self._rpc(self._admin.ListAuditEntries, req)
            return resp.entries, resp.next_page_token

        return _pages(fetch, limit)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "Client",
    "DeploymentsAPI",
    "FederationAPI",
    "FoedusError",
    "KeysAPI",
    "MetricTuple",
    "ModelsAPI",
    "MonitoringAPI",
    "RolloutsAPI",
    "TenantsAPI",
    "TlsConfig",
]
