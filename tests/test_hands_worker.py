"""The Hands worker against a scripted JobService peer on a real gRPC server.

The peer (`PeerBrain`) is a small in-test JobService: it hands out the jobs
a test queues (as many per claim as asked for and queued), renews leases on
progress, ends the stream with FAILED_PRECONDITION for a stale lease,
answers each completion of a CompleteJobs batch on its own, and records
every request, so each test can assert on exactly what the worker sent.
"""

import asyncio
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from barter.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc
from hands_service.config import HandsConfig
from hands_service.dry_run import DryRunExecutor, DryRunRules
from hands_service.executor import (
    AccountSession,
    Executor,
    JobContext,
    StepOutcome,
    StepReport,
)
from hands_service.worker import Worker

pytestmark = pytest.mark.timeout(10)

HANDS = Path(sys.executable).with_name("barter-hands")


@pytest.fixture(autouse=True)
def _default_structlog():
    structlog.reset_defaults()


def capture_logs():
    """Capture log events with their bound context (job_id, worker_id...)."""
    return structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    )


def _timestamp(wall_s: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(wall_s * 1e9))
    return stamp


class PeerBrain(jobs_pb2_grpc.JobServiceServicer):
    """A scripted JobService that records what the worker sends."""

    def __init__(self, lease_ttl_s: float = 5.0) -> None:
        self.lease_ttl_s = lease_ttl_s
        self.queue: asyncio.Queue[jobs_pb2.ClaimedJob] = asyncio.Queue()
        self.claims: list[tuple[float, jobs_pb2.ClaimJobRequest]] = []
        # How many jobs each ClaimJob reply carried.
        self.claim_replies: list[int] = []
        # The lease token each claimed job got, by job id.
        self.tokens: dict[str, str] = {}
        self.updates: list[tuple[float, jobs_pb2.ProgressUpdate]] = []
        self.completions: list[jobs_pb2.CompleteJobRequest] = []
        self.deadlines: dict[str, float] = {}
        self.cancelled: set[str] = set()
        self.revoked: set[str] = set()
        self.claim_error: grpc.StatusCode | None = None
        # CompleteJobs calls to fail whole with UNAVAILABLE before applying any.
        self.complete_failures = 0
        # The job ids of every CompleteJobs call, failed ones included.
        self.complete_batches: list[list[str]] = []
        self.on_update: Callable[[jobs_pb2.ProgressUpdate], None] | None = None
        self.on_batch: Callable[[jobs_pb2.CompleteJobsRequest], None] | None = None
        # Authorization header seen per call, e.g. {"ClaimJob": {"Bearer k"}}.
        self.auth: dict[str, set[str]] = {}

    def _note_auth(self, call: str, context) -> None:
        headers = dict(context.invocation_metadata())
        self.auth.setdefault(call, set()).add(headers.get("authorization", ""))

    def add_job(
        self,
        accounts: Iterable[str] = ("alice",),
        target: str = "target_user",
        action: int = common_pb2.ACTION_FOLLOW,
    ) -> str:
        accounts = list(accounts)
        job = jobs_pb2.ClaimedJob(
            job_id=str(uuid.uuid4()),
            action=action,
            target=target,
            tier="test",
            steps=[
                common_pb2.Step(index=i, account_username=name)
                for i, name in enumerate(accounts)
            ],
            sessions=[
                common_pb2.AccountSession(
                    username=name, settings=b'{"s": 1}', password="hunter2"
                )
                for name in accounts
            ],
            steps_total=len(accounts),
            steps_done=0,
        )
        self.queue.put_nowait(job)
        return job.job_id

    async def ClaimJob(self, request, context):
        self.claims.append((time.monotonic(), request))
        self._note_auth("ClaimJob", context)
        if self.claim_error is not None:
            await context.abort(self.claim_error, "scripted claim error")
        wait_s = request.wait.ToNanoseconds() / 1e9
        try:
            if wait_s > 0:
                jobs = [await asyncio.wait_for(self.queue.get(), wait_s)]
            else:
                jobs = [self.queue.get_nowait()]
        except (TimeoutError, asyncio.QueueEmpty):
            self.claim_replies.append(0)
            return jobs_pb2.ClaimJobResponse()
        while len(jobs) < max(1, request.max_jobs) and not self.queue.empty():
            jobs.append(self.queue.get_nowait())
        for job in jobs:
            token = uuid.uuid4().hex
            deadline = time.time() + self.lease_ttl_s
            self.deadlines[token] = deadline
            self.tokens[job.job_id] = token
            job.lease.CopyFrom(
                common_pb2.Lease(token=token, attempt=1, deadline=_timestamp(deadline))
            )
        self.claim_replies.append(len(jobs))
        return jobs_pb2.ClaimJobResponse(jobs=jobs)

    async def StreamProgress(self, request_iterator, context):
        self._note_auth("StreamProgress", context)
        async for update in request_iterator:
            self.updates.append((time.monotonic(), update))
            token = update.lease_token
            if token in self.revoked or time.time() > self.deadlines.get(token, 0):
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "stale lease")
            if self.on_update is not None:
                self.on_update(update)
            deadline = time.time() + self.lease_ttl_s
            self.deadlines[token] = deadline
            yield jobs_pb2.ProgressAck(
                job_id=update.job_id,
                deadline=_timestamp(deadline),
                cancel=update.job_id in self.cancelled,
            )

    def _apply_completion(
        self, request: jobs_pb2.CompleteJobRequest
    ) -> tuple[grpc.StatusCode, jobs_pb2.CompleteJobResponse | None]:
        token = request.lease_token
        if token in self.revoked or time.time() > self.deadlines.get(token, 0):
            return grpc.StatusCode.FAILED_PRECONDITION, None
        self.completions.append(request)
        state = {
            jobs_pb2.OUTCOME_SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
            jobs_pb2.OUTCOME_FAILED: common_pb2.JOB_STATE_FAILED,
            jobs_pb2.OUTCOME_RETRY: common_pb2.JOB_STATE_PENDING,
            jobs_pb2.OUTCOME_CANCELLED: common_pb2.JOB_STATE_CANCELLED,
        }[request.outcome]
        return grpc.StatusCode.OK, jobs_pb2.CompleteJobResponse(state=state)

    async def CompleteJob(self, request, context):
        self._note_auth("CompleteJob", context)
        if self.complete_failures > 0:
            self.complete_failures -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted outage")
        code, response = self._apply_completion(request)
        if response is None:
            await context.abort(code, "stale lease")
        return response

    async def CompleteJobs(self, request, context):
        self._note_auth("CompleteJobs", context)
        self.complete_batches.append([c.job_id for c in request.completions])
        job_ids = [c.job_id for c in request.completions]
        if not 1 <= len(job_ids) <= 256 or len(set(job_ids)) != len(job_ids):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "completions")
        if self.complete_failures > 0:
            self.complete_failures -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted outage")
        if self.on_batch is not None:
            self.on_batch(request)
        results = []
        for completion in request.completions:
            code, response = self._apply_completion(completion)
            result = jobs_pb2.CompletionResult(
                job_id=completion.job_id, code=code.value[0]
            )
            if response is None:
                result.message = "lease_token: stale lease"
            else:
                result.response.CopyFrom(response)
            results.append(result)
        return jobs_pb2.CompleteJobsResponse(results=results)

    def results(self) -> list[common_pb2.StepResult]:
        """Every step result sent, in progress updates and completions."""
        sent = [r for _, u in self.updates for r in u.results]
        return sent + [r for c in self.completions for r in c.results]


async def start_server(peer: PeerBrain, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    jobs_pb2_grpc.add_JobServiceServicer_to_server(peer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port


def make_config(port: int, **overrides: object) -> HandsConfig:
    base = HandsConfig(
        brain_url=f"127.0.0.1:{port}",
        claim_wait_s=1.0,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
        drain_timeout_s=5.0,
    )
    return replace(base, **overrides).check()


async def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `check` every 10 ms; fail the test after `timeout_s`."""
    give_up = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > give_up:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.01)


async def stop_worker(worker: Worker, task: asyncio.Task) -> int:
    worker.shutdown()
    return await asyncio.wait_for(task, 5.0)


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 15.0))


def test_happy_path_claims_reports_each_step_and_completes_succeeded():
    """Steps but the last are reported in updates; the last rides on CompleteJob."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        job_id = peer.add_job(accounts=["alice", "bob", "carol"])
        worker = Worker(make_config(port), DryRunExecutor(delay_s=0.02))
        task = asyncio.create_task(worker.run())
        with capture_logs() as events:
            await wait_until(lambda: peer.completions)
            assert await stop_worker(worker, task) == 0
        await server.stop(0)

        step_updates = [u for _, u in peer.updates if u.results]
        assert [u.done for u in step_updates] == [1, 2]
        assert {u.total for u in step_updates} == {3}
        assert [r.step_index for r in peer.completions[0].results] == [2]
        assert [r.step_index for r in peer.results()] == [0, 1, 2]
        assert [r.account_username for r in peer.results()] == ["alice", "bob", "carol"]
        assert {r.outcome for r in peer.results()} == {common_pb2.STEP_OUTCOME_DONE}
        (done,) = peer.completions
        assert done.job_id == job_id and done.outcome == jobs_pb2.OUTCOME_SUCCEEDED
        assert peer.claims[0][1].worker_id == worker.worker_id
        assert peer.claims[0][1].max_jobs == 1
        names = [e["event"] for e in events]
        assert "job_claimed" in names and "job_completed" in names
        assert "worker_stopped" in names and "hunter2" not in repr(events)
        completed = next(e for e in events if e["event"] == "job_completed")
        assert completed["job_id"] == job_id and completed["attempt"] == 1
        assert completed["worker_id"] == worker.worker_id

    run(scenario)


def test_every_call_carries_the_worker_key_as_a_bearer_token():
    """With HANDS_API_KEY set, claim, progress and complete send it as Bearer."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        peer.add_job(accounts=["alice", "bob"])
        worker = Worker(make_config(port, api_key="k-123"), DryRunExecutor(0.01))
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: peer.completions)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        assert peer.auth == {
            "ClaimJob": {"Bearer k-123"},
            "StreamProgress": {"Bearer k-123"},
            "CompleteJobs": {"Bearer k-123"},
        }

    run(scenario)


def test_worker_ids_are_unique_per_worker():
    """Two workers in one process get different ids."""
    config = HandsConfig()
    first = Worker(config, DryRunExecutor())
    second = Worker(config, DryRunExecutor())
    assert first.worker_id != second.worker_id
    assert str(os.getpid()) in first.worker_id


def test_heartbeat_renews_the_lease_while_a_step_is_slow():
    """A step slower than the lease TTL survives because heartbeats renew it."""

    async def scenario():
        peer = PeerBrain(lease_ttl_s=0.6)
        server, port = await start_server(peer)
        peer.add_job(accounts=["alice"])
        worker = Worker(make_config(port), DryRunExecutor(delay_s=1.5))
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: peer.completions)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        heartbeats = [u for _, u in peer.updates if not u.results]
        assert len(heartbeats) >= 3
        (done,) = peer.completions
        assert done.outcome == jobs_pb2.OUTCOME_SUCCEEDED

    run(scenario)


def test_cancel_flag_stops_between_steps_and_completes_cancelled():
    """An ack with cancel set stops the job before its next step: CANCELLED."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        job_id = peer.add_job(accounts=["alice", "bob", "carol"])
        peer.on_update = lambda u: u.results and peer.cancelled.add(u.job_id)
        worker = Worker(make_config(port), DryRunExecutor(delay_s=0.05))
        task = asyncio.create_task(worker.run())
        with capture_logs() as events:
            await wait_until(lambda: peer.completions)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        assert [r.step_index for r in peer.results()] == [0]
        (done,) = peer.completions
        assert done.job_id == job_id and done.outcome == jobs_pb2.OUTCOME_CANCELLED
        assert "job_cancelled" in [e["event"] for e in events]

    run(scenario)


def test_stale_lease_stops_the_job_without_completing_it(tmp_path):
    """FAILED_PRECONDITION on the stream stops the job at once; no CompleteJob."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        peer.add_job(accounts=["alice", "bob", "carol"])

        def revoke(update: jobs_pb2.ProgressUpdate) -> None:
            if update.results:
                peer.revoked.add(update.lease_token)

        peer.on_update = revoke
        ledger = tmp_path / "ledger.jsonl"
        executor = DryRunExecutor(delay_s=0.05, ledger_path=str(ledger))
        worker = Worker(make_config(port), executor)
        task = asyncio.create_task(worker.run())
        with capture_logs() as events:
            await wait_until(lambda: any(e["event"] == "lease_lost" for e in events))
            await asyncio.sleep(0.3)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        assert peer.completions == []
        assert len(ledger.read_text().splitlines()) == 2
        lost = next(e for e in events if e["event"] == "lease_lost")
        assert lost["log_level"] == "warning"

    run(scenario)


def test_backs_off_while_brain_is_down_and_recovers_when_it_starts():
    """With Brain down the worker retries with capped backoff, then claims."""

    async def scenario():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        worker = Worker(
            make_config(port, backoff_initial_s=0.05, backoff_max_s=0.3),
            DryRunExecutor(delay_s=0.01),
        )
        with capture_logs() as events:
            task = asyncio.create_task(worker.run())
            await asyncio.sleep(1.5)
            peer = PeerBrain()
            peer.add_job()
            server, _ = await start_server(peer, port)
            await wait_until(lambda: peer.completions, timeout_s=5.0)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        retries = [e for e in events if e["event"] == "brain_unreachable"]
        assert len(retries) >= 4
        assert all(0 <= e["retry_in_s"] <= 0.3 for e in retries)
        assert retries[0]["log_level"] == "warning"
        assert peer.completions[0].outcome == jobs_pb2.OUTCOME_SUCCEEDED

    run(scenario)


def test_poll_interval_mode_claims_without_waiting_at_a_fixed_pace():
    """POLL_INTERVAL>0 claims with wait=0 and sleeps the interval after empty ones."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        worker = Worker(
            make_config(port, poll_interval_s=0.25), DryRunExecutor(delay_s=0.01)
        )
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(1.1)
        empty_claims = len(peer.claims)
        peer.add_job()
        await wait_until(lambda: peer.completions, timeout_s=2.0)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        assert 3 <= empty_claims <= 6
        assert {c.wait.ToNanoseconds() for _, c in peer.claims} == {0}
        gaps = [b[0] - a[0] for a, b in zip(peer.claims, peer.claims[1:], strict=False)]
        assert min(gaps[: empty_claims - 1]) >= 0.2

    run(scenario)


def test_long_poll_mode_asks_for_the_configured_wait():
    """In long-poll mode each claim carries HANDS_CLAIM_WAIT_S as its wait."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        worker = Worker(make_config(port, claim_wait_s=0.4), DryRunExecutor())
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(1.0)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        assert 2 <= len(peer.claims) <= 4
        assert {c.wait.ToNanoseconds() for _, c in peer.claims} == {400_000_000}

    run(scenario)


def test_dry_run_rules_produce_the_configured_outcomes(tmp_path):
    """Rules make a throttled account RETRY the job and an invalid target FAIL it."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        rules = DryRunRules.from_json(
            json.dumps(
                {
                    "delay_s": 0.01,
                    "accounts": {"demo_throttled": "THROTTLED"},
                    "targets": {"no_such_user_zz": "TARGET_INVALID"},
                }
            )
        )
        ledger = tmp_path / "ledger.jsonl"
        executor = DryRunExecutor(delay_s=5.0, rules=rules, ledger_path=str(ledger))
        throttled = peer.add_job(accounts=["demo_throttled", "alice"])
        invalid = peer.add_job(accounts=["bob", "carol"], target="no_such_user_zz")
        worker = Worker(make_config(port), executor)
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: len(peer.completions) == 2)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        by_job = {c.job_id: c for c in peer.completions}
        assert by_job[throttled].outcome == jobs_pb2.OUTCOME_RETRY
        assert by_job[throttled].error_code == "dry_run_throttled"
        assert by_job[invalid].outcome == jobs_pb2.OUTCOME_FAILED
        outcomes = [(r.account_username, r.outcome) for r in peer.results()]
        assert outcomes == [
            ("demo_throttled", common_pb2.STEP_OUTCOME_THROTTLED),
            ("alice", common_pb2.STEP_OUTCOME_DONE),
            ("bob", common_pb2.STEP_OUTCOME_TARGET_INVALID),
        ]
        (effect,) = [json.loads(line) for line in ledger.read_text().splitlines()]
        assert effect["job_id"] == throttled and effect["account"] == "alice"
        assert effect["action"] == "follow" and effect["target"] == "target_user"

    run(scenario)


class RaisingExecutor(Executor):
    """Raises from follow, as a buggy executor might."""

    async def follow(self, job: JobContext, account: AccountSession) -> StepReport:
        raise RuntimeError("socket went away")

    async def unfollow(self, job: JobContext, account: AccountSession) -> StepReport:
        return StepReport(StepOutcome.DONE)


def test_an_executor_exception_becomes_a_transient_step_not_a_crash():
    """An exception escaping the executor is reported as TRANSIENT; the job RETRYs."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        peer.add_job(accounts=["alice"])
        worker = Worker(make_config(port), RaisingExecutor())
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: peer.completions)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        (result,) = peer.results()
        assert result.outcome == common_pb2.STEP_OUTCOME_TRANSIENT
        assert result.error_code == "RuntimeError"
        assert result.error_message == "socket went away"
        assert peer.completions[0].outcome == jobs_pb2.OUTCOME_RETRY

    run(scenario)


class RefreshingExecutor(DryRunExecutor):
    """Reports a refreshed session for every account it acts as."""

    def __init__(self) -> None:
        super().__init__(delay_s=0.01)
        self.fresh: list[AccountSession] = []

    async def follow(self, job: JobContext, account: AccountSession) -> StepReport:
        self.fresh.append(AccountSession(account.username, b'{"fresh": true}', "pw"))
        return await super().follow(job, account)

    def take_refreshed_sessions(self) -> list[AccountSession]:
        taken, self.fresh = self.fresh, []
        return taken


def test_refreshed_sessions_travel_with_the_next_update():
    """A refreshed session goes with the next update, or with CompleteJob at the end."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        peer.add_job(accounts=["alice", "bob"])
        worker = Worker(make_config(port), RefreshingExecutor())
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: peer.completions)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        sent = [
            (r.step_index, [s.username for s in u.refreshed_sessions])
            for _, u in peer.updates
            for r in u.results
        ]
        assert sent == [(0, ["alice"])]
        assert peer.updates[0][1].refreshed_sessions[0].settings == b'{"fresh": true}'
        # The last step's session rides on CompleteJob with its result.
        (done,) = peer.completions
        assert [s.username for s in done.refreshed_sessions] == ["bob"]

    run(scenario)


def test_complete_job_is_retried_while_brain_is_unavailable():
    """CompleteJob answered UNAVAILABLE is retried until Brain accepts it."""

    async def scenario():
        peer = PeerBrain()
        peer.complete_failures = 3
        server, port = await start_server(peer)
        peer.add_job()
        worker = Worker(make_config(port), DryRunExecutor(delay_s=0.01))
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: peer.completions)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        assert peer.complete_failures == 0
        assert peer.completions[0].outcome == jobs_pb2.OUTCOME_SUCCEEDED

    run(scenario)


def test_concurrency_runs_that_many_jobs_at_once():
    """With concurrency 2, two jobs are in flight before either completes."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        first = peer.add_job(accounts=["alice", "bob"])
        second = peer.add_job(accounts=["carol", "dave"])
        worker = Worker(make_config(port, concurrency=2), DryRunExecutor(delay_s=0.4))
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: len(peer.completions) == 2)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        claimed = [u for _, u in peer.updates]
        assert {u.job_id for u in claimed} == {first, second}
        ids = {c.worker_id for _, c in peer.claims}
        assert ids == {worker.worker_id}
        # Both jobs' 0.4 s steps overlapped, so their completions are close.
        done_at = [t for t, u in peer.updates if u.results]
        assert max(done_at) - min(done_at) < 0.3

    run(scenario)


def test_drain_cancels_long_polls_and_finishes_the_running_job():
    """shutdown() stops claiming at once, lets the running job finish, exits 0."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        peer.add_job(accounts=["alice", "bob"])
        worker = Worker(
            make_config(port, concurrency=2, claim_wait_s=30.0),
            DryRunExecutor(delay_s=0.4),
        )
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: peer.updates)
        started = time.monotonic()
        worker.shutdown()
        assert await asyncio.wait_for(task, 5.0) == 0
        await server.stop(0)

        assert time.monotonic() - started < 2.0
        assert peer.completions[0].outcome == jobs_pb2.OUTCOME_SUCCEEDED
        assert len(peer.results()) == 2

    run(scenario)


def test_second_shutdown_hands_the_running_job_back_as_retry():
    """A second shutdown() stops the slow step and completes RETRY worker_shutdown."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        peer.add_job(accounts=["alice", "bob"])
        worker = Worker(make_config(port), DryRunExecutor(delay_s=0.3))
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: any(u.results for _, u in peer.updates))
        worker.shutdown()
        worker.shutdown()
        assert await asyncio.wait_for(task, 5.0) == 0
        await server.stop(0)

        (done,) = peer.completions
        assert done.outcome == jobs_pb2.OUTCOME_RETRY
        assert done.error_code == "worker_shutdown"
        # Step 0's result may ride on CompleteJob as well when its ack was
        # still in flight at the hand-back; Brain records a repeat once.
        assert {r.step_index for r in peer.results()} == {0}

    run(scenario)


def test_drain_timeout_hands_the_running_job_back():
    """When the drain timeout passes, the running job is handed back as RETRY."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        peer.add_job(accounts=["alice"])
        worker = Worker(
            make_config(port, drain_timeout_s=0.2), DryRunExecutor(delay_s=5.0)
        )
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: peer.claims and not peer.queue.qsize())
        await asyncio.sleep(0.1)
        worker.shutdown()
        assert await asyncio.wait_for(task, 3.0) == 0
        await server.stop(0)

        (done,) = peer.completions
        assert done.outcome == jobs_pb2.OUTCOME_RETRY
        assert done.error_code == "worker_shutdown"
        assert list(done.results) == []

    run(scenario)


def test_a_refused_claim_stops_the_worker_loudly_with_exit_code_1():
    """UNAUTHENTICATED on ClaimJob kills the claimer; the worker logs ERROR, exits 1."""

    async def scenario():
        peer = PeerBrain()
        peer.claim_error = grpc.StatusCode.UNAUTHENTICATED
        server, port = await start_server(peer)
        worker = Worker(make_config(port, concurrency=2), DryRunExecutor())
        with capture_logs() as events:
            exit_code = await asyncio.wait_for(worker.run(), 5.0)
        await server.stop(0)

        assert exit_code == 1
        crash = next(e for e in events if e["event"] == "worker_task_crashed")
        assert crash["log_level"] == "error" and crash["task"] == "claimer"
        assert "UNAUTHENTICATED" in crash["error"]

    run(scenario)


def test_sigterm_drains_a_real_barter_hands_process(tmp_path):
    """`barter-hands run` on SIGTERM finishes its running job, then exits 0."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        peer.add_job(accounts=["alice", "bob"])
        ledger = tmp_path / "ledger.jsonl"
        env = {
            **os.environ,
            "BRAIN_URL": f"127.0.0.1:{port}",
            "HANDS_DRY_RUN_LEDGER": str(ledger),
            "LOG_FORMAT": "json",
        }
        proc = await asyncio.create_subprocess_exec(
            str(HANDS),
            "run",
            "--concurrency",
            "2",
            "--dry-run-delay-s",
            "0.5",
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await wait_until(lambda: peer.updates, timeout_s=8.0)
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 5.0)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await server.stop(0)

        assert proc.returncode == 0, stderr.decode()
        assert peer.completions[0].outcome == jobs_pb2.OUTCOME_SUCCEEDED
        assert len(ledger.read_text().splitlines()) == 2
        events = [json.loads(line)["event"] for line in stderr.decode().splitlines()]
        assert events.index("worker_draining") < events.index("job_completed")
        assert events[-1] == "worker_stopped"

    run(scenario)


def test_progress_survives_a_brain_restart_within_the_lease():
    """A Brain restart mid-job: the stream reopens and the job still completes."""

    async def scenario():
        peer = PeerBrain(lease_ttl_s=3.0)
        server, port = await start_server(peer)
        peer.add_job(accounts=["alice", "bob", "carol"])
        worker = Worker(make_config(port), DryRunExecutor(delay_s=0.3))
        task = asyncio.create_task(worker.run())
        with capture_logs() as events:
            await wait_until(lambda: any(u.results for _, u in peer.updates))
            await server.stop(0)
            await asyncio.sleep(0.5)
            server, _ = await start_server(peer, port)
            await wait_until(lambda: peer.completions)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        assert sorted({r.step_index for r in peer.results()}) == [0, 1, 2]
        assert peer.completions[0].outcome == jobs_pb2.OUTCOME_SUCCEEDED
        assert any(e["event"] == "brain_unreachable" for e in events)
        assert not any(e["event"] == "lease_lost" for e in events)

    run(scenario)


def test_a_deadline_passed_without_renewal_drops_the_job_uncompleted():
    """Brain gone past the lease deadline: the job is dropped, then claiming resumes."""

    async def scenario():
        peer = PeerBrain(lease_ttl_s=0.6)
        server, port = await start_server(peer)
        peer.add_job(accounts=["alice", "bob", "carol"])
        worker = Worker(make_config(port), DryRunExecutor(delay_s=0.1))
        task = asyncio.create_task(worker.run())
        with capture_logs() as events:
            await wait_until(lambda: any(u.results for _, u in peer.updates))
            await server.stop(0)
            await wait_until(lambda: any(e["event"] == "lease_lost" for e in events))
            claims_before = len(peer.claims)
            server, _ = await start_server(peer, port)
            await wait_until(lambda: len(peer.claims) > claims_before)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        assert peer.completions == []
        lost = next(e for e in events if e["event"] == "lease_lost")
        assert lost["reason"] == "deadline_passed"

    run(scenario)


# --- claiming in batches, completing in batches ----------------------------------


def task_names() -> set[str]:
    return {t.get_name() for t in asyncio.all_tasks()}


def test_one_claim_asks_for_every_free_slot_and_runs_each_job_as_a_task():
    """Concurrency 8, 8 queued jobs: the first claim asks for 8 and gets several."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        job_ids = [peer.add_job(accounts=[f"donor{i}"]) for i in range(8)]
        worker = Worker(make_config(port, concurrency=8), DryRunExecutor(delay_s=0.5))
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: {f"job-{j}" for j in job_ids} <= task_names())
        assert "claimer" in task_names()
        # Every slot is busy, so the claimer waits instead of claiming.
        await asyncio.sleep(0.2)
        claims_while_busy = len(peer.claims)
        await wait_until(lambda: len(peer.completions) == 8)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        assert peer.claims[0][1].max_jobs == 8
        assert peer.claim_replies[0] > 1
        assert sum(peer.claim_replies) == 8
        assert claims_while_busy == len([n for n in peer.claim_replies if n]) == 1
        assert {c.job_id for c in peer.completions} == set(job_ids)

    run(scenario)


def test_jobs_finishing_together_share_complete_jobs_calls():
    """Eight jobs ending at once reach Brain in fewer CompleteJobs calls than jobs."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        job_ids = [peer.add_job(accounts=[f"donor{i}"]) for i in range(8)]
        worker = Worker(make_config(port, concurrency=8), DryRunExecutor(delay_s=0.2))
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: len(peer.completions) == 8)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        assert len(peer.complete_batches) < 8
        assert sorted(j for b in peer.complete_batches for j in b) == sorted(job_ids)
        assert {c.outcome for c in peer.completions} == {jobs_pb2.OUTCOME_SUCCEEDED}

    run(scenario)


def test_a_stale_lease_in_a_batch_stops_only_that_job():
    """A per-item FAILED_PRECONDITION drops that job; the rest of its batch succeeds."""

    async def scenario():
        peer = PeerBrain()
        victims: list[str] = []

        def revoke_one(request: jobs_pb2.CompleteJobsRequest) -> None:
            if not victims and len(request.completions) >= 2:
                victims.append(request.completions[-1].job_id)
                peer.revoked.add(request.completions[-1].lease_token)

        peer.on_batch = revoke_one
        server, port = await start_server(peer)
        job_ids = [peer.add_job(accounts=[f"donor{i}"]) for i in range(6)]
        worker = Worker(make_config(port, concurrency=6), DryRunExecutor(delay_s=0.2))
        task = asyncio.create_task(worker.run())
        with capture_logs() as events:
            await wait_until(lambda: victims and len(peer.completions) == 5)
            # Room for a wrongful retry of the victim to show up.
            await asyncio.sleep(0.3)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        (victim,) = victims
        (victim_batch,) = [b for b in peer.complete_batches if victim in b]
        assert len(victim_batch) >= 2
        assert {c.job_id for c in peer.completions} == set(job_ids) - {victim}
        assert {c.outcome for c in peer.completions} == {jobs_pb2.OUTCOME_SUCCEEDED}
        lost = [e for e in events if e["event"] == "lease_lost"]
        assert [(e["job_id"], e["reason"]) for e in lost] == [
            (victim, "failed_precondition")
        ]
        completed = {e["job_id"] for e in events if e["event"] == "job_completed"}
        assert completed == set(job_ids) - {victim}

    run(scenario)


def test_a_failed_complete_jobs_call_is_retried_and_each_job_completes_once():
    """Whole CompleteJobs calls failing UNAVAILABLE are retried; no job twice."""

    async def scenario():
        peer = PeerBrain()
        peer.complete_failures = 2
        server, port = await start_server(peer)
        job_ids = [peer.add_job(accounts=[f"donor{i}"]) for i in range(6)]
        worker = Worker(make_config(port, concurrency=6), DryRunExecutor(delay_s=0.2))
        task = asyncio.create_task(worker.run())
        with capture_logs() as events:
            await wait_until(lambda: len(peer.completions) == 6)
            await asyncio.sleep(0.3)
        assert await stop_worker(worker, task) == 0
        await server.stop(0)

        assert peer.complete_failures == 0
        assert sorted(c.job_id for c in peer.completions) == sorted(job_ids)
        assert len(peer.complete_batches) >= 3
        retried = [e for e in events if e["event"] == "brain_unreachable"]
        assert retried and {e["call"] for e in retried} == {"CompleteJobs"}
        assert all("UNAVAILABLE" in e["error"] for e in retried)

    run(scenario)


def test_draining_with_a_claim_in_flight_exits_0_at_once():
    """shutdown() during a 30 s long-poll for 4 slots cancels it; run() returns 0."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        worker = Worker(
            make_config(port, concurrency=4, claim_wait_s=30.0), DryRunExecutor()
        )
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: peer.claims)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        worker.shutdown()
        assert await asyncio.wait_for(task, 5.0) == 0
        elapsed_s = time.monotonic() - started
        await server.stop(0)

        assert elapsed_s < 1.0
        assert [c.max_jobs for _, c in peer.claims] == [4]
        assert "claimer" not in task_names()

    run(scenario)


class CrashingExecutor(DryRunExecutor):
    """After acting as `crasher`, one take_refreshed_sessions call raises."""

    def __init__(self) -> None:
        super().__init__(delay_s=5.0)
        self.broken = False

    async def follow(self, job: JobContext, account: AccountSession) -> StepReport:
        if account.username == "crasher":
            await asyncio.sleep(0.2)
            self.broken = True
            return StepReport(StepOutcome.DONE)
        return await super().follow(job, account)

    def take_refreshed_sessions(self) -> list[AccountSession]:
        if self.broken:
            self.broken = False
            raise RuntimeError("session store corrupted")
        return []


def test_a_crashed_job_task_hands_the_others_back_and_exits_1():
    """A job task that dies logs worker_task_crashed; the other job goes back RETRY."""

    async def scenario():
        peer = PeerBrain()
        server, port = await start_server(peer)
        crashing = peer.add_job(accounts=["crasher"])
        survivor = peer.add_job(accounts=["alice"])
        worker = Worker(make_config(port, concurrency=2), CrashingExecutor())
        started = time.monotonic()
        with capture_logs() as events:
            exit_code = await asyncio.wait_for(worker.run(), 5.0)
        elapsed_s = time.monotonic() - started
        await server.stop(0)

        assert exit_code == 1 and elapsed_s < 3.0
        crash = next(e for e in events if e["event"] == "worker_task_crashed")
        assert crash["log_level"] == "error" and crash["task"] == f"job-{crashing}"
        assert "session store corrupted" in crash["error"]
        (done,) = peer.completions
        assert done.job_id == survivor and done.outcome == jobs_pb2.OUTCOME_RETRY
        assert done.error_code == "worker_shutdown"

    run(scenario)
