"""Rollouts, their events, and leases (one controller drives rollouts at a time).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(63), sa.ForeignKey("tenants.name"), nullable=False),
        sa.Column("deployment_id", sa.BigInteger, sa.ForeignKey("deployments.id"), nullable=False),
        sa.Column("active_deployment_id", sa.BigInteger, nullable=True, unique=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("stable_version", sa.BigInteger, nullable=False),
        sa.Column("candidate_version", sa.BigInteger, nullable=False),
        sa.Column("strategy", sa.SmallInteger, nullable=False),
        sa.Column("phase", sa.SmallInteger, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("candidate_weight", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("analysis", sa.JSON, nullable=False),
        sa.Column("winner_version", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("scheduled_for_us", sa.BigInteger, nullable=False),
        sa.Column("started_at_us", sa.BigInteger, nullable=False),
        sa.Column("finished_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_rollouts_tenant_id", "rollouts", ["tenant", "id"])
    op.create_index("ix_rollouts_deployment_id", "rollouts", ["deployment_id", "id"])
    op.create_table(
        "rollout_events",
        sa.Column("rollout_id", sa.BigInteger, sa.ForeignKey("rollouts.id"), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("until_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("rollout_events")
    op.drop_index("ix_rollouts_deployment_id", "rollouts")
    op.drop_index("ix_rollouts_tenant_id", "rollouts")
    op.drop_table("rollouts")
