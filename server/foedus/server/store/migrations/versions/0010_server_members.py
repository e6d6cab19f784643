"""Server members: each server process renews a row, and rate limits are shared among them.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_members",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("started_us", sa.BigInteger, nullable=False),
        sa.Column("renewed_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("server_members")
