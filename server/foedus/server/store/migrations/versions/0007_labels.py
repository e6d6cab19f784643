"""Delayed labels and the agents' performance counts.

Revision ID: 0007_labels
Revises: 0006_alerts
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_labels"
down_revision = "0006_alerts"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "labels",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("deployment_id", sa.BigInteger, sa.ForeignKey("deployments.id"), nullable=False),
        sa.Column("request_id", sa.String(256), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("logged_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_labels_deployment", "labels", ["deployment_id", "id"])
    op.create_table(
        "performance_counts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("deployment_id", sa.BigInteger, sa.ForeignKey("deployments.id"), nullable=False),
        sa.Column("agent", sa.String(128), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("window_start_ms", sa.BigInteger, nullable=False),
        sa.Column("segment", sa.String(256), nullable=False),
        sa.Column("sensitive_feature", sa.String(128), nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
    )
    op.create_index(
        "ix_performance_counts_window", "performance_counts", ["deployment_id", "window_start_ms"]
    )


def downgrade() -> None:
    op.drop_index("ix_performance_counts_window", "performance_counts")
    op.drop_table("performance_counts")
    op.drop_index("ix_labels_deployment", "labels")
    op.drop_table("labels")
