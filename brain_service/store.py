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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import (
    Engine,
    and_,
    create_engine,
    event,
    exists,
    func,
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
    FINAL_STATES,
    LEASED,
    PENDING,
    Decision,
    account_change,
    decide_completion,
    decide_expired,
)
from brain_service.settings import SettingError
from brain_service.vault import Vault

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

# PostgreSQL channel on which replicas tell each other about job changes.
NOTIFY_CHANNEL = "barter_jobs"


# Validated request values the store accepts.


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
class ClaimedJob:
    job: Job
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
    engine = create_engine(url, connect_args={"timeout": 5.0})

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
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

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
    if len(parts) != count:
        raise InvalidArgument("page_token", "not a token from a previous reply")
    return parts


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
        try:
            with maker.begin() as session:
                yield session
        except IntegrityError:
            raise
        except DBAPIError as exc:
            raise StoreUnavailable(
                f"store unavailable: {type(exc.orig).__name__}: {exc.orig}"
            ) from exc

    def _locked(self, stmt):  # noqa: ANN001, ANN202 - a Select in, a Select out
        """Row locks that concurrent claimers skip, where the store has them."""
        if self._is_postgres:
            return stmt.with_for_update(skip_locked=True)
        return stmt

    # Jobs: submit, claim, renew, finish, reclaim.

    def submit_jobs(
        self, specs: Sequence[JobSpecIn], now: datetime
    ) -> list[tuple[JobView, bool]]:
        """Store new jobs, or return the existing job for a known idempotency key."""
        try:
            return self._submit_jobs(specs, now)
        except IntegrityError:
            # Another replica stored the same key between our check and insert;
            # the second pass finds it.
            return self._submit_jobs(specs, now)

    def _submit_jobs(
        self, specs: Sequence[JobSpecIn], now: datetime
    ) -> list[tuple[JobView, bool]]:
        results: list[tuple[JobView, bool]] = []
        with self._transaction() as s:
            keys = [spec.idempotency_key for spec in specs if spec.idempotency_key]
            known = {
                job.idempotency_key: job
                for job in s.scalars(select(Job).where(Job.idempotency_key.in_(keys)))
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
                job = Job(
                    id=str(uuid.uuid4()),
                    idempotency_key=spec.idempotency_key,
                    action=spec.action,
                    target=spec.target,
                    tier=tier.name,
                    priority=tier.priority,
                    size=tier.size,
                    state=PENDING,
                    attempts=0,
                    max_attempts=spec.max_attempts or self.config.max_attempts,
                    available_at=now,
                    cancel_requested=False,
                    steps_done=0,
                    progress_message="",
                    pending_reason="",
                    last_error_code="",
                    last_error_message="",
                    created_at=now,
                    updated_at=now,
                )
                s.add(job)
                s.add_all(
                    Step(
                        job_id=job.id,
                        index=index,
                        finished=False,
                        outcome="",
                        error_code="",
                        error_message="",
                        updated_at=now,
                    )
                    for index in range(tier.size)
                )
                if spec.idempotency_key:
                    known[spec.idempotency_key] = job
                results.append((JobView(job), True))
            self._notify(s, "work", sum(1 for _, created in results if created))
        return results

    def claim_jobs(self, worker_id: str, max_jobs: int, now: datetime) -> Claim:
        """Lease up to `max_jobs` due jobs whose workforce is free."""
        with self._transaction() as s:
            reclaimed = self._reclaim_expired(s, now)

            # Why two claimers never get the same job or account: on SQLite
            # this transaction holds the database's single write lock from
            # BEGIN IMMEDIATE to COMMIT, so nothing else writes in between; on
            # PostgreSQL the job and account rows are locked FOR UPDATE SKIP
            # LOCKED, so a concurrent claimer passes over them instead.
            candidates = s.scalars(
                self._locked(
                    select(Job)
                    .where(Job.state == PENDING, Job.available_at <= now)
                    .order_by(Job.priority.desc(), Job.available_at, Job.created_at)
                    .limit(max_jobs + 8)
                )
            ).all()

            claimed: list[ClaimedJob] = []
            for job in candidates:
                if len(claimed) == max_jobs:
                    break
                leased = self._lease_job(s, job, worker_id, now)
                if leased is not None:
                    claimed.append(leased)

            next_due_at = None
            if not claimed:
                next_due_at = s.scalar(
                    select(func.min(Job.available_at)).where(Job.state == PENDING)
                )
        return Claim(claimed, reclaimed, next_due_at)

    def _lease_job(
        self, s: Session, job: Job, worker_id: str, now: datetime
    ) -> ClaimedJob | None:
        steps = s.scalars(
            select(Step)
            .where(Step.job_id == job.id, Step.finished.is_(False))
            .order_by(Step.index)
        ).all()
        accounts = self._free_accounts(s, job, len(steps), now)
        if len(accounts) < len(steps):
            job.pending_reason = (
                f"waiting for accounts: {len(steps)} needed, {len(accounts)} free"
            )
            job.available_at = now + timedelta(seconds=self.config.workforce_recheck_s)
            job.updated_at = now
            return None

        for step, account in zip(steps, accounts, strict=True):
            step.account_id = account.id
            step.updated_at = now
            account.busy_job_id = job.id
            if account.state == COOLDOWN:
                account.state, account.state_reason = ACTIVE, ""
                account.state_changed_at = now
            account.updated_at = now

        job.state = LEASED
        job.lease_token = secrets.token_hex(16)
        job.attempts += 1
        job.worker_id = worker_id
        job.lease_deadline = now + self.config.lease_ttl
        job.pending_reason = ""
        job.outcome = None
        job.updated_at = now

        views = [
            StepView(st.index, acc.username, False, "", "", "")
            for st, acc in zip(steps, accounts, strict=True)
        ]
        sessions = [
            SessionOut(
                username=acc.username,
                settings=self.vault.open(acc.settings_enc) if acc.settings_enc else b"",
                password=(
                    self.vault.open(acc.password_enc).decode()
                    if acc.password_enc
                    else ""
                ),
            )
            for acc in accounts
        ]
        return ClaimedJob(job, views, sessions)

    def _free_accounts(
        self, s: Session, job: Job, count: int, now: datetime
    ) -> Sequence[Account]:
        """Accounts that may take one step of `job` now, least recently used first."""
        if count == 0:
            return []
        log = ActionLogEntry
        acted_on_target = exists().where(
            log.account_id == Account.id,
            log.action == job.action,
            log.target == job.target,
            log.result.in_(FINISHED_RESULTS),
        )

        def actions_since(since: datetime):  # noqa: ANN202 - a scalar subquery
            return (
                select(func.count())
                .where(log.account_id == Account.id, log.created_at > since)
                .scalar_subquery()
            )

        gap = timedelta(seconds=self.config.account_min_gap_s)
        query = (
            select(Account)
            .where(
                or_(
                    Account.state == ACTIVE,
                    and_(Account.state == COOLDOWN, Account.cooldown_until <= now),
                ),
                Account.busy_job_id.is_(None),
                or_(
                    Account.last_action_at.is_(None),
                    Account.last_action_at <= now - gap,
                ),
                ~acted_on_target,
                actions_since(now - HOUR) < self.config.account_max_per_hour,
                actions_since(now - DAY) < self.config.account_max_per_day,
            )
            .order_by(Account.last_action_at.asc().nulls_first(), Account.id)
            .limit(count)
        )
        return s.scalars(self._locked(query)).all()

    def renew_lease(
        self,
        job_id: str,
        token: str,
        message: str,
        results: Sequence[StepResultIn],
        sessions: Sequence[SessionIn],
        now: datetime,
    ) -> Renewal:
        """Extend a lease and record the steps finished since the last update."""
        deadline = now + self.config.lease_ttl
        with self._transaction() as s:
            # The token check and the renewal are one statement: a worker whose
            # lease was handed on can never extend or write to the new holder's.
            row = s.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.lease_token == token,
                    Job.state == LEASED,
                    Job.lease_deadline >= now,
                )
                .values(
                    lease_deadline=deadline, progress_message=message, updated_at=now
                )
                .returning(Job.cancel_requested)
                .execution_options(synchronize_session=False)
            ).first()
            if row is None:
                raise self._why_lease_lost(s, job_id, now)
            job = s.get_one(Job, job_id)
            newly = self._record_results(s, job, results, now)
            self._store_sessions(s, job_id, sessions, now)
        return Renewal(deadline, bool(row.cancel_requested), newly)

    def finish_job(
        self,
        job_id: str,
        token: str,
        outcome: str,
        results: Sequence[StepResultIn],
        error_code: str,
        error_message: str,
        sessions: Sequence[SessionIn],
        now: datetime,
    ) -> Finish:
        """Apply a worker's final word; a repeat of the same word changes nothing."""
        with self._transaction() as s:
            job = s.scalar(self._for_update(select(Job).where(Job.id == job_id)))
            if job is None:
                raise NotFound(f"job_id: no job {job_id}")
            if job.lease_token != token:
                raise self._why_lease_lost(s, job_id, now)
            if job.state != LEASED:
                if job.outcome == outcome:
                    available = job.available_at if job.state == PENDING else None
                    return Finish(job.state, available, repeated=True, decision=None)
                raise LeaseLost(
                    f"job {job_id} was already completed as {job.outcome}; "
                    f"{outcome} refused"
                )
            if job.lease_deadline is None or job.lease_deadline < now:
                raise LeaseLost(
                    f"lease on job {job_id} expired at {job.lease_deadline}"
                )

            self._record_results(s, job, results, now)
            self._store_sessions(s, job_id, sessions, now)
            unfinished = list(
                s.scalars(
                    select(Step.index)
                    .where(Step.job_id == job_id, Step.finished.is_(False))
                    .order_by(Step.index)
                )
            )
            decision = decide_completion(
                outcome,
                unfinished,
                job.attempts,
                job.max_attempts,
                job.cancel_requested,
                error_code,
                error_message,
                self.config,
                now,
            )
            self._end_lease(s, job, decision, now)
            job.outcome = outcome
            self._notify(s, "work")
        return Finish(decision.state, decision.available_at, False, decision)

    def reclaim_expired(self, now: datetime) -> list[Reclaimed]:
        """Take back every lease whose deadline passed (the one shared rule)."""
        with self._transaction() as s:
            return self._reclaim_expired(s, now)

    def _reclaim_expired(self, s: Session, now: datetime) -> list[Reclaimed]:
        expired = s.scalars(
            self._locked(
                select(Job).where(Job.state == LEASED, Job.lease_deadline < now)
            )
        ).all()
        reclaimed = []
        for job in expired:
            worker_id = job.worker_id or ""
            decision = decide_expired(
                job.attempts, job.max_attempts, job.cancel_requested, now
            )
            self._end_lease(s, job, decision, now)
            # A lease that expired has no holder: nobody may complete it now.
            job.lease_token = None
            job.outcome = None
            reclaimed.append(Reclaimed(job.id, job.attempts, worker_id, decision.state))
        if reclaimed:
            self._notify(s, "work")
        return reclaimed

    def _end_lease(
        self, s: Session, job: Job, decision: Decision, now: datetime
    ) -> None:
        """Free the job's accounts and unfinished steps and set its next state."""
        s.execute(
            update(Account)
            .where(Account.busy_job_id == job.id)
            .values(busy_job_id=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        s.execute(
            update(Step)
            .where(Step.job_id == job.id, Step.finished.is_(False))
            .values(account_id=None)
            .execution_options(synchronize_session=False)
        )
        job.state = decision.state
        job.lease_deadline = None
        job.worker_id = None
        job.updated_at = now
        if decision.error_code or decision.state == "SUCCEEDED":
            job.last_error_code = decision.error_code
            job.last_error_message = decision.error_message[:1000]
        if decision.state == PENDING:
            job.available_at = decision.available_at or now
        else:
            job.finished_at = now
        self._wake_waiting_jobs(s, now)

    def _wake_waiting_jobs(self, s: Session, now: datetime) -> None:
        """Jobs that waited for accounts are due again once accounts free up."""
        s.execute(
            update(Job)
            .where(
                Job.state == PENDING, Job.pending_reason != "", Job.available_at > now
            )
            .values(available_at=now)
            .execution_options(synchronize_session=False)
        )

    def _for_update(self, stmt):  # noqa: ANN001, ANN202 - a Select in, a Select out
        if self._is_postgres:
            return stmt.with_for_update()
        return stmt

    def _why_lease_lost(self, s: Session, job_id: str, now: datetime) -> Exception:
        job = s.get(Job, job_id)
        if job is None:
            return NotFound(f"job_id: no job {job_id}")
        if job.state == LEASED and job.lease_deadline and job.lease_deadline < now:
            return LeaseLost(f"lease on job {job_id} expired at {job.lease_deadline}")
        return LeaseLost(
            f"lease_token: not the current lease of job {job_id} "
            f"(the job is {job.state}; the lease expired or was handed on)"
        )

    def _record_results(
        self, s: Session, job: Job, results: Sequence[StepResultIn], now: datetime
    ) -> int:
        """Log step attempts and apply their effect on steps and accounts."""
        if not results:
            return 0
        indices = {r.step_index for r in results}
        steps = {
            st.index: st
            for st in s.scalars(
                select(Step).where(Step.job_id == job.id, Step.index.in_(indices))
            )
        }
        account_ids = {st.account_id for st in steps.values() if st.account_id}
        accounts = {
            acc.id: acc
            for acc in s.scalars(select(Account).where(Account.id.in_(account_ids)))
        }

        newly_finished = 0
        for i, result in enumerate(results):
            step = steps.get(result.step_index)
            if step is None:
                raise InvalidArgument(
                    f"results[{i}].step_index", f"job has no step {result.step_index}"
                )
            if step.finished:
                continue  # reported before: a retried update or a repeat
            account = accounts.get(step.account_id) if step.account_id else None
            if account is None or account.username != result.account_username:
                assigned = account.username if account else "no account"
                raise InvalidArgument(
                    f"results[{i}].account_username",
                    f"step {step.index} is assigned to {assigned}",
                )

            self._log_action(s, job, step.index, account, result, now)
            step.outcome = result.outcome
            step.error_code = result.error_code
            step.error_message = result.error_message
            step.updated_at = now
            if result.outcome in FINISHED_RESULTS:
                step.finished = True
                newly_finished += 1
            self._apply_account_change(account, result, now)

        if newly_finished:
            job.steps_done += newly_finished
            job.updated_at = now
        return newly_finished

    def _log_action(
        self,
        s: Session,
        job: Job,
        step_index: int,
        account: Account,
        result: StepResultIn,
        now: datetime,
    ) -> None:
        insert = postgresql.insert if self._is_postgres else sqlite.insert
        s.execute(
            insert(ActionLogEntry)
            .values(
                job_id=job.id,
                step_index=step_index,
                attempt=job.attempts,
                account_id=account.id,
                account_username=account.username,
                target=job.target,
                action=job.action,
                tier=job.tier,
                result=result.outcome,
                error_code=result.error_code,
                error=result.error_message,
                worker_id=job.worker_id or "",
                created_at=now,
            )
            # The unique effect keys make a second record of the same effect a
            # no-op rather than an error.
            .on_conflict_do_nothing()
        )

    def _apply_account_change(
        self, account: Account, result: StepResultIn, now: datetime
    ) -> None:
        change = account_change(
            result.outcome,
            result.error_code,
            result.error_message,
            account.throttle_streak,
            self.config,
            now,
        )
        if change.acted:
            account.last_action_at = now
        if change.throttle_streak is not None:
            account.throttle_streak = change.throttle_streak
        if change.state is not None:
            account.state = change.state
            account.state_reason = change.reason
            account.state_changed_at = now
            account.cooldown_until = change.cooldown_until
        account.updated_at = now

    def _store_sessions(
        self, s: Session, job_id: str, sessions: Sequence[SessionIn], now: datetime
    ) -> None:
        for i, session in enumerate(sessions):
            account = s.scalar(
                select(Account).where(Account.username == session.username)
            )
            if account is None or account.busy_job_id != job_id:
                raise InvalidArgument(
                    f"refreshed_sessions[{i}].username",
                    f"{session.username} is not working on job {job_id}",
                )
            account.settings_enc = self.vault.seal(session.settings)
            account.updated_at = now

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
                created_at = datetime.fromisoformat(created)
            except ValueError:
                raise InvalidArgument(
                    "page_token", "not a token from a previous reply"
                ) from None
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

    def actions_for_job(self, job_id: str) -> list[ActionLogEntry]:
        with self._transaction(write=False) as s:
            return list(
                s.scalars(
                    select(ActionLogEntry)
                    .where(ActionLogEntry.job_id == job_id)
                    .order_by(ActionLogEntry.id)
                )
            )

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


__all__ = [
    "AccountIn",
    "Claim",
    "FINAL_STATES",
    "JobSpecIn",
    "SessionIn",
    "StepResultIn",
    "Store",
]
