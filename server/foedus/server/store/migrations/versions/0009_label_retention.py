"""Label retention: labels are found by age, and their sequence numbers are never reused.

Revision ID: 0009
Revises: 0008

Old labels are deleted by the retention sweep. SQLite gives a new row the largest rowid plus one,
so once the newest labels were deleted their sequences would be handed out again and agents whose
cursor is past them would skip the new labels; AUTOINCREMENT makes SQLite remember the largest
sequence ever used. (PostgreSQL's sequences never go back.)
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "labels", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ) as batch:
            batch.create_index("ix_labels_logged_at", ["logged_at_us"])
    else:
        op.create_index("ix_labels_logged_at", "labels", ["logged_at_us"])


def downgrade() -> None:
    op.drop_index("ix_labels_logged_at", "labels")
