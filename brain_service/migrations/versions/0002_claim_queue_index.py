"""An index in the claim's own order, so a claim never sorts the queue

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 16:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_claim_order")
        batch_op.create_index(
            "ix_jobs_claim_queue",
            ["state", sa.text("priority DESC"), "available_at", "created_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_claim_queue")
        batch_op.create_index(
            "ix_jobs_claim_order", ["state", "priority", "available_at"], unique=False
        )
