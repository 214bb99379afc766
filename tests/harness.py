"""Real Brain and Hands processes for tests, started on loopback and stopped by pid."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import sqlalchemy

from barter.v1 import admin_pb2, admin_pb2_grpc, common_pb2, jobs_pb2_grpc

BIN = Path(sys.executable).parent

# Settings that make a test Brain quick: no pacing, short backoffs.
FAST_BRAIN_ENV = {
    "BRAIN_ACCOUNT_MIN_GAP_S": "0",
    "BRAIN_ACCOUNT_MAX_PER_HOUR": "100000",
    "BRAIN_ACCOUNT_MAX_PER_DAY": "1000000",
    "BRAIN_RETRY_BASE_S": "0.05",
    "BRAIN_RETRY_MAX_S": "0.5",
    "BRAIN_WORKFORCE_RECHECK_S": "0.5",
    "BRAIN_SWEEP_INTERVAL_S": "0.2",
    "BRAIN_SHUTDOWN_GRACE_S": "2",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "debug",
}


# The machine's PostgreSQL; each Brain gets a throwaway database on it.
PG_SERVER_URL = os.environ.get(
    "BARTER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def postgres_reachable() -> bool:
    try:
        engine = sqlalchemy.create_engine(PG_SERVER_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except sqlalchemy.exc.OperationalError:
        return False


class ThrowawayDatabase:
    """A PostgreSQL database made for one test and dropped after it."""

    def __init__(self) -> None:
        self.name = f"barter_t_{secrets.token_hex(6)}"
        self._server = sqlalchemy.create_engine(
            PG_SERVER_URL, isolation_level="AUTOCOMMIT"
        )
        with self._server.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        self.url = (
            sqlalchemy.engine.make_url(PG_SERVER_URL)
            .set(database=self.name)
            .render_as_string(hide_password=False)
        )

    def drop(self) -> None:
        with self._server.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()"
            )
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}"')
        self._server.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], object], timeout_s: float, what: str) -> object:
    """Poll `check` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


class ManagedProcess:
    """A child process with a log file, stopped by its pid."""

    proc: subprocess.Popen | None = None
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int | None:
        """Send `sig` and wait; SIGKILL after `timeout_s`. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])


class BrainProcess(ManagedProcess):
    """`barter-brain serve` on a loopback port with its own SQLite file."""

    def __init__(self, workdir: Path, database_url: str = "", **env: str) -> None:
        self.workdir = workdir
        self.database_url = database_url or f"sqlite:///{workdir / 'brain.db'}"
        self.env = {
            **os.environ,
            **FAST_BRAIN_ENV,
            "DATABASE_URL": self.database_url,
            **env,
        }
        self._engine: sqlalchemy.Engine | None = None
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "brain.log"
        self._channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def migrate(self) -> None:
        subprocess.run(
            [BIN / "barter-brain", "migrate"],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> BrainProcess:
        port_file = self.workdir / "brain.port"
        port_file.unlink(missing_ok=True)
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [
                BIN / "barter-brain",
                "serve",
                "--listen",
                self.address,
                "--port-file",
                str(port_file),
            ],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"brain exited early:\n{self.log_tail()}")
            return port_file.exists()

        wait_for(up, 20, "the brain to listen")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15) -> int | None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        return super().stop(sig, timeout_s)

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        return self._channel

    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel())

    def jobs(self) -> jobs_pb2_grpc.JobServiceStub:
        return jobs_pb2_grpc.JobServiceStub(self.channel())

    def query(self, sql: str) -> list[tuple]:
        """A raw read of the store, for assertions only."""
        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.database_url)
        with self._engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql(sql)]


class HandsProcess(ManagedProcess):
    """`barter-hands run` pointed at a Brain."""

    def __init__(self, workdir: Path, brain: BrainProcess, name: str, **env: str):
        self.log_path = workdir / f"hands-{name}.log"
        self.env = {
            **os.environ,
            "BRAIN_URL": brain.address,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "debug",
            "HANDS_CLAIM_WAIT_S": "5",
            **env,
        }
        self.proc: subprocess.Popen | None = None

    def start(self, *args: str) -> HandsProcess:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [BIN / "barter-hands", "run", *args],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        return self


def add_accounts(brain: BrainProcess, *usernames: str) -> None:
    brain.admin().ImportAccounts(
        admin_pb2.ImportAccountsRequest(
            accounts=[admin_pb2.AccountInput(username=u) for u in usernames]
        ),
        timeout=10,
    )


def submit(
    brain: BrainProcess,
    targets: list[str],
    tier: str = "free_test",
    max_attempts: int = 0,
) -> list[str]:
    reply = brain.admin().SubmitJobs(
        admin_pb2.SubmitJobsRequest(
            jobs=[
                admin_pb2.JobSpec(
                    action=common_pb2.ACTION_FOLLOW,
                    target=t,
                    tier=tier,
                    max_attempts=max_attempts,
                )
                for t in targets
            ]
        ),
        timeout=10,
    )
    return [item.job.job_id for item in reply.jobs]


FINAL = {
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
}


def job_states(brain: BrainProcess, job_ids: list[str]) -> dict[str, int]:
    admin = brain.admin()
    return {
        job_id: admin.GetJob(admin_pb2.GetJobRequest(job_id=job_id), timeout=10).state
        for job_id in job_ids
    }
