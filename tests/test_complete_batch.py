"""CompleteJobs through a real Brain: many completions, each answered alone."""

import grpc
import pytest
from harness import add_accounts, submit
from test_leases import claim, done, get

from barter.v1 import common_pb2, jobs_pb2

OK = grpc.StatusCode.OK.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def completion(job, outcome=jobs_pb2.OUTCOME_SUCCEEDED, results=None, **kw):
    return jobs_pb2.CompleteJobRequest(
        job_id=job.job_id,
        lease_token=job.lease.token,
        outcome=outcome,
        results=done(job) if results is None else results,
        **kw,
    )


def complete_all(brain, completions):
    return brain.jobs().CompleteJobs(
        jobs_pb2.CompleteJobsRequest(completions=completions), timeout=10
    )


def test_a_batch_finishes_every_job_in_one_call(make_brain):
    """Twenty jobs completed in one call all succeed, each effect logged once."""
    brain = make_brain()
    add_accounts(brain, *[f"a{i}" for i in range(20)])
    job_ids = submit(brain, [f"t{i}" for i in range(20)])
    jobs = claim(brain, max_jobs=20)
    assert len(jobs) == 20

    reply = complete_all(brain, [completion(job) for job in jobs])

    assert [r.job_id for r in reply.results] == [job.job_id for job in jobs]
    assert {r.code for r in reply.results} == {OK}
    assert {r.response.state for r in reply.results} == {common_pb2.JOB_STATE_SUCCEEDED}
    for job_id in job_ids:
        view = get(brain, job_id)
        assert view.state == common_pb2.JOB_STATE_SUCCEEDED and view.steps_done == 1
    assert brain.query("SELECT count(*) FROM action_log") == [(20,)]
    assert brain.query(
        "SELECT count(*) FROM accounts WHERE busy_job_id IS NOT NULL"
    ) == [(0,)]


def test_refused_completions_change_nothing_and_do_not_hold_up_the_rest(make_brain):
    """A stale lease, an unknown job, a bad outcome and a wrong account are each
    refused alone; the good completion beside them goes through."""
    brain = make_brain()
    add_accounts(brain, "a1", "a2", "a3", "a4")
    submit(brain, ["t1", "t2", "t3", "t4"])
    good, stale, bad_outcome, wrong_account = claim(brain, max_jobs=4)
    forged = jobs_pb2.ClaimedJob()
    forged.CopyFrom(stale)
    forged.lease.token = "0" * 32
    unknown = jobs_pb2.ClaimedJob()
    unknown.CopyFrom(good)
    unknown.job_id = "00000000-0000-4000-8000-000000000000"
    misassigned = done(wrong_account)
    misassigned[0].account_username = (
        "a1" if wrong_account.steps[0].account_username != "a1" else "a2"
    )

    reply = complete_all(
        brain,
        [
            completion(good),
            completion(forged),
            completion(unknown),
            completion(bad_outcome, outcome=jobs_pb2.OUTCOME_UNSPECIFIED),
            completion(wrong_account, results=misassigned),
        ],
    )

    codes = [(r.code, r.message.split(":")[0]) for r in reply.results]
    assert codes == [
        (OK, ""),
        (FAILED_PRECONDITION, "lease_token"),
        (NOT_FOUND, "job_id"),
        (INVALID_ARGUMENT, "outcome"),
        (INVALID_ARGUMENT, "results[0].account_username"),
    ]
    assert get(brain, good.job_id).state == common_pb2.JOB_STATE_SUCCEEDED
    for job in (stale, bad_outcome, wrong_account):
        view = get(brain, job.job_id)
        assert view.state == common_pb2.JOB_STATE_LEASED and view.steps_done == 0
    assert brain.query("SELECT job_id FROM action_log") == [(good.job_id,)]


def test_a_repeated_batch_answers_the_same_and_writes_nothing(make_brain):
    """A batch sent again (its reply was lost) is answered alike; a different
    outcome for a finished job is refused."""
    brain = make_brain()
    add_accounts(brain, "a1", "a2", "a3")
    submit(brain, ["t1", "t2", "t3"])
    jobs = claim(brain, max_jobs=3)
    results = done(jobs[2])
    results[0].outcome = common_pb2.STEP_OUTCOME_TRANSIENT
    batch = [
        completion(jobs[0]),
        completion(jobs[1], outcome=jobs_pb2.OUTCOME_FAILED, error_code="gone"),
        completion(jobs[2], outcome=jobs_pb2.OUTCOME_RETRY, results=results),
    ]

    first = complete_all(brain, batch)
    log_rows = brain.query("SELECT count(*) FROM action_log")
    second = complete_all(brain, batch)

    assert first == second
    assert [r.response.state for r in first.results] == [
        common_pb2.JOB_STATE_SUCCEEDED,
        common_pb2.JOB_STATE_FAILED,
        common_pb2.JOB_STATE_PENDING,
    ]
    assert first.results[2].response.HasField("available_at")
    assert brain.query("SELECT count(*) FROM action_log") == log_rows == [(3,)]
    changed = complete_all(
        brain, [completion(jobs[0], outcome=jobs_pb2.OUTCOME_FAILED)]
    )
    assert changed.results[0].code == FAILED_PRECONDITION


@pytest.mark.parametrize(
    "count, duplicate, field",
    [
        (0, False, "completions"),
        (257, False, "completions"),
        (2, True, "completions[1].job_id"),
    ],
)
def test_a_malformed_batch_is_refused_whole_naming_the_field(
    shared_brain, count, duplicate, field
):
    """An empty, oversized or repeating batch is INVALID_ARGUMENT for the call."""
    job = jobs_pb2.ClaimedJob(job_id="00000000-0000-4000-8000-000000000001")
    job.lease.token = "1" * 32
    items = [completion(job, results=[]) for _ in range(count)]
    if not duplicate:
        for i, item in enumerate(items):
            item.job_id = f"00000000-0000-4000-8000-{i:012d}"

    with pytest.raises(grpc.RpcError) as refused:
        complete_all(shared_brain, items)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(f"{field}:")


def test_one_job_twice_in_a_batch_is_refused_however_its_id_is_spelled(brain):
    """Job ids are compared in canonical form: the same job in capitals is
    still the same job, and the batch is refused whole, changing nothing."""
    add_accounts(brain, "a1")
    (job_id,) = submit(brain, ["t1"])
    (job,) = claim(brain)
    shouted = completion(job, outcome=jobs_pb2.OUTCOME_RETRY, error_code="x")
    shouted.job_id = job.job_id.upper()

    with pytest.raises(grpc.RpcError) as refused:
        complete_all(brain, [completion(job), shouted])

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("completions[1].job_id:")
    assert get(brain, job_id).state == common_pb2.JOB_STATE_LEASED
    assert brain.query("SELECT count(*) FROM action_log") == [(0,)]


def test_one_step_reported_twice_in_one_message_is_refused(brain):
    """Two results for one step in one completion (say TARGET_INVALID, then
    DONE) contradict each other: INVALID_ARGUMENT naming the second, nothing
    logged, the lease untouched."""
    add_accounts(brain, "a1")
    (job_id,) = submit(brain, ["t1"])
    (job,) = claim(brain)
    (step,) = job.steps
    results = [
        common_pb2.StepResult(
            step_index=step.index,
            account_username=step.account_username,
            outcome=outcome,
        )
        for outcome in (
            common_pb2.STEP_OUTCOME_TARGET_INVALID,
            common_pb2.STEP_OUTCOME_DONE,
        )
    ]

    reply = complete_all(brain, [completion(job, results=results)])

    (result,) = reply.results
    assert result.code == INVALID_ARGUMENT
    assert result.message.startswith("results[1].step_index: step 0 is also")
    assert get(brain, job_id).state == common_pb2.JOB_STATE_LEASED
    assert brain.query("SELECT count(*) FROM action_log") == [(0,)]
