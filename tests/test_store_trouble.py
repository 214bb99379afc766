"""Store trouble: while SQLite cannot be written the Brain answers UNAVAILABLE.

Each test runs a real Brain on SQLite and a real `barter-hands run` (dry-run
executor) on a queue of jobs, makes the database unwritable part way through,
and then makes it writable again:

- locked: another process holds an exclusive write transaction for longer
  than the Brain's 5 s busy timeout;
- disk full: the database lives on a small tmpfs that a filler file fills;
- read-only: the database and its WAL are made immutable (chattr +i).

Throughout, the Brain stays up and answers UNAVAILABLE for what it cannot
write (reads still work); the worker backs off and keeps its leases; afterwards
every job reaches a final state with each step done exactly once.
"""

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import (
    FINAL,
    BrainProcess,
    HandsProcess,
    add_accounts,
    job_states,
    submit,
    wait_for,
)

from barter.v1 import admin_pb2, common_pb2, jobs_pb2

pytestmark = pytest.mark.timeout(60)

STEPS_PER_JOB = 3  # the "small" tier
JOBS = 4
ACCOUNTS = 6
# Longer than any outage below, so that a worker that keeps renewing keeps its job.
LEASE_TTL_S = 25
BUSY_TIMEOUT_S = 5  # PRAGMA busy_timeout in brain_service.store

WRITERS = ("SubmitJobs", "AddAccount", "ImportAccounts", "ResetAccount")
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


# The Brain, the worker and the jobs.


class Scene:
    """A Brain on a SQLite file, accounts, a queue of jobs and a running worker."""

    def __init__(
        self, workdir: Path, database_dir: Path, concurrency: int = 2, **env: str
    ) -> None:
        self.workdir = workdir
        self.database_path = database_dir / "brain.db"
        self.ledger = workdir / "ledger.jsonl"
        self.concurrency = concurrency
        self.brain = BrainProcess(
            workdir,
            database_url=f"sqlite:///{self.database_path}",
            BRAIN_LEASE_TTL_S=str(LEASE_TTL_S),
            LOG_LEVEL="info",
            **env,
        )
        self.hands: HandsProcess | None = None
        self.job_ids: list[str] = []

    def start(self) -> "Scene":
        self.brain.migrate()
        self.brain.start()
        add_accounts(self.brain, *[f"acct{i}" for i in range(ACCOUNTS)])
        self.job_ids = submit(
            self.brain, [f"target{i}" for i in range(JOBS)], tier="small"
        )
        self.hands = HandsProcess(
            self.workdir,
            self.brain,
            "worker",
            HANDS_EXECUTOR="dry-run",
            HANDS_CONCURRENCY=str(self.concurrency),
            HANDS_DRY_RUN_DELAY_S="0.2",
            HANDS_DRY_RUN_LEDGER=str(self.ledger),
            HANDS_CLAIM_WAIT_S="2",
            HANDS_BACKOFF_INITIAL_S="0.2",
            HANDS_BACKOFF_MAX_S="1",
            LOG_LEVEL="info",
        ).start()
        return self

    def stop(self) -> None:
        if self.hands is not None:
            self.hands.stop()
        self.brain.stop()

    def wait_until_work_is_in_flight(self) -> list[str]:
        """Wait until a job is leased with a step done; return the leased jobs."""

        def in_flight() -> list[str]:
            rows = self.brain.query(
                "SELECT id FROM jobs WHERE state = 'LEASED' AND steps_done >= 1"
            )
            return [row[0] for row in rows]

        wait_for(in_flight, 15, "a job to be part way through")
        return [
            row[0]
            for row in self.brain.query("SELECT id FROM jobs WHERE state = 'LEASED'")
        ]

    def hands_events(self) -> list[dict]:
        assert self.hands is not None
        events = []
        for line in self.hands.log_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def worker_was_refused(self) -> bool:
        return any(e["event"] == "brain_unreachable" for e in self.hands_events())

    def wait_until_all_final(self, timeout_s: float = 20) -> None:
        wait_for(
            lambda: set(job_states(self.brain, self.job_ids).values()) <= FINAL,
            timeout_s,
            "every job to reach a final state",
        )


@pytest.fixture
def scenes() -> Iterator[list[Scene]]:
    """Scenes the test starts; each is stopped afterwards."""
    started: list[Scene] = []
    yield started
    for scene in started:
        scene.stop()


def serving(brain: BrainProcess) -> bool:
    health = health_pb2_grpc.HealthStub(brain.channel()).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    return brain.proc.poll() is None and health.status == health.SERVING


def probe_calls(scene: Scene, pending_job_id: str) -> dict[str, Callable[[], object]]:
    """One call per RPC: the WRITERS must write; the rest may read or write."""
    admin, jobs = scene.brain.admin(), scene.brain.jobs()
    follow = common_pb2.ACTION_FOLLOW
    forged = "0" * 32
    return {
        "SubmitJobs": lambda: admin.SubmitJobs(
            admin_pb2.SubmitJobsRequest(
                jobs=[admin_pb2.JobSpec(action=follow, target="late", tier="free_test")]
            ),
            timeout=30,
        ),
        "AddAccount": lambda: admin.AddAccount(
            admin_pb2.AddAccountRequest(
                account=admin_pb2.AccountInput(username="late")
            ),
            timeout=30,
        ),
        "ImportAccounts": lambda: admin.ImportAccounts(
            admin_pb2.ImportAccountsRequest(
                accounts=[admin_pb2.AccountInput(username="later")]
            ),
            timeout=30,
        ),
        "ResetAccount": lambda: admin.ResetAccount(
            admin_pb2.ResetAccountRequest(username="acct0"), timeout=30
        ),
        "ClaimJob": lambda: jobs.ClaimJob(
            jobs_pb2.ClaimJobRequest(worker_id="probe"), timeout=30
        ),
        "CompleteJob": lambda: jobs.CompleteJob(
            jobs_pb2.CompleteJobRequest(
                job_id=pending_job_id,
                lease_token=forged,
                outcome=jobs_pb2.OUTCOME_SUCCEEDED,
            ),
            timeout=30,
        ),
        "StreamProgress": lambda: list(
            jobs.StreamProgress(
                iter(
                    [jobs_pb2.ProgressUpdate(job_id=pending_job_id, lease_token=forged)]
                ),
                timeout=30,
            )
        ),
        "GetJob": lambda: admin.GetJob(
            admin_pb2.GetJobRequest(job_id=pending_job_id), timeout=30
        ),
        "ListJobs": lambda: admin.ListJobs(admin_pb2.ListJobsRequest(), timeout=30),
        "ListAccounts": lambda: admin.ListAccounts(
            admin_pb2.ListAccountsRequest(), timeout=30
        ),
        "GetStats": lambda: admin.GetStats(admin_pb2.GetStatsRequest(), timeout=30),
    }


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


READS = ("GetJob", "ListJobs", "ListAccounts", "GetStats")


def probe_during_trouble(
    scene: Scene, *rounds: tuple[str, ...]
) -> dict[str, grpc.StatusCode]:
    """Call the named RPCs while the store is unwritable, each round at once.

    With no rounds named, every RPC is called at once. That suits failures
    SQLite reports at once (disk full, read-only); writes that wait on a lock
    queue behind each other in the Brain (see the queued-writes test below).
    """
    pending = [
        row[0] for row in scene.brain.query("SELECT id FROM jobs WHERE state='PENDING'")
    ]
    calls = probe_calls(scene, pending[0] if pending else scene.job_ids[-1])
    codes: dict[str, grpc.StatusCode] = {}
    for names in rounds or (tuple(calls),):
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            futures = {name: pool.submit(status_of, calls[name]) for name in names}
            codes.update({name: future.result() for name, future in futures.items()})
    return codes


def assert_answered_unavailable(codes: dict[str, grpc.StatusCode]) -> None:
    writers = {name: codes[name] for name in WRITERS}
    assert writers == dict.fromkeys(WRITERS, grpc.StatusCode.UNAVAILABLE), codes
    assert not NEVER & set(codes.values()), codes
    for read in READS:
        assert codes[read] == grpc.StatusCode.OK, codes


def assert_worker_backed_off_and_kept_its_work(scene: Scene) -> None:
    assert scene.hands is not None and scene.hands.proc.poll() is None, (
        scene.hands.log_tail()
    )
    events = scene.hands_events()
    unreachable = [e for e in events if e["event"] == "brain_unreachable"]
    assert unreachable, scene.hands.log_tail()
    assert not [e for e in events if e["event"] == "lease_lost"]


def assert_nothing_lost(scene: Scene) -> None:
    """Every job SUCCEEDED on its first lease with each step done exactly once."""
    brain = scene.brain
    admin = brain.admin()
    for job_id in scene.job_ids:
        job = admin.GetJob(admin_pb2.GetJobRequest(job_id=job_id), timeout=10)
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job
        assert job.attempts == 1, job
        assert job.steps_done == job.steps_total == STEPS_PER_JOB
        assert {step.outcome for step in job.steps} == {common_pb2.STEP_OUTCOME_DONE}

    total = JOBS * STEPS_PER_JOB
    assert brain.query("SELECT count(*) FROM jobs") == [(JOBS,)]
    assert brain.query("SELECT result, count(*) FROM action_log GROUP BY result") == [
        ("DONE", total)
    ]
    assert len(scene.ledger.read_text().splitlines()) == total
    assert brain.query("SELECT count(*) FROM accounts") == [(ACCOUNTS,)]
    assert brain.query(
        "SELECT count(*) FROM accounts WHERE busy_job_id IS NOT NULL"
    ) == [(0,)]


def assert_brain_reported_the_store_unavailable(scene: Scene) -> None:
    log = scene.brain.log_path.read_text()
    assert '"store_unavailable"' in log
    assert "rpc_crashed" not in log and "Traceback" not in log, scene.brain.log_tail()


# (a) Locked.

LOCK_HOLDER = """
import select, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


@contextmanager
def write_lock_held(database: Path, hold_s: float) -> Iterator[subprocess.Popen]:
    """Another process takes SQLite's write lock and keeps it `hold_s` seconds.

    The lock is released after `hold_s` whatever the test is doing, or when
    the block ends if that is sooner; the block ends when the holder is gone.
    """
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(database), str(hold_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield holder
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        try:
            holder.wait(hold_s + 10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait(5)


def timed(call: Callable[[], object]) -> tuple[grpc.StatusCode, float]:
    started = time.monotonic()
    code = status_of(call)
    return code, time.monotonic() - started


# Two writers (the worker's and the probe) must each outwait the busy timeout.
LOCK_HOLD_S = 2 * BUSY_TIMEOUT_S + 1


def test_a_locked_database_answers_unavailable_and_the_worker_keeps_its_jobs(
    tmp_path, scenes
):
    """A write lock held past the busy timeout: UNAVAILABLE, then all jobs finish."""
    # One worker slot and an idle sweeper: while the lock is held, the only
    # writers are the worker's one call and the probe below.
    scene = Scene(
        tmp_path, tmp_path, concurrency=1, BRAIN_SWEEP_INTERVAL_S="60"
    ).start()
    scenes.append(scene)
    scene.wait_until_work_is_in_flight()
    calls = probe_calls(scene, scene.job_ids[-1])

    with write_lock_held(scene.database_path, LOCK_HOLD_S):
        with ThreadPoolExecutor(max_workers=1 + len(READS)) as pool:
            write = pool.submit(timed, calls["SubmitJobs"])
            reads = {name: pool.submit(timed, calls[name]) for name in READS}
            read_answers = {name: future.result() for name, future in reads.items()}
            assert serving(scene.brain)
            write_code, write_s = write.result()
        wait_for(scene.worker_was_refused, LOCK_HOLD_S, "the worker to be refused")
        assert_worker_backed_off_and_kept_its_work(scene)

    assert write_code == grpc.StatusCode.UNAVAILABLE
    assert BUSY_TIMEOUT_S - 0.5 <= write_s <= LOCK_HOLD_S
    assert {name: code for name, (code, _) in read_answers.items()} == dict.fromkeys(
        READS, grpc.StatusCode.OK
    )
    assert max(seconds for _, seconds in read_answers.values()) < 1.0
    scene.wait_until_all_final()
    assert_nothing_lost(scene)
    assert_brain_reported_the_store_unavailable(scene)
    assert serving(scene.brain)


def test_writes_queued_behind_a_locked_database_are_refused_within_the_busy_timeout(
    tmp_path, scenes
):
    """While the file is locked, every write answers UNAVAILABLE within ~5 s."""
    scene = Scene(tmp_path, tmp_path, BRAIN_SWEEP_INTERVAL_S="60")
    scene.brain.migrate()
    scene.brain.start()
    scenes.append(scene)
    calls = probe_calls(scene, "00000000-0000-4000-8000-000000000000")
    writers = ("SubmitJobs", "AddAccount", "ImportAccounts")

    with write_lock_held(scene.database_path, LOCK_HOLD_S):
        with ThreadPoolExecutor(max_workers=len(writers)) as pool:
            futures = {name: pool.submit(timed, calls[name]) for name in writers}
            answers = {name: future.result() for name, future in futures.items()}

    assert {name: code for name, (code, _) in answers.items()} == dict.fromkeys(
        writers, grpc.StatusCode.UNAVAILABLE
    )
    assert max(seconds for _, seconds in answers.values()) < BUSY_TIMEOUT_S + 1.5
    assert scene.brain.query("SELECT count(*) FROM accounts") == [(0,)]


# (b) Disk full.


@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `mount_point`, unmounted afterwards (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def truncate_wal(database: Path) -> None:
    """Checkpoint the WAL into the database and cut it to zero bytes.

    Otherwise SQLite may reuse WAL space it already has, and a full disk
    would not stop small writes.
    """
    conn = sqlite3.connect(database, isolation_level=None, timeout=10)
    try:
        for _ in range(50):
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.05)
        raise AssertionError("could not truncate the WAL")
    finally:
        conn.close()


def fill_disk(path: Path) -> None:
    """Write `path` until the filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_full_disk_answers_unavailable_and_the_worker_keeps_its_jobs(
    tmp_path, scenes
):
    """The database's disk fills up: UNAVAILABLE; once space is freed all finish."""
    with tmpfs(tmp_path / "disk", "8m") as disk:
        scene = Scene(tmp_path, disk).start()
        scenes.append(scene)
        scene.wait_until_work_is_in_flight()
        filler = disk / "filler"

        truncate_wal(scene.database_path)
        fill_disk(filler)
        try:
            codes = probe_during_trouble(scene)
            # Long enough for the worker's renewals and claims to fail a few times.
            time.sleep(2)
            assert serving(scene.brain)
            assert_worker_backed_off_and_kept_its_work(scene)
        finally:
            filler.unlink()

        assert_answered_unavailable(codes)
        scene.wait_until_all_final()
        assert_nothing_lost(scene)
        assert_brain_reported_the_store_unavailable(scene)
        assert serving(scene.brain)
        scene.stop()


# (c) Read-only.


@contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Files nobody, not even root, may write until the block ends (chattr +i)."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("chattr +i needs root and chattr(1)")
    done: list[Path] = []
    try:
        for path in paths:
            made = subprocess.run(
                ["chattr", "+i", str(path)], capture_output=True, text=True
            )
            if made.returncode != 0:
                pytest.skip(f"this filesystem has no immutable flag: {made.stderr}")
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_database_answers_unavailable_and_the_worker_keeps_its_jobs(
    tmp_path, scenes
):
    """Database and WAL turn read-only: UNAVAILABLE; once writable all finish."""
    scene = Scene(tmp_path, tmp_path).start()
    scenes.append(scene)
    scene.wait_until_work_is_in_flight()
    database = scene.database_path
    wal = database.with_name(database.name + "-wal")

    with immutable(database, wal):
        codes = probe_during_trouble(scene)
        time.sleep(2)
        assert serving(scene.brain)
        assert_worker_backed_off_and_kept_its_work(scene)

    assert_answered_unavailable(codes)
    scene.wait_until_all_final()
    assert_nothing_lost(scene)
    assert_brain_reported_the_store_unavailable(scene)
    assert serving(scene.brain)


def test_a_brain_started_on_a_read_only_database_recovers_once_it_is_writable(
    tmp_path, scenes
):
    """Started while its file is read-only, the Brain writes again once it is not."""
    scene = Scene(tmp_path, tmp_path)
    scenes.append(scene)
    scene.brain.migrate()
    with immutable(scene.database_path):
        scene.brain.start()
        refused = status_of(lambda: submit(scene.brain, ["during"]))

    def writes_again() -> bool:
        return status_of(lambda: submit(scene.brain, ["after"])) == grpc.StatusCode.OK

    assert refused == grpc.StatusCode.UNAVAILABLE
    wait_for(writes_again, 5, "a write to succeed once the file is writable")


def test_a_claim_whose_caller_hung_up_hands_its_jobs_back(tmp_path):
    """A worker that gives up on ClaimJob while the claim waits for the store
    does not leave the job leased to nobody: it is PENDING again at once,
    its attempt not counted, long before the lease would have run out."""
    brain = BrainProcess(tmp_path, BRAIN_LEASE_TTL_S="60", BRAIN_SWEEP_INTERVAL_S="60")
    brain.migrate()
    brain.start()
    try:
        add_accounts(brain, "a1")
        (job_id,) = submit(brain, ["target1"])
        database = Path(brain.database_url.removeprefix("sqlite:///"))

        with write_lock_held(database, hold_s=1.5):
            request = jobs_pb2.ClaimJobRequest(worker_id="w-gone", max_jobs=1)
            with pytest.raises(grpc.RpcError) as gave_up:
                brain.jobs().ClaimJob(request, timeout=0.3)

        def handed_back() -> bool:
            log = brain.log_path.read_text()
            return '"claim_handed_back"' in log and "caller_gone" in log

        wait_for(handed_back, 10, "the Brain to hand the claim back")
        ((state, attempts, token),) = brain.query(
            f"SELECT state, attempts, lease_token FROM jobs WHERE id = '{job_id}'"
        )
    finally:
        brain.stop()

    assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (state, attempts, token) == ("PENDING", 0, None)


def test_a_claim_made_by_a_submit_for_a_long_poll_that_left_is_handed_back(tmp_path):
    """A submit claims for the long-poll waiting at that moment; when that
    worker hangs up while the submit waits for the store, the job it was
    given is PENDING again at once, not leased to nobody until the lease ends."""
    brain = BrainProcess(tmp_path, BRAIN_LEASE_TTL_S="60", BRAIN_SWEEP_INTERVAL_S="60")
    brain.migrate()
    brain.start()
    try:
        add_accounts(brain, "a1")
        database = Path(brain.database_url.removeprefix("sqlite:///"))
        wait = Duration()
        wait.FromSeconds(30)
        request = jobs_pb2.ClaimJobRequest(worker_id="w-gone", max_jobs=1, wait=wait)
        with ThreadPoolExecutor(2) as pool:
            poll = pool.submit(brain.jobs().ClaimJob, request, timeout=1.0)
            time.sleep(0.5)  # the long-poll is asleep
            with write_lock_held(database, hold_s=1.5):
                submitted = pool.submit(submit, brain, ["target1"])
                with pytest.raises(grpc.RpcError) as gave_up:
                    poll.result(10)
            (job_id,) = submitted.result(10)

        def handed_back() -> bool:
            log = brain.log_path.read_text()
            return '"claim_handed_back"' in log and "caller_gone" in log

        wait_for(handed_back, 10, "the Brain to hand the claim back")
        ((state, attempts, token),) = brain.query(
            f"SELECT state, attempts, lease_token FROM jobs WHERE id = '{job_id}'"
        )
        again = brain.jobs().ClaimJob(
            jobs_pb2.ClaimJobRequest(worker_id="w-here", max_jobs=1), timeout=10
        )
    finally:
        brain.stop()

    assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (state, attempts, token) == ("PENDING", 0, None)
    assert [job.job_id for job in again.jobs] == [job_id]


def test_a_submit_whose_caller_hung_up_still_wakes_every_waiting_worker(tmp_path):
    """A batch submit whose caller leaves while it waits for the store still
    stores its jobs, and each long-poll waiting for them gets one at once."""
    brain = BrainProcess(tmp_path, BRAIN_LEASE_TTL_S="60", BRAIN_SWEEP_INTERVAL_S="60")
    brain.migrate()
    brain.start()
    try:
        add_accounts(brain, "a1", "a2")
        database = Path(brain.database_url.removeprefix("sqlite:///"))
        wait = Duration()
        wait.FromSeconds(20)
        batch = admin_pb2.SubmitJobsRequest(
            jobs=[
                admin_pb2.JobSpec(
                    action=common_pb2.ACTION_FOLLOW, target=f"t{i}", tier="free_test"
                )
                for i in range(2)
            ]
        )

        def poll(worker_id: str) -> tuple[list[str], float]:
            request = jobs_pb2.ClaimJobRequest(worker_id=worker_id, wait=wait)
            reply = brain.jobs().ClaimJob(request, timeout=30)
            return [job.job_id for job in reply.jobs], time.monotonic()

        with ThreadPoolExecutor(2) as pool:
            polls = [pool.submit(poll, "w1"), pool.submit(poll, "w2")]
            time.sleep(0.5)  # both long-polls are asleep
            with write_lock_held(database, hold_s=1.5):
                with pytest.raises(grpc.RpcError) as gave_up:
                    brain.admin().SubmitJobs(batch, timeout=0.5)
            released = time.monotonic()
            (w1, w1_at), (w2, w2_at) = (p.result(30) for p in polls)
    finally:
        brain.stop()

    assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(w1) == len(w2) == 1 and w1 != w2
    assert max(w1_at, w2_at) - released < 2  # not at the end of their 20 s waits
