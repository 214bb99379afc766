"""The Brain's tables. Only `brain_service.store` reads or writes them."""

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Results that mean the account's effect on the target exists; at most one
# such row per (account, action, target) and per (job, step).
FINISHED_RESULTS = ("DONE", "ALREADY_DONE")
_FINISHED_SQL = text("result IN ('DONE', 'ALREADY_DONE')")


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, hands back aware UTC, refuses naive input."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> object:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: object, dialect: object) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    action: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(30), index=True)
    tier: Mapped[str] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The last holder's token. Kept after completion so that a repeated
    # CompleteJob can be recognised; cleared when a lease expires.
    lease_token: Mapped[str | None] = mapped_column(String(32))
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The outcome the last holder reported, for idempotent completion.
    outcome: Mapped[str | None] = mapped_column(String(16))
    steps_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_message: Mapped[str] = mapped_column(String(1000), default="")
    pending_reason: Mapped[str] = mapped_column(String(256), default="")
    last_error_code: Mapped[str] = mapped_column(String(64), default="")
    last_error_message: Mapped[str] = mapped_column(String(1000), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_jobs_lease_deadline", "state", "lease_deadline"),
        # Few jobs wait for accounts; they are found without scanning the queue.
        Index(
            "ix_jobs_waiting",
            "state",
            sqlite_where=text("pending_reason != ''"),
            postgresql_where=text("pending_reason != ''"),
        ),
    )


class Step(Base):
    __tablename__ = "steps"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Assigned while the job is leased; cleared when the lease ends unless
    # the step finished.
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    finished: Mapped[bool] = mapped_column(Boolean, default=False)
    # The latest result reported for the step.
    outcome: Mapped[str] = mapped_column(String(24), default="")
    error_code: Mapped[str] = mapped_column(String(64), default="")
    error_message: Mapped[str] = mapped_column(String(1000), default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(30), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str] = mapped_column(String(256), default="")
    state_changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cooldown_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Consecutive throttles; each doubles the next cooldown.
    throttle_streak: Mapped[int] = mapped_column(Integer, default=0)
    busy_job_id: Mapped[str | None] = mapped_column(String(36))
    # Fernet tokens; never plaintext.
    password_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    settings_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    last_action_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        # The free accounts (busy_job_id IS NULL) in the order a claim takes
        # them, least recently used first: a claim reads the first few entries
        # instead of filtering and sorting every account. Also serves lookups
        # by busy_job_id.
        Index("ix_accounts_free_order", "busy_job_id", "last_action_at", "id"),
    )


class ActionLogEntry(Base):
    """One row per step attempt a worker reported."""

    __tablename__ = "action_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    step_index: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    account_username: Mapped[str] = mapped_column(String(30))
    target: Mapped[str] = mapped_column(String(30))
    action: Mapped[str] = mapped_column(String(16))
    tier: Mapped[str] = mapped_column(String(64))
    result: Mapped[str] = mapped_column(String(24))
    error_code: Mapped[str] = mapped_column(String(64), default="")
    error: Mapped[str] = mapped_column(String(1000), default="")
    worker_id: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_action_log_account_time", "account_id", "created_at"),
        # An account never takes the same action on the same target twice.
        Index(
            "uq_action_log_effect",
            "account_id",
            "action",
            "target",
            unique=True,
            sqlite_where=_FINISHED_SQL,
            postgresql_where=_FINISHED_SQL,
        ),
        # A step is finished once, whoever reports it.
        Index(
            "uq_action_log_step",
            "job_id",
            "step_index",
            unique=True,
            sqlite_where=_FINISHED_SQL,
            postgresql_where=_FINISHED_SQL,
        ),
    )


# The claim reads jobs in exactly this order; an index that matches it lets
# the database stop at the first due rows instead of sorting the queue.
Index(
    "ix_jobs_claim_queue",
    Job.state,
    Job.priority.desc(),
    Job.available_at,
    Job.created_at,
)
