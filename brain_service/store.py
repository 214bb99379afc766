"""The one gateway to the database.

Every read and write of jobs, steps, accounts and the action log goes
through `Store`; its methods are named after the transitions they make.
Each method is one short transaction. Callers pass `now` so that a whole
request agrees on the time.
"""

import base64
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    and_,
    bindparam,
    create_engine,
    event,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from brain_service.config import BrainConfig
from brain_service.errors import (
    AlreadyExists,
    BrainError,
    InvalidArgument,
    LeaseLost,
    NotFound,
    StoreUnavailable,
    WrongState,
)
from brain_service.models import (
    FINISHED_RESULTS,
    Account,
    ActionLogEntry,
    Job,
    Step,
)
from brain_service.outcomes import (
    ACTIVE,
    CANCELLED,
    COOLDOWN,
    FAILED,
    LEASED,
    PENDING,
    Decision,
    account_change,
    decide_completion,
    decide_expired,
)
from brain_service.settings import SettingError
from brain_service.vault import Vault

# How long a writer waits for SQLite's lock before the store counts as down.
BUSY_TIMEOUT_S = 5.0
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

_J = Job.__table__
_S = Step.__table__
_A = Account.__table__
_L = ActionLogEntry.__table__

# What a claim reads of each candidate job.
_CLAIM_COLUMNS = (
    _J.c.id,
    _J.c.action,
    _J.c.target,
    _J.c.tier,
    _J.c.size,
    _J.c.steps_done,
    _J.c.attempts,
)
# What renewal and completion read of a leased job.
_LEASE_COLUMNS = (
    _J.c.id,
    _J.c.state,
    _J.c.lease_token,
    _J.c.lease_deadline,
    _J.c.outcome,
    _J.c.available_at,
    _J.c.attempts,
    _J.c.max_attempts,
    _J.c.cancel_requested,
    _J.c.action,
    _J.c.target,
    _J.c.tier,
    _J.c.worker_id,
    _J.c.size,
    _J.c.steps_done,
)

# What a lease's end may set on its job; completion reads them all, so that
# one statement can end many leases, each with its own decision.
_END_COLUMNS = (
    "state",
    "lease_deadline",
    "worker_id",
    "updated_at",
    "last_error_code",
    "last_error_message",
    "available_at",
    "finished_at",
)
_FINISH_COLUMNS = (
    *_LEASE_COLUMNS,
    _J.c.last_error_code,
    _J.c.last_error_message,
    _J.c.finished_at,
    _J.c.updated_at,
)

# PostgreSQL channel on which replicas tell each other about job changes.
NOTIFY_CHANNEL = "barter_jobs"


def utcnow() -> datetime:
    return datetime.now(UTC)


# Validated request values the store accepts.


@dataclass(frozen=True)
class ClaimOrder:
    """What a worker asks of a claim: jobs for it, at most `max_jobs`."""

    worker_id: str
    max_jobs: int


@dataclass(frozen=True)
class JobSpecIn:
    action: str
    target: str
    tier: str
    idempotency_key: str | None
    max_attempts: int


@dataclass(frozen=True)
class StepResultIn:
    step_index: int
    account_username: str
    outcome: str
    error_code: str
    error_message: str


@dataclass(frozen=True)
class SessionIn:
    username: str
    settings: bytes


@dataclass(frozen=True)
class CompletionIn:
    """A worker's final word on one leased job (one CompleteJob)."""

    job_id: str
    token: str
    outcome: str
    results: Sequence[StepResultIn]
    error_code: str
    error_message: str
    sessions: Sequence[SessionIn]


@dataclass(frozen=True)
class AccountIn:
    username: str
    password: str = field(repr=False)
    settings: bytes = field(repr=False)


# What the store hands back.


@dataclass(frozen=True)
class StepView:
    index: int
    account_username: str
    finished: bool
    outcome: str
    error_code: str
    error_message: str


@dataclass(frozen=True)
class JobView:
    job: Job
    steps: list[StepView] = field(default_factory=list)


@dataclass(frozen=True)
class SessionOut:
    username: str
    settings: bytes = field(repr=False)
    password: str = field(repr=False)


@dataclass(frozen=True)
class LeasedJob:
    """A job as a claim hands it out."""

    id: str
    action: str
    target: str
    tier: str
    size: int
    steps_done: int
    attempts: int
    lease_token: str
    lease_deadline: datetime


@dataclass(frozen=True)
class ClaimedJob:
    job: LeasedJob
    steps: list[StepView]
    sessions: list[SessionOut]


@dataclass(frozen=True)
class Reclaimed:
    job_id: str
    attempt: int
    worker_id: str
    state: str


@dataclass(frozen=True)
class Claim:
    jobs: list[ClaimedJob]
    reclaimed: list[Reclaimed]
    # Earliest time a PENDING job becomes due, when nothing was claimed.
    next_due_at: datetime | None
    # The time the claim was made at.
    now: datetime


@dataclass(frozen=True)
class Renewal:
    deadline: datetime
    cancel: bool
    newly_finished: int


@dataclass(frozen=True)
class Finish:
    state: str
    available_at: datetime | None
    repeated: bool
    decision: Decision | None


@dataclass(frozen=True)
class Finishes:
    """One answer per completion, in order: its Finish or the error refusing it."""

    answers: list[Finish | BrainError]
    # Waiting jobs made due by the accounts these completions freed.
    unblocked: int = 0


@dataclass(frozen=True)
class _Ending:
    """A checked completion of a live lease, ready to be written."""

    completion: CompletionIn
    job: Row
    # The results not recorded before, each with its step row.
    fresh: list[tuple[StepResultIn, Row]]
    has_unfinished: bool
    decision: Decision


@dataclass(frozen=True)
class ImportRow:
    index: int
    username: str
    created: bool = False
    updated: bool = False
    error: str = ""


@dataclass(frozen=True)
class AccountView:
    account: Account
    actions_last_hour: int
    actions_last_day: int


@dataclass(frozen=True)
class Stats:
    jobs_by_state: dict[str, int]
    due: int
    waiting_for_workforce: int
    oldest_due_at: datetime | None
    accounts_by_state: dict[str, int]
    accounts_busy: int
    actions_last_hour: int


def _sqlite_engine(url: str, immediate: bool, synchronous: str = "NORMAL") -> Engine:
    if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
        raise SettingError(
            "BRAIN_SQLITE_SYNCHRONOUS: expected NORMAL, FULL or EXTRA, "
            f"got {synchronous!r}"
        )
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: object, _record: object) -> None:
        # Hand transaction control to the "begin" hook below.
        dbapi_conn.isolation_level = None  # type: ignore[attr-defined]
        cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL loses nothing when a process dies; only a power
        # cut can take back the last commits, which FULL prevents.
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "handle_error")
    def _on_error(context: object) -> None:
        # A connection opened while the file was read-only stays read-only;
        # treat it as dead so the pool opens a fresh one next time.
        name = getattr(context.original_exception, "sqlite_errorname", "")  # type: ignore[attr-defined]
        if name.startswith("SQLITE_READONLY"):
            context.is_disconnect = True  # type: ignore[attr-defined]

    @event.listens_for(engine, "begin")
    def _on_begin(conn: object) -> None:
        # Writers take the write lock up front so that two transactions never
        # both read and then both try to upgrade (which SQLite refuses).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")  # type: ignore[attr-defined]

    return engine


def make_engine(url: str, synchronous: str = "NORMAL") -> Engine:
    """The engine writers use; on SQLite it takes the write lock on BEGIN."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url, immediate=True, synchronous=synchronous)
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("\x1f".join(parts).encode()).decode()


def _decode_cursor(token: str, count: int) -> list[str]:
    try:
        parts = base64.urlsafe_b64decode(token.encode()).decode().split("\x1f")
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(
            "page_token", "not a token from a previous reply"
        ) from None
    if len(parts) != count or any("\x00" in part for part in parts):
        raise InvalidArgument("page_token", "not a token from a previous reply")
    return parts


class _ClaimStatements:
    """The claim path's statements, built once per store.

    Building a SQLAlchemy statement costs more than SQLite takes to run it,
    and a claim runs about nine; every value arrives as a b_* parameter.
    """

    def __init__(self, is_postgres: bool) -> None:
        def locked(stmt):  # noqa: ANN001, ANN202 - a Select in, a Select out
            # Row locks that concurrent claimers skip, where the store has them.
            return stmt.with_for_update(skip_locked=True) if is_postgres else stmt

        now = bindparam("b_now")
        self.expired = locked(
            select(*_LEASE_COLUMNS).where(
                _J.c.state == LEASED, _J.c.lease_deadline < now
            )
        )
        self.candidates = locked(
            select(*_CLAIM_COLUMNS)
            .where(_J.c.state == PENDING, _J.c.available_at <= now)
            .order_by(_J.c.priority.desc(), _J.c.available_at, _J.c.created_at)
            .limit(bindparam("b_limit"))
        )
        self.open_steps = (
            select(_S.c.job_id, _S.c.index)
            .where(
                _S.c.job_id.in_(bindparam("b_ids", expanding=True)),
                _S.c.finished.is_(False),
            )
            .order_by(_S.c.job_id, _S.c.index)
        )
        self.next_due = select(func.min(_J.c.available_at)).where(_J.c.state == PENDING)

        def actions_since(since: str):  # noqa: ANN202 - a scalar subquery
            return (
                select(func.count())
                .where(_L.c.account_id == _A.c.id, _L.c.created_at > bindparam(since))
                .scalar_subquery()
            )

        free = (
            select(
                _A.c.id,
                _A.c.username,
                _A.c.state,
                _A.c.password_enc,
                _A.c.settings_enc,
            )
            .where(
                or_(
                    _A.c.state == ACTIVE,
                    and_(_A.c.state == COOLDOWN, _A.c.cooldown_until <= now),
                ),
                _A.c.busy_job_id.is_(None),
                or_(
                    _A.c.last_action_at.is_(None),
                    _A.c.last_action_at <= bindparam("b_gap_start"),
                ),
                actions_since("b_hour_ago") < bindparam("b_per_hour"),
                actions_since("b_day_ago") < bindparam("b_per_day"),
            )
            .order_by(_A.c.last_action_at.asc().nulls_first(), _A.c.id)
            .limit(bindparam("b_limit"))
        )
        self.free_accounts = locked(free)
        # Only accounts that have not taken this job's action on its target.
        self.free_accounts_for_job = locked(
            free.where(
                ~exists().where(
                    _L.c.account_id == _A.c.id,
                    _L.c.action == bindparam("b_action"),
                    _L.c.target == bindparam("b_target"),
                    _L.c.result.in_(FINISHED_RESULTS),
                )
            )
        )
        self.acted_on = select(_L.c.account_id, _L.c.action, _L.c.target).where(
            _L.c.account_id.in_(bindparam("b_accounts", expanding=True)),
            _L.c.target.in_(bindparam("b_targets", expanding=True)),
            _L.c.result.in_(FINISHED_RESULTS),
        )
        self.wait_for_accounts = (
            update(_J)
            .where(_J.c.id == bindparam("b_id"))
            .values(
                pending_reason=bindparam("b_reason"),
                available_at=bindparam("b_at"),
                updated_at=now,
            )
        )
        self.assign_steps = (
            update(_S)
            .where(
                _S.c.job_id == bindparam("b_job"),
                _S.c.index == bindparam("b_index"),
            )
            .values(account_id=bindparam("b_account"), updated_at=now)
        )
        self.make_busy = (
            update(_A)
            .where(_A.c.id == bindparam("b_account"))
            .values(busy_job_id=bindparam("b_job"), updated_at=now)
        )
        self.end_cooldowns = (
            update(_A)
            .where(_A.c.id.in_(bindparam("b_cooled", expanding=True)))
            .values(state=ACTIVE, state_reason="", state_changed_at=now)
        )
        self.lease = (
            update(_J)
            .where(_J.c.id == bindparam("b_id"))
            .values(
                state=LEASED,
                lease_token=bindparam("b_token"),
                attempts=_J.c.attempts + 1,
                worker_id=bindparam("b_worker"),
                lease_deadline=bindparam("b_deadline"),
                pending_reason="",
                outcome=None,
                updated_at=now,
            )
        )


class _CompletionStatements:
    """The completion path's statements, built once per store (see
    _ClaimStatements for why); every value arrives as a b_* parameter."""

    def __init__(self, is_postgres: bool) -> None:
        now = bindparam("b_now")
        jobs = select(*_FINISH_COLUMNS).where(
            _J.c.id.in_(bindparam("b_ids", expanding=True))
        )
        self.jobs = jobs.with_for_update() if is_postgres else jobs
        self.steps = (
            select(
                _S.c.job_id,
                _S.c.index,
                _S.c.finished,
                _S.c.account_id,
                _A.c.username,
                _A.c.busy_job_id,
                _A.c.throttle_streak,
                _A.c.state,
                _A.c.state_reason,
                _A.c.state_changed_at,
                _A.c.cooldown_until,
                _A.c.last_action_at,
            )
            .select_from(_S.outerjoin(_A, _A.c.id == _S.c.account_id))
            .where(_S.c.job_id.in_(bindparam("b_ids", expanding=True)))
        )
        insert = postgresql.insert if is_postgres else sqlite.insert
        # The unique effect keys make a second record of the same effect a
        # no-op rather than an error.
        self.log = insert(_L).on_conflict_do_nothing()
        self.step_results = (
            update(_S)
            .where(
                _S.c.job_id == bindparam("b_job"), _S.c.index == bindparam("b_index")
            )
            .values(
                finished=bindparam("b_finished"),
                outcome=bindparam("b_outcome"),
                error_code=bindparam("b_code"),
                error_message=bindparam("b_message"),
                updated_at=now,
            )
        )
        self.account_results = (
            update(_A)
            .where(_A.c.id == bindparam("b_id"))
            .values(
                state=bindparam("b_state"),
                state_reason=bindparam("b_reason"),
                state_changed_at=bindparam("b_changed"),
                cooldown_until=bindparam("b_cooldown"),
                throttle_streak=bindparam("b_streak"),
                last_action_at=bindparam("b_acted"),
                updated_at=now,
            )
        )
        self.sessions = (
            update(_A)
            .where(_A.c.username == bindparam("b_user"))
            .values(settings_enc=bindparam("b_sealed"), updated_at=now)
        )
        self.free_accounts = (
            update(_A)
            .where(_A.c.busy_job_id.in_(bindparam("b_ids", expanding=True)))
            .values(busy_job_id=None, updated_at=now)
        )
        self.free_steps = (
            update(_S)
            .where(
                _S.c.job_id.in_(bindparam("b_ids", expanding=True)),
                _S.c.finished.is_(False),
            )
            .values(account_id=None)
        )
        self.end_leases = (
            update(_J)
            .where(_J.c.id == bindparam("b_id"))
            .values(
                {
                    **{name: bindparam(f"b_{name}") for name in _END_COLUMNS},
                    "outcome": bindparam("b_reported"),
                    "steps_done": _J.c.steps_done + bindparam("b_newly"),
                }
            )
        )
        self.wake_waiting = (
            update(_J)
            .where(
                _J.c.state == PENDING,
                _J.c.pending_reason != "",
                _J.c.available_at > now,
            )
            .values(available_at=now)
        )


class NoteHandler(Protocol):
    def __call__(self, kind: str, count: int) -> None: ...


class Store:
    """Jobs, accounts and the action log, behind transition-named methods."""

    def __init__(self, url: str, config: BrainConfig, vault: Vault) -> None:
        self.config = config
        self.tiers = config.tier_table()
        self.vault = vault
        self.engine = make_engine(url, config.sqlite_synchronous)
        self._is_postgres = self.engine.dialect.name == "postgresql"
        self._claim_sql = _ClaimStatements(self._is_postgres)
        self._done_sql = _CompletionStatements(self._is_postgres)
        self._insert_jobs = insert(_J)
        self._insert_steps = insert(_S)
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        if url.startswith("sqlite"):
            # Readers in WAL mode never block the writer, so they skip the lock.
            self.read_engine = _sqlite_engine(
                url, immediate=False, synchronous=config.sqlite_synchronous
            )
        else:
            self.read_engine = self.engine
        self._reader = sessionmaker(self.read_engine, expire_on_commit=False)
        # Tells this replica's notifications from its peers'.
        self.replica_id = secrets.token_hex(4)
        # SQLite has one writer. Queueing writers here is far cheaper than
        # letting them meet at BEGIN IMMEDIATE, where SQLite's busy handler
        # sleeps in steps of milliseconds.
        self._write_lock = threading.Lock() if not self._is_postgres else None

    @property
    def is_postgres(self) -> bool:
        return self._is_postgres

    def _notify(self, s: Session, kind: str, count: int = 0) -> None:
        """Tell other replicas, at commit, that work or a change happened."""
        if self._is_postgres:
            s.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {
                    "channel": NOTIFY_CHANNEL,
                    "payload": f"{kind}:{self.replica_id}:{count}",
                },
            )

    def listen(self, on_note: "NoteHandler", stop: threading.Event) -> None:
        """Deliver peers' notifications to `on_note(kind, count)` until `stop`.

        Blocks; run it in a thread. Reconnects after errors; a missed note
        only delays a long-poll until its fallback check.
        """
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        while not stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while not stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            kind, replica, count = note.payload.split(":")
                            if replica != self.replica_id:
                                on_note(kind, int(count))
            except psycopg.Error:
                stop.wait(1.0)

    def close(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[Session]:
        maker = self._writer if write else self._reader
        lock = self._write_lock if write else None
        if lock is not None and not lock.acquire(timeout=BUSY_TIMEOUT_S):
            # Writers ahead of us have been waiting on a locked database; do
            # not add another full wait to theirs.
            raise StoreUnavailable(
                f"store unavailable: no write slot within {BUSY_TIMEOUT_S:.0f} s"
            )
        try:
            with maker.begin() as session:
                yield session
        except IntegrityError:
            raise
        except DBAPIError as exc:
            raise StoreUnavailable(
                f"store unavailable: {type(exc.orig).__name__}: {exc.orig}"
            ) from exc
        finally:
            if lock is not None:
                lock.release()

    # Jobs: submit, claim, renew, finish, reclaim.

    def submit_jobs(
        self, specs: Sequence[JobSpecIn], now: datetime
    ) -> list[tuple[JobView, bool]]:
        """Store new jobs, or return the existing job for a known idempotency key."""
        return self.submit_and_claim(specs, now, None)[0]

    def submit_and_claim(
        self,
        specs: Sequence[JobSpecIn],
        now: datetime,
        claimer: ClaimOrder | None,
    ) -> tuple[list[tuple[JobView, bool]], Claim | None]:
        """Store jobs as submit_jobs does and, in the same transaction, claim
        for `claimer` when one is given.

        A long-polling worker so gets its job without a claim transaction of
        its own. The claim takes due jobs in the usual order, so a new job
        does not pass older ones.
        """
        try:
            return self._submit_jobs(specs, now, claimer)
        except IntegrityError:
            # Another replica stored the same key between our check and insert;
            # the second pass finds it.
            return self._submit_jobs(specs, now, claimer)

    def _submit_jobs(
        self,
        specs: Sequence[JobSpecIn],
        now: datetime,
        claimer: ClaimOrder | None,
    ) -> tuple[list[tuple[JobView, bool]], Claim | None]:
        results: list[tuple[JobView, bool]] = []
        job_rows: list[dict] = []
        step_rows: list[dict] = []
        claim = None
        with self._transaction() as s:
            keys = [spec.idempotency_key for spec in specs if spec.idempotency_key]
            known = {}
            if keys:
                known = {
                    job.idempotency_key: job
                    for job in s.scalars(
                        select(Job).where(Job.idempotency_key.in_(keys))
                    )
                }
            for i, spec in enumerate(specs):
                existing = (
                    known.get(spec.idempotency_key) if spec.idempotency_key else None
                )
                if existing is not None:
                    same = (existing.action, existing.target, existing.tier) == (
                        spec.action,
                        spec.target,
                        spec.tier,
                    )
                    if not same:
                        raise AlreadyExists(
                            f"jobs[{i}].idempotency_key: already used by job "
                            f"{existing.id} for a different action, target or tier"
                        )
                    results.append((JobView(existing), False))
                    continue
                tier = self.tiers[spec.tier]
                values = {
                    "id": str(uuid.uuid4()),
                    "idempotency_key": spec.idempotency_key,
                    "action": spec.action,
                    "target": spec.target,
                    "tier": tier.name,
                    "priority": tier.priority,
                    "size": tier.size,
                    "state": PENDING,
                    "attempts": 0,
                    "max_attempts": spec.max_attempts or self.config.max_attempts,
                    "available_at": now,
                    "cancel_requested": False,
                    "steps_done": 0,
                    "progress_message": "",
                    "pending_reason": "",
                    "last_error_code": "",
                    "last_error_message": "",
                    "created_at": now,
                    "updated_at": now,
                }
                job_rows.append(values)
                step_rows.extend(
                    {
                        "job_id": values["id"],
                        "index": index,
                        "finished": False,
                        "outcome": "",
                        "error_code": "",
                        "error_message": "",
                        "updated_at": now,
                    }
                    for index in range(tier.size)
                )
                # Plain rows go in with one statement per table; the views are
                # built from the same values, outside the session.
                job = Job(**values)
                if spec.idempotency_key:
                    known[spec.idempotency_key] = job
                results.append((JobView(job), True))
            if job_rows:
                conn = s.connection()
                conn.execute(self._insert_jobs, job_rows)
                conn.execute(self._insert_steps, step_rows)
            self._notify(s, "work", len(job_rows))
            if claimer is not None and job_rows:
                claim = self._claim(s, claimer.worker_id, claimer.max_jobs)
        return results, claim

    def claim_jobs(self, worker_id: str, max_jobs: int) -> Claim:
        """Lease up to `max_jobs` due jobs whose workforce is free."""
        with self._transaction() as s:
            return self._claim(s, worker_id, max_jobs)

    def _claim(self, s: Session, worker_id: str, max_jobs: int) -> Claim:
        sql = self._claim_sql
        # Read the clock once the write lock is held: a deadline counted
        # from before a wait for the lock could be over on arrival.
        now = utcnow()
        conn = s.connection()
        reclaimed = self._reclaim_expired(s, now)

        # Why two claimers never get the same job or account: on SQLite
        # this transaction holds the database's single write lock from
        # BEGIN IMMEDIATE to COMMIT, so nothing else writes in between; on
        # PostgreSQL the job and account rows are locked FOR UPDATE SKIP
        # LOCKED, so a concurrent claimer passes over them instead.
        candidates = conn.execute(
            sql.candidates, {"b_now": now, "b_limit": max_jobs + 8}
        ).all()
        claimed: list[ClaimedJob] = []
        if candidates:
            open_steps: dict[str, list[int]] = {row.id: [] for row in candidates}
            for job_id, index in conn.execute(
                sql.open_steps, {"b_ids": list(open_steps)}
            ):
                open_steps[job_id].append(index)
            claimed = self._lease_jobs(
                conn, candidates, open_steps, worker_id, max_jobs, now
            )

        next_due_at = None
        if not claimed:
            next_due_at = conn.execute(sql.next_due).scalar()
        return Claim(claimed, reclaimed, next_due_at, now)

    def _lease_jobs(
        self,
        conn: Connection,
        candidates: Sequence[Row],
        open_steps: dict[str, list[int]],
        worker_id: str,
        max_jobs: int,
        now: datetime,
    ) -> list[ClaimedJob]:
        """Give each candidate its accounts, in order, until `max_jobs` are leased."""
        wanted = sum(len(open_steps[row.id]) for row in candidates[:max_jobs])
        pool = list(self._free_accounts(conn, None, wanted + 8, now))
        acted = self._acted_on(conn, candidates, [acc.id for acc in pool])
        taken: set[int] = set()
        leased: list[tuple[Row, list[Row]]] = []
        waiting: list[dict] = []

        # The pool in line, least recently used first; each job takes from the
        # front, so a claim of many jobs does not rescan the pool for each.
        line = deque(pool)
        for job in candidates:
            if len(leased) == max_jobs:
                break
            need = len(open_steps[job.id])
            fits: list[Row] = []
            passed: list[Row] = []
            while line and len(fits) < need:
                acc = line.popleft()
                if acc.id in taken:
                    continue
                if (acc.id, job.action, job.target) in acted:
                    passed.append(acc)
                else:
                    fits.append(acc)
            # Accounts this job could not use stay first in line for the next.
            line.extendleft(reversed(passed))
            if len(fits) < need:
                line.extendleft(reversed(fits))
                # The pool is only the least recently used accounts; ask the
                # whole table before making the job wait.
                fits = [
                    acc
                    for acc in self._free_accounts(conn, job, need + len(taken), now)
                    if acc.id not in taken
                ][:need]
            if len(fits) < need:
                waiting.append(
                    {
                        "b_id": job.id,
                        "b_reason": f"waiting for accounts: {need} needed, "
                        f"{len(fits)} free",
                        "b_at": now
                        + timedelta(seconds=self.config.workforce_recheck_s),
                        "b_now": now,
                    }
                )
                continue
            taken.update(acc.id for acc in fits)
            leased.append((job, fits))

        if waiting:
            conn.execute(self._claim_sql.wait_for_accounts, waiting)
        if not leased:
            return []
        return self._write_leases(conn, leased, open_steps, worker_id, now)

    def _write_leases(
        self,
        conn: Connection,
        leased: list[tuple[Row, list[Row]]],
        open_steps: dict[str, list[int]],
        worker_id: str,
        now: datetime,
    ) -> list[ClaimedJob]:
        sql = self._claim_sql
        deadline = now + self.config.lease_ttl
        tokens = {job.id: secrets.token_hex(16) for job, _ in leased}
        assignments = [
            {"b_job": job.id, "b_index": index, "b_account": acc.id, "b_now": now}
            for job, accounts in leased
            for index, acc in zip(open_steps[job.id], accounts, strict=True)
        ]
        # A job retried after all its steps finished has nothing to assign, and
        # executemany with no rows would run the statement once, unbound.
        if assignments:
            conn.execute(sql.assign_steps, assignments)
            conn.execute(sql.make_busy, assignments)
        cooled = [
            acc.id
            for _, accounts in leased
            for acc in accounts
            if acc.state == COOLDOWN
        ]
        if cooled:
            conn.execute(sql.end_cooldowns, {"b_cooled": cooled, "b_now": now})
        conn.execute(
            sql.lease,
            [
                {
                    "b_id": job.id,
                    "b_token": tokens[job.id],
                    "b_worker": worker_id,
                    "b_deadline": deadline,
                    "b_now": now,
                }
                for job, _ in leased
            ],
        )

        claimed = []
        for job, accounts in leased:
            lease = LeasedJob(
                id=job.id,
                action=job.action,
                target=job.target,
                tier=job.tier,
                size=job.size,
                steps_done=job.steps_done,
                attempts=job.attempts + 1,
                lease_token=tokens[job.id],
                lease_deadline=deadline,
            )
            steps = [
                StepView(index, acc.username, False, "", "", "")
                for index, acc in zip(open_steps[job.id], accounts, strict=True)
            ]
            claimed.append(
                ClaimedJob(lease, steps, [self._session(a) for a in accounts])
            )
        return claimed

    def _session(self, account: Row) -> SessionOut:
        settings = (
            self.vault.open(account.settings_enc) if account.settings_enc else b""
        )
        password = (
            self.vault.open(account.password_enc).decode()
            if account.password_enc
            else ""
        )
        return SessionOut(account.username, settings, password)

    def _acted_on(
        self, conn: Connection, jobs: Sequence[Row], account_ids: list[int]
    ) -> set[tuple[int, str, str]]:
        """(account, action, target) effects that already exist among these."""
        if not account_ids:
            return set()
        rows = conn.execute(
            self._claim_sql.acted_on,
            {"b_accounts": account_ids, "b_targets": list({j.target for j in jobs})},
        )
        return {(row.account_id, row.action, row.target) for row in rows}

    def _free_accounts(
        self, conn: Connection, job: Row | None, count: int, now: datetime
    ) -> Sequence[Row]:
        """Accounts that may act now, least recently used first.

        With `job`, only those that have not taken its action on its target.
        """
        if count == 0:
            return []
        params = {
            "b_now": now,
            "b_gap_start": now - timedelta(seconds=self.config.account_min_gap_s),
            "b_hour_ago": now - HOUR,
            "b_day_ago": now - DAY,
            "b_per_hour": self.config.account_max_per_hour,
            "b_per_day": self.config.account_max_per_day,
            "b_limit": count,
        }
        if job is None:
            return conn.execute(self._claim_sql.free_accounts, params).all()
        params |= {"b_action": job.action, "b_target": job.target}
        return conn.execute(self._claim_sql.free_accounts_for_job, params).all()

    def renew_lease(
        self,
        job_id: str,
        token: str,
        message: str,
        results: Sequence[StepResultIn],
        sessions: Sequence[SessionIn],
    ) -> Renewal:
        """Extend a lease and record the steps finished since the last update."""
        with self._transaction() as s:
            now = utcnow()
            deadline = now + self.config.lease_ttl
            conn = s.connection()
            # The token check and the renewal are one statement: a worker whose
            # lease was handed on can never extend or write to the new holder's.
            job = conn.execute(
                update(_J)
                .where(
                    _J.c.id == job_id,
                    _J.c.lease_token == token,
                    _J.c.state == LEASED,
                    _J.c.lease_deadline >= now,
                )
                .values(
                    lease_deadline=deadline, progress_message=message, updated_at=now
                )
                .returning(*_LEASE_COLUMNS)
            ).first()
            if job is None:
                row = conn.execute(
                    select(*_LEASE_COLUMNS).where(_J.c.id == job_id)
                ).first()
                raise self._refusal(job_id, row, token, now)
            steps = self._steps_of(conn, [job_id]).get(job_id, {})
            fresh = self._check_results(steps, results)
            self._check_sessions(job_id, steps, sessions)
            newly = self._write_results(conn, [(job, fresh)], now)[job_id]
            self._write_sessions(conn, sessions, now)
            if newly:
                conn.execute(
                    update(_J)
                    .where(_J.c.id == job_id)
                    .values(steps_done=_J.c.steps_done + newly)
                )
        return Renewal(deadline, bool(job.cancel_requested), newly)

    def finish_jobs(self, completions: Sequence[CompletionIn]) -> Finishes:
        """Apply workers' final words, each on its own, in one transaction.

        Each answer is what finishing that job alone would give: a Finish, or
        the error that refuses it. A refused completion writes nothing, and a
        repeat of the same word changes nothing. Job ids must be distinct.
        """
        answers: list[Finish | BrainError] = []
        unblocked = 0
        with self._transaction() as s:
            now = utcnow()
            conn = s.connection()
            ids = [c.job_id for c in completions]
            jobs = {
                row.id: row for row in conn.execute(self._done_sql.jobs, {"b_ids": ids})
            }
            steps = self._steps_of(conn, list(jobs))
            # Everything is checked before anything is written, so that a
            # refused completion leaves no trace beside the accepted ones.
            accepted: list[_Ending] = []
            for completion in completions:
                job = jobs.get(completion.job_id)
                answer = self._settled(completion, job, now)
                if answer is None:
                    try:
                        ending = self._ending(completion, job, steps, now)
                    except InvalidArgument as exc:
                        answer = exc
                    else:
                        accepted.append(ending)
                        answer = Finish(
                            ending.decision.state,
                            ending.decision.available_at,
                            False,
                            ending.decision,
                        )
                answers.append(answer)
            if accepted:
                unblocked = self._end_leases(conn, accepted, now)
                self._notify(s, "work")
        return Finishes(answers, unblocked)

    def _ending(
        self,
        completion: CompletionIn,
        job: Row,
        steps: dict[str, dict[int, Row]],
        now: datetime,
    ) -> _Ending:
        """How a live lease ends on `completion`; raises InvalidArgument for
        results, sessions or an outcome the job's steps do not bear out."""
        job_steps = steps.get(job.id, {})
        fresh = self._check_results(job_steps, completion.results)
        self._check_sessions(job.id, job_steps, completion.sessions)
        finishing = {r.step_index for r, _ in fresh if r.outcome in FINISHED_RESULTS}
        unfinished = sorted(
            index
            for index, step in job_steps.items()
            if not step.finished and index not in finishing
        )
        decision = decide_completion(
            completion.outcome,
            unfinished,
            job.attempts,
            job.max_attempts,
            job.cancel_requested,
            completion.error_code,
            completion.error_message,
            self.config,
            now,
        )
        return _Ending(completion, job, fresh, bool(unfinished), decision)

    def _end_leases(
        self, conn: Connection, endings: Sequence[_Ending], now: datetime
    ) -> int:
        """Write checked endings: results, sessions, freed workforce, each
        job's next state. Returns how many waiting jobs became due."""
        newly = self._write_results(conn, [(e.job, e.fresh) for e in endings], now)
        self._write_sessions(
            conn, [x for e in endings for x in e.completion.sessions], now
        )
        self._free_workforce(
            conn,
            [e.job.id for e in endings],
            [e.job.id for e in endings if e.has_unfinished],
            now,
        )
        conn.execute(
            self._done_sql.end_leases,
            [
                {
                    "b_id": e.job.id,
                    "b_reported": e.completion.outcome,
                    "b_newly": newly[e.job.id],
                    **{
                        f"b_{name}": value
                        for name, value in self._ended(e.decision, now, e.job).items()
                    },
                }
                for e in endings
            ],
        )
        return self._wake_waiting_jobs(conn, now)

    def _settled(
        self, completion: CompletionIn, job: Row | None, now: datetime
    ) -> Finish | BrainError | None:
        """The answer to a completion that needs no writing, or None to go on."""
        if job is None or job.lease_token != completion.token:
            return self._refusal(completion.job_id, job, completion.token, now)
        if job.state != LEASED:
            if job.outcome == completion.outcome:
                available = job.available_at if job.state == PENDING else None
                return Finish(job.state, available, repeated=True, decision=None)
            return LeaseLost(
                f"job {job.id} was already completed as {job.outcome}; "
                f"{completion.outcome} refused"
            )
        if job.lease_deadline is None or job.lease_deadline < now:
            return LeaseLost(f"lease on job {job.id} expired at {job.lease_deadline}")
        return None

    def hand_back(self, job_id: str, token: str, fail_reason: str = "") -> str:
        """Undo a claim whose reply could not be sent: the attempt never began.

        With `fail_reason` the job fails instead, for a job too large to send
        at all. Returns the job's new state.
        """
        with self._transaction() as s:
            now = utcnow()
            conn = s.connection()
            job = conn.execute(
                self._for_update(select(*_LEASE_COLUMNS).where(_J.c.id == job_id))
            ).first()
            if job is None or job.state != LEASED or job.lease_token != token:
                return job.state if job is not None else ""
            if fail_reason:
                decision = Decision(
                    FAILED, error_code="claim_too_large", error_message=fail_reason
                )
            else:
                decision = Decision(PENDING, available_at=now)
            self._end_lease(
                conn,
                job_id,
                decision,
                now,
                has_unfinished=True,
                lease_token=None,
                attempts=_J.c.attempts - (0 if fail_reason else 1),
            )
            self._notify(s, "work")
        return decision.state

    def reclaim_expired(self) -> list[Reclaimed]:
        """Take back every lease whose deadline passed (the one shared rule)."""
        with self._transaction() as s:
            return self._reclaim_expired(s, utcnow())

    def _reclaim_expired(self, s: Session, now: datetime) -> list[Reclaimed]:
        conn = s.connection()
        expired = conn.execute(self._claim_sql.expired, {"b_now": now}).all()
        reclaimed = []
        for job in expired:
            decision = decide_expired(
                job.attempts, job.max_attempts, job.cancel_requested, now
            )
            # A lease that expired has no holder: nobody may complete it now.
            self._end_lease(
                conn, job.id, decision, now, has_unfinished=True, lease_token=None
            )
            reclaimed.append(
                Reclaimed(job.id, job.attempts, job.worker_id or "", decision.state)
            )
        if reclaimed:
            self._notify(s, "work")
        return reclaimed

    def _end_lease(
        self,
        conn: Connection,
        job_id: str,
        decision: Decision,
        now: datetime,
        has_unfinished: bool,
        **job_values: object,
    ) -> int:
        """Free the job's accounts and unfinished steps and set its next state.

        Returns how many waiting jobs the freed accounts made due.
        """
        self._free_workforce(conn, [job_id], [job_id] if has_unfinished else [], now)
        conn.execute(
            update(_J)
            .where(_J.c.id == job_id)
            .values(**self._ended(decision, now), **job_values)
        )
        return self._wake_waiting_jobs(conn, now)

    @staticmethod
    def _ended(
        decision: Decision, now: datetime, job: Row | None = None
    ) -> dict[str, object]:
        """The job columns a lease's end sets; with `job`, every _END_COLUMNS
        value, the ones this decision leaves alone taken from `job`."""
        values: dict[str, object] = {
            "state": decision.state,
            "lease_deadline": None,
            "worker_id": None,
            "updated_at": now,
        }
        if decision.error_code or decision.state == "SUCCEEDED":
            values["last_error_code"] = decision.error_code
            values["last_error_message"] = decision.error_message[:1000]
        if decision.state == PENDING:
            values["available_at"] = decision.available_at or now
        else:
            values["finished_at"] = now
        if job is not None:
            values = {name: getattr(job, name) for name in _END_COLUMNS} | values
        return values

    def _free_workforce(
        self,
        conn: Connection,
        job_ids: Sequence[str],
        with_unfinished: Sequence[str],
        now: datetime,
    ) -> None:
        """Release the jobs' accounts, and the unfinished steps' assignments."""
        sql = self._done_sql
        conn.execute(sql.free_accounts, {"b_ids": list(job_ids), "b_now": now})
        if with_unfinished:
            conn.execute(sql.free_steps, {"b_ids": list(with_unfinished)})

    def _wake_waiting_jobs(self, conn: Connection | Session, now: datetime) -> int:
        """Jobs that waited for accounts are due again once accounts free up.

        Returns how many, so that as many long-polls can be woken.
        """
        result = conn.execute(self._done_sql.wake_waiting, {"b_now": now})
        return result.rowcount or 0

    def _for_update(self, stmt):  # noqa: ANN001, ANN202 - a Select in, a Select out
        if self._is_postgres:
            return stmt.with_for_update()
        return stmt

    @staticmethod
    def _refusal(job_id: str, job: Row | None, token: str, now: datetime) -> BrainError:
        """Why a write under `token` is refused on this job."""
        if job is None:
            return NotFound(f"job_id: no job {job_id}")
        if job.state == LEASED and job.lease_deadline and job.lease_deadline < now:
            return LeaseLost(f"lease on job {job_id} expired at {job.lease_deadline}")
        return LeaseLost(
            f"lease_token: not the current lease of job {job_id} "
            f"(the job is {job.state}; this token expired, was handed on or was "
            "never issued)"
        )

    def _steps_of(
        self, conn: Connection, job_ids: Sequence[str]
    ) -> dict[str, dict[int, Row]]:
        """Each job's steps by index, with the assigned account's columns."""
        steps: dict[str, dict[int, Row]] = {}
        if job_ids:
            for row in conn.execute(self._done_sql.steps, {"b_ids": list(job_ids)}):
                steps.setdefault(row.job_id, {})[row.index] = row
        return steps

    @staticmethod
    def _check_results(
        steps: dict[int, Row], results: Sequence[StepResultIn]
    ) -> list[tuple[StepResultIn, Row]]:
        """The results not recorded before, each with its step; raises
        InvalidArgument for a step the job lacks or an account not on it."""
        fresh: list[tuple[StepResultIn, Row]] = []
        reported: dict[int, int] = {}
        for i, result in enumerate(results):
            step = steps.get(result.step_index)
            if step is None:
                raise InvalidArgument(
                    f"results[{i}].step_index", f"job has no step {result.step_index}"
                )
            first = reported.setdefault(step.index, i)
            if first != i:
                # A step runs once per attempt, so one message holds at most
                # one result for it; two would log contradicting attempts.
                raise InvalidArgument(
                    f"results[{i}].step_index",
                    f"step {step.index} is also results[{first}]",
                )
            if step.finished:
                continue  # reported before: a retried update or a repeat
            if step.account_id is None or step.username != result.account_username:
                raise InvalidArgument(
                    f"results[{i}].account_username",
                    f"step {step.index} is assigned to {step.username or 'no account'}",
                )
            fresh.append((result, step))
        return fresh

    @staticmethod
    def _check_sessions(
        job_id: str, steps: dict[int, Row], sessions: Sequence[SessionIn]
    ) -> None:
        """Raise InvalidArgument for a session of an account not in this job."""
        working = {s.username for s in steps.values() if s.busy_job_id == job_id}
        for i, session in enumerate(sessions):
            if session.username not in working:
                raise InvalidArgument(
                    f"refreshed_sessions[{i}].username",
                    f"{session.username} is not working on job {job_id}",
                )

    def _write_results(
        self,
        conn: Connection,
        jobs: Sequence[tuple[Row, list[tuple[StepResultIn, Row]]]],
        now: datetime,
    ) -> dict[str, int]:
        """Log checked step results and apply their effect on steps and
        accounts; returns how many steps each job finished."""
        newly = {job.id: 0 for job, _ in jobs}
        log_rows, step_rows, accounts = [], [], {}
        for job, fresh in jobs:
            for result, step in fresh:
                finished = result.outcome in FINISHED_RESULTS
                newly[job.id] += finished
                log_rows.append(
                    {
                        "job_id": job.id,
                        "step_index": step.index,
                        "attempt": job.attempts,
                        "account_id": step.account_id,
                        "account_username": step.username,
                        "target": job.target,
                        "action": job.action,
                        "tier": job.tier,
                        "result": result.outcome,
                        "error_code": result.error_code,
                        "error": result.error_message,
                        "worker_id": job.worker_id or "",
                        "created_at": now,
                    }
                )
                step_rows.append(
                    {
                        "b_job": job.id,
                        "b_index": step.index,
                        "b_finished": finished,
                        "b_outcome": result.outcome,
                        "b_code": result.error_code,
                        "b_message": result.error_message,
                        "b_now": now,
                    }
                )
                accounts[step.account_id] = self._account_after(
                    accounts.get(step.account_id) or dict(step._mapping), result, now
                )
        if not log_rows:
            return newly

        sql = self._done_sql
        conn.execute(sql.log, log_rows)
        conn.execute(sql.step_results, step_rows)
        conn.execute(
            sql.account_results,
            [
                {
                    "b_id": account_id,
                    "b_state": acc["state"],
                    "b_reason": acc["state_reason"],
                    "b_changed": acc["state_changed_at"],
                    "b_cooldown": acc["cooldown_until"],
                    "b_streak": acc["throttle_streak"],
                    "b_acted": acc["last_action_at"],
                    "b_now": now,
                }
                for account_id, acc in accounts.items()
            ],
        )
        return newly

    def _account_after(
        self, account: dict, result: StepResultIn, now: datetime
    ) -> dict:
        """The account's columns once `result` is applied (see outcomes.py)."""
        change = account_change(
            result.outcome,
            result.error_code,
            result.error_message,
            account["throttle_streak"],
            self.config,
            now,
        )
        account = dict(account)
        if change.acted:
            account["last_action_at"] = now
        if change.throttle_streak is not None:
            account["throttle_streak"] = change.throttle_streak
        if change.state is not None:
            account["state"] = change.state
            account["state_reason"] = change.reason
            account["state_changed_at"] = now
            account["cooldown_until"] = change.cooldown_until
        return account

    def _write_sessions(
        self, conn: Connection, sessions: Sequence[SessionIn], now: datetime
    ) -> None:
        """Seal and store checked session settings."""
        if sessions:
            conn.execute(
                self._done_sql.sessions,
                [
                    {
                        "b_user": s.username,
                        "b_sealed": self.vault.seal(s.settings),
                        "b_now": now,
                    }
                    for s in sessions
                ],
            )

    # Jobs: operator actions and reads.

    def cancel_job(self, job_id: str, now: datetime) -> JobView:
        """Cancel a pending job at once, or flag a leased one for its worker."""
        with self._transaction() as s:
            job = self._job_or_not_found(s, job_id, lock=True)
            if job.state == PENDING:
                job.state = CANCELLED
                job.finished_at = now
                job.last_error_code, job.last_error_message = "cancelled", "cancelled"
                job.pending_reason = ""
            elif job.state == LEASED:
                job.cancel_requested = True
            else:
                raise WrongState(f"job {job_id} is already {job.state}")
            job.updated_at = now
            self._notify(s, "change")
            return self._job_view(s, job)

    def retry_job(self, job_id: str, now: datetime) -> JobView:
        """Send a failed or cancelled job back to the queue with fresh attempts."""
        with self._transaction() as s:
            job = self._job_or_not_found(s, job_id, lock=True)
            if job.state not in (FAILED, CANCELLED):
                raise WrongState(
                    f"job {job_id} is {job.state}; only FAILED or CANCELLED jobs retry"
                )
            job.state = PENDING
            job.attempts = 0
            job.available_at = now
            job.cancel_requested = False
            job.outcome = None
            job.lease_token = None
            job.finished_at = None
            job.pending_reason = ""
            job.last_error_code = job.last_error_message = ""
            job.updated_at = now
            self._notify(s, "work", 1)
            return self._job_view(s, job)

    def get_job(self, job_id: str) -> JobView:
        with self._transaction(write=False) as s:
            return self._job_view(s, self._job_or_not_found(s, job_id))

    def get_jobs(self, job_ids: Sequence[str]) -> list[JobView]:
        with self._transaction(write=False) as s:
            jobs = s.scalars(select(Job).where(Job.id.in_(job_ids))).all()
            return [self._job_view(s, job) for job in jobs]

    def jobs_changed_since(self, since: datetime, limit: int) -> list[JobView]:
        """Jobs updated at or after `since`, oldest change first."""
        with self._transaction(write=False) as s:
            jobs = s.scalars(
                select(Job)
                .where(Job.updated_at >= since)
                .order_by(Job.updated_at, Job.id)
                .limit(limit)
            ).all()
            return [self._job_view(s, job) for job in jobs]

    def list_jobs(
        self,
        states: Sequence[str],
        tier: str,
        target: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[JobView], str]:
        """Newest first, `page_size` at a time."""
        query = select(Job)
        if states:
            query = query.where(Job.state.in_(states))
        if tier:
            query = query.where(Job.tier == tier)
        if target:
            query = query.where(Job.target == target)
        if page_token:
            created, job_id = _decode_cursor(page_token, 2)
            try:
                created_at: datetime | None = datetime.fromisoformat(created)
                uuid.UUID(job_id)
            except ValueError:
                created_at = None
            if created_at is None or created_at.tzinfo is None:
                raise InvalidArgument("page_token", "not a token from a previous reply")
            query = query.where(
                or_(
                    Job.created_at < created_at,
                    and_(Job.created_at == created_at, Job.id < job_id),
                )
            )
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(
            page_size + 1
        )
        with self._transaction(write=False) as s:
            jobs = s.scalars(query).all()
        next_token = ""
        if len(jobs) > page_size:
            jobs = jobs[:page_size]
            last = jobs[-1]
            next_token = _encode_cursor(last.created_at.isoformat(), last.id)
        return [JobView(job) for job in jobs], next_token

    def _job_or_not_found(self, s: Session, job_id: str, lock: bool = False) -> Job:
        query = select(Job).where(Job.id == job_id)
        job = s.scalar(self._for_update(query) if lock else query)
        if job is None:
            raise NotFound(f"job_id: no job {job_id}")
        return job

    def _job_view(self, s: Session, job: Job) -> JobView:
        rows = s.execute(
            select(Step, Account.username)
            .outerjoin(Account, Account.id == Step.account_id)
            .where(Step.job_id == job.id)
            .order_by(Step.index)
        ).all()
        steps = [
            StepView(
                st.index,
                username or "",
                st.finished,
                st.outcome,
                st.error_code,
                st.error_message,
            )
            for st, username in rows
        ]
        return JobView(job, steps)

    # Accounts.

    def add_accounts(
        self, accounts: Sequence[AccountIn], update_existing: bool, now: datetime
    ) -> list[ImportRow]:
        """Store new accounts (secrets sealed); report each row's fate."""
        rows: list[ImportRow] = []
        with self._transaction() as s:
            names = [a.username for a in accounts]
            known = {
                acc.username: acc
                for acc in s.scalars(select(Account).where(Account.username.in_(names)))
            }
            for i, item in enumerate(accounts):
                password_enc = (
                    self.vault.seal(item.password.encode()) if item.password else None
                )
                settings_enc = self.vault.seal(item.settings) if item.settings else None
                existing = known.get(item.username)
                if existing is not None:
                    if not update_existing:
                        rows.append(ImportRow(i, item.username, error="already exists"))
                        continue
                    if password_enc is not None:
                        existing.password_enc = password_enc
                    if settings_enc is not None:
                        existing.settings_enc = settings_enc
                    existing.updated_at = now
                    rows.append(ImportRow(i, item.username, updated=True))
                    continue
                account = Account(
                    username=item.username,
                    state=ACTIVE,
                    state_reason="",
                    state_changed_at=now,
                    throttle_streak=0,
                    password_enc=password_enc,
                    settings_enc=settings_enc,
                    created_at=now,
                    updated_at=now,
                )
                s.add(account)
                known[item.username] = account
                rows.append(ImportRow(i, item.username, created=True))
            self._wake_waiting_jobs(s, now)
            self._notify(s, "work")
        return rows

    def reset_account(self, username: str, now: datetime) -> AccountView:
        """Return an account to ACTIVE, clearing its reason and cooldown."""
        with self._transaction() as s:
            account = s.scalar(select(Account).where(Account.username == username))
            if account is None:
                raise NotFound(f"username: no account {username}")
            account.state = ACTIVE
            account.state_reason = ""
            account.cooldown_until = None
            account.throttle_streak = 0
            account.state_changed_at = now
            account.updated_at = now
            self._wake_waiting_jobs(s, now)
            self._notify(s, "work")
            s.flush()
            return self._account_views(s, [account], now)[0]

    def get_account(self, username: str, now: datetime) -> AccountView:
        with self._transaction(write=False) as s:
            account = s.scalar(select(Account).where(Account.username == username))
            if account is None:
                raise NotFound(f"username: no account {username}")
            return self._account_views(s, [account], now)[0]

    def list_accounts(
        self, states: Sequence[str], page_size: int, page_token: str, now: datetime
    ) -> tuple[list[AccountView], str]:
        """By username, `page_size` at a time."""
        query = select(Account)
        if states:
            query = query.where(Account.state.in_(states))
        if page_token:
            (after,) = _decode_cursor(page_token, 1)
            query = query.where(Account.username > after)
        query = query.order_by(Account.username).limit(page_size + 1)
        with self._transaction(write=False) as s:
            accounts = list(s.scalars(query).all())
            next_token = ""
            if len(accounts) > page_size:
                accounts = accounts[:page_size]
                next_token = _encode_cursor(accounts[-1].username)
            return self._account_views(s, accounts, now), next_token

    def _account_views(
        self, s: Session, accounts: Sequence[Account], now: datetime
    ) -> list[AccountView]:
        ids = [acc.id for acc in accounts]
        log = ActionLogEntry
        counts = s.execute(
            select(
                log.account_id,
                func.count().filter(log.created_at > now - HOUR),
                func.count(),
            )
            .where(log.account_id.in_(ids), log.created_at > now - DAY)
            .group_by(log.account_id)
        ).all()
        by_id = {row[0]: (row[1], row[2]) for row in counts}
        return [AccountView(acc, *by_id.get(acc.id, (0, 0))) for acc in accounts]

    # Queue statistics.

    def stats(self, now: datetime) -> Stats:
        with self._transaction(write=False) as s:
            by_state = dict(
                s.execute(select(Job.state, func.count()).group_by(Job.state)).all()
            )
            due, oldest = s.execute(
                select(func.count(), func.min(Job.available_at)).where(
                    Job.state == PENDING, Job.available_at <= now
                )
            ).one()
            waiting = s.scalar(
                select(func.count()).where(
                    Job.state == PENDING, Job.pending_reason != ""
                )
            )
            accounts = dict(
                s.execute(
                    select(Account.state, func.count()).group_by(Account.state)
                ).all()
            )
            busy = s.scalar(
                select(func.count()).where(Account.busy_job_id.is_not(None))
            )
            actions = s.scalar(
                select(func.count()).where(ActionLogEntry.created_at > now - HOUR)
            )
        return Stats(
            jobs_by_state=by_state,
            due=due or 0,
            waiting_for_workforce=waiting or 0,
            oldest_due_at=oldest,
            accounts_by_state=accounts,
            accounts_busy=busy or 0,
            actions_last_hour=actions or 0,
        )

    def restore_cooled_accounts(self, now: datetime) -> int:
        """Accounts whose cooldown ended become ACTIVE again."""
        with self._transaction() as s:
            result = s.execute(
                update(Account)
                .where(Account.state == COOLDOWN, Account.cooldown_until <= now)
                .values(
                    state=ACTIVE, state_reason="", state_changed_at=now, updated_at=now
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount:
                self._wake_waiting_jobs(s, now)
                self._notify(s, "work")
            return result.rowcount or 0
