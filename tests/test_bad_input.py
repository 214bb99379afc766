"""Every RPC answers bad input with INVALID_ARGUMENT naming the field."""

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from harness import add_accounts, submit

from barter.v1 import admin_pb2, common_pb2, jobs_pb2

GOOD_ID = "00000000-0000-4000-8000-000000000000"
TOKEN = "0" * 32
FOLLOW = common_pb2.ACTION_FOLLOW


def spec(**kw):
    fields = {"action": FOLLOW, "target": "someone", "tier": "free_test", **kw}
    return admin_pb2.SubmitJobsRequest(jobs=[admin_pb2.JobSpec(**fields)])


def step(**kw):
    fields = {"step_index": 0, "account_username": "alice", "outcome": 1, **kw}
    return common_pb2.StepResult(**fields)


def complete(**kw):
    fields = {
        "job_id": GOOD_ID,
        "lease_token": TOKEN,
        "outcome": jobs_pb2.OUTCOME_SUCCEEDED,
        **kw,
    }
    return jobs_pb2.CompleteJobRequest(**fields)


CASES = [
    # (service, method, request, field named in the message)
    ("admin", "SubmitJobs", admin_pb2.SubmitJobsRequest(), "jobs"),
    ("admin", "SubmitJobs", spec(target=""), "jobs[0].target"),
    ("admin", "SubmitJobs", spec(target="x" * 31), "jobs[0].target"),
    ("admin", "SubmitJobs", spec(target="has space"), "jobs[0].target"),
    ("admin", "SubmitJobs", spec(target="emoji\u2603"), "jobs[0].target"),
    ("admin", "SubmitJobs", spec(tier="platinum"), "jobs[0].tier"),
    ("admin", "SubmitJobs", spec(tier=""), "jobs[0].tier"),
    ("admin", "SubmitJobs", spec(action=0), "jobs[0].action"),
    ("admin", "SubmitJobs", spec(action=99), "jobs[0].action"),
    ("admin", "SubmitJobs", spec(max_attempts=-1), "jobs[0].max_attempts"),
    ("admin", "SubmitJobs", spec(max_attempts=101), "jobs[0].max_attempts"),
    ("admin", "SubmitJobs", spec(idempotency_key="k" * 129), "jobs[0].idempotency_key"),
    ("admin", "SubmitJobs", spec(idempotency_key="a b"), "jobs[0].idempotency_key"),
    (
        "admin",
        "SubmitJobs",
        admin_pb2.SubmitJobsRequest(
            jobs=[admin_pb2.JobSpec(action=FOLLOW, target="t", tier="free_test")] * 1001
        ),
        "jobs",
    ),
    ("admin", "GetJob", admin_pb2.GetJobRequest(), "job_id"),
    ("admin", "GetJob", admin_pb2.GetJobRequest(job_id="42"), "job_id"),
    ("admin", "GetJob", admin_pb2.GetJobRequest(job_id="x" * 10_000), "job_id"),
    ("admin", "CancelJob", admin_pb2.CancelJobRequest(job_id="not-a-uuid"), "job_id"),
    ("admin", "RetryJob", admin_pb2.RetryJobRequest(job_id="-1"), "job_id"),
    ("admin", "ListJobs", admin_pb2.ListJobsRequest(page_size=-5), "page_size"),
    ("admin", "ListJobs", admin_pb2.ListJobsRequest(page_size=501), "page_size"),
    ("admin", "ListJobs", admin_pb2.ListJobsRequest(states=[42]), "states[0]"),
    ("admin", "ListJobs", admin_pb2.ListJobsRequest(page_token="@@@"), "page_token"),
    ("admin", "ListJobs", admin_pb2.ListJobsRequest(target="a b"), "target"),
    ("admin", "AddAccount", admin_pb2.AddAccountRequest(), "account.username"),
    (
        "admin",
        "AddAccount",
        admin_pb2.AddAccountRequest(
            account=admin_pb2.AccountInput(username="ok", settings=b"not json")
        ),
        "account.settings",
    ),
    (
        "admin",
        "AddAccount",
        admin_pb2.AddAccountRequest(
            account=admin_pb2.AccountInput(username="ok", password="p" * 257)
        ),
        "account.password",
    ),
    ("admin", "ImportAccounts", admin_pb2.ImportAccountsRequest(), "accounts"),
    ("admin", "ListAccounts", admin_pb2.ListAccountsRequest(states=[9]), "states[0]"),
    ("admin", "ResetAccount", admin_pb2.ResetAccountRequest(username=""), "username"),
    ("jobs", "ClaimJob", jobs_pb2.ClaimJobRequest(), "worker_id"),
    (
        "jobs",
        "ClaimJob",
        jobs_pb2.ClaimJobRequest(worker_id="w" * 129),
        "worker_id",
    ),
    (
        "jobs",
        "ClaimJob",
        jobs_pb2.ClaimJobRequest(worker_id="w", wait=Duration(seconds=-1)),
        "wait",
    ),
    (
        "jobs",
        "ClaimJob",
        jobs_pb2.ClaimJobRequest(worker_id="w", max_jobs=65),
        "max_jobs",
    ),
    ("jobs", "CompleteJob", complete(job_id=""), "job_id"),
    ("jobs", "CompleteJob", complete(job_id="123"), "job_id"),
    ("jobs", "CompleteJob", complete(lease_token="abc"), "lease_token"),
    ("jobs", "CompleteJob", complete(lease_token="G" * 32), "lease_token"),
    ("jobs", "CompleteJob", complete(outcome=0), "outcome"),
    ("jobs", "CompleteJob", complete(outcome=17), "outcome"),
    ("jobs", "CompleteJob", complete(error_message="e" * 1001), "error_message"),
    (
        "jobs",
        "CompleteJob",
        complete(results=[step(step_index=-1)]),
        "results[0].step_index",
    ),
    ("jobs", "CompleteJob", complete(results=[step(outcome=0)]), "results[0].outcome"),
    (
        "jobs",
        "CompleteJob",
        complete(results=[step(), step(account_username="bad name")]),
        "results[1].account_username",
    ),
    (
        "jobs",
        "CompleteJob",
        complete(
            refreshed_sessions=[
                common_pb2.AccountSession(username="alice", settings=b"x" * 70_000)
            ]
        ),
        "refreshed_sessions[0].settings",
    ),
]


@pytest.mark.parametrize(
    ("service", "method", "request_message", "field"),
    CASES,
    ids=[f"{c[1]}-{c[3]}-{i}" for i, c in enumerate(CASES)],
)
def test_bad_input_is_invalid_argument_naming_the_field(
    shared_brain, service, method, request_message, field
):
    """The reply is INVALID_ARGUMENT and its message starts with the field's name."""
    stub = shared_brain.admin() if service == "admin" else shared_brain.jobs()
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, method)(request_message, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}:"), error.value.details()


def test_bad_progress_update_is_invalid_argument_naming_the_field(shared_brain):
    """A malformed update on the progress stream ends it naming the field."""
    update = jobs_pb2.ProgressUpdate(job_id=GOOD_ID, lease_token="short")
    with pytest.raises(grpc.RpcError) as error:
        list(shared_brain.jobs().StreamProgress(iter([update]), timeout=10))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("lease_token:")


def test_rejected_calls_leave_the_store_unchanged(brain):
    """A batch with one bad job stores none of it; a bad result writes nothing."""
    add_accounts(brain, "alice")
    good = admin_pb2.JobSpec(action=FOLLOW, target="fine", tier="free_test")
    bad = admin_pb2.JobSpec(action=FOLLOW, target="fine", tier="nope")
    with pytest.raises(grpc.RpcError):
        brain.admin().SubmitJobs(admin_pb2.SubmitJobsRequest(jobs=[good, bad]))
    assert brain.query("SELECT count(*) FROM jobs") == [(0,)]

    (job_id,) = submit(brain, ["target1"])
    (job,) = brain.jobs().ClaimJob(jobs_pb2.ClaimJobRequest(worker_id="w")).jobs
    wrong_account = common_pb2.StepResult(
        step_index=0, account_username="mallory", outcome=1
    )
    with pytest.raises(grpc.RpcError) as error:
        brain.jobs().CompleteJob(
            jobs_pb2.CompleteJobRequest(
                job_id=job_id,
                lease_token=job.lease.token,
                outcome=jobs_pb2.OUTCOME_SUCCEEDED,
                results=[wrong_account],
            )
        )
    assert error.value.details().startswith("results[0].account_username:")
    assert brain.query("SELECT count(*) FROM action_log") == [(0,)]
    assert brain.query("SELECT state FROM jobs") == [("LEASED",)]


def test_unknown_ids_are_not_found(brain):
    """Well-formed ids that match nothing answer NOT_FOUND."""
    for call in (
        lambda: brain.admin().GetJob(admin_pb2.GetJobRequest(job_id=GOOD_ID)),
        lambda: brain.admin().ResetAccount(
            admin_pb2.ResetAccountRequest(username="nobody")
        ),
        lambda: brain.jobs().CompleteJob(complete()),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
