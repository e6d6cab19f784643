"""Typed records that the store returns and the services pass around."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class Role(enum.IntEnum):
    """Principal roles; values match foedus.v1.Role."""

    VIEWER = 1
    EDITOR = 2
    OWNER = 3
    AGENT = 4
    ADMIN = 5


class TenantState(enum.IntEnum):
    ACTIVE = 1
    DISABLED = 2


class VersionState(enum.IntEnum):
    READY = 1
    ARCHIVED = 2


@dataclass(frozen=True, slots=True)
class TenantRecord:
    name: str
    display_name: str
    state: TenantState
    created_at_us: int
    created_by: str


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str | None
    role: Role
    description: str
    secret_hash: bytes
    created_at_us: int
    created_by: str
    revoked_at_us: int | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    time_us: int
    tenant: str | None
    key_id: str
    role: Role | None
    method: str
    resource: str
    outcome: str
    detail: str = ""
    id: int = 0


@dataclass(frozen=True, slots=True)
class FeatureProfile:
    """Reference distribution of one feature: numeric bins or categorical counts."""

    name: str
    kind: str  # "numeric" | "categorical"
    edges: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    underflow: int = 0
    overflow: int = 0
    categories: tuple[str, ...] = ()
    other: int = 0
    missing: int = 0


@dataclass(frozen=True, slots=True)
class ReferenceProfile:
    row_count: int
    features: tuple[FeatureProfile, ...]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    p50_ms: float
    p99_ms: float
    runs: int
    batch_size: int
    execution_provider: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Offline quality of a version on a named evaluation dataset (recorded by the SDK)."""

    dataset: str
    metrics: dict[str, float]
    rows: int = 0
    baseline_version: int = 0
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    dataset_fingerprint: str = ""
    time_us: int = 0
    recorded_by: str = ""


@dataclass(frozen=True, slots=True)
class Lineage:
    data_fingerprint: str = ""
    code_revision: str = ""
    parent_version: int = 0
    properties: dict[str, str] = field(default_factory=dict)
    code_revision_time_us: int = 0
    """When the code revision was made; 0 when unknown."""
    evaluations: tuple[Evaluation, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelRecord:
    tenant: str
    name: str
    description: str
    tags: dict[str, str]
    latest_version: int
    aliases: dict[str, int]
    created_at_us: int
    created_by: str
    updated_at_us: int


@dataclass(frozen=True, slots=True)
class NewVersion:
    """What registration hands the store once the artifact is stored and has passed the gates."""

    description: str
    tags: dict[str, str]
    artifact_sha256: str
    artifact_size: int
    framework: str
    onnx_opset: int
    signature: Signature
    latency: LatencyProfile | None
    lineage: Lineage
    reference_profile: ReferenceProfile | None
    created_by: str


@dataclass(frozen=True, slots=True)
class VersionRecord:
    tenant: str
    model: str
    version: int
    state: VersionState
    description: str
    tags: dict[str, str]
    aliases: tuple[str, ...]
    artifact_sha256: str
    artifact_size: int
    framework: str
    onnx_opset: int
    signature: Signature
    latency: LatencyProfile | None
    lineage: Lineage
    reference_profile: ReferenceProfile | None
    created_at_us: int
    created_by: str
    updated_at_us: int


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list call; `next_token` is empty on the last page."""

    items: list[T]
    next_token: str = ""


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    tenant: str
    name: str
    model: str
    description: str
    traffic: tuple[tuple[int, float], ...]
    """(version, weight) pairs."""
    shadow_version: int
    generation: int
    created_at_us: int
    created_by: str
    updated_at_us: int


@dataclass(frozen=True, slots=True)
class AgentRecord:
    tenant: str
    deployment: str
    name: str
    info: dict[str, object]
    """The agent's self-description (host, cores, memory, execution providers, GPUs)."""
    registered_at_us: int
    last_seen_us: int


@dataclass(frozen=True, slots=True)
class IntervalRecord:
    """What one agent measured for one version over one interval."""

    agent: str
    version: int
    start_ms: int
    duration_ms: int
    shadow: bool
    requests: int
    errors: int
    invalid: int
    latency: dict[str, object]
    """Sparse log-scale histogram: {"buckets": [...], "counts": [...], "sum": float}."""
    predictions: dict[str, object] | None
    features: list[dict[str, object]]
    resources: dict[str, float]
    scores: dict[str, float]


@dataclass(frozen=True, slots=True)
class AlertRecord:
    agent: str
    alert_id: str
    time_ms: int
    version: int
    kind: str
    score: float
    threshold: float
    detector: str
    top: list[dict[str, object]]
    deployment: str = ""
    id: int = 0
    incident_id: int = 0


@dataclass(frozen=True, slots=True)
class MetricSeriesRecord:
    """Points of one logged series, as columns (little-endian int64 times and steps, float64 values)."""

    name: str
    times_ms: bytes
    values: bytes
    steps: bytes
    count: int
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class MetricPointRecord:
    name: str
    value: float
    time_ms: int
    step: int


class RolloutPhase(enum.IntEnum):
    """Values match foedus.v1.RolloutPhase."""

    SCHEDULED = 1
    PROGRESSING = 2
    PAUSED = 3
    SUCCEEDED = 4
    ROLLED_BACK = 5
    ABORTED = 6

    @property
    def active(self) -> bool:
        return self in (RolloutPhase.SCHEDULED, RolloutPhase.PROGRESSING, RolloutPhase.PAUSED)


class Strategy(enum.IntEnum):
    """Values match foedus.v1.RolloutStrategy."""

    CANARY = 1
    BLUE_GREEN = 2
    AB_TEST = 3
    SHADOW = 4


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """A rollout and the controller's state of it. `revision` grows with every stored change."""

    id: int
    tenant: str
    deployment: str
    model: str
    stable_version: int
    candidate_version: int
    strategy: Strategy
    phase: RolloutPhase
    step: int
    candidate_weight: float
    reason: str
    spec: dict[str, object]
    """The normalised spec (foedus.server.rollouts.spec.RolloutSpec as JSON)."""
    state: dict[str, object]
    """The controller's working state: analysis, telemetry cursor, step start, trend points."""
    analysis: dict[str, float]
    winner_version: int
    revision: int
    scheduled_for_us: int
    started_at_us: int
    finished_at_us: int
    created_at_us: int
    created_by: str
    updated_at_us: int


@dataclass(frozen=True, slots=True)
class RolloutEventRecord:
    seq: int
    time_us: int
    kind: str
    message: str
    step: int
    weight: float
    evidence: dict[str, float]


@dataclass(frozen=True, slots=True)
class TrafficChange:
    """A deployment's new traffic split, written in the same transaction as a rollout's change."""

    traffic: tuple[tuple[int, float], ...]
    shadow_version: int


@dataclass(frozen=True, slots=True)
class NumberedInterval:
    """An interval with its store id (ids grow in commit order per backend sequence)."""

    id: int
    interval: IntervalRecord


class FederationRunState(enum.IntEnum):
    """Values match foedus.v1.FederationRunState."""

    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3


@dataclass(frozen=True, slots=True)
class NodeKeyRecord:
    fingerprint: str
    tenant: str
    public_key: str
    description: str
    created_at_us: int
    created_by: str
    revoked_at_us: int | None = None


@dataclass(frozen=True, slots=True)
class FederationRunRecord:
    id: int
    model_kind: str
    strategy: str
    rounds: int
    privacy: dict[str, object]
    state: FederationRunState
    tenants: tuple[str, ...]
    history: tuple[dict[str, object], ...]
    result_model: str
    result_version: int
    message: str
    created_at_us: int
    created_by: str
    updated_at_us: int
    finished_at_us: int


@dataclass(frozen=True, slots=True)
class OptInRecord:
    tenant: str
    model_kind: str
    deployment: str
    created_at_us: int
    created_by: str


@dataclass(frozen=True, slots=True)
class LabelRecord:
    sequence: int
    request_id: str
    label: str
    logged_at_us: int


@dataclass(frozen=True, slots=True)
class PerformanceRecord:
    """Additive counts of one agent, version, minute of prediction time and segment."""

    agent: str
    version: int
    window_start_ms: int
    segment: str
    sensitive_feature: str
    counts: dict[str, object]


class IncidentState(enum.IntEnum):
    """Values match foedus.v1.IncidentState."""

    FIRING = 1
    ACKNOWLEDGED = 2
    RESOLVED = 3


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """Alerts of one deployment grouped while they keep coming (see Store.group_alerts)."""

    id: int
    tenant: str
    deployment: str
    state: IncidentState
    first_ms: int
    """Time of the first alert, by the agent's clock; `last_ms` of the last one."""
    last_ms: int
    alert_count: int
    max_ratio: float
    """Largest score / threshold of its alerts (the score itself where the threshold is not positive)."""
    versions: tuple[int, ...]
    kinds: tuple[str, ...]
    attributions: dict[str, float]
    """Per metric, the absolute SHAP attributions of its alerts, summed."""
    opened_at_us: int
    updated_at_us: int
    last_alert_at_us: int
    """When the server grouped its last alert; auto-resolution counts quiet time from it."""
    state_changed_at_us: int
    acknowledged_by: str = ""
    resolved_by: str = ""


@dataclass(frozen=True, slots=True)
class IncidentEventRecord:
    """A change of an incident: opened, updated (alerts joined), acknowledged or resolved."""

    id: int
    tenant: str
    deployment: str
    incident_id: int
    kind: str
    time_us: int


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    id: int
    tenant: str
    url: str
    secret: str
    description: str
    created_at_us: int
    created_by: str
