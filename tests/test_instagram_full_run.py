"""Full runs on instagrapi's real Client: Brain, barterctl and Hands together.

Brain runs as a subprocess with worker and operator keys and an encryption key
file. barterctl imports donor accounts from a CSV of distinctive passwords and
exported instagrapi session files, and submits the jobs. An in-process Hands
`Worker` runs them with `InstagramExecutor`, whose clients send every request
to the canned Instagram transport of test_instagram_executor.

Every trace of the run is then searched for the secrets (passwords, session
ids, cookies, authorization tokens, API keys, the encryption key): Brain's log
file, barterctl's output, Hands' structlog and stdlib logging and anything
else written to file descriptors 1 and 2, the gRPC status details of requests
that quote secrets, what operators read back, every table of the store read
raw, and on SQLite the database and WAL files byte for byte.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
import pytest
import structlog
from cryptography.fernet import Fernet
from google.protobuf.duration_pb2 import Duration
from harness import BIN, FINAL, BrainProcess
from test_instagram_executor import (
    FOLLOW,
    LOGIN,
    NEW_AUTHORIZATION,
    NEW_CSRF,
    NEW_SESSIONID,
    STORED_SETTINGS,
    TARGET,
    USERNAMEINFO,
    CannedInstagram,
    assert_no_challenge_answered,
    authorization_of,
    canned,
    serve_login,
    serve_target,
)

from barter.v1 import admin_pb2, admin_pb2_grpc, common_pb2, jobs_pb2, jobs_pb2_grpc
from hands_service import logs
from hands_service.config import HandsConfig
from hands_service.instagram import InstagramExecutor
from hands_service.worker import Worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ADMIN_KEY = "fullrun-admin-key-6c1f0e9a2b7d4433"
HANDS_KEY = "fullrun-hands-key-3e8d4a1c9f05e6a1"
ADMIN_AUTH = (("authorization", f"Bearer {ADMIN_KEY}"),)
HANDS_AUTH = (("authorization", f"Bearer {HANDS_KEY}"),)
CALL_TIMEOUT_S = 10
RUN_TIMEOUT_S = 30


@dataclass(frozen=True)
class Donor:
    """A donor account as its owner exports it: a password and instagrapi settings.

    Every secret is plain ASCII without quotes or backslashes, so that a leak
    reads the same in JSON logs, reprs and tables as it does here.
    """

    username: str
    user_id: str
    password: str
    session_core: str
    csrftoken: str
    mid: str
    www_claim: str

    @property
    def sessionid(self) -> str:
        return f"{self.user_id}%3A{self.session_core}%3A17%3AAYfullrunTail"

    def settings(self) -> dict[str, Any]:
        """The session file barterctl imports: stored settings with this donor's ids."""
        settings = deepcopy(STORED_SETTINGS)
        settings["mid"] = self.mid
        settings["ig_www_claim"] = self.www_claim
        settings["authorization_data"] = {
            "ds_user_id": self.user_id,
            "sessionid": self.sessionid,
            "should_use_header_over_cookies": True,
        }
        settings["cookies"] = {
            "csrftoken": self.csrftoken,
            "ds_user_id": self.user_id,
            "sessionid": self.sessionid,
            "mid": self.mid,
        }
        return settings

    def secrets(self) -> list[str]:
        return [
            self.password,
            self.sessionid,
            unquote(self.sessionid),
            self.session_core,
            self.csrftoken,
            self.mid,
            self.www_claim,
        ]


# donor_a's pk and username are those of the canned login reply.
DONOR_A = Donor(
    "donor_a",
    "1111",
    "Pw-donor-a-Zq81vX-fullrun",
    "FuLlRuNsEsSiOnAaAa0001fedcba",
    "FullRunCsrfTokenA0123456789abc",
    "ZnVsbHJ1bi1taWQtQUFB",
    "hmac.AR-fullrun-www-claim-A-0001",
)
DONOR_B = Donor(
    "donor_b",
    "3333",
    "Pw-donor-b-Kt27wY-fullrun",
    "FuLlRuNsEsSiOnBbBb0002fedcba",
    "FullRunCsrfTokenB0123456789abc",
    "ZnVsbHJ1bi1taWQtQkJC",
    "hmac.AR-fullrun-www-claim-B-0002",
)
DONOR_C = Donor(
    "donor_c",
    "4444",
    "Pw-donor-c-Hm53sU-fullrun",
    "FuLlRuNsEsSiOnCcCc0003fedcba",
    "FullRunCsrfTokenC0123456789abc",
    "ZnVsbHJ1bi1taWQtQ0ND",
    "hmac.AR-fullrun-www-claim-C-0003",
)
# What the canned password login hands out.
LOGIN_SECRETS = [NEW_SESSIONID, unquote(NEW_SESSIONID), NEW_CSRF, NEW_AUTHORIZATION]


# Fixtures


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A Fernet key from `barter-brain keygen`, in the file Brain reads."""
    key = subprocess.run(
        [BIN / "barter-brain", "keygen"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    path = tmp_path / "brain.key"
    path.write_text(key + "\n")
    return path


@pytest.fixture
def brain(make_brain: Callable[..., BrainProcess], key_file: Path) -> BrainProcess:
    """A Brain that wants both keys and stores secrets encrypted."""
    return make_brain(
        ADMIN_API_KEY=ADMIN_KEY,
        HANDS_API_KEY=HANDS_KEY,
        BRAIN_SECRET_KEY_FILE=str(key_file),
    )


@pytest.fixture
def instagram() -> Iterator[CannedInstagram]:
    """The canned Instagram; afterwards nothing unexpected was asked of it."""
    transport = CannedInstagram()
    yield transport
    transport.release.set()
    transport.assert_sealed()


@pytest.fixture
def hands_logs(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], None]]:
    """Sets Hands logs up as `barter-hands run` does: JSON on stderr, debug level.

    Call it in the test itself: pytest gives each phase a new captured stderr.
    """
    root_handlers = list(logging.getLogger().handlers)

    def configure() -> None:
        caplog.set_level(logging.DEBUG)
        logs.configure("json", "debug")
        # The worker's module-level logger would otherwise keep this test's
        # captured stderr after the test ends.
        structlog.configure(cache_logger_on_first_use=False)

    yield configure
    structlog.reset_defaults()
    for handler in logging.getLogger().handlers:
        if handler not in root_handlers:
            logging.getLogger().removeHandler(handler)


@dataclass
class Traces:
    """Everything the run wrote or said that a person or a log store could read."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, source: str, text: str) -> None:
        self.texts[source] = self.texts.get(source, "") + text + "\n"


@pytest.fixture
def traces() -> Traces:
    """What the test has collected so far from barterctl, Brain and Hands."""
    return Traces()


@dataclass(frozen=True)
class Operator:
    """Admin and worker stubs that present their keys."""

    admin_stub: admin_pb2_grpc.AdminServiceStub
    jobs_stub: jobs_pb2_grpc.JobServiceStub

    def admin(self, method: str, request: Any) -> Any:
        call = getattr(self.admin_stub, method)
        return call(request, metadata=ADMIN_AUTH, timeout=CALL_TIMEOUT_S)

    def worker(self, method: str, request: Any) -> Any:
        call = getattr(self.jobs_stub, method)
        return call(request, metadata=HANDS_AUTH, timeout=CALL_TIMEOUT_S)

    def job(self, job_id: str) -> common_pb2.Job:
        return self.admin("GetJob", admin_pb2.GetJobRequest(job_id=job_id))

    def accounts(self) -> dict[str, common_pb2.Account]:
        reply = self.admin("ListAccounts", admin_pb2.ListAccountsRequest())
        return {account.username: account for account in reply.accounts}


@pytest.fixture
def operator(brain: BrainProcess) -> Iterator[Operator]:
    """gRPC access to the Brain as an operator and as a worker."""
    channel = grpc.insecure_channel(brain.address)
    yield Operator(
        admin_pb2_grpc.AdminServiceStub(channel), jobs_pb2_grpc.JobServiceStub(channel)
    )
    channel.close()


# barterctl


def barterctl(brain: BrainProcess, traces: Traces, *args: str) -> str:
    """Run the installed barterctl as an operator would; return its stdout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRAIN_", "ADMIN_API_KEY", "BARTERCTL_"))
        and k != "COLUMNS"
    }
    done = subprocess.run(
        [BIN / "barterctl", *args],
        capture_output=True,
        text=True,
        env={**env, "BRAIN_URL": brain.address, "ADMIN_API_KEY": ADMIN_KEY},
        timeout=CALL_TIMEOUT_S * 3,
    )
    traces.add(f"barterctl {' '.join(args[:2])}", done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def import_donors(
    brain: BrainProcess, traces: Traces, folder: Path, donors: list[Donor]
) -> None:
    """Write the owners' exported session files and a CSV naming them; import it."""
    folder.mkdir()
    with open(folder / "accounts.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["username", "password", "session_file"])
        for donor in donors:
            session_file = f"{donor.username}.session.json"
            (folder / session_file).write_text(json.dumps(donor.settings(), indent=2))
            writer.writerow([donor.username, donor.password, session_file])

    shown = barterctl(brain, traces, "accounts", "import", str(folder / "accounts.csv"))

    assert f"{len(donors)} created" in shown


def submit_follow(brain: BrainProcess, traces: Traces, target: str) -> str:
    out = barterctl(
        brain, traces, "submit", "--target", target, "--tier", "free_test", "-q"
    )
    (job_id,) = out.split()
    return job_id


# Hands


def run_hands_until_final(
    brain: BrainProcess,
    operator: Operator,
    instagram: CannedInstagram,
    job_ids: list[str],
    configure_logs: Callable[[], None],
) -> None:
    """An in-process worker on the instagram executor, drained once the jobs end."""
    configure_logs()
    config = HandsConfig(
        brain_url=brain.address,
        api_key=HANDS_KEY,
        claim_wait_s=1.0,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
        drain_timeout_s=5.0,
        executor="instagram",
        log_format="json",
        log_level="debug",
    ).check()
    executor = InstagramExecutor(
        call_timeout_s=5.0,
        request_pause_s=0.0,
        retry_backoff_factor=0.0,
        prepare_client=instagram.mount,
    )
    worker = Worker(config, executor)

    def all_final() -> bool:
        return all(operator.job(job_id).state in FINAL for job_id in job_ids)

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(worker.run(), name="hands")
        give_up = loop.time() + RUN_TIMEOUT_S
        try:
            while not await asyncio.to_thread(all_final):
                assert not task.done(), "the worker stopped before the jobs ended"
                assert loop.time() < give_up, f"jobs not final in {RUN_TIMEOUT_S}s"
                await asyncio.sleep(0.05)
        finally:
            worker.shutdown()
            exit_code = await asyncio.wait_for(task, 15)
        return exit_code

    assert asyncio.run(scenario()) == 0, "the worker did not stop cleanly"


# The search


def sent_authorizations(instagram: CannedInstagram) -> list[str]:
    """Every Authorization header instagrapi sent, whole and as its token part."""
    headers = {
        r.headers["Authorization"]
        for r in instagram.seen
        if "Authorization" in r.headers
    }
    return sorted(headers | {h.rsplit(":", 1)[-1] for h in headers})


def every_secret(
    donors: list[Donor], instagram: CannedInstagram, key_file: Path
) -> list[str]:
    found = [s for donor in donors for s in donor.secrets()]
    found += LOGIN_SECRETS + [NEW_AUTHORIZATION.rsplit(":", 1)[-1]]
    sent = sent_authorizations(instagram)
    assert sent, "instagrapi sent no session at all"
    found += sent
    found += [ADMIN_KEY, HANDS_KEY, key_file.read_text().strip()]
    return found


def probe_status_details(
    operator: Operator, traces: Traces, donor: Donor, **claimed: str
) -> None:
    """Requests that quote secrets where they do not belong; keep what Brain says."""
    quoting = json.dumps({"sessionid": donor.sessionid, "password": donor.password})
    bad_settings = admin_pb2.AccountInput(
        username="probe_account",
        password=donor.password,
        settings=quoting[:-1].encode(),
    )
    too_long = admin_pb2.AccountInput(
        username="probe_account", password=donor.password * 12
    )
    probes: list[tuple[str, str, Any]] = [
        ("admin", "AddAccount", admin_pb2.AddAccountRequest(account=bad_settings)),
        ("admin", "AddAccount", admin_pb2.AddAccountRequest(account=too_long)),
        (
            "admin",
            "ImportAccounts",
            admin_pb2.ImportAccountsRequest(accounts=[bad_settings]),
        ),
    ]
    if claimed:
        # A worker sending a password back, with settings that are not JSON.
        leaking = common_pb2.AccountSession(
            username=donor.username,
            settings=quoting[:-1].encode(),
            password=donor.password,
        )
        probes.append(
            (
                "worker",
                "CompleteJob",
                jobs_pb2.CompleteJobRequest(
                    outcome=jobs_pb2.OUTCOME_RETRY,
                    error_message=f"session {donor.sessionid}",
                    refreshed_sessions=[leaking],
                    **claimed,
                ),
            )
        )
    for caller, method, request in probes:
        try:
            reply = getattr(operator, caller)(method, request)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            traces.add("status details", f"{method}: {exc.details()}")
        else:
            traces.add("replies", f"{method}: {reply}")
    assert "probe_account" not in operator.accounts()


def store_dump(brain: BrainProcess) -> bytes:
    """Every cell of every table, read raw."""
    if brain.database_url.startswith("sqlite"):
        listing = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        listing = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    tables = [name for (name,) in brain.query(listing)]
    assert {"accounts", "jobs", "steps", "action_log"} <= set(tables)
    cells = [
        cell
        for table in tables
        for row in brain.query(f'SELECT * FROM "{table}"')
        for cell in row
    ]
    return b"\n".join(
        bytes(cell) if isinstance(cell, bytes | memoryview) else str(cell).encode()
        for cell in cells
    )


def sqlite_files(brain: BrainProcess) -> bytes:
    """The SQLite database, WAL and shared-memory files, byte for byte."""
    paths = [p for p in brain.workdir.glob("brain.db*") if p.is_file()]
    return b"".join(p.read_bytes() for p in paths)


def assert_no_secret_anywhere(
    brain: BrainProcess,
    operator: Operator,
    traces: Traces,
    secrets: list[str],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    job_ids: list[str],
) -> None:
    """Logs, outputs, status details, operator views and the store: no secret."""
    for job_id in job_ids:
        traces.add("GetJob", str(operator.job(job_id)))
    traces.add("ListAccounts", str(operator.accounts()))
    traces.add("accounts list", barterctl(brain, traces, "accounts", "list"))
    raw_store = store_dump(brain)
    raw_files = sqlite_files(brain) if brain.database_url.startswith("sqlite") else b""

    brain.stop()
    raw_store += store_dump(brain)
    if brain.database_url.startswith("sqlite"):
        raw_files += sqlite_files(brain)
    traces.add("brain log", brain.log_path.read_text())
    out, err = capfd.readouterr()
    traces.add("hands stdout", out)
    traces.add("hands stderr", err)
    traces.add("stdlib logging", caplog.text)
    traces.add("exceptions", "\n".join(r.exc_text or "" for r in caplog.records))

    # The search means something only if the logs were there to search.
    assert '"event": "job_claimed"' in traces.texts["brain log"]
    assert '"event": "job_completed"' in traces.texts["hands stderr"]
    assert "donor_" in traces.texts["barterctl accounts import"]
    assert b"gAAAA" in raw_store  # Fernet tokens
    assert TARGET.encode() in raw_store
    if brain.database_url.startswith("sqlite"):
        assert TARGET.encode() in raw_files
    for source, text in traces.texts.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {source}"
    for secret in secrets:
        assert secret.encode() not in raw_store, f"{secret!r} in the store"
        assert secret.encode() not in raw_files, f"{secret!r} in the SQLite files"


def decrypt(brain: BrainProcess, key_file: Path, column: str, username: str) -> bytes:
    """An account's encrypted column, opened with Brain's key."""
    assert column in ("password_enc", "settings_enc")
    ((token,),) = brain.query(
        f"SELECT {column} FROM accounts WHERE username = '{username}'"
    )
    return Fernet(key_file.read_text().strip().encode()).decrypt(bytes(token))


# Scenarios


def test_rejected_session_logs_in_once_and_the_new_session_reaches_brain(
    brain, operator, instagram, key_file, hands_logs, traces, capfd, caplog, tmp_path
):
    """A rejected session costs one password login; Brain keeps the new settings."""
    import_donors(brain, traces, tmp_path / "import", [DONOR_A])
    serve_target(instagram)
    instagram.on("GET", USERNAMEINFO, canned("login_required"), canned("user_public"))
    instagram.on("POST", FOLLOW, canned("follow_created"))
    serve_login(instagram)
    job_id = submit_follow(brain, traces, TARGET)

    run_hands_until_final(brain, operator, instagram, [job_id], hands_logs)

    job = operator.job(job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job
    assert job.attempts == 1
    assert [(s.account_username, s.outcome) for s in job.steps] == [
        ("donor_a", common_pb2.STEP_OUTCOME_DONE)
    ]
    assert len(instagram.calls("POST", LOGIN)) == 1
    assert authorization_of(instagram.seen[0])["sessionid"] == DONOR_A.sessionid
    (follow,) = instagram.calls("POST", FOLLOW)
    assert authorization_of(follow)["sessionid"] == NEW_SESSIONID
    assert operator.accounts()["donor_a"].state == common_pb2.ACCOUNT_STATE_ACTIVE

    # The settings Brain stores now are the ones the login produced.
    stored = json.loads(decrypt(brain, key_file, "settings_enc", "donor_a"))
    assert stored["authorization_data"]["sessionid"] == NEW_SESSIONID
    assert stored["cookies"]["csrftoken"] == NEW_CSRF
    assert stored["uuids"] == DONOR_A.settings()["uuids"]
    assert decrypt(brain, key_file, "password_enc", "donor_a").decode() == (
        DONOR_A.password
    )

    # And the next claim of the account hands them out.
    later = operator.admin(
        "SubmitJobs",
        admin_pb2.SubmitJobsRequest(
            jobs=[
                admin_pb2.JobSpec(
                    action=common_pb2.ACTION_FOLLOW,
                    target="target_yy",
                    tier="free_test",
                )
            ]
        ),
    )
    (claimed,) = operator.worker(
        "ClaimJob",
        jobs_pb2.ClaimJobRequest(worker_id="full-run-check", wait=Duration(seconds=5)),
    ).jobs
    assert claimed.job_id == later.jobs[0].job.job_id
    (session,) = claimed.sessions
    assert session.password == DONOR_A.password
    handed_out = json.loads(session.settings)
    assert handed_out["authorization_data"]["sessionid"] == NEW_SESSIONID

    probe_status_details(
        operator,
        traces,
        DONOR_A,
        job_id=claimed.job_id,
        lease_token=claimed.lease.token,
    )
    assert_no_secret_anywhere(
        brain,
        operator,
        traces,
        every_secret([DONOR_A], instagram, key_file),
        capfd,
        caplog,
        [job_id, claimed.job_id],
    )
    hands = traces.texts["hands stderr"]
    assert hands.count('"event": "instagram_session_rejected"') == 1
    assert hands.count('"event": "instagram_logged_in"') == 1


def test_challenged_account_is_parked_and_the_job_succeeds_with_another(
    brain, operator, instagram, key_file, hands_logs, traces, capfd, caplog, tmp_path
):
    """A challenge on follow parks the account; the retry succeeds with another."""
    donors = [DONOR_C, DONOR_B]
    import_donors(brain, traces, tmp_path / "import", donors)
    serve_target(instagram)
    instagram.on("POST", FOLLOW, canned("challenge_legacy"), canned("follow_created"))
    job_id = submit_follow(brain, traces, TARGET)

    run_hands_until_final(brain, operator, instagram, [job_id], hands_logs)

    job = operator.job(job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job
    assert job.attempts == 2
    tried = brain.query(
        "SELECT account_username, result, error_code FROM action_log"
        f" WHERE job_id = '{job_id}' ORDER BY id"
    )
    assert [row[1:] for row in tried] == [
        ("ACCOUNT_NEEDS_OWNER", "challenge_required"),
        ("DONE", ""),
    ]
    challenged, helper = (row[0] for row in tried)
    assert {challenged, helper} == {"donor_b", "donor_c"}
    assert [(s.account_username, s.outcome) for s in job.steps] == [
        (helper, common_pb2.STEP_OUTCOME_DONE)
    ]

    accounts = operator.accounts()
    assert accounts[challenged].state == common_pb2.ACCOUNT_STATE_NEEDS_OWNER
    assert accounts[challenged].state_reason.startswith("challenge_required")
    assert accounts[helper].state == common_pb2.ACCOUNT_STATE_ACTIVE

    sessions = {donor.username: donor.sessionid for donor in donors}
    follows = instagram.calls("POST", FOLLOW)
    assert [authorization_of(r)["sessionid"] for r in follows] == [
        sessions[challenged],
        sessions[helper],
    ]
    assert instagram.calls("POST", LOGIN) == []
    assert_no_challenge_answered(instagram)
    # Nothing was refreshed: each account's stored settings are its owner's.
    for donor in donors:
        stored = json.loads(decrypt(brain, key_file, "settings_enc", donor.username))
        assert stored == donor.settings()

    probe_status_details(operator, traces, DONOR_C)
    assert_no_secret_anywhere(
        brain,
        operator,
        traces,
        every_secret(donors, instagram, key_file),
        capfd,
        caplog,
        [job_id],
    )
    (parked,) = [
        json.loads(line)
        for line in traces.texts["hands stderr"].splitlines()
        if '"event": "instagram_step_failed"' in line
    ]
    assert (parked["account"], parked["error_code"]) == (
        challenged,
        "challenge_required",
    )
