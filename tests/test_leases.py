"""The lease engine through a real Brain: claim, renew, fence, expire, complete."""

import threading
import time
from collections import Counter

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from harness import add_accounts, submit, wait_for

from barter.v1 import admin_pb2, common_pb2, jobs_pb2


def claim(brain, worker_id="w1", wait_s=0.0, max_jobs=1):
    wait = Duration()
    wait.FromMilliseconds(int(wait_s * 1000))
    return (
        brain.jobs()
        .ClaimJob(
            jobs_pb2.ClaimJobRequest(worker_id=worker_id, wait=wait, max_jobs=max_jobs),
            timeout=wait_s + 10,
        )
        .jobs
    )


def done(job, outcome=common_pb2.STEP_OUTCOME_DONE):
    return [
        common_pb2.StepResult(
            step_index=step.index,
            account_username=step.account_username,
            outcome=outcome,
        )
        for step in job.steps
    ]


def complete(brain, job, outcome=jobs_pb2.OUTCOME_SUCCEEDED, results=None, **kw):
    return brain.jobs().CompleteJob(
        jobs_pb2.CompleteJobRequest(
            job_id=job.job_id,
            lease_token=job.lease.token,
            outcome=outcome,
            results=done(job) if results is None else results,
            **kw,
        ),
        timeout=10,
    )


def progress(brain, job, results=(), message=""):
    """One update on a fresh stream; returns the ack."""
    update = jobs_pb2.ProgressUpdate(
        job_id=job.job_id,
        lease_token=job.lease.token,
        results=list(results),
        message=message,
    )
    return next(iter(brain.jobs().StreamProgress(iter([update]), timeout=10)))


def get(brain, job_id):
    return brain.admin().GetJob(admin_pb2.GetJobRequest(job_id=job_id), timeout=10)


def test_ten_concurrent_claimers_get_each_of_200_jobs_exactly_once(brain):
    """10 claimers racing over 200 jobs: every job is claimed exactly once."""
    add_accounts(brain, *[f"acct{i}" for i in range(20)])
    job_ids = submit(brain, [f"target{i}" for i in range(200)])
    claims: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claimer(n: int) -> None:
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with lock:
                    if sum(claims.values()) >= 200:
                        return
                jobs = claim(brain, worker_id=f"claimer{n}", wait_s=0.2)
                for job in jobs:
                    with lock:
                        claims[job.job_id] += 1
                    complete(brain, job)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)

    assert not errors
    assert set(claims) == set(job_ids)
    assert max(claims.values()) == 1
    states = dict(brain.query("SELECT state, count(*) FROM jobs GROUP BY state"))
    doubled = brain.query(
        "SELECT job_id, step_index FROM action_log GROUP BY job_id, step_index "
        "HAVING count(*) > 1"
    )
    assert states == {"SUCCEEDED": 200}
    assert doubled == []


def test_expired_lease_is_reclaimed_and_the_old_holder_is_fenced_off(make_brain):
    """A lease that expires goes to a new worker; the old one's writes are refused."""
    brain = make_brain(BRAIN_LEASE_TTL_S="1")
    add_accounts(brain, "alice", "bob")
    (job_id,) = submit(brain, ["target1"])
    (old,) = claim(brain, worker_id="old")

    (new,) = claim(brain, worker_id="new", wait_s=5)

    assert new.job_id == job_id
    assert new.lease.attempt == 2 and old.lease.attempt == 1
    assert new.lease.token != old.lease.token
    with pytest.raises(grpc.RpcError) as refused_progress:
        progress(brain, old, results=done(old))
    assert refused_progress.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as refused_complete:
        complete(brain, old)
    assert refused_complete.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    complete(brain, new)
    job = get(brain, job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED
    assert [s.account_username for s in job.steps] == [new.steps[0].account_username]
    assert brain.query("SELECT worker_id FROM action_log") == [("new",)]


def test_expired_lease_on_the_last_attempt_fails_the_job_with_the_reason(make_brain):
    """Once max_attempts leases have expired the job is FAILED, saying why."""
    brain = make_brain(BRAIN_LEASE_TTL_S="0.5")
    add_accounts(brain, "alice")
    (job_id,) = submit(brain, ["target1"], max_attempts=1)
    claim(brain)

    wait_for(
        lambda: get(brain, job_id).state == common_pb2.JOB_STATE_FAILED,
        10,
        "the sweeper to fail the job",
    )
    job = get(brain, job_id)
    assert job.last_error_code == "lease_expired"
    assert "no attempts remain" in job.last_error_message


def test_progress_renews_the_lease_and_records_each_step_once(make_brain):
    """Updates push the deadline out and log a repeated step result only once."""
    brain = make_brain(BRAIN_LEASE_TTL_S="2")
    add_accounts(brain, "a1", "a2", "a3")
    (job_id,) = submit(brain, ["target1"], tier="small")
    (job,) = claim(brain)
    first_deadline = job.lease.deadline.ToDatetime()

    time.sleep(0.1)
    ack = progress(brain, job, results=done(job)[:1], message="1 of 3")
    again = progress(brain, job, results=done(job)[:1], message="1 of 3")

    assert ack.deadline.ToDatetime() > first_deadline
    assert again.deadline.ToDatetime() >= ack.deadline.ToDatetime()
    assert not ack.cancel
    view = get(brain, job_id)
    assert view.steps_done == 1 and view.progress_message == "1 of 3"
    assert brain.query("SELECT count(*) FROM action_log") == [(1,)]


def test_heartbeats_keep_a_lease_alive_past_its_ttl(make_brain):
    """Empty updates inside the TTL keep the job leased to the same worker."""
    brain = make_brain(BRAIN_LEASE_TTL_S="1")
    add_accounts(brain, "alice")
    (job_id,) = submit(brain, ["target1"])
    (job,) = claim(brain)

    def beats():
        for _ in range(8):
            yield jobs_pb2.ProgressUpdate(job_id=job_id, lease_token=job.lease.token)
            time.sleep(0.3)

    acks = list(brain.jobs().StreamProgress(beats(), timeout=30))

    assert len(acks) == 8
    assert complete(brain, job).state == common_pb2.JOB_STATE_SUCCEEDED


def test_complete_twice_with_the_same_token_succeeds_and_changes_nothing(brain):
    """A repeated CompleteJob (lost reply) answers the same and writes nothing."""
    add_accounts(brain, "alice")
    (job_id,) = submit(brain, ["target1"])
    (job,) = claim(brain)

    first = complete(brain, job)
    before = get(brain, job_id)
    second = complete(brain, job)
    after = get(brain, job_id)

    assert first.state == second.state == common_pb2.JOB_STATE_SUCCEEDED
    assert before == after
    assert brain.query("SELECT count(*) FROM action_log") == [(1,)]
    with pytest.raises(grpc.RpcError) as different:
        complete(brain, job, outcome=jobs_pb2.OUTCOME_FAILED)
    assert different.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_retry_outcome_backs_off_then_hands_out_only_unfinished_steps(brain):
    """RETRY puts the job back after a backoff; the re-claim carries open steps only."""
    add_accounts(brain, "a1", "a2", "a3", "a4")
    (job_id,) = submit(brain, ["target1"], tier="small")
    (job,) = claim(brain)
    results = done(job)
    results[2].outcome = common_pb2.STEP_OUTCOME_TRANSIENT

    reply = complete(
        brain,
        job,
        outcome=jobs_pb2.OUTCOME_RETRY,
        results=results,
        error_code="timeout",
    )

    assert reply.state == common_pb2.JOB_STATE_PENDING
    assert reply.available_at.seconds > 0
    (again,) = claim(brain, wait_s=5)
    assert again.job_id == job_id and again.lease.attempt == 2
    assert [s.index for s in again.steps] == [2]
    assert again.steps_done == 2
    complete(brain, again)
    assert get(brain, job_id).state == common_pb2.JOB_STATE_SUCCEEDED


def test_attempts_used_up_by_retries_fail_the_job(brain):
    """The last allowed RETRY ends the job FAILED with the last error."""
    add_accounts(brain, "alice")
    (job_id,) = submit(brain, ["target1"], max_attempts=2)
    for _ in range(2):
        (job,) = claim(brain, wait_s=5)
        results = done(job, outcome=common_pb2.STEP_OUTCOME_TRANSIENT)
        reply = complete(
            brain, job, jobs_pb2.OUTCOME_RETRY, results, error_code="http_502"
        )
    assert reply.state == common_pb2.JOB_STATE_FAILED
    job = get(brain, job_id)
    assert job.last_error_code == "attempts_exhausted"
    assert "http_502" in job.last_error_message


def claim_during_a_submit(brain, wait_s: float) -> tuple[int, float]:
    """Long-poll up to `wait_s` while a job is submitted 0.5 s in; returns the
    jobs claimed and how long after the submit the claim returned."""
    got: dict[str, float] = {}

    def poller():
        jobs = claim(brain, worker_id="poller", wait_s=wait_s)
        got["at"] = time.monotonic()
        got["n"] = len(jobs)

    thread = threading.Thread(target=poller)
    thread.start()
    time.sleep(0.5)
    submitted_at = time.monotonic()
    submit(brain, ["target1"])
    thread.join(30)
    return int(got["n"]), got["at"] - submitted_at


def test_a_long_poll_is_woken_by_a_submit_in_well_under_a_second(brain):
    """A worker waiting 30 s gets a newly submitted job within milliseconds."""
    add_accounts(brain, "alice")
    jobs, woken_after_s = claim_during_a_submit(brain, wait_s=30)

    assert jobs == 1
    assert woken_after_s < 0.5


def test_a_long_poll_its_worker_gave_up_on_does_not_swallow_the_next_wake(brain):
    """A long-poll cancelled by its caller leaves no waiter behind: the next
    submit wakes the worker that is still waiting, not the one that left."""
    add_accounts(brain, "alice")
    with pytest.raises(grpc.RpcError) as gave_up:
        wait = Duration()
        wait.FromSeconds(30)
        brain.jobs().ClaimJob(
            jobs_pb2.ClaimJobRequest(worker_id="gone", wait=wait), timeout=0.3
        )
    assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    jobs, woken_after_s = claim_during_a_submit(brain, wait_s=10)

    assert jobs == 1
    assert woken_after_s < 0.5


def test_a_waiting_long_poll_is_handed_the_queue_head_not_the_newest_job(brain):
    """A submit claims for the long-poll that waits, in its own transaction,
    and in the queue's order: a batch's higher-priority job goes first."""
    add_accounts(brain, "alice", "bob", "carol", "dave")
    got: dict[str, list] = {}

    def poller():
        got["jobs"] = list(claim(brain, worker_id="poller", wait_s=30))

    thread = threading.Thread(target=poller)
    thread.start()
    time.sleep(0.5)
    reply = brain.admin().SubmitJobs(
        admin_pb2.SubmitJobsRequest(
            jobs=[
                admin_pb2.JobSpec(
                    action=common_pb2.ACTION_FOLLOW, target="low", tier="free_test"
                ),
                admin_pb2.JobSpec(
                    action=common_pb2.ACTION_FOLLOW, target="high", tier="small"
                ),
            ]
        ),
        timeout=10,
    )
    thread.join(30)
    low, high = (item.job.job_id for item in reply.jobs)

    assert [job.job_id for job in got["jobs"]] == [high]
    assert get(brain, high).state == common_pb2.JOB_STATE_LEASED
    assert get(brain, low).state == common_pb2.JOB_STATE_PENDING
    (job,) = claim(brain, worker_id="second")
    assert job.job_id == low


def test_an_empty_long_poll_returns_after_its_wait(brain):
    """With nothing due, ClaimJob holds about `wait` and returns no job."""
    started = time.monotonic()
    jobs = claim(brain, wait_s=0.5)
    elapsed = time.monotonic() - started
    assert jobs == []
    assert 0.4 <= elapsed < 3


def test_a_job_without_enough_free_accounts_waits_with_a_reason(brain):
    """Too few accounts: the job stays PENDING, says why, and starts once they exist."""
    add_accounts(brain, "a1", "a2")
    (job_id,) = submit(brain, ["target1"], tier="small")

    assert claim(brain, wait_s=0.3) == []
    job = get(brain, job_id)
    assert job.state == common_pb2.JOB_STATE_PENDING
    assert job.pending_reason == "waiting for accounts: 3 needed, 2 free"

    add_accounts(brain, "a3")
    (claimed,) = claim(brain, wait_s=5)
    assert claimed.job_id == job_id
    assert get(brain, job_id).pending_reason == ""


def test_an_account_never_repeats_an_action_on_a_target(brain):
    """An account that followed a target is not assigned to follow it again."""
    add_accounts(brain, "alice", "bob")
    submit(brain, ["target1"])
    (first,) = claim(brain)
    complete(brain, first)
    submit(brain, ["target1"])
    (second,) = claim(brain)
    complete(brain, second)
    submit(brain, ["target1"])

    assert first.steps[0].account_username != second.steps[0].account_username
    assert claim(brain, wait_s=0.3) == []


def test_cancel_of_a_pending_job_is_immediate(brain):
    """CancelJob on a PENDING job makes it CANCELLED and unclaimable."""
    (job_id,) = submit(brain, ["target1"])
    job = brain.admin().CancelJob(admin_pb2.CancelJobRequest(job_id=job_id))
    assert job.state == common_pb2.JOB_STATE_CANCELLED
    add_accounts(brain, "alice")
    assert claim(brain, wait_s=0.2) == []


def test_cancel_of_a_running_job_reaches_the_worker_in_its_next_ack(brain):
    """A LEASED job is flagged; the ack says cancel; completing CANCELLED ends it."""
    add_accounts(brain, "a1", "a2", "a3")
    (job_id,) = submit(brain, ["target1"], tier="small")
    (job,) = claim(brain)
    assert not progress(brain, job).cancel

    flagged = brain.admin().CancelJob(admin_pb2.CancelJobRequest(job_id=job_id))
    ack = progress(brain, job, results=done(job)[:1])

    assert flagged.state == common_pb2.JOB_STATE_LEASED and flagged.cancel_requested
    assert ack.cancel
    reply = complete(brain, job, jobs_pb2.OUTCOME_CANCELLED, results=[])
    assert reply.state == common_pb2.JOB_STATE_CANCELLED
    final = get(brain, job_id)
    assert final.state == common_pb2.JOB_STATE_CANCELLED and final.steps_done == 1
    with pytest.raises(grpc.RpcError) as again:
        brain.admin().CancelJob(admin_pb2.CancelJobRequest(job_id=job_id))
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_retry_of_a_failed_job_runs_it_again(brain):
    """RetryJob sends a FAILED job back to PENDING with fresh attempts."""
    add_accounts(brain, "alice", "bob")
    (job_id,) = submit(brain, ["target1"])
    (job,) = claim(brain)
    results = done(job, outcome=common_pb2.STEP_OUTCOME_TARGET_INVALID)
    failed = complete(brain, job, jobs_pb2.OUTCOME_FAILED, results, error_code="x")
    assert failed.state == common_pb2.JOB_STATE_FAILED

    retried = brain.admin().RetryJob(admin_pb2.RetryJobRequest(job_id=job_id))

    assert retried.state == common_pb2.JOB_STATE_PENDING and retried.attempts == 0
    (again,) = claim(brain, wait_s=5)
    assert again.job_id == job_id and again.lease.attempt == 1
    complete(brain, again)
    assert get(brain, job_id).state == common_pb2.JOB_STATE_SUCCEEDED


def test_throttled_and_challenged_accounts_are_set_aside(brain):
    """THROTTLED cools an account down; ACCOUNT_NEEDS_OWNER parks it with the reason."""
    add_accounts(brain, "slow", "stuck", "spare1", "spare2")
    (job_id,) = submit(brain, ["target1"], tier="small")
    (job,) = claim(brain)
    by_account = {s.account_username: s for s in job.steps}
    results = []
    for name, step in by_account.items():
        outcome = {
            "slow": common_pb2.STEP_OUTCOME_THROTTLED,
            "stuck": common_pb2.STEP_OUTCOME_ACCOUNT_NEEDS_OWNER,
        }.get(name, common_pb2.STEP_OUTCOME_DONE)
        results.append(
            common_pb2.StepResult(
                step_index=step.index,
                account_username=name,
                outcome=outcome,
                error_code="challenge_required" if name == "stuck" else "",
            )
        )
    complete(brain, job, jobs_pb2.OUTCOME_RETRY, results)

    accounts = {
        a.username: a
        for a in brain.admin().ListAccounts(admin_pb2.ListAccountsRequest()).accounts
    }
    # Fresh accounts are used in the order they were added.
    assert set(by_account) == {"slow", "stuck", "spare1"}
    assert accounts["slow"].state == common_pb2.ACCOUNT_STATE_COOLDOWN
    assert accounts["slow"].cooldown_until.seconds > 0
    assert accounts["stuck"].state == common_pb2.ACCOUNT_STATE_NEEDS_OWNER
    assert accounts["stuck"].state_reason.startswith("challenge_required")
    assert accounts["spare1"].state == common_pb2.ACCOUNT_STATE_ACTIVE
    # Two steps are open; spare1 already followed the target, so one more
    # account is needed besides spare2.
    assert claim(brain, wait_s=0.2) == []
    add_accounts(brain, "spare3")
    (again,) = claim(brain, wait_s=5)
    assert sorted(s.account_username for s in again.steps) == ["spare2", "spare3"]
    reset = brain.admin().ResetAccount(admin_pb2.ResetAccountRequest(username="stuck"))
    assert reset.state == common_pb2.ACCOUNT_STATE_ACTIVE
