"""Logged metrics as column chunks (one row per series per batch) instead of one row per point.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.drop_table("metric_points")
    op.create_table(
        "metric_chunks",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("deployment_id", sa.BigInteger, sa.ForeignKey("deployments.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("start_ms", sa.BigInteger, nullable=False),
        sa.Column("end_ms", sa.BigInteger, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("times_ms", sa.LargeBinary, nullable=False),
        sa.Column("values", sa.LargeBinary, nullable=False),
        sa.Column("steps", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_metric_chunks_series", "metric_chunks", ["deployment_id", "name", "start_ms"])


def downgrade() -> None:
    op.drop_table("metric_chunks")
    op.create_table(
        "metric_points",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("deployment_id", sa.BigInteger, sa.ForeignKey("deployments.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("time_ms", sa.BigInteger, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
    )
