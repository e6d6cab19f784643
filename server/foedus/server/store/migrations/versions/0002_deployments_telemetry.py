"""Deployments, agents and telemetry: intervals, alerts, logged metric points, batch ids.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(63), sa.ForeignKey("tenants.name"), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("traffic", sa.JSON, nullable=False),
        sa.Column("shadow_version", sa.BigInteger, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_deployments_tenant_name"),
    )
    op.create_table(
        "agents",
        sa.Column("deployment_id", sa.BigInteger, sa.ForeignKey("deployments.id"), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("info", sa.JSON, nullable=False),
        sa.Column("registered_at_us", sa.BigInteger, nullable=False),
        sa.Column("last_seen_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "telemetry_batches",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("received_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "intervals",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("deployment_id", sa.BigInteger, sa.ForeignKey("deployments.id"), nullable=False),
        sa.Column("agent", sa.String(128), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("start_ms", sa.BigInteger, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("shadow", sa.SmallInteger, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("invalid", sa.BigInteger, nullable=False),
        sa.Column("latency", sa.JSON, nullable=False),
        sa.Column("predictions", sa.JSON, nullable=True),
        sa.Column("features", sa.JSON, nullable=False),
        sa.Column("resources", sa.JSON, nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
    )
    op.create_index("ix_intervals_deployment_start", "intervals", ["deployment_id", "start_ms"])
    op.create_table(
        "alerts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("deployment_id", sa.BigInteger, sa.ForeignKey("deployments.id"), nullable=False),
        sa.Column("agent", sa.String(128), nullable=False),
        sa.Column("alert_id", sa.String(128), nullable=False),
        sa.Column("time_ms", sa.BigInteger, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("detector", sa.String(128), nullable=False),
        sa.Column("top", sa.JSON, nullable=False),
        sa.UniqueConstraint("deployment_id", "agent", "alert_id", name="uq_alerts_agent_alert"),
    )
    op.create_index("ix_alerts_deployment_id", "alerts", ["deployment_id", "id"])
    op.create_table(
        "metric_points",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("deployment_id", sa.BigInteger, sa.ForeignKey("deployments.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("time_ms", sa.BigInteger, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_index("ix_metric_points_series", "metric_points", ["deployment_id", "name", "time_ms"])


def downgrade() -> None:
    for table in ("metric_points", "alerts", "intervals", "telemetry_batches", "agents", "deployments"):
        op.drop_table(table)
