"""The Hands worker: claim jobs, perform their steps, keep their leases, report.

A `Worker` runs one claimer task and up to `concurrency` job tasks. The
claimer asks Brain for as many jobs as there are free slots (at most
MAX_CLAIM_BATCH per ClaimJob) and starts each job it gets as its own task;
when every slot is busy it waits for one to free up. A job task performs the
steps through the executor while a heartbeat task keeps the lease alive on
the job's progress stream, then completes the job through the client's
completion batcher, which sends the completions of jobs that end together
in one CompleteJobs call. All tasks are named ("claimer", "job-<id>"); one
that dies unexpectedly stops the worker with exit code 1 rather than leaving
it half-alive.

Shutdown: the first `shutdown()` drains (stop claiming at once, finish the
running jobs); a second one, or the drain timeout, hands running jobs back to
Brain as RETRY with error_code "worker_shutdown".
"""

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from barter.v1 import common_pb2, jobs_pb2
from hands_service.brain_client import (
    MAX_CLAIM_BATCH,
    Backoff,
    BrainClient,
    BrainRejected,
    BrainUnavailable,
    LeaseLost,
    ProgressStream,
    open_channel,
)
from hands_service.config import HandsConfig
from hands_service.executor import (
    AccountSession,
    Executor,
    JobContext,
    StepOutcome,
    StepReport,
)

log = structlog.get_logger("hands_service.worker")

T = TypeVar("T")

# Never heartbeat more often than this, however close the deadline.
MIN_HEARTBEAT_S = 0.05
# Longest wait for one completion's answer (it may share a CompleteJobs call);
# retries continue until the lease deadline.
COMPLETE_CALL_TIMEOUT_S = 10.0
# After a task crash, how long the other jobs get to hand themselves back.
CRASH_HAND_BACK_S = 5.0

ERROR_CODE_MAX = 64
ERROR_MESSAGE_MAX = 1000

_RETRYABLE_OUTCOMES = (
    StepOutcome.THROTTLED,
    StepOutcome.ACCOUNT_NEEDS_OWNER,
    StepOutcome.TRANSIENT,
)


def make_worker_id() -> str:
    """An id unique to this process start: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"[-128:]


# --- The outcome decision ----------------------------------------------------


@dataclass(frozen=True)
class JobFacts:
    """What a finished run of a job knows, and nothing else."""

    steps_claimed: int
    # One report per step performed, in order; steps not reached have none.
    reports: tuple[StepReport, ...]
    cancel_requested: bool = False
    # The lease was lost (or Brain refused our progress): the job is not ours.
    lease_lost: bool = False
    shutting_down: bool = False


@dataclass(frozen=True)
class Verdict:
    """How to end a job: an Outcome for CompleteJob, or None to not complete."""

    outcome: "jobs_pb2.Outcome.ValueType | None"
    error_code: str = ""
    error_message: str = ""


def decide_outcome(facts: JobFacts) -> Verdict:
    """The one place that turns a run's facts into its CompleteJob outcome."""
    if facts.lease_lost:
        return Verdict(None, "lease_lost")
    if len(facts.reports) == facts.steps_claimed and all(
        r.outcome.finished for r in facts.reports
    ):
        return Verdict(jobs_pb2.OUTCOME_SUCCEEDED)
    if facts.cancel_requested:
        return Verdict(jobs_pb2.OUTCOME_CANCELLED, "cancelled", "cancel requested")
    for report in facts.reports:
        if report.outcome is StepOutcome.TARGET_INVALID:
            return Verdict(
                jobs_pb2.OUTCOME_FAILED,
                report.error_code or "target_invalid",
                report.error_message,
            )
    if facts.shutting_down:
        return Verdict(
            jobs_pb2.OUTCOME_RETRY,
            "worker_shutdown",
            "the worker shut down before the job finished",
        )
    for report in facts.reports:
        if report.outcome in _RETRYABLE_OUTCOMES:
            return Verdict(
                jobs_pb2.OUTCOME_RETRY,
                report.error_code or report.outcome.name.lower(),
                report.error_message,
            )
    return Verdict(
        jobs_pb2.OUTCOME_RETRY, "steps_unfinished", "the run ended with steps left"
    )


def keeps_going(reports: Iterable[StepReport]) -> bool:
    """Whether the remaining steps are still worth doing after these reports."""
    return all(r.outcome is not StepOutcome.TARGET_INVALID for r in reports)


# --- One job's state ---------------------------------------------------------


def _timestamp_now() -> Timestamp:
    # From integer nanoseconds: Timestamp.GetCurrentTime goes through a
    # datetime and showed up in the worker's profile at full load.
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos)


def _monotonic_deadline(deadline: Timestamp) -> float:
    # Brain's deadline is wall-clock; held as monotonic so that a local clock
    # step cannot shorten or stretch it.
    return time.monotonic() + (deadline.ToNanoseconds() / 1e9 - time.time())


def _session_message(session: AccountSession) -> common_pb2.AccountSession:
    return common_pb2.AccountSession(
        username=session.username, settings=session.settings, password=session.password
    )


class JobRun:
    """The mutable state of one claimed job while this worker holds it."""

    def __init__(self, claimed: jobs_pb2.ClaimedJob, stream: ProgressStream) -> None:
        self.claimed = claimed
        self.stream = stream
        self.deadline_mono = _monotonic_deadline(claimed.lease.deadline)
        self.accounts = {s.account_username for s in claimed.steps}
        self.reports: list[StepReport] = []
        self.done = claimed.steps_done
        self.message = ""
        # Sent with every update until one is acknowledged, and with CompleteJob.
        self.unreported: list[common_pb2.StepResult] = []
        self.refreshed: dict[str, AccountSession] = {}
        self.cancel_requested = False
        self.lease_lost = False
        # Set once the steps are over, so the heartbeat ends even if its
        # cancellation is lost (asyncio.wait_for can swallow one on 3.11).
        self.steps_over = False

    @property
    def job_id(self) -> str:
        return self.claimed.job_id

    @property
    def token(self) -> str:
        return self.claimed.lease.token

    def remaining_s(self) -> float:
        """Seconds until the lease runs out unless renewed."""
        return self.deadline_mono - time.monotonic()

    def lose_lease(self, reason: str, detail: str = "") -> None:
        """Mark the job as no longer ours; logged once."""
        if not self.lease_lost:
            self.lease_lost = True
            log.warning("lease_lost", reason=reason, detail=detail)

    def should_stop(self) -> bool:
        """Whether to stop before the next step."""
        if not self.lease_lost and self.remaining_s() <= 0:
            self.lose_lease("deadline_passed")
        return self.lease_lost or self.cancel_requested or not keeps_going(self.reports)

    def record(self, step: common_pb2.Step, report: StepReport) -> None:
        """Remember a performed step and queue its result for Brain."""
        self.reports.append(report)
        if report.outcome.finished:
            self.done += 1
        self.message = f"step {step.index} by {step.account_username}: " + (
            report.outcome.name
        )
        self.unreported.append(
            common_pb2.StepResult(
                step_index=step.index,
                account_username=step.account_username,
                outcome=int(report.outcome),
                error_code=report.error_code[:ERROR_CODE_MAX],
                error_message=report.error_message[:ERROR_MESSAGE_MAX],
                finished_at=_timestamp_now(),
            )
        )

    def next_update(self) -> jobs_pb2.ProgressUpdate:
        """An update carrying everything not yet acknowledged."""
        return jobs_pb2.ProgressUpdate(
            job_id=self.job_id,
            lease_token=self.token,
            done=self.done,
            total=self.claimed.steps_total,
            message=self.message[:ERROR_MESSAGE_MAX],
            results=self.unreported,
            refreshed_sessions=[_session_message(s) for s in self.refreshed.values()],
        )

    def acknowledged(
        self, update: jobs_pb2.ProgressUpdate, ack: jobs_pb2.ProgressAck
    ) -> None:
        """Apply an ack: renew the deadline, drop what it confirmed, note cancel."""
        if ack.HasField("deadline"):
            self.deadline_mono = _monotonic_deadline(ack.deadline)
        # The heartbeat and the step loop may have built updates with the same
        # results; drop exactly the steps this ack confirmed.
        confirmed = {r.step_index for r in update.results}
        self.unreported = [r for r in self.unreported if r.step_index not in confirmed]
        for sent in update.refreshed_sessions:
            current = self.refreshed.get(sent.username)
            if current is not None and current.settings == sent.settings:
                del self.refreshed[sent.username]
        if ack.cancel and not self.cancel_requested:
            self.cancel_requested = True
            log.info("cancel_requested")

    def complete_request(self, verdict: Verdict) -> jobs_pb2.CompleteJobRequest:
        """The CompleteJob request for `verdict`, with everything unreported."""
        return jobs_pb2.CompleteJobRequest(
            job_id=self.job_id,
            lease_token=self.token,
            outcome=verdict.outcome,
            results=self.unreported,
            error_code=verdict.error_code[:ERROR_CODE_MAX],
            error_message=verdict.error_message[:ERROR_MESSAGE_MAX],
            refreshed_sessions=[_session_message(s) for s in self.refreshed.values()],
        )


# --- The worker ----------------------------------------------------------------


class Worker:
    """Claims and runs jobs until shut down; `run()` returns the exit code."""

    def __init__(
        self, config: HandsConfig, executor: Executor, worker_id: str = ""
    ) -> None:
        self.config = config
        self.executor = executor
        self.worker_id = worker_id or make_worker_id()
        self._draining = asyncio.Event()
        self._aborting = asyncio.Event()
        self._drain_timer: asyncio.TimerHandle | None = None
        self._runs: dict[str, JobRun] = {}
        self._client: BrainClient | None = None
        # The claimer and the job tasks; a task leaves the set when it ends.
        self._tasks: set[asyncio.Task[None]] = set()
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        # Set when a task crashed, or when the last task ended after a drain.
        self._settled = asyncio.Event()
        self._crashed = False

    # --- lifecycle -------------------------------------------------------------

    async def run(self) -> int:
        """Run until drained (0) or until a background task dies (1)."""
        with structlog.contextvars.bound_contextvars(worker_id=self.worker_id):
            log.info(
                "worker_started",
                brain_url=self.config.brain_url,
                concurrency=self.config.concurrency,
                mode="poll" if self.config.poll_interval_s > 0 else "long-poll",
                executor=type(self.executor).__name__,
            )
            channel = open_channel(self.config)
            try:
                self._client = BrainClient(channel, self.config.read_api_key())
                exit_code = await self._supervise()
            finally:
                if self._drain_timer is not None:
                    self._drain_timer.cancel()
                if self._client is not None:
                    await self._client.close()
                await channel.close()
                await self.executor.close()
            log.info("worker_stopped", exit_code=exit_code)
            return exit_code

    def shutdown(self) -> None:
        """First call: drain. Second call: hand the running jobs back now."""
        if self._draining.is_set():
            self._hand_back("second_signal")
            return
        self._draining.set()
        # Called from a signal handler, outside run()'s bound context.
        log.info(
            "worker_draining",
            worker_id=self.worker_id,
            running_jobs=len(self._runs),
            drain_timeout_s=self.config.drain_timeout_s,
        )
        self._drain_timer = asyncio.get_running_loop().call_later(
            self.config.drain_timeout_s, self._hand_back, "drain_timeout"
        )

    def _hand_back(self, reason: str) -> None:
        if not self._aborting.is_set():
            self._draining.set()
            self._aborting.set()
            log.warning(
                "worker_handing_back",
                worker_id=self.worker_id,
                reason=reason,
                running_jobs=len(self._runs),
            )

    async def _supervise(self) -> int:
        self._start_task(self._claim_jobs(), "claimer")
        try:
            await self._settled.wait()
            if not self._crashed:
                return 0
            # Let the other jobs hand themselves back before going down.
            self._hand_back("task_crashed")
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=CRASH_HAND_BACK_S)
            return 1
        finally:
            left = list(self._tasks)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

    def _start_task(
        self, work: Coroutine[Any, Any, None], name: str
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task in self._job_tasks:
            self._job_tasks.discard(task)
            self._slot_freed.set()
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self._crashed = True
            log.error(
                "worker_task_crashed",
                task=task.get_name(),
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
        # The claimer stays in the set until draining ends it, so an empty set
        # means the drain is over.
        if exc is not None or not self._tasks:
            self._settled.set()

    async def _unless_draining(self, work: Awaitable[T]) -> tuple[bool, T | None]:
        """Await `work` unless draining starts first; then cancel it.

        Returns (True, result) when `work` finished, (False, None) otherwise.
        """
        task = asyncio.ensure_future(work)
        drain = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait({task, drain}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
            if not task.done():
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            return False, None
        return True, task.result()

    # --- claiming --------------------------------------------------------------

    async def _claim_jobs(self) -> None:
        assert self._client is not None
        polling = self.config.poll_interval_s > 0
        wait_s = 0.0 if polling else self.config.claim_wait_s
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while not self._draining.is_set():
            free = self.config.concurrency - len(self._job_tasks)
            if free <= 0:
                # Cleared and awaited with no await in between, so a job that
                # ends after the count above is not missed.
                self._slot_freed.clear()
                await self._unless_draining(self._slot_freed.wait())
                continue
            try:
                claimed, jobs = await self._unless_draining(
                    self._client.claim(
                        self.worker_id, wait_s, max_jobs=min(free, MAX_CLAIM_BATCH)
                    )
                )
            except BrainUnavailable as exc:
                delay_s = backoff.next_delay_s()
                log.warning(
                    "brain_unreachable",
                    call="ClaimJob",
                    error=str(exc),
                    retry_in_s=round(delay_s, 3),
                )
                await self._unless_draining(asyncio.sleep(delay_s))
                continue
            if not claimed:
                return
            backoff.reset()

            if not jobs:
                log.debug("claim_empty", free_slots=free, wait_s=wait_s)
                if polling:
                    await self._unless_draining(
                        asyncio.sleep(self.config.poll_interval_s)
                    )
                continue
            # Every job in the reply is leased to us, even one beyond `free` or
            # one that arrived as draining began: run it rather than let its
            # lease lapse.
            for job in jobs:
                task = self._start_task(self._run_job(job), f"job-{job.job_id}")
                self._job_tasks.add(task)

    # --- running one job -------------------------------------------------------

    async def _run_job(self, claimed: jobs_pb2.ClaimedJob) -> None:
        assert self._client is not None
        run = JobRun(claimed, self._client.progress_stream())
        self._runs[run.job_id] = run
        with structlog.contextvars.bound_contextvars(
            job_id=claimed.job_id, attempt=claimed.lease.attempt
        ):
            try:
                log.info(
                    "job_claimed",
                    action=common_pb2.Action.Name(claimed.action),
                    target=claimed.target,
                    tier=claimed.tier,
                    steps=len(claimed.steps),
                    steps_done=claimed.steps_done,
                    steps_total=claimed.steps_total,
                    lease_remaining_s=round(run.remaining_s(), 3),
                )
                await self._drive(run)
                verdict = decide_outcome(
                    JobFacts(
                        steps_claimed=len(claimed.steps),
                        reports=tuple(run.reports),
                        cancel_requested=run.cancel_requested,
                        lease_lost=run.lease_lost,
                        shutting_down=self._aborting.is_set(),
                    )
                )
                self._route_refreshed_sessions()
                await self._complete(run, verdict)
            finally:
                # A re-claim of this job (after our lease lapsed) may be running
                # under the same id; leave its entry alone.
                if self._runs.get(run.job_id) is run:
                    del self._runs[run.job_id]
                await run.stream.close()

    async def _drive(self, run: JobRun) -> None:
        """Run the steps with a heartbeat beside them until done or handed back."""
        steps = asyncio.create_task(
            self._perform_steps(run), name=f"steps-{run.job_id}"
        )
        heartbeat = asyncio.create_task(
            self._heartbeat(run), name=f"heartbeat-{run.job_id}"
        )
        hand_back = asyncio.create_task(
            self._aborting.wait(), name=f"hand-back-{run.job_id}"
        )
        watched = {steps, heartbeat, hand_back}
        try:
            while not steps.done():
                done, watched = await asyncio.wait(
                    watched, return_when=asyncio.FIRST_COMPLETED
                )
                if hand_back in done:
                    steps.cancel()
                    break
                if heartbeat in done and heartbeat.exception() is not None:
                    raise heartbeat.exception()
            await asyncio.wait({steps})
            if not steps.cancelled() and steps.exception() is not None:
                raise steps.exception()
        finally:
            run.steps_over = True
            for task in (steps, heartbeat, hand_back):
                task.cancel()
            await asyncio.gather(steps, heartbeat, hand_back, return_exceptions=True)

    async def _perform_steps(self, run: JobRun) -> None:
        claimed = run.claimed
        context = JobContext(job_id=claimed.job_id, target=claimed.target)
        sessions = {s.username: s for s in claimed.sessions}
        for position, step in enumerate(claimed.steps):
            if run.should_stop():
                return
            report = await self._perform(claimed.action, context, step, sessions)
            run.record(step, report)
            log.info(
                "step_finished",
                step_index=step.index,
                account=step.account_username,
                outcome=report.outcome.name,
                error_code=report.error_code,
            )
            self._route_refreshed_sessions()
            # A finished step is on record before the next effect starts; the
            # last step's result rides on CompleteJob instead, which saves a
            # round trip per job.
            if position + 1 < len(claimed.steps) and not run.should_stop():
                await self._renew(run)

    async def _perform(
        self,
        action: "common_pb2.Action.ValueType",
        context: JobContext,
        step: common_pb2.Step,
        sessions: dict[str, common_pb2.AccountSession],
    ) -> StepReport:
        acts: dict[int, Callable[..., Awaitable[StepReport]]] = {
            common_pb2.ACTION_FOLLOW: self.executor.follow,
            common_pb2.ACTION_UNFOLLOW: self.executor.unfollow,
        }
        act = acts.get(action)
        if act is None:
            return StepReport(
                StepOutcome.TRANSIENT,
                "unsupported_action",
                f"this worker cannot perform action {action}",
            )
        stored = sessions.get(step.account_username)
        if stored is None:
            return StepReport(
                StepOutcome.TRANSIENT,
                "session_missing",
                f"the claim carried no session for {step.account_username}",
            )
        account = AccountSession(
            username=stored.username, settings=stored.settings, password=stored.password
        )
        try:
            report = await act(context, account)
        except Exception as exc:
            # An executor must not raise; if one does, the step is worth a retry
            # and the worker carries on.
            log.warning(
                "step_raised",
                step_index=step.index,
                account=step.account_username,
                error_type=type(exc).__name__,
            )
            return StepReport(
                StepOutcome.TRANSIENT, type(exc).__name__, str(exc) or repr(exc)
            )
        if not isinstance(report, StepReport):
            return StepReport(
                StepOutcome.TRANSIENT,
                "bad_step_report",
                f"executor returned {type(report).__name__}, not a StepReport",
            )
        return report

    def _route_refreshed_sessions(self) -> None:
        # One executor serves every job, so each session goes to the run whose
        # steps use that account (an account is in at most one running job).
        for session in self.executor.take_refreshed_sessions():
            owner = next(
                (r for r in self._runs.values() if session.username in r.accounts),
                None,
            )
            if owner is None:
                log.warning("refreshed_session_dropped", account=session.username)
                continue
            owner.refreshed[session.username] = session

    # --- keeping the lease -----------------------------------------------------

    async def _heartbeat(self, run: JobRun) -> None:
        while not run.lease_lost and not run.steps_over:
            await asyncio.sleep(max(MIN_HEARTBEAT_S, run.remaining_s() / 3))
            if run.steps_over:
                return
            await self._renew(run)
            log.debug("heartbeat", lease_remaining_s=round(run.remaining_s(), 3))

    async def _renew(self, run: JobRun) -> None:
        """Send one update and apply its ack, retrying until the lease deadline."""
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while not run.lease_lost:
            remaining_s = run.remaining_s()
            if remaining_s <= 0:
                run.lose_lease("deadline_passed")
                return
            update = run.next_update()
            try:
                ack = await run.stream.send(update, timeout_s=remaining_s)
            except LeaseLost as exc:
                run.lose_lease("failed_precondition", str(exc))
                return
            except BrainRejected as exc:
                log.error("progress_rejected", code=exc.code.name, details=exc.details)
                run.lose_lease("progress_rejected")
                return
            except BrainUnavailable as exc:
                delay_s = min(backoff.next_delay_s(), max(run.remaining_s(), 0))
                log.warning(
                    "brain_unreachable",
                    call="StreamProgress",
                    error=str(exc),
                    retry_in_s=round(delay_s, 3),
                )
                await asyncio.sleep(delay_s)
                continue
            run.acknowledged(update, ack)
            return

    # --- ending the job --------------------------------------------------------

    async def _complete(self, run: JobRun, verdict: Verdict) -> None:
        """CompleteJob, retried while Brain is unreachable, until the deadline."""
        assert self._client is not None
        if verdict.outcome is None:
            return
        request = run.complete_request(verdict)
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while True:
            remaining_s = run.remaining_s()
            if remaining_s <= 0:
                run.lose_lease("deadline_passed_before_complete")
                return
            try:
                reply = await self._client.complete(
                    request, timeout_s=min(remaining_s, COMPLETE_CALL_TIMEOUT_S)
                )
                break
            except LeaseLost as exc:
                run.lose_lease("failed_precondition", str(exc))
                return
            except BrainRejected as exc:
                log.error("complete_rejected", code=exc.code.name, details=exc.details)
                return
            except BrainUnavailable as exc:
                delay_s = min(backoff.next_delay_s(), max(run.remaining_s(), 0))
                log.warning(
                    "brain_unreachable",
                    call="CompleteJobs",
                    error=str(exc),
                    retry_in_s=round(delay_s, 3),
                )
                await asyncio.sleep(delay_s)

        fields = {
            "outcome": jobs_pb2.Outcome.Name(verdict.outcome),
            "state": common_pb2.JobState.Name(reply.state),
            "error_code": verdict.error_code,
            "steps_done": run.done,
            "steps_total": run.claimed.steps_total,
        }
        if verdict.outcome == jobs_pb2.OUTCOME_CANCELLED:
            log.info("job_cancelled", **fields)
        elif reply.state == common_pb2.JOB_STATE_FAILED:
            log.error("job_completed", **fields)
        else:
            log.info("job_completed", **fields)
