"""The gRPC servicers: JobService for workers, AdminService for operators.

Handlers validate, call the store in a worker thread, ring the doorbells and
convert. Errors become status codes in one place, `abort_on_error`.
"""

import asyncio
import functools
import random
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.duration_pb2 import Duration

from barter.v1 import admin_pb2, admin_pb2_grpc, common_pb2, jobs_pb2, jobs_pb2_grpc
from brain_service import convert, validation
from brain_service.config import BrainConfig
from brain_service.doorbell import Doorbell
from brain_service.errors import (
    AlreadyExists,
    BrainError,
    InvalidArgument,
    LeaseLost,
    NotFound,
    SecretsUnavailable,
    StoreUnavailable,
    TooBusy,
    WrongState,
)
from brain_service.outcomes import FINAL_STATES
from brain_service.store import (
    Claim,
    ClaimedJob,
    ClaimOrder,
    CompletionIn,
    Reclaimed,
    Store,
    utcnow,
)

log = structlog.get_logger("brain")
T = TypeVar("T")


STATUS_FOR_ERROR: dict[type[BrainError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    LeaseLost: grpc.StatusCode.FAILED_PRECONDITION,
    WrongState: grpc.StatusCode.FAILED_PRECONDITION,
    SecretsUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    TooBusy: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _status(exc: BaseException, rpc: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, BrainError):
        code = STATUS_FOR_ERROR.get(type(exc), grpc.StatusCode.INTERNAL)
        if isinstance(exc, LeaseLost):
            log.warning("stale_write_refused", rpc=rpc, reason=str(exc))
        elif isinstance(exc, StoreUnavailable):
            log.warning("store_unavailable", rpc=rpc, reason=str(exc))
        else:
            log.debug("request_refused", rpc=rpc, code=code.name, reason=str(exc))
        return code, str(exc)
    log.error("rpc_crashed", rpc=rpc, exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error in the Brain; its log has details"


def abort_on_error(method: Callable[..., Any]) -> Callable[..., Any]:
    """Map Brain errors to status codes; never let a traceback reach a caller."""
    if getattr(method, "_streams", False):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every error becomes a status
                code, message = _status(exc, method.__name__)
            await context.abort(code, message)

        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            code, message = _status(exc, method.__name__)
        await context.abort(code, message)

    return unary_wrapper


def streams(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a handler that yields, for abort_on_error."""
    method._streams = True  # type: ignore[attr-defined]
    return method


class Hub:
    """What both servicers share: the store, its thread pool and the doorbells."""

    def __init__(self, store: Store, config: BrainConfig) -> None:
        self.store = store
        self.config = config
        # Rung when a job may have become claimable.
        self.work: Doorbell[ClaimOrder] = Doorbell()
        # Rung when any job changed, for watchers.
        self.changes: Doorbell[None] = Doorbell()
        self.stopping = False
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store")
        self._giving_back: set[asyncio.Future[None]] = set()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(fn, *args, **kwargs)
        )

    def job_changed(self, claimable: int | None = 0) -> None:
        """Tell watchers, and wake `claimable` long-polls (None: all)."""
        self.changes.ring()
        if claimable is None or claimable > 0:
            self.work.ring(claimable)

    def note_reclaimed(self, reclaimed: list[Reclaimed]) -> None:
        for item in reclaimed:
            level = log.error if item.state == "FAILED" else log.warning
            level(
                "lease_expired",
                job_id=item.job_id,
                attempt=item.attempt,
                worker_id=item.worker_id,
                new_state=item.state,
            )
        if reclaimed:
            self.job_changed(claimable=None)

    def hand_back(self, claim: Claim) -> None:
        """Hand back, in the background, jobs claimed for a caller now gone."""
        for claimed in claim.jobs:
            task = asyncio.ensure_future(self._give_back(claimed))
            # The loop keeps only weak references to tasks.
            self._giving_back.add(task)
            task.add_done_callback(self._giving_back.discard)

    async def _give_back(self, claimed: ClaimedJob) -> None:
        try:
            state = await self.run(
                self.store.hand_back, claimed.job.id, claimed.job.lease_token
            )
        except BrainError as exc:
            # The lease still expires and the sweeper takes the job back.
            log.warning(
                "claim_hand_back_failed", job_id=claimed.job.id, reason=str(exc)
            )
            return
        log.info(
            "claim_handed_back",
            job_id=claimed.job.id,
            state=state,
            reason="caller_gone",
        )
        self.job_changed(claimable=1)

    def submitted(
        self,
        taken: "tuple[asyncio.Future[Any], ClaimOrder] | None",
        running: "asyncio.Future[tuple[list[tuple[Any, bool]], Claim | None]]",
    ) -> None:
        """Once a submit's store call ends, however it ends (its own caller may
        have hung up): log it, settle the long-poll it took and wake one more
        per job it created beyond those."""
        created = delivered = 0
        claim = None
        if not running.cancelled() and running.exception() is None:
            results, claim = running.result()
            created = sum(1 for _, was_created in results if was_created)
            log.info("jobs_submitted", created=created, repeated=len(results) - created)
        if claim is not None:
            self.note_reclaimed(claim.reclaimed)
        if taken is not None:
            waiter = taken[0]
            if claim is None or not claim.jobs:
                if not waiter.done():
                    waiter.set_result(None)  # a plain ring: it looks for itself
            elif waiter.done():
                self.hand_back(claim)  # the long-poll ended meanwhile
            else:
                waiter.set_result(claim)
                delivered = len(claim.jobs)
        self.job_changed(claimable=max(created - delivered, 0))

    def on_peer_note(self, kind: str, count: int) -> None:
        """Another replica changed a job (PostgreSQL LISTEN/NOTIFY)."""
        self.job_changed(claimable=(count or None) if kind == "work" else 0)

    def stop(self) -> None:
        """Release every long-poll and watch so that shutdown is not held up."""
        self.stopping = True
        self.work.ring()
        self.changes.ring()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class JobApi(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.polls = 0

    @abort_on_error
    async def ClaimJob(
        self, request: jobs_pb2.ClaimJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ClaimJobResponse:
        hub = self.hub
        worker_id, wait_s, max_jobs = validation.claim_request(
            request, hub.config.max_wait_s
        )
        if wait_s > 0 and self.polls >= hub.config.max_concurrent_polls:
            raise TooBusy(
                f"{self.polls} long-polls already held (BRAIN_MAX_CONCURRENT_POLLS)"
            )

        loop = asyncio.get_running_loop()
        # A little less than asked, at random, so a fleet does not re-poll in step.
        deadline = loop.time() + wait_s * random.uniform(0.9, 1.0)
        order = ClaimOrder(worker_id, max_jobs)
        self.polls += 1
        bell: asyncio.Future[Any] | None = None
        try:
            while True:
                bell = hub.work.register()
                claim = await self._claim(worker_id, max_jobs)
                hub.note_reclaimed(claim.reclaimed)
                if claim.jobs:
                    self._let_go(bell)
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or hub.stopping:
                        self._let_go(bell)
                        log.debug("claim_empty", worker_id=worker_id)
                        return jobs_pb2.ClaimJobResponse()
                    timeout = remaining
                    if hub.store.is_postgres:
                        # A peer's notification can be lost with its connection.
                        timeout = min(timeout, hub.config.fallback_check_s)
                    if claim.next_due_at is not None:
                        due_in = (claim.next_due_at - claim.now).total_seconds()
                        # Floor: rows another replica holds locked look due but
                        # cannot be taken; do not spin on them.
                        timeout = min(timeout, max(due_in, 0.01))
                    hub.work.offer(bell, order)
                    await Doorbell.wait(bell, timeout)
                    delivered = self._delivered(bell)
                    if delivered is None:
                        continue  # rung, or time to look again
                    claim = delivered
                bell = None
                reply = await self._fit_reply(claim.jobs)
                if reply.jobs:
                    return self._claimed(claim.jobs, reply, worker_id)
        except BaseException:
            if bell is not None:
                self._let_go(bell)
            raise
        finally:
            self.polls -= 1

    @staticmethod
    def _delivered(bell: "asyncio.Future[Any]") -> Claim | None:
        """Settle `bell`; the claim a submit made for this long-poll, if any."""
        if bell.cancel() or bell.cancelled():
            return None
        result = bell.result()
        return result if isinstance(result, Claim) else None

    def _let_go(self, bell: "asyncio.Future[Any]") -> None:
        """Stop waiting on `bell`, handing back a claim delivered meanwhile."""
        delivered = self._delivered(bell)
        if delivered is not None:
            self.hub.hand_back(delivered)

    async def _claim(self, worker_id: str, max_jobs: int) -> Claim:
        """One store claim that a caller going away cannot orphan.

        The claim runs in a store thread and finishes even if the call is
        cancelled meanwhile (the worker hung up, e.g. while draining); the
        jobs it leased are then handed back at once instead of waiting out
        their lease.
        """
        hub = self.hub
        running = asyncio.ensure_future(
            hub.run(hub.store.claim_jobs, worker_id, max_jobs)
        )
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            running.add_done_callback(self._hand_back_unsent)
            raise

    def _hand_back_unsent(self, running: "asyncio.Future[Claim]") -> None:
        if running.cancelled() or running.exception() is not None:
            return
        claim = running.result()
        self.hub.note_reclaimed(claim.reclaimed)
        self.hub.hand_back(claim)

    async def _fit_reply(self, jobs: list[ClaimedJob]) -> jobs_pb2.ClaimJobResponse:
        """The reply with as many claimed jobs as the message limit lets through.

        The rest are handed back as if never claimed; a job too large to send
        even alone fails, since no claim could ever deliver it.
        """
        hub = self.hub
        # Room for the reply's own framing.
        budget = hub.config.max_message_bytes - 1024
        reply = jobs_pb2.ClaimJobResponse()
        for claimed in jobs:
            message = convert.claimed_job(claimed)
            size = message.ByteSize() + 8
            if size <= budget:
                reply.jobs.append(message)
                budget -= size
                continue
            reason = ""
            if not reply.jobs and size > hub.config.max_message_bytes - 1024:
                reason = (
                    f"its claim would be {size} bytes, over BRAIN_MAX_MESSAGE_BYTES "
                    f"({hub.config.max_message_bytes})"
                )
            state = await hub.run(
                hub.store.hand_back, claimed.job.id, claimed.job.lease_token, reason
            )
            (log.error if reason else log.info)(
                "claim_handed_back", job_id=claimed.job.id, state=state, size=size
            )
            budget = -1  # keep the queue's order: nothing after it goes either
        if len(reply.jobs) < len(jobs):
            self.hub.job_changed(claimable=None)
        return reply

    def _claimed(
        self,
        jobs: list[ClaimedJob],
        reply: jobs_pb2.ClaimJobResponse,
        worker_id: str,
    ) -> jobs_pb2.ClaimJobResponse:
        sent = {message.job_id for message in reply.jobs}
        for claimed in jobs:
            if claimed.job.id in sent:
                log.info(
                    "job_claimed",
                    job_id=claimed.job.id,
                    attempt=claimed.job.attempts,
                    worker_id=worker_id,
                    steps=len(claimed.steps),
                )
        self.hub.job_changed()
        return reply

    @abort_on_error
    @streams
    async def StreamProgress(
        self,
        request_iterator: AsyncIterator[jobs_pb2.ProgressUpdate],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[jobs_pb2.ProgressAck]:
        hub = self.hub
        async for update in request_iterator:
            args = validation.progress_update(update)
            renewal = await hub.run(hub.store.renew_lease, **args)
            log.debug(
                "lease_renewed",
                job_id=args["job_id"],
                results=len(args["results"]),
                cancel=renewal.cancel,
            )
            if args["results"] or args["message"]:
                hub.job_changed()
            yield jobs_pb2.ProgressAck(
                job_id=args["job_id"],
                deadline=convert.timestamp(renewal.deadline),
                cancel=renewal.cancel,
            )

    @abort_on_error
    async def CompleteJob(
        self, request: jobs_pb2.CompleteJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CompleteJobResponse:
        (answer,) = await self._finish([validation.complete_request(request)])
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @abort_on_error
    async def CompleteJobs(
        self, request: jobs_pb2.CompleteJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CompleteJobsResponse:
        # A malformed completion is answered on its own, like a refused one.
        checked = validation.completion_batch(request)
        valid = [c for c in checked if isinstance(c, CompletionIn)]
        answers = iter(await self._finish(valid) if valid else [])
        reply = jobs_pb2.CompleteJobsResponse()
        for item, check in zip(request.completions, checked, strict=True):
            answer = next(answers) if isinstance(check, CompletionIn) else check
            result = reply.results.add(job_id=item.job_id)
            if isinstance(answer, BaseException):
                code, message = _status(answer, "CompleteJobs")
                result.code = code.value[0]
                result.message = message
            else:
                result.response.CopyFrom(answer)
        return reply

    async def _finish(
        self, completions: list[CompletionIn]
    ) -> list[jobs_pb2.CompleteJobResponse | BrainError]:
        """Finish jobs in one store call; log them and wake the long-polls
        that the freed accounts and retried jobs give work to."""
        hub = self.hub
        finishes = await hub.run(hub.store.finish_jobs, completions)
        answers: list[jobs_pb2.CompleteJobResponse | BrainError] = []
        changed = retrying = 0
        for completion, finish in zip(completions, finishes.answers, strict=True):
            if isinstance(finish, BrainError):
                answers.append(finish)
                continue
            if not finish.repeated:
                level = log.error if finish.state == "FAILED" else log.info
                level(
                    "job_completed",
                    job_id=completion.job_id,
                    reported=completion.outcome,
                    state=finish.state,
                    error_code=finish.decision.error_code if finish.decision else "",
                )
                changed += 1
                retrying += finish.state == "PENDING"
            answers.append(
                jobs_pb2.CompleteJobResponse(
                    state=convert.job_state(finish.state),
                    available_at=convert.timestamp(finish.available_at),
                )
            )
        if changed:
            # Wake only as many long-polls as there is new work: the jobs the
            # freed accounts unblocked, and one per job sent back for retry to
            # re-read its due time. Waking them all made every completion cost
            # one claim per idle worker.
            hub.job_changed(claimable=finishes.unblocked + retrying)
        return answers


class AdminApi(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    @abort_on_error
    async def SubmitJobs(
        self, request: admin_pb2.SubmitJobsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SubmitJobsResponse:
        hub = self.hub
        specs = validation.job_specs(
            request, hub.store.tiers, hub.config.max_submit_batch
        )
        # The longest-sleeping long-poll gets its claim made in the submit's
        # own transaction: a job reaches a waiting worker without a second
        # transaction and a wake-up first.
        taken = hub.work.take()
        claimer = None if taken is None else taken[1]
        running = asyncio.ensure_future(
            hub.run(hub.store.submit_and_claim, specs, utcnow(), claimer)
        )
        running.add_done_callback(functools.partial(hub.submitted, taken))
        results, _ = await asyncio.shield(running)
        return admin_pb2.SubmitJobsResponse(
            jobs=[
                admin_pb2.SubmittedJob(job=convert.job(view), created=was_created)
                for view, was_created in results
            ]
        )

    @abort_on_error
    async def GetJob(
        self, request: admin_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.Job:
        job_id = validation.job_id(request.job_id)
        return convert.job(await self.hub.run(self.hub.store.get_job, job_id))

    @abort_on_error
    async def ListJobs(
        self, request: admin_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListJobsResponse:
        args = validation.list_jobs_request(request)
        views, token = await self.hub.run(self.hub.store.list_jobs, **args)
        return admin_pb2.ListJobsResponse(
            jobs=[convert.job(v) for v in views], next_page_token=token
        )

    @abort_on_error
    @streams
    async def WatchJobs(
        self, request: admin_pb2.WatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[admin_pb2.JobEvent]:
        hub = self.hub
        ids = validation.watch_ids(request)
        seen: dict[str, datetime] = {}
        since = utcnow()
        if ids:
            views = await hub.run(hub.store.get_jobs, ids)
            missing = set(ids) - {v.job.id for v in views}
            if missing:
                raise NotFound(f"job_ids: no job {sorted(missing)[0]}")

        while not hub.stopping:
            # Registered before reading so that a change during the read wakes us.
            bell = hub.changes.register()
            if ids:
                views = await hub.run(hub.store.get_jobs, ids)
            else:
                views = await hub.run(
                    hub.store.jobs_changed_since, since - timedelta(seconds=1), 500
                )
            for view in views:
                if seen.get(view.job.id) != view.job.updated_at:
                    seen[view.job.id] = view.job.updated_at
                    yield admin_pb2.JobEvent(job=convert.job(view))
            if ids and all(v.job.state in FINAL_STATES for v in views):
                bell.cancel()
                return
            if not ids and views:
                since = max(since, max(v.job.updated_at for v in views))
                horizon = since - timedelta(seconds=5)
                seen = {k: t for k, t in seen.items() if t >= horizon}
            # The timeout catches changes made by another Brain replica.
            await Doorbell.wait(bell, 1.0)

    @abort_on_error
    async def CancelJob(
        self, request: admin_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.Job:
        job_id = validation.job_id(request.job_id)
        view = await self.hub.run(self.hub.store.cancel_job, job_id, utcnow())
        log.info("job_cancel_requested", job_id=job_id, state=view.job.state)
        self.hub.job_changed()
        return convert.job(view)

    @abort_on_error
    async def RetryJob(
        self, request: admin_pb2.RetryJobRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.Job:
        job_id = validation.job_id(request.job_id)
        view = await self.hub.run(self.hub.store.retry_job, job_id, utcnow())
        log.info("job_retried", job_id=job_id)
        self.hub.job_changed(claimable=1)
        return convert.job(view)

    @abort_on_error
    async def AddAccount(
        self, request: admin_pb2.AddAccountRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Account:
        hub = self.hub
        account = validation.account_input(request.account, "account")
        now = utcnow()
        (row,) = await hub.run(hub.store.add_accounts, [account], False, now)
        if row.error:
            raise AlreadyExists(f"account.username: {account.username} {row.error}")
        log.info("account_added", account=account.username)
        hub.job_changed(claimable=None)
        return convert.account(
            await hub.run(hub.store.get_account, account.username, now)
        )

    @abort_on_error
    async def ImportAccounts(
        self,
        request: admin_pb2.ImportAccountsRequest,
        context: grpc.aio.ServicerContext,
    ) -> admin_pb2.ImportAccountsResponse:
        hub = self.hub
        validation.import_batch(request)
        rows: list[admin_pb2.ImportRowResult] = []
        good = []
        positions = []
        for i, item in enumerate(request.accounts):
            try:
                good.append(validation.account_input(item, f"accounts[{i}]"))
                positions.append(i)
            except InvalidArgument as exc:
                rows.append(
                    admin_pb2.ImportRowResult(
                        index=i, username=item.username[:64], error=str(exc)
                    )
                )
        if good:
            stored = await hub.run(
                hub.store.add_accounts, good, request.update_existing, utcnow()
            )
            for position, row in zip(positions, stored, strict=True):
                rows.append(
                    admin_pb2.ImportRowResult(
                        index=position,
                        username=row.username,
                        created=row.created,
                        updated=row.updated,
                        error=row.error,
                    )
                )
        rows.sort(key=lambda r: r.index)
        log.info(
            "accounts_imported",
            created=sum(r.created for r in rows),
            updated=sum(r.updated for r in rows),
            rejected=sum(bool(r.error) for r in rows),
        )
        hub.job_changed(claimable=None)
        return admin_pb2.ImportAccountsResponse(rows=rows)

    @abort_on_error
    async def ListAccounts(
        self, request: admin_pb2.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListAccountsResponse:
        args = validation.list_accounts_request(request)
        views, token = await self.hub.run(
            self.hub.store.list_accounts, now=utcnow(), **args
        )
        return admin_pb2.ListAccountsResponse(
            accounts=[convert.account(v) for v in views], next_page_token=token
        )

    @abort_on_error
    async def ResetAccount(
        self, request: admin_pb2.ResetAccountRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Account:
        username = validation.username(request.username, "username")
        view = await self.hub.run(self.hub.store.reset_account, username, utcnow())
        log.info("account_reset", account=username)
        self.hub.job_changed(claimable=None)
        return convert.account(view)

    @abort_on_error
    async def GetStats(
        self, request: admin_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.QueueStats:
        now = utcnow()
        stats = await self.hub.run(self.hub.store.stats, now)
        jobs, accounts = stats.jobs_by_state, stats.accounts_by_state
        oldest = Duration()
        if stats.oldest_due_at is not None:
            oldest.FromTimedelta(max(now - stats.oldest_due_at, timedelta(0)))
        return admin_pb2.QueueStats(
            pending=jobs.get("PENDING", 0),
            leased=jobs.get("LEASED", 0),
            succeeded=jobs.get("SUCCEEDED", 0),
            failed=jobs.get("FAILED", 0),
            cancelled=jobs.get("CANCELLED", 0),
            due=stats.due,
            waiting_for_workforce=stats.waiting_for_workforce,
            oldest_due_age=oldest,
            accounts_active=accounts.get("ACTIVE", 0),
            accounts_cooldown=accounts.get("COOLDOWN", 0),
            accounts_needs_owner=accounts.get("NEEDS_OWNER", 0),
            accounts_disabled=accounts.get("DISABLED", 0),
            accounts_busy=stats.accounts_busy,
            actions_last_hour=stats.actions_last_hour,
            server_time=convert.timestamp(now),
        )
