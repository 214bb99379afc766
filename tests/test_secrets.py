"""Passwords and sessions are encrypted at rest and never leave a trace in logs."""

import json
import subprocess

import grpc
import pytest
from harness import BIN

from barter.v1 import admin_pb2, common_pb2, jobs_pb2

PASSWORD = "hunter2-Pa55word-unique-7731"
SESSION_ID = "sessid-4242-unique-secret-cookie"
SETTINGS = json.dumps(
    {
        "cookies": {"sessionid": SESSION_ID},
        "authorization_data": {"sessionid": SESSION_ID, "ds_user_id": "1"},
        "uuids": {"phone_id": "p-1", "uuid": "u-1"},
    }
).encode()
REFRESHED_ID = "refreshed-sessid-9999-unique"


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "brain.key"
    key = subprocess.run(
        [BIN / "barter-brain", "keygen"], capture_output=True, text=True, check=True
    ).stdout
    path.write_text(key)
    return path


def test_without_a_key_secrets_are_refused_with_how_to_make_one(brain):
    """No key: storing a password is FAILED_PRECONDITION saying how to make a key."""
    with pytest.raises(grpc.RpcError) as error:
        brain.admin().AddAccount(
            admin_pb2.AddAccountRequest(
                account=admin_pb2.AccountInput(username="alice", password=PASSWORD)
            )
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "barter-brain keygen" in error.value.details()
    assert PASSWORD not in error.value.details()
    assert brain.query("SELECT count(*) FROM accounts") == [(0,)]


def test_secrets_are_stored_encrypted_and_travel_only_in_claims(make_brain, key_file):
    """After import, claim and a session refresh, no secret is readable in the store."""
    brain = make_brain(BRAIN_SECRET_KEY_FILE=str(key_file))
    imported = brain.admin().ImportAccounts(
        admin_pb2.ImportAccountsRequest(
            accounts=[
                admin_pb2.AccountInput(
                    username="alice", password=PASSWORD, settings=SETTINGS
                )
            ]
        )
    )
    assert imported.rows[0].created
    listed = brain.admin().ListAccounts(admin_pb2.ListAccountsRequest()).accounts[0]
    assert listed.has_password and listed.has_session
    assert PASSWORD not in str(listed) and SESSION_ID not in str(listed)

    brain.admin().SubmitJobs(
        admin_pb2.SubmitJobsRequest(
            jobs=[
                admin_pb2.JobSpec(
                    action=common_pb2.ACTION_FOLLOW, target="target1", tier="free_test"
                )
            ]
        )
    )
    (job,) = brain.jobs().ClaimJob(jobs_pb2.ClaimJobRequest(worker_id="w")).jobs
    (session,) = job.sessions
    assert session.password == PASSWORD
    assert json.loads(session.settings)["cookies"]["sessionid"] == SESSION_ID

    refreshed = SETTINGS.replace(SESSION_ID.encode(), REFRESHED_ID.encode())
    brain.jobs().CompleteJob(
        jobs_pb2.CompleteJobRequest(
            job_id=job.job_id,
            lease_token=job.lease.token,
            outcome=jobs_pb2.OUTCOME_SUCCEEDED,
            results=[
                common_pb2.StepResult(step_index=0, account_username="alice", outcome=1)
            ],
            refreshed_sessions=[
                common_pb2.AccountSession(username="alice", settings=refreshed)
            ],
        )
    )

    dump = repr(
        [
            brain.query(f"SELECT * FROM {table}")
            for table in ("accounts", "jobs", "steps", "action_log")
        ]
    )
    for secret in (PASSWORD, SESSION_ID, REFRESHED_ID):
        assert secret not in dump
    if brain.database_url.startswith("sqlite"):
        raw = b"".join(
            path.read_bytes()
            for path in brain.workdir.glob("brain.db*")
            if path.is_file()
        )
        for secret in (PASSWORD, SESSION_ID, REFRESHED_ID):
            assert secret.encode() not in raw

    submit_again = admin_pb2.JobSpec(
        action=common_pb2.ACTION_FOLLOW, target="target2", tier="free_test"
    )
    brain.admin().SubmitJobs(admin_pb2.SubmitJobsRequest(jobs=[submit_again]))
    (second,) = brain.jobs().ClaimJob(jobs_pb2.ClaimJobRequest(worker_id="w")).jobs
    assert REFRESHED_ID.encode() in second.sessions[0].settings

    logs = brain.log_path.read_text()
    for secret in (PASSWORD, SESSION_ID, REFRESHED_ID):
        assert secret not in logs
