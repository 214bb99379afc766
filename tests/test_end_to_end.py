"""Brain and Hands as real processes: crashes, restarts, replicas and TLS."""

import json
import signal
import time

import grpc
import pytest
from certs import make_pki
from harness import (
    FINAL,
    HandsProcess,
    add_accounts,
    job_states,
    submit,
    wait_for,
)

from barter.v1 import admin_pb2, admin_pb2_grpc, common_pb2


def ledger_effects(*paths):
    effects = []
    for path in paths:
        if path.exists():
            effects += [json.loads(line) for line in path.read_text().splitlines()]
    return effects


def all_final(brain, job_ids):
    try:
        return all(state in FINAL for state in job_states(brain, job_ids).values())
    except Exception:  # the Brain may be restarting
        return False


def finished_steps_twice(brain):
    return brain.query(
        "SELECT job_id, step_index, count(*) FROM action_log "
        "WHERE result IN ('DONE', 'ALREADY_DONE') "
        "GROUP BY job_id, step_index HAVING count(*) > 1"
    )


def test_a_hands_killed_mid_job_is_replaced_and_no_step_runs_twice(
    make_brain, tmp_path
):
    """SIGKILL a worker mid-job: another finishes it; each step is logged once."""
    brain = make_brain(BRAIN_LEASE_TTL_S="2")
    add_accounts(brain, *[f"acct{i}" for i in range(5)])
    (job_id,) = submit(brain, ["target1"], tier="standard")
    first_ledger, second_ledger = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first = HandsProcess(
        tmp_path,
        brain,
        "first",
        HANDS_DRY_RUN_DELAY_S="0.6",
        HANDS_DRY_RUN_LEDGER=str(first_ledger),
    ).start()

    wait_for(
        lambda: (
            brain.query(f"SELECT steps_done FROM jobs WHERE id = '{job_id}'")[0][0] >= 2
        ),
        20,
        "two steps done by the first worker",
    )
    first.kill()
    second = HandsProcess(
        tmp_path,
        brain,
        "second",
        HANDS_DRY_RUN_DELAY_S="0.05",
        HANDS_DRY_RUN_LEDGER=str(second_ledger),
    ).start()
    try:
        wait_for(lambda: all_final(brain, [job_id]), 30, "the job to finish")
    finally:
        second.stop()

    assert job_states(brain, [job_id])[job_id] == common_pb2.JOB_STATE_SUCCEEDED
    assert finished_steps_twice(brain) == []
    attempts = brain.query(
        f"SELECT DISTINCT attempt FROM action_log WHERE job_id = '{job_id}'"
    )
    assert sorted(attempts) == [(1,), (2,)]
    effects = ledger_effects(first_ledger, second_ledger)
    per_account = {(e["account"], e["target"]) for e in effects}
    # The only effect that can repeat is the one cut off by the kill between
    # acting and reporting; the action log still records it once.
    assert len(effects) - len(per_account) <= 1
    assert len(per_account) == 5


def test_brain_killed_and_restarted_mid_run_loses_nothing(make_brain, tmp_path):
    """SIGKILL the Brain mid-run and restart it: every job still ends final."""
    brain = make_brain(BRAIN_LEASE_TTL_S="3")
    add_accounts(brain, *[f"acct{i}" for i in range(12)])
    job_ids = submit(brain, [f"target{i}" for i in range(30)], tier="small")
    workers = [
        HandsProcess(
            tmp_path,
            brain,
            f"w{n}",
            HANDS_DRY_RUN_DELAY_S="0.05",
            HANDS_CONCURRENCY="2",
            HANDS_BACKOFF_MAX_S="1",
        ).start()
        for n in range(2)
    ]
    try:
        wait_for(
            lambda: (
                brain.query("SELECT count(*) FROM jobs WHERE state = 'SUCCEEDED'")[0][0]
                >= 5
            ),
            30,
            "some jobs to finish",
        )
        brain.kill()
        time.sleep(1.0)
        brain.start()
        wait_for(lambda: all_final(brain, job_ids), 90, "every job to end final")
    finally:
        for worker in workers:
            worker.stop()

    states = job_states(brain, job_ids)
    assert set(states.values()) == {common_pb2.JOB_STATE_SUCCEEDED}
    assert finished_steps_twice(brain) == []
    assert brain.query(
        "SELECT count(*) FROM accounts WHERE busy_job_id IS NOT NULL"
    ) == [(0,)]


def test_sigterm_drains_a_worker_without_losing_its_job(make_brain, tmp_path):
    """SIGTERM lets the running job finish, then the worker exits 0."""
    brain = make_brain()
    add_accounts(brain, "a1", "a2", "a3")
    (job_id,) = submit(brain, ["target1"], tier="small")
    worker = HandsProcess(tmp_path, brain, "w", HANDS_DRY_RUN_DELAY_S="0.5").start()
    # Running, not only leased: a lease is written before its claim's reply
    # reaches the worker, and a claim the worker drops on SIGTERM goes back.
    wait_for(
        lambda: (
            brain.query(f"SELECT count(*) FROM action_log WHERE job_id = '{job_id}'")
            != [(0,)]
        ),
        20,
        "the job's first step",
    )

    assert worker.stop(signal.SIGTERM) == 0
    assert job_states(brain, [job_id])[job_id] == common_pb2.JOB_STATE_SUCCEEDED


def test_the_demo_outcomes_end_in_the_right_states(make_brain, tmp_path):
    """Dry-run rules: a bad target fails; throttled and challenged accounts park."""
    brain = make_brain(BRAIN_MAX_ATTEMPTS="3")
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            {
                "delay_s": 0.02,
                "accounts": {
                    "slow": "THROTTLED",
                    "stuck": "ACCOUNT_NEEDS_OWNER",
                },
                "targets": {"ghost": "TARGET_INVALID"},
            }
        )
    )
    add_accounts(brain, "slow", "stuck", "a1", "a2", "a3", "a4")
    good = submit(brain, ["target1", "target2"], tier="small")
    (bad,) = submit(brain, ["ghost"])
    worker = HandsProcess(tmp_path, brain, "w", HANDS_DRY_RUN_RULES=str(rules)).start()
    try:
        wait_for(lambda: all_final(brain, [*good, bad]), 40, "every job to end")
    finally:
        worker.stop()

    states = job_states(brain, [*good, bad])
    assert states[bad] == common_pb2.JOB_STATE_FAILED
    assert {states[j] for j in good} == {common_pb2.JOB_STATE_SUCCEEDED}
    accounts = {
        a.username: a
        for a in brain.admin().ListAccounts(admin_pb2.ListAccountsRequest()).accounts
    }
    assert accounts["slow"].state == common_pb2.ACCOUNT_STATE_COOLDOWN
    assert accounts["stuck"].state == common_pb2.ACCOUNT_STATE_NEEDS_OWNER


def test_hands_talk_to_a_brain_over_mutual_tls_with_keys(make_brain, tmp_path):
    """A worker with a CA, a client certificate and its key completes a job."""
    pki = make_pki(tmp_path / "pki")
    key_file = tmp_path / "worker.key"
    key_file.write_text("worker-key-0123456789abcdef\n")
    brain = make_brain(
        BRAIN_TLS_CERT_FILE=str(pki.server_cert),
        BRAIN_TLS_KEY_FILE=str(pki.server_key),
        BRAIN_TLS_CLIENT_CA_FILE=str(pki.ca),
        HANDS_API_KEY_FILE=str(key_file),
        ADMIN_API_KEY="admin-key-0123456789abcdef",
    )
    admin_key = [("authorization", "Bearer admin-key-0123456789abcdef")]

    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    with grpc.secure_channel(brain.address, credentials) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        admin.AddAccount(
            admin_pb2.AddAccountRequest(account=admin_pb2.AccountInput(username="a1")),
            metadata=admin_key,
        )
        reply = admin.SubmitJobs(
            admin_pb2.SubmitJobsRequest(
                jobs=[
                    admin_pb2.JobSpec(
                        action=common_pb2.ACTION_FOLLOW,
                        target="target1",
                        tier="free_test",
                    )
                ]
            ),
            metadata=admin_key,
        )
        job_id = reply.jobs[0].job.job_id
        worker = HandsProcess(
            tmp_path,
            brain,
            "tls",
            HANDS_API_KEY_FILE=str(key_file),
            HANDS_TLS_CA_FILE=str(pki.ca),
            HANDS_TLS_CERT_FILE=str(pki.client_cert),
            HANDS_TLS_KEY_FILE=str(pki.client_key),
            HANDS_DRY_RUN_DELAY_S="0.01",
        ).start()
        try:
            wait_for(
                lambda: (
                    admin.GetJob(
                        admin_pb2.GetJobRequest(job_id=job_id), metadata=admin_key
                    ).state
                    == common_pb2.JOB_STATE_SUCCEEDED
                ),
                30,
                "the job to succeed over TLS",
            )
        finally:
            worker.stop()


# Replicas share one PostgreSQL database; SQLite is one process's file.
postgres_only = pytest.mark.parametrize("store_kind", ["postgres"], indirect=True)


@postgres_only
def test_a_submit_on_one_replica_wakes_a_long_poll_on_another(make_brain):
    """LISTEN/NOTIFY: a job submitted on replica A is claimed at once via replica B."""
    import threading

    from google.protobuf.duration_pb2 import Duration

    from barter.v1 import jobs_pb2

    first = make_brain(BRAIN_FALLBACK_CHECK_S="30")
    second = make_brain(share_with=first, BRAIN_FALLBACK_CHECK_S="30")
    add_accounts(first, "alice")
    got = {}

    def poll():
        reply = second.jobs().ClaimJob(
            jobs_pb2.ClaimJobRequest(worker_id="w", wait=Duration(seconds=20)),
            timeout=30,
        )
        got["at"], got["n"] = time.monotonic(), len(reply.jobs)

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)
    submitted_at = time.monotonic()
    submit(first, ["target1"])
    thread.join(30)

    assert got["n"] == 1
    assert got["at"] - submitted_at < 1.0


@postgres_only
def test_two_replicas_survive_one_being_killed(make_brain, tmp_path):
    """Kill one of two replicas mid-run: every job ends final, none twice."""
    first = make_brain(BRAIN_LEASE_TTL_S="3")
    second = make_brain(share_with=first, BRAIN_LEASE_TTL_S="3")
    add_accounts(first, *[f"acct{i}" for i in range(12)])
    job_ids = submit(first, [f"target{i}" for i in range(40)], tier="small")
    both = f"{first.address},{second.address}"
    workers = [
        HandsProcess(
            tmp_path,
            first,
            f"w{n}",
            BRAIN_URL=both,
            HANDS_DRY_RUN_DELAY_S="0.05",
            HANDS_CONCURRENCY="2",
            HANDS_BACKOFF_MAX_S="1",
        ).start()
        for n in range(3)
    ]
    try:
        wait_for(
            lambda: (
                second.query("SELECT count(*) FROM jobs WHERE state = 'SUCCEEDED'")[0][
                    0
                ]
                >= 5
            ),
            30,
            "some jobs to finish",
        )
        first.kill()
        wait_for(lambda: all_final(second, job_ids), 90, "every job to end final")
    finally:
        for worker in workers:
            worker.stop()

    assert set(job_states(second, job_ids).values()) == {common_pb2.JOB_STATE_SUCCEEDED}
    assert finished_steps_twice(second) == []


def test_barterctl_fails_over_to_a_live_replica(brain):
    """Given a dead and a live replica, every barterctl call reaches the live one."""
    import subprocess

    from harness import BIN, free_port

    submit(brain, ["target1"])
    both = f"127.0.0.1:{free_port()},{brain.address}"
    for _ in range(4):
        result = subprocess.run(
            [BIN / "barterctl", "--brain", both, "--json", "stats"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["pending"] in (1, "1")
