"""Tables of the SQL store (SQLAlchemy Core). Migrations under migrations/ create and evolve them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

tenants = Table(
    "tenants",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("state", SmallInteger, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(64), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("tenant", String(63), ForeignKey("tenants.name"), nullable=True),
    Column("role", SmallInteger, nullable=False),
    Column("description", String(500), nullable=False),
    Column("secret_hash", LargeBinary(32), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("revoked_at_us", BigInteger, nullable=True),
    Index("ix_api_keys_tenant", "tenant", "key_id"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("time_us", BigInteger, nullable=False),
    Column("tenant", String(63), nullable=True),
    Column("key_id", String(32), nullable=False),
    Column("role", SmallInteger, nullable=True),
    Column("method", String(200), nullable=False),
    Column("resource", String(500), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Index("ix_audit_tenant_id", "tenant", "id"),
)

models = Table(
    "models",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant", String(63), ForeignKey("tenants.name"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("description", Text, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("latest_version", BigInteger, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    UniqueConstraint("tenant", "name", name="uq_models_tenant_name"),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("model_id", BigInteger, ForeignKey("models.id"), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("state", SmallInteger, nullable=False),
    Column("description", Text, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("artifact_sha256", String(64), nullable=False),
    Column("artifact_size", BigInteger, nullable=False),
    Column("framework", String(32), nullable=False),
    Column("onnx_opset", Integer, nullable=False),
    Column("signature", JSON, nullable=False),
    Column("latency", JSON, nullable=True),
    Column("lineage", JSON, nullable=False),
    Column("reference_profile", JSON, nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),
    Index("ix_model_versions_sha256", "artifact_sha256"),
)

model_aliases = Table(
    "model_aliases",
    metadata,
    Column("model_id", BigInteger, ForeignKey("models.id"), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Index("ix_model_aliases_version", "model_id", "version"),
)

deployments = Table(
    "deployments",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant", String(63), ForeignKey("tenants.name"), nullable=False),
    Column("name", String(63), nullable=False),
    Column("model", String(128), nullable=False),
    Column("description", Text, nullable=False),
    Column("traffic", JSON, nullable=False),
    Column("shadow_version", BigInteger, nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    UniqueConstraint("tenant", "name", name="uq_deployments_tenant_name"),
)

agents = Table(
    "agents",
    metadata,
    Column("deployment_id", BigInteger, ForeignKey("deployments.id"), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("info", JSON, nullable=False),
    Column("registered_at_us", BigInteger, nullable=False),
    Column("last_seen_us", BigInteger, nullable=False),
)

telemetry_batches = Table(
    "telemetry_batches",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("batch_id", String(128), primary_key=True),
    Column("received_at_us", BigInteger, nullable=False),
)

intervals = Table(
    "intervals",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("deployment_id", BigInteger, ForeignKey("deployments.id"), nullable=False),
    Column("agent", String(128), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("start_ms", BigInteger, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("shadow", SmallInteger, nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("invalid", BigInteger, nullable=False),
    Column("latency", JSON, nullable=False),
    Column("predictions", JSON, nullable=True),
    Column("features", JSON, nullable=False),
    Column("resources", JSON, nullable=False),
    Column("scores", JSON, nullable=False),
    Index("ix_intervals_deployment_start", "deployment_id", "start_ms"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("deployment_id", BigInteger, ForeignKey("deployments.id"), nullable=False),
    Column("agent", String(128), nullable=False),
    Column("alert_id", String(128), nullable=False),
    Column("time_ms", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("detector", String(128), nullable=False),
    Column("top", JSON, nullable=False),
    # NULL until the alert is grouped into an incident.
    Column("incident_id", BigInteger, nullable=True),
    UniqueConstraint("deployment_id", "agent", "alert_id", name="uq_alerts_agent_alert"),
    Index("ix_alerts_deployment_id", "deployment_id", "id"),
    Index("ix_alerts_incident", "incident_id", "id"),
)

incidents = Table(
    "incidents",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant", String(63), ForeignKey("tenants.name"), nullable=False),
    Column("deployment_id", BigInteger, ForeignKey("deployments.id"), nullable=False),
    Column("state", SmallInteger, nullable=False),
    Column("first_ms", BigInteger, nullable=False),
    Column("last_ms", BigInteger, nullable=False),
    Column("alert_count", BigInteger, nullable=False),
    Column("max_ratio", Float, nullable=False),
    Column("versions", JSON, nullable=False),
    Column("kinds", JSON, nullable=False),
    Column("attributions", JSON, nullable=False),
    Column("opened_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Column("last_alert_at_us", BigInteger, nullable=False),
    Column("state_changed_at_us", BigInteger, nullable=False),
    Column("acknowledged_by", String(64), nullable=False),
    Column("resolved_by", String(64), nullable=False),
    Index("ix_incidents_tenant_id", "tenant", "id"),
    Index("ix_incidents_deployment_state", "deployment_id", "state"),
)

incident_events = Table(
    "incident_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant", String(63), nullable=False),
    Column("deployment_id", BigInteger, ForeignKey("deployments.id"), nullable=False),
    Column("incident_id", BigInteger, ForeignKey("incidents.id"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Index("ix_incident_events_tenant_id", "tenant", "id"),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant", String(63), ForeignKey("tenants.name"), nullable=False),
    Column("url", String(2048), nullable=False),
    # Kept as given: the server signs deliveries with it. Never returned by the API.
    Column("secret", String(256), nullable=False),
    Column("description", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(64), nullable=False),
    UniqueConstraint("tenant", "url", name="uq_webhooks_tenant_url"),
)

metric_chunks = Table(
    "metric_chunks",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("deployment_id", BigInteger, ForeignKey("deployments.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("start_ms", BigInteger, nullable=False),
    Column("end_ms", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    Column("times_ms", LargeBinary, nullable=False),
    Column("values", LargeBinary, nullable=False),
    Column("steps", LargeBinary, nullable=False),
    Index("ix_metric_chunks_series", "deployment_id", "name", "start_ms"),
)


rollouts = Table(
    "rollouts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant", String(63), ForeignKey("tenants.name"), nullable=False),
    Column("deployment_id", BigInteger, ForeignKey("deployments.id"), nullable=False),
    # The deployment's id while the rollout is active, NULL once it is finished: at most one active
    # rollout per deployment (NULLs never collide in a unique constraint).
    Column("active_deployment_id", BigInteger, nullable=True, unique=True),
    Column("model", String(128), nullable=False),
    Column("stable_version", BigInteger, nullable=False),
    Column("candidate_version", BigInteger, nullable=False),
    Column("strategy", SmallInteger, nullable=False),
    Column("phase", SmallInteger, nullable=False),
    Column("step", Integer, nullable=False),
    Column("candidate_weight", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("state", JSON, nullable=False),
    Column("analysis", JSON, nullable=False),
    Column("winner_version", BigInteger, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("scheduled_for_us", BigInteger, nullable=False),
    Column("started_at_us", BigInteger, nullable=False),
    Column("finished_at_us", BigInteger, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Index("ix_rollouts_tenant_id", "tenant", "id"),
    Index("ix_rollouts_deployment_id", "deployment_id", "id"),
)

rollout_events = Table(
    "rollout_events",
    metadata,
    Column("rollout_id", BigInteger, ForeignKey("rollouts.id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("time_us", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("message", Text, nullable=False),
    Column("step", Integer, nullable=False),
    Column("weight", Float, nullable=False),
    Column("evidence", JSON, nullable=False),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("until_us", BigInteger, nullable=False),
)

# The running server processes (replicas and workers): each renews its row every few seconds, and
# per-tenant rate limits are divided among the processes renewed lately.
server_members = Table(
    "server_members",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("started_us", BigInteger, nullable=False),
    Column("renewed_us", BigInteger, nullable=False),
)

# Artifacts kept in the database itself (`--artifact-store database`): replicas on one PostgreSQL
# then need no shared volume. A blob is its chunks in order; the blob row is written last, in the
# same transaction, so a blob that exists is complete.
artifact_blobs = Table(
    "artifact_blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("chunks", Integer, nullable=False),
    Column("stored_at_us", BigInteger, nullable=False),
)

artifact_chunks = Table(
    "artifact_chunks",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)


node_keys = Table(
    "node_keys",
    metadata,
    Column("fingerprint", String(64), primary_key=True),
    Column("tenant", String(63), ForeignKey("tenants.name"), nullable=False),
    Column("public_key", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("revoked_at_us", BigInteger, nullable=True),
    Index("ix_node_keys_tenant", "tenant"),
)

federation_runs = Table(
    "federation_runs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("model_kind", String(32), nullable=False),
    Column("strategy", String(32), nullable=False),
    Column("rounds", Integer, nullable=False),
    Column("privacy", JSON, nullable=False),
    Column("state", SmallInteger, nullable=False),
    Column("history", JSON, nullable=False),
    Column("result_model", String(128), nullable=False),
    Column("result_version", BigInteger, nullable=False),
    Column("message", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Column("finished_at_us", BigInteger, nullable=False),
)

federation_run_tenants = Table(
    "federation_run_tenants",
    metadata,
    Column("run_id", BigInteger, ForeignKey("federation_runs.id"), primary_key=True),
    Column("tenant", String(63), ForeignKey("tenants.name"), primary_key=True),
    Index("ix_federation_run_tenants_tenant", "tenant", "run_id"),
)

opt_ins = Table(
    "federation_opt_ins",
    metadata,
    Column("tenant", String(63), ForeignKey("tenants.name"), primary_key=True),
    Column("model_kind", String(32), primary_key=True),
    Column("deployment", String(63), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(64), nullable=False),
)

# Delayed labels of a deployment's requests; `id` is the sequence agents pull them by, never reused
# once the retention sweep deleted the newest labels (AUTOINCREMENT on SQLite).
labels = Table(
    "labels",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("deployment_id", BigInteger, ForeignKey("deployments.id"), nullable=False),
    Column("request_id", String(256), nullable=False),
    Column("label", String(256), nullable=False),
    Column("logged_at_us", BigInteger, nullable=False),
    Index("ix_labels_deployment", "deployment_id", "id"),
    Index("ix_labels_logged_at", "logged_at_us"),
    sqlite_autoincrement=True,
)

# Agents' additive performance counts per version, minute of prediction time and segment.
performance_counts = Table(
    "performance_counts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("deployment_id", BigInteger, ForeignKey("deployments.id"), nullable=False),
    Column("agent", String(128), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("window_start_ms", BigInteger, nullable=False),
    Column("segment", String(256), nullable=False),
    Column("sensitive_feature", String(128), nullable=False),
    Column("counts", JSON, nullable=False),
    Index("ix_performance_counts_window", "deployment_id", "window_start_ms"),
)
