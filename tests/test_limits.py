"""Configured limits: message size, concurrent long-polls and batch sizes."""

import json
import time

import grpc
import pytest
from cryptography.fernet import Fernet
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import add_accounts, submit

from barter.v1 import admin_pb2, common_pb2, jobs_pb2

FOLLOW = common_pb2.ACTION_FOLLOW
SMALL_MESSAGE_BYTES = 64 * 1024


def serving(brain) -> bool:
    reply = health_pb2_grpc.HealthStub(brain.channel()).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return brain.proc.poll() is None and reply.status == reply.SERVING


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def jobs_request(count: int, target: str = "someone") -> admin_pb2.SubmitJobsRequest:
    return admin_pb2.SubmitJobsRequest(
        jobs=[
            admin_pb2.JobSpec(action=FOLLOW, target=f"{target}{i}", tier="free_test")
            for i in range(count)
        ]
    )


def long_poll(brain, worker_id: str, wait_s: float):
    """Start a ClaimJob long-poll without waiting for it; returns the future."""
    wait = Duration()
    wait.FromMilliseconds(int(wait_s * 1000))
    return brain.jobs().ClaimJob.future(
        jobs_pb2.ClaimJobRequest(worker_id=worker_id, wait=wait), timeout=wait_s + 10
    )


# Message size.


def test_a_request_over_the_message_limit_is_resource_exhausted(make_brain):
    """Unary and streamed requests over BRAIN_MAX_MESSAGE_BYTES are refused whole."""
    brain = make_brain(BRAIN_MAX_MESSAGE_BYTES=str(SMALL_MESSAGE_BYTES))
    admin, jobs = brain.admin(), brain.jobs()
    huge = "x" * (SMALL_MESSAGE_BYTES + 1)

    refused = {
        "GetJob": code_of(lambda: admin.GetJob(admin_pb2.GetJobRequest(job_id=huge))),
        "SubmitJobs": code_of(lambda: admin.SubmitJobs(jobs_request(5000), timeout=10)),
        "ImportAccounts": code_of(
            lambda: admin.ImportAccounts(
                admin_pb2.ImportAccountsRequest(
                    accounts=[
                        admin_pb2.AccountInput(username=f"a{i}", password="p" * 200)
                        for i in range(400)
                    ]
                ),
                timeout=10,
            )
        ),
        "StreamProgress": code_of(
            lambda: list(
                jobs.StreamProgress(
                    iter([jobs_pb2.ProgressUpdate(message=huge)]), timeout=10
                )
            )
        ),
    }

    assert refused == dict.fromkeys(refused, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert brain.query("SELECT count(*) FROM jobs") == [(0,)]
    assert brain.query("SELECT count(*) FROM accounts") == [(0,)]
    assert serving(brain)


def test_a_request_just_under_the_message_limit_is_handled_normally(make_brain):
    """A request a little under BRAIN_MAX_MESSAGE_BYTES reaches validation as usual."""
    brain = make_brain(BRAIN_MAX_MESSAGE_BYTES=str(SMALL_MESSAGE_BYTES))
    admin = brain.admin()
    nearly = "x" * (SMALL_MESSAGE_BYTES - 64)

    with pytest.raises(grpc.RpcError) as error:
        admin.GetJob(admin_pb2.GetJobRequest(job_id=nearly), timeout=10)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("job_id:")
    assert len(submit(brain, [f"t{i}" for i in range(100)])) == 100


def test_the_message_limit_recovers_after_a_refusal(make_brain):
    """After an oversized request the same channel keeps working."""
    brain = make_brain(BRAIN_MAX_MESSAGE_BYTES=str(SMALL_MESSAGE_BYTES))
    huge = "x" * (SMALL_MESSAGE_BYTES * 4)

    for _ in range(3):
        code = code_of(
            lambda: brain.admin().GetJob(admin_pb2.GetJobRequest(job_id=huge))
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert brain.admin().GetStats(admin_pb2.GetStatsRequest(), timeout=5)

    assert serving(brain)


def test_a_claim_leases_only_the_jobs_its_reply_can_carry(make_brain):
    """A claim whose sessions would overflow the message limit leases only what fits."""
    brain = make_brain(
        BRAIN_MAX_MESSAGE_BYTES="32768", BRAIN_SECRET_KEY=Fernet.generate_key().decode()
    )
    settings = json.dumps({"cookie": "c" * 10_000}).encode()
    for i in range(4):  # one per call: four would pass the limit themselves
        brain.admin().ImportAccounts(
            admin_pb2.ImportAccountsRequest(
                accounts=[admin_pb2.AccountInput(username=f"a{i}", settings=settings)]
            ),
            timeout=10,
        )
    submit(brain, [f"t{i}" for i in range(4)])

    reply = brain.jobs().ClaimJob(
        jobs_pb2.ClaimJobRequest(worker_id="w", max_jobs=4), timeout=10
    )

    delivered = {job.job_id for job in reply.jobs}
    leased = {row[0] for row in brain.query("SELECT id FROM jobs WHERE state='LEASED'")}
    assert 1 <= len(delivered) < 4
    assert leased == delivered
    assert brain.query("SELECT count(*) FROM jobs WHERE attempts = 0") == [
        (4 - len(delivered),)
    ]


# Concurrent long-polls.


def test_a_long_poll_over_the_concurrent_limit_is_resource_exhausted(make_brain):
    """With 3 long-polls held, a 4th that waits is refused; once they end it works."""
    brain = make_brain(BRAIN_MAX_CONCURRENT_POLLS="3", BRAIN_MAX_WAIT_S="60")
    held = [long_poll(brain, f"holder{i}", wait_s=4) for i in range(3)]

    time.sleep(1.0)

    with pytest.raises(grpc.RpcError) as error:
        long_poll(brain, "probe", wait_s=1).result()
    refused = error.value
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "BRAIN_MAX_CONCURRENT_POLLS" in refused.details()

    # A claim that does not wait is not a long-poll and is always answered.
    assert brain.jobs().ClaimJob(jobs_pb2.ClaimJobRequest(worker_id="now"), timeout=5)
    assert not any(future.done() for future in held)

    for future in held:
        assert list(future.result().jobs) == []
    after = long_poll(brain, "after", wait_s=0.2).result()
    assert list(after.jobs) == []
    assert serving(brain)


def test_a_long_poll_cancelled_by_its_caller_frees_its_place(make_brain):
    """Long-polls the caller gives up on stop counting against the limit."""
    brain = make_brain(BRAIN_MAX_CONCURRENT_POLLS="2", BRAIN_MAX_WAIT_S="60")

    for round_ in range(3):
        held = [long_poll(brain, f"r{round_}h{i}", wait_s=30) for i in range(2)]
        time.sleep(0.5)
        for future in held:
            future.cancel()
        time.sleep(0.5)

    add_accounts(brain, "alice")
    waiting = long_poll(brain, "last", wait_s=5)
    time.sleep(0.5)
    (job_id,) = submit(brain, ["target1"])
    (claimed,) = waiting.result().jobs
    assert claimed.job_id == job_id


def test_a_held_long_poll_still_gets_a_job_submitted_while_others_are_refused(
    make_brain,
):
    """At the limit, the held long-polls keep working: a new job reaches one."""
    brain = make_brain(BRAIN_MAX_CONCURRENT_POLLS="2", BRAIN_MAX_WAIT_S="60")
    add_accounts(brain, "alice")
    held = [long_poll(brain, f"holder{i}", wait_s=3) for i in range(2)]
    time.sleep(0.8)
    refused = code_of(lambda: long_poll(brain, "extra", wait_s=1).result())

    (job_id,) = submit(brain, ["target1"])

    replies = [future.result() for future in held]
    assert refused == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [job.job_id for reply in replies for job in reply.jobs] == [job_id]


# Batch sizes.


def test_a_submit_batch_of_1000_is_accepted_and_1001_names_jobs(make_brain):
    """SubmitJobs takes 1000 jobs at once; 1001 is INVALID_ARGUMENT naming `jobs`."""
    brain = make_brain()

    with pytest.raises(grpc.RpcError) as error:
        brain.admin().SubmitJobs(jobs_request(1001), timeout=30)
    accepted = brain.admin().SubmitJobs(jobs_request(1000), timeout=60)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("jobs:")
    assert len(accepted.jobs) == 1000
    assert brain.query("SELECT count(*) FROM jobs") == [(1000,)]


def test_a_configured_submit_batch_limit_is_enforced(make_brain):
    """With BRAIN_MAX_SUBMIT_BATCH=5, 5 jobs are accepted and 6 name `jobs`."""
    brain = make_brain(BRAIN_MAX_SUBMIT_BATCH="5")

    accepted = brain.admin().SubmitJobs(jobs_request(5), timeout=10)
    with pytest.raises(grpc.RpcError) as error:
        brain.admin().SubmitJobs(jobs_request(6, target="other"), timeout=10)

    assert len(accepted.jobs) == 5
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("jobs:")
    assert brain.query("SELECT count(*) FROM jobs") == [(5,)]


def test_import_and_watch_batches_over_1000_name_their_field(make_brain):
    """ImportAccounts with 1001 rows and WatchJobs with 1001 ids are refused."""
    brain = make_brain()
    many_accounts = admin_pb2.ImportAccountsRequest(
        accounts=[admin_pb2.AccountInput(username=f"a{i}") for i in range(1001)]
    )
    many_ids = admin_pb2.WatchJobsRequest(
        job_ids=[f"00000000-0000-4000-8000-{i:012d}" for i in range(1001)]
    )

    with pytest.raises(grpc.RpcError) as imported:
        brain.admin().ImportAccounts(many_accounts, timeout=30)
    with pytest.raises(grpc.RpcError) as watched:
        list(brain.admin().WatchJobs(many_ids, timeout=30))

    assert imported.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert imported.value.details().startswith("accounts:")
    assert watched.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert watched.value.details().startswith("job_ids:")
    assert brain.query("SELECT count(*) FROM accounts") == [(0,)]


def test_a_claim_batch_over_64_names_max_jobs(brain):
    """ClaimJob asks for at most 64 jobs; 65 is INVALID_ARGUMENT naming max_jobs."""
    add_accounts(brain, *[f"a{i}" for i in range(70)])
    submit(brain, [f"t{i}" for i in range(70)])

    with pytest.raises(grpc.RpcError) as error:
        brain.jobs().ClaimJob(
            jobs_pb2.ClaimJobRequest(worker_id="w", max_jobs=65), timeout=10
        )
    claimed = brain.jobs().ClaimJob(
        jobs_pb2.ClaimJobRequest(worker_id="w", max_jobs=64), timeout=30
    )

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("max_jobs:")
    assert len(claimed.jobs) == 64


def test_a_job_too_large_to_send_at_all_fails_with_the_reason(make_brain):
    """A claim that cannot fit even alone fails the job instead of leasing it."""
    brain = make_brain(
        BRAIN_MAX_MESSAGE_BYTES="16384", BRAIN_SECRET_KEY=Fernet.generate_key().decode()
    )
    settings = json.dumps({"cookie": "c" * 4_000}).encode()
    for i in range(5):
        brain.admin().ImportAccounts(
            admin_pb2.ImportAccountsRequest(
                accounts=[admin_pb2.AccountInput(username=f"big{i}", settings=settings)]
            ),
            timeout=10,
        )
    # Five steps carry five 4 KB sessions: more than 16 KB in one claim.
    (job_id,) = submit(brain, ["target1"], tier="standard")

    reply = brain.jobs().ClaimJob(jobs_pb2.ClaimJobRequest(worker_id="w"), timeout=10)

    assert list(reply.jobs) == []
    assert brain.query(
        f"SELECT state, last_error_code FROM jobs WHERE id = '{job_id}'"
    ) == [("FAILED", "claim_too_large")]
    assert brain.query(
        "SELECT count(*) FROM accounts WHERE busy_job_id IS NOT NULL"
    ) == [(0,)]
