"""Federation: SuperNode keys, runs and their tenants, opt-ins of tenants' deployments.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "node_keys",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(63), sa.ForeignKey("tenants.name"), nullable=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_node_keys_tenant", "node_keys", ["tenant"])
    op.create_table(
        "federation_runs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_kind", sa.String(32), nullable=False),
        sa.Column("strategy", sa.String(32), nullable=False),
        sa.Column("rounds", sa.Integer, nullable=False),
        sa.Column("privacy", sa.JSON, nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("result_model", sa.String(128), nullable=False),
        sa.Column("result_version", sa.BigInteger, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.Column("finished_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "federation_run_tenants",
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("federation_runs.id"), primary_key=True),
        sa.Column("tenant", sa.String(63), sa.ForeignKey("tenants.name"), primary_key=True),
    )
    op.create_index("ix_federation_run_tenants_tenant", "federation_run_tenants", ["tenant", "run_id"])
    op.create_table(
        "federation_opt_ins",
        sa.Column("tenant", sa.String(63), sa.ForeignKey("tenants.name"), primary_key=True),
        sa.Column("model_kind", sa.String(32), primary_key=True),
        sa.Column("deployment", sa.String(63), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("federation_opt_ins")
    op.drop_index("ix_federation_run_tenants_tenant", "federation_run_tenants")
    op.drop_table("federation_run_tenants")
    op.drop_table("federation_runs")
    op.drop_index("ix_node_keys_tenant", "node_keys")
    op.drop_table("node_keys")
