"""jobs, steps, accounts and the action log

Revision ID: 0001
Revises:
Create Date: 2026-12-04 15:30:13.957068
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=30), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("state_reason", sa.String(length=256), nullable=False),
        sa.Column("state_changed_at", sa.DateTime(), nullable=False),
        sa.Column("cooldown_until", sa.DateTime(), nullable=True),
        sa.Column("throttle_streak", sa.Integer(), nullable=False),
        sa.Column("busy_job_id", sa.String(length=36), nullable=True),
        sa.Column("password_enc", sa.LargeBinary(), nullable=True),
        sa.Column("settings_enc", sa.LargeBinary(), nullable=True),
        sa.Column("last_action_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("username", name=op.f("uq_accounts_username")),
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_accounts_busy_job_id"), ["busy_job_id"], unique=False
        )

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=30), nullable=False),
        sa.Column("tier", sa.String(length=64), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("available_at", sa.DateTime(), nullable=False),
        sa.Column("lease_token", sa.String(length=32), nullable=True),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("lease_deadline", sa.DateTime(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("steps_done", sa.Integer(), nullable=False),
        sa.Column("progress_message", sa.String(length=1000), nullable=False),
        sa.Column("pending_reason", sa.String(length=256), nullable=False),
        sa.Column("last_error_code", sa.String(length=64), nullable=False),
        sa.Column("last_error_message", sa.String(length=1000), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_claim_order", ["state", "priority", "available_at"], unique=False
        )
        batch_op.create_index(
            "ix_jobs_lease_deadline", ["state", "lease_deadline"], unique=False
        )
        batch_op.create_index(
            "ix_jobs_waiting",
            ["state"],
            unique=False,
            sqlite_where=sa.text("pending_reason != ''"),
            postgresql_where=sa.text("pending_reason != ''"),
        )
        batch_op.create_index(batch_op.f("ix_jobs_target"), ["target"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_jobs_updated_at"), ["updated_at"], unique=False
        )

    op.create_table(
        "action_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("account_username", sa.String(length=30), nullable=False),
        sa.Column("target", sa.String(length=30), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("tier", sa.String(length=64), nullable=False),
        sa.Column("result", sa.String(length=24), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=False),
        sa.Column("error", sa.String(length=1000), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_action_log_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_action_log")),
    )
    with op.batch_alter_table("action_log", schema=None) as batch_op:
        batch_op.create_index(
            "ix_action_log_account_time", ["account_id", "created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_action_log_job_id"), ["job_id"], unique=False
        )
        batch_op.create_index(
            "uq_action_log_effect",
            ["account_id", "action", "target"],
            unique=True,
            sqlite_where=sa.text("result IN ('DONE', 'ALREADY_DONE')"),
            postgresql_where=sa.text("result IN ('DONE', 'ALREADY_DONE')"),
        )
        batch_op.create_index(
            "uq_action_log_step",
            ["job_id", "step_index"],
            unique=True,
            sqlite_where=sa.text("result IN ('DONE', 'ALREADY_DONE')"),
            postgresql_where=sa.text("result IN ('DONE', 'ALREADY_DONE')"),
        )

    op.create_table(
        "steps",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("finished", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(length=24), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=False),
        sa.Column("error_message", sa.String(length=1000), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_steps_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_steps_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "index", name=op.f("pk_steps")),
    )


def downgrade() -> None:
    op.drop_table("steps")
    with op.batch_alter_table("action_log", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_action_log_step",
            sqlite_where=sa.text("result IN ('DONE', 'ALREADY_DONE')"),
            postgresql_where=sa.text("result IN ('DONE', 'ALREADY_DONE')"),
        )
        batch_op.drop_index(
            "uq_action_log_effect",
            sqlite_where=sa.text("result IN ('DONE', 'ALREADY_DONE')"),
            postgresql_where=sa.text("result IN ('DONE', 'ALREADY_DONE')"),
        )
        batch_op.drop_index(batch_op.f("ix_action_log_job_id"))
        batch_op.drop_index("ix_action_log_account_time")

    op.drop_table("action_log")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_updated_at"))
        batch_op.drop_index(batch_op.f("ix_jobs_target"))
        batch_op.drop_index("ix_jobs_waiting")
        batch_op.drop_index("ix_jobs_lease_deadline")
        batch_op.drop_index("ix_jobs_claim_order")

    op.drop_table("jobs")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_accounts_busy_job_id"))

    op.drop_table("accounts")
