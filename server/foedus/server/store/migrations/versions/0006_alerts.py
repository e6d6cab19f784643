"""Alerts: incidents (grouped alerts) and their events, the incident of each alert, webhooks.

Revision ID: 0006_alerts
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_alerts"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(63), sa.ForeignKey("tenants.name"), nullable=False),
        sa.Column("deployment_id", sa.BigInteger, sa.ForeignKey("deployments.id"), nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("first_ms", sa.BigInteger, nullable=False),
        sa.Column("last_ms", sa.BigInteger, nullable=False),
        sa.Column("alert_count", sa.BigInteger, nullable=False),
        sa.Column("max_ratio", sa.Float, nullable=False),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("kinds", sa.JSON, nullable=False),
        sa.Column("attributions", sa.JSON, nullable=False),
        sa.Column("opened_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.Column("last_alert_at_us", sa.BigInteger, nullable=False),
        sa.Column("state_changed_at_us", sa.BigInteger, nullable=False),
        sa.Column("acknowledged_by", sa.String(64), nullable=False),
        sa.Column("resolved_by", sa.String(64), nullable=False),
    )
    op.create_index("ix_incidents_tenant_id", "incidents", ["tenant", "id"])
    op.create_index("ix_incidents_deployment_state", "incidents", ["deployment_id", "state"])
    op.create_table(
        "incident_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("deployment_id", sa.BigInteger, sa.ForeignKey("deployments.id"), nullable=False),
        sa.Column("incident_id", sa.BigInteger, sa.ForeignKey("incidents.id"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_incident_events_tenant_id", "incident_events", ["tenant", "id"])
    op.create_table(
        "webhooks",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(63), sa.ForeignKey("tenants.name"), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(256), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.UniqueConstraint("tenant", "url", name="uq_webhooks_tenant_url"),
    )
    # Alerts stored before this revision are grouped by the server's first sweep.
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("incident_id", sa.BigInteger, nullable=True))
    op.create_index("ix_alerts_incident", "alerts", ["incident_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_alerts_incident", "alerts")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("incident_id")
    op.drop_table("webhooks")
    op.drop_index("ix_incident_events_tenant_id", "incident_events")
    op.drop_table("incident_events")
    op.drop_index("ix_incidents_deployment_state", "incidents")
    op.drop_index("ix_incidents_tenant_id", "incidents")
    op.drop_table("incidents")
