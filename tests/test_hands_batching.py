"""BrainClient's completion batcher against a scripted CompleteJobs peer.

Each caller of `BrainClient.complete` must get exactly what a lone
CompleteJob call would have given it, however its request was batched.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
import structlog

from barter.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc
from hands_service.brain_client import (
    MAX_COMPLETE_BATCH_BYTES,
    BrainClient,
    BrainRejected,
    BrainUnavailable,
    CompletionBatcher,
    LeaseLost,
)

pytestmark = pytest.mark.timeout(10)


@pytest.fixture(autouse=True)
def _default_structlog():
    structlog.reset_defaults()


class CompletionPeer(jobs_pb2_grpc.JobServiceServicer):
    """Answers CompleteJobs per item from a script and records every call."""

    def __init__(self) -> None:
        # Per job id: the status code its result carries; 0 (OK) when absent.
        self.codes: dict[str, int] = {}
        # Job ids to leave out of the reply altogether.
        self.omit: set[str] = set()
        # A status to fail the next whole call with.
        self.call_error: grpc.StatusCode | None = None
        self.delay_s = 0.0
        self.batches: list[list[str]] = []
        self.sizes: list[int] = []
        self.time_remaining_s: list[float] = []

    async def CompleteJobs(self, request, context):
        self.batches.append([c.job_id for c in request.completions])
        self.sizes.append(request.ByteSize())
        self.time_remaining_s.append(context.time_remaining())
        job_ids = [c.job_id for c in request.completions]
        if len(set(job_ids)) != len(job_ids):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "duplicate job_id")
        if self.call_error is not None:
            code, self.call_error = self.call_error, None
            await context.abort(code, "scripted call failure")
        await asyncio.sleep(self.delay_s)
        results = []
        for completion in request.completions:
            if completion.job_id in self.omit:
                continue
            code = self.codes.get(completion.job_id, 0)
            result = jobs_pb2.CompletionResult(job_id=completion.job_id, code=code)
            if code:
                result.message = f"scripted {code}"
            else:
                result.response.state = common_pb2.JOB_STATE_SUCCEEDED
            results.append(result)
        return jobs_pb2.CompleteJobsResponse(results=results)


@asynccontextmanager
async def serving(
    peer: jobs_pb2_grpc.JobServiceServicer,
) -> AsyncIterator[BrainClient]:
    """A BrainClient talking to `peer` on a real server on 127.0.0.1."""
    server = grpc.aio.server()
    jobs_pb2_grpc.add_JobServiceServicer_to_server(peer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    client = BrainClient(channel)
    try:
        yield client
    finally:
        await client.close()
        await channel.close()
        await server.stop(0)


def completion(job_id: str) -> jobs_pb2.CompleteJobRequest:
    return jobs_pb2.CompleteJobRequest(
        job_id=job_id, lease_token="t" * 32, outcome=jobs_pb2.OUTCOME_SUCCEEDED
    )


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 8.0))


def test_completions_queued_together_go_in_one_call_each_with_its_result():
    """Three callers at once: one CompleteJobs call, each gets its own reply."""

    async def scenario():
        peer = CompletionPeer()
        async with serving(peer) as client:
            replies = await asyncio.gather(
                *(client.complete(completion(j), timeout_s=5.0) for j in "abc")
            )

        assert peer.batches == [["a", "b", "c"]]
        assert {r.state for r in replies} == {common_pb2.JOB_STATE_SUCCEEDED}

    run(scenario)


def test_a_lone_completion_is_sent_at_once():
    """No waiting for a fuller batch: one completion is answered in one trip."""

    async def scenario():
        peer = CompletionPeer()
        async with serving(peer) as client:
            await client.complete(completion("warm-up"), timeout_s=5.0)
            started = time.monotonic()
            await client.complete(completion("a"), timeout_s=5.0)
            elapsed_s = time.monotonic() - started

        assert peer.batches == [["warm-up"], ["a"]]
        assert elapsed_s < 0.25

    run(scenario)


def test_two_completions_of_one_job_never_share_a_call():
    """A later duplicate job id waits for the next call, in its place."""

    async def scenario():
        peer = CompletionPeer()
        async with serving(peer) as client:
            await asyncio.gather(
                *(client.complete(completion(j), timeout_s=5.0) for j in "aba")
            )

        assert peer.batches == [["a", "b"], ["a"]]

    run(scenario)


def test_large_completions_are_split_so_no_call_outgrows_the_byte_budget():
    """Completions carrying big refreshed sessions go in several calls, each
    under the budget, in their queued order; each caller still gets its reply."""

    async def scenario():
        peer = CompletionPeer()
        big = []
        for job_id in "abcdefgh":
            request = completion(job_id)
            request.refreshed_sessions.add(
                username=f"user_{job_id}", settings=b"x" * (300 * 1024)
            )
            big.append(request)
        async with serving(peer) as client:
            replies = await asyncio.gather(
                *(client.complete(r, timeout_s=5.0) for r in big)
            )

        assert len(replies) == 8
        assert [j for batch in peer.batches for j in batch] == list("abcdefgh")
        assert len(peer.batches) >= 3
        assert max(peer.sizes) <= MAX_COMPLETE_BATCH_BYTES + 1024

    run(scenario)


def test_item_codes_become_the_errors_a_lone_call_would_raise():
    """Per-item 9 => LeaseLost, 14 => BrainUnavailable, 5 => BrainRejected."""

    async def scenario():
        peer = CompletionPeer()
        peer.codes = {"stale": 9, "busy": 14, "gone": 5, "odd": 99}
        async with serving(peer) as client:
            outcomes = await asyncio.gather(
                *(
                    client.complete(completion(j), timeout_s=5.0)
                    for j in ("ok", "stale", "busy", "gone", "odd")
                ),
                return_exceptions=True,
            )

        ok, stale, busy, gone, odd = outcomes
        assert len(peer.batches) == 1
        assert ok.state == common_pb2.JOB_STATE_SUCCEEDED
        assert isinstance(stale, LeaseLost) and "scripted 9" in str(stale)
        assert isinstance(busy, BrainUnavailable) and "UNAVAILABLE" in str(busy)
        assert isinstance(gone, BrainRejected)
        assert gone.code == grpc.StatusCode.NOT_FOUND
        # An unknown code is treated as UNKNOWN, which is worth a retry.
        assert isinstance(odd, BrainUnavailable) and "UNKNOWN" in str(odd)

    run(scenario)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (grpc.StatusCode.UNAVAILABLE, BrainUnavailable),
        (grpc.StatusCode.PERMISSION_DENIED, BrainRejected),
    ],
)
def test_a_failed_call_fails_every_item_with_its_translated_error(status, error):
    """The whole call failing raises the call's typed error for each caller."""

    async def scenario():
        peer = CompletionPeer()
        peer.call_error = status
        async with serving(peer) as client:
            outcomes = await asyncio.gather(
                *(client.complete(completion(j), timeout_s=5.0) for j in "ab"),
                return_exceptions=True,
            )
            again = await client.complete(completion("a"), timeout_s=5.0)

        assert [type(o) for o in outcomes] == [error, error]
        assert again.state == common_pb2.JOB_STATE_SUCCEEDED
        assert peer.batches == [["a", "b"], ["a"]]

    run(scenario)


def test_a_job_missing_from_the_reply_is_worth_a_retry():
    """A result Brain left out fails only that caller, as BrainUnavailable."""

    async def scenario():
        peer = CompletionPeer()
        peer.omit = {"b"}
        async with serving(peer) as client:
            outcomes = await asyncio.gather(
                *(client.complete(completion(j), timeout_s=5.0) for j in "ab"),
                return_exceptions=True,
            )

        assert outcomes[0].state == common_pb2.JOB_STATE_SUCCEEDED
        assert isinstance(outcomes[1], BrainUnavailable)

    run(scenario)


def test_the_call_timeout_is_the_smallest_left_in_the_batch():
    """A batch call carries the deadline of its most impatient caller."""

    async def scenario():
        peer = CompletionPeer()
        async with serving(peer) as client:
            await asyncio.gather(
                client.complete(completion("a"), timeout_s=5.0),
                client.complete(completion("b"), timeout_s=1.5),
            )

        assert peer.batches == [["a", "b"]]
        # gRPC rounds the deadline it propagates, so allow a little over 1.5 s;
        # the point is that it is not the other caller's 5 s.
        assert 1.0 < peer.time_remaining_s[0] < 2.0

    run(scenario)


def test_callers_that_give_up_do_not_break_the_sender():
    """A timed-out and a cancelled caller are skipped; later callers still succeed."""

    async def scenario():
        peer = CompletionPeer()
        peer.delay_s = 0.4
        async with serving(peer) as client:
            first = asyncio.create_task(client.complete(completion("a"), 5.0))
            await asyncio.sleep(0.1)
            impatient = asyncio.create_task(client.complete(completion("late"), 0.1))
            cancelled = asyncio.create_task(client.complete(completion("gone"), 5.0))
            patient = asyncio.create_task(client.complete(completion("b"), 5.0))
            await asyncio.sleep(0.05)
            cancelled.cancel()
            with pytest.raises(BrainUnavailable, match="no CompleteJobs reply"):
                await impatient
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert (await first).state == common_pb2.JOB_STATE_SUCCEEDED
            assert (await patient).state == common_pb2.JOB_STATE_SUCCEEDED

        assert peer.batches == [["a"], ["b"]]

    run(scenario)


class FlakyStub:
    """A JobService stub whose first CompleteJobs raises a bug, not a gRPC error."""

    def __init__(self) -> None:
        self.calls = 0

    async def CompleteJobs(self, request, timeout, metadata):
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(0.1)
            raise RuntimeError("serializer exploded")
        return jobs_pb2.CompleteJobsResponse(
            results=[
                jobs_pb2.CompletionResult(job_id=c.job_id) for c in request.completions
            ]
        )


def test_an_unexpected_error_fails_the_batch_and_the_sender_carries_on():
    """A non-gRPC exception is logged at ERROR and fails its items, nothing more."""

    async def scenario():
        stub = FlakyStub()
        batcher = CompletionBatcher(stub, ())
        with structlog.testing.capture_logs() as events:
            first = asyncio.create_task(batcher.complete(completion("a"), 2.0))
            await asyncio.sleep(0.05)
            # Queued while the failing call is in flight: the same sender sends it.
            second = asyncio.create_task(batcher.complete(completion("b"), 2.0))
            with pytest.raises(BrainUnavailable, match="serializer exploded"):
                await first
            await second
        await batcher.close()

        assert stub.calls == 2
        crashed = [e for e in events if e["event"] == "completion_batch_crashed"]
        assert len(crashed) == 1 and crashed[0]["log_level"] == "error"

    run(scenario)


def test_close_fails_completions_still_waiting():
    """Closing the client answers waiting callers with BrainUnavailable."""

    async def scenario():
        peer = CompletionPeer()
        peer.delay_s = 2.0
        async with serving(peer) as client:
            waiting = asyncio.create_task(client.complete(completion("a"), 5.0))
            await asyncio.sleep(0.1)
            await client.close()
            with pytest.raises(BrainUnavailable, match="stopped"):
                await waiting

    run(scenario)


class OldBrain(jobs_pb2_grpc.JobServiceServicer):
    """A Brain from before CompleteJobs: only the lone CompleteJob exists."""

    def __init__(self) -> None:
        self.batch_calls = 0
        self.lone: list[str] = []

    async def CompleteJobs(self, request, context):
        self.batch_calls += 1
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    async def CompleteJob(self, request, context):
        self.lone.append(request.job_id)
        if request.job_id == "stale":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "stale lease")
        return jobs_pb2.CompleteJobResponse(state=common_pb2.JOB_STATE_SUCCEEDED)


def test_a_brain_without_complete_jobs_gets_each_completion_alone():
    """During a rolling upgrade an older Brain answers UNIMPLEMENTED: the
    batch goes out as lone CompleteJob calls, with the same per-job errors,
    and the worker does not ask for batches again."""

    async def scenario():
        peer = OldBrain()
        async with serving(peer) as client:
            outcomes = await asyncio.gather(
                *(
                    client.complete(completion(j), timeout_s=5.0)
                    for j in ("a", "stale")
                ),
                return_exceptions=True,
            )
            later = await client.complete(completion("b"), timeout_s=5.0)

        assert outcomes[0].state == common_pb2.JOB_STATE_SUCCEEDED
        assert isinstance(outcomes[1], LeaseLost)
        assert later.state == common_pb2.JOB_STATE_SUCCEEDED
        assert peer.batch_calls == 1
        assert sorted(peer.lone) == ["a", "b", "stale"]

    run(scenario)
