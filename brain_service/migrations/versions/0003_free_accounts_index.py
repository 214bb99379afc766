"""An index in the order a claim takes free accounts, so a claim never sorts them

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 18:10:00
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_accounts_free_order",
            ["busy_job_id", "last_action_at", "id"],
            unique=False,
        )
        # The new index starts with busy_job_id and serves its lookups too.
        batch_op.drop_index("ix_accounts_busy_job_id")


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.create_index("ix_accounts_busy_job_id", ["busy_job_id"], unique=False)
        batch_op.drop_index("ix_accounts_free_order")
