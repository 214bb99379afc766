"""barter end to end on this machine, with dry-run workers: `make demo`.

Starts a Brain on a free loopback port with a fresh SQLite file in .demo-data/,
two Hands processes that only pretend to act on Instagram (the rules in
examples/dry_run_rules.json throttle one account, park another and fail one
target), imports examples/accounts.json, submits examples/jobs.json, watches
the jobs to the end with `barterctl jobs watch --until-final`, then shows jobs
by state, actions per account and the parked accounts.

Every process it starts is stopped by its pid before it exits, whatever
happens. Exit status 0 means every job ended SUCCEEDED, FAILED or CANCELLED
within the time limit.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# BARTER_DEMO_DIR moves the run elsewhere (the tests use a temporary folder).
DATA = Path(os.environ.get("BARTER_DEMO_DIR") or ROOT / ".demo-data").resolve()
BIN = Path(sys.executable).parent

DEMO_TIMEOUT_S = 120.0
BRAIN_READY_TIMEOUT_S = 20.0
STOP_GRACE_S = 10.0
HANDS_PROCESSES = 2
HANDS_CONCURRENCY = 2
LOG_TAIL_LINES = 25
FINAL_STATES = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


class DemoFailed(Exception):
    """The demo cannot go on; the message says why."""


class Demo:
    """The processes of one demo run, their logs, and the time left."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + DEMO_TIMEOUT_S
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs: dict[str, Path] = {}
        self.brain_url = ""  # known once the Brain has bound its port
        # Fresh keys every run: the demo goes through authentication like a
        # deployment would, and no key from the caller's shell leaks in.
        self.admin_key = secrets.token_hex(16)
        self.hands_key = secrets.token_hex(16)
        self.base_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BRAIN_", "HANDS_", "BARTERCTL_"))
            and k not in ("DATABASE_URL", "ADMIN_API_KEY", "POLL_INTERVAL")
        }
        self.base_env["LOG_FORMAT"] = "json"
        self.brain_env = {
            **self.base_env,
            "DATABASE_URL": f"sqlite:///{DATA / 'brain.db'}",
            "BRAIN_LISTEN": "127.0.0.1:0",
            "ADMIN_API_KEY": self.admin_key,
            "HANDS_API_KEY": self.hands_key,
            # Throttled and retried jobs come back within a second, and a
            # donor account may act again at once: the demo is minutes of
            # work squeezed into seconds. Real pacing is far slower.
            "BRAIN_RETRY_BASE_S": "0.5",
            "BRAIN_RETRY_MAX_S": "2",
            "BRAIN_ACCOUNT_MIN_GAP_S": "0",
            "BRAIN_WORKFORCE_RECHECK_S": "0.5",
        }

    def hands_env(self, n: int) -> dict[str, str]:
        return {
            **self.base_env,
            "BRAIN_URL": self.brain_url,
            "HANDS_API_KEY": self.hands_key,
            "HANDS_EXECUTOR": "dry-run",
            "HANDS_CONCURRENCY": str(HANDS_CONCURRENCY),
            "HANDS_DRY_RUN_RULES": str(EXAMPLES / "dry_run_rules.json"),
            "HANDS_DRY_RUN_DELAY_S": "0.15",
            "HANDS_DRY_RUN_LEDGER": str(DATA / f"ledger-{n}.jsonl"),
            "HANDS_CLAIM_WAIT_S": "5",
            "HANDS_DRAIN_TIMEOUT_S": "5",
        }

    @property
    def ctl_env(self) -> dict[str, str]:
        return {
            **self.base_env,
            "BRAIN_URL": self.brain_url,
            "ADMIN_API_KEY": self.admin_key,
            "BARTERCTL_TIMEOUT_S": "10",
        }

    def time_left_s(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DemoFailed(f"the demo ran out of its {DEMO_TIMEOUT_S:g} s")
        return left

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        """Start a long-running process whose output goes to .demo-data/NAME.log."""
        log = DATA / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append((name, process))
        say(f"started {name} (pid {process.pid}), log {_shown(log)}")

    def run(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        """Run a short command to the end, its output logged."""
        log = DATA / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            try:
                done = subprocess.run(
                    argv,
                    env=env,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=self.time_left_s(),
                )
            except subprocess.TimeoutExpired:
                raise DemoFailed(f"{name} did not finish in time") from None
        if done.returncode != 0:
            raise DemoFailed(f"{name} exited with status {done.returncode}")

    def ctl(self, *args: str, capture: bool = False) -> str:
        """Run barterctl, showing its output (or returning it)."""
        argv = [str(BIN / "barterctl"), *args]
        say("$ barterctl " + _shortened(args))
        try:
            done = subprocess.run(
                argv,
                env=self.ctl_env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else None,
                timeout=self.time_left_s(),
            )
        except subprocess.TimeoutExpired:
            raise DemoFailed(f"barterctl {args[0]} did not finish in time") from None
        if done.returncode != 0:
            raise DemoFailed(f"barterctl {' '.join(args[:2])} exited {done.returncode}")
        return done.stdout.decode() if capture else ""

    def wait_for_brain(self, port_file: Path) -> None:
        """Until the Brain has written its port and reports SERVING, bounded."""
        limit = time.monotonic() + min(BRAIN_READY_TIMEOUT_S, self.time_left_s())
        brain = dict(self.processes)["brain"]
        while time.monotonic() < limit:
            if brain.poll() is not None:
                raise DemoFailed(f"the Brain exited with status {brain.returncode}")
            port = port_file.read_text().strip() if port_file.exists() else ""
            if port.isdigit() and _serving(f"127.0.0.1:{port}"):
                self.brain_url = f"127.0.0.1:{port}"
                say(f"Brain is serving at {self.brain_url}")
                return
            time.sleep(0.1)
        raise DemoFailed("the Brain did not report SERVING in time")

    def stop_all(self) -> None:
        """SIGTERM every process started, newest first; SIGKILL the slow ones."""
        for name, process in reversed(self.processes):
            if process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                say(f"{name} (pid {process.pid}) ignored SIGTERM; killing it")
                process.kill()
                process.wait(timeout=STOP_GRACE_S)

    def show_log_tails(self) -> None:
        for log in self.logs.values():
            if not log.exists():
                continue
            lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            print(f"\n--- last lines of {_shown(log)} ---", file=sys.stderr)
            print("\n".join(lines) or "(empty)", file=sys.stderr)


def _serving(address: str) -> bool:
    """True when the Brain's health service says AdminService is SERVING."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="barter.v1.AdminService")
        try:
            reply = stub.Check(request, timeout=1.0)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _shortened(args: tuple[str, ...]) -> str:
    """The command line with a long run of job ids cut to the first one."""
    ids = [a for a in args if len(a) == 36 and a.count("-") == 4]
    if len(ids) <= 2:
        return " ".join(args)
    shown = [a for a in args if a not in ids[1:]]
    return " ".join(shown) + f" ... ({len(ids) - 1} more job ids)"


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def heading(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def run_demo(demo: Demo) -> bool:
    """Everything between starting the Brain and the summary; True if all final."""
    heading("starting Brain and two dry-run Hands")
    demo.run("migrate", [str(BIN / "barter-brain"), "migrate"], demo.brain_env)
    port_file = DATA / "brain.port"
    serve = [str(BIN / "barter-brain"), "serve", "--port-file", str(port_file)]
    demo.start("brain", serve, demo.brain_env)
    demo.wait_for_brain(port_file)
    for n in range(1, HANDS_PROCESSES + 1):
        demo.start(f"hands-{n}", [str(BIN / "barter-hands"), "run"], demo.hands_env(n))

    heading("importing donor accounts")
    demo.ctl("accounts", "import", _shown(EXAMPLES / "accounts.json"))

    heading("submitting jobs")
    submitted = json.loads(
        demo.ctl(
            "--json", "submit", "--file", _shown(EXAMPLES / "jobs.json"), capture=True
        )
    )
    job_ids = [item["job"]["job_id"] for item in submitted["jobs"]]
    tiers = Counter(item["job"]["tier"] for item in submitted["jobs"])
    say(f"{len(job_ids)} jobs: " + ", ".join(f"{n} {t}" for t, n in tiers.items()))

    heading("watching the jobs to the end")
    demo.ctl(
        "jobs",
        "watch",
        "--until-final",
        "--max-wait-s",
        f"{max(demo.time_left_s() - 10, 1):.0f}",
        *job_ids,
    )

    heading("summary")
    demo.ctl("stats")
    demo.ctl("jobs", "list", "--limit", str(len(job_ids)))
    demo.ctl("accounts", "list")
    demo.ctl("accounts", "list", "--state", "cooldown", "--state", "needs_owner")

    listed = json.loads(
        demo.ctl("--json", "jobs", "list", "--limit", "1000", capture=True)
    )
    states = {job["job_id"]: job["state"] for job in listed["jobs"]}
    unfinished = [i for i in job_ids if states.get(i) not in FINAL_STATES]
    by_state = Counter(states.get(i, "missing") for i in job_ids)
    say(
        "jobs by state: "
        + ", ".join(
            f"{s.removeprefix('JOB_STATE_').lower()} {n}"
            for s, n in sorted(by_state.items())
        )
    )
    effects = _ledger_effects()
    if effects is not None:
        say(f"dry-run effects performed: {effects}")
    if unfinished:
        say(f"{len(unfinished)} jobs did not end final")
        return False
    return True


def _ledger_effects() -> int | None:
    ledgers = sorted(DATA.glob("ledger-*.jsonl"))
    if not ledgers:
        return None
    return sum(len(p.read_text().splitlines()) for p in ledgers)


def _fresh_data_folder() -> None:
    """Empty DATA, refusing to delete a folder the demo did not make."""
    marker = DATA / ".barter-demo"
    default = (ROOT / ".demo-data").resolve()
    if DATA.exists() and DATA != default and not marker.exists():
        if any(DATA.iterdir()):
            raise DemoFailed(
                f"{DATA} is not empty and not a demo folder; not deleting it"
            )
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    marker.touch()


def main() -> int:
    try:
        _fresh_data_folder()
    except DemoFailed as exc:
        print(f"[demo] failed: {exc}", file=sys.stderr)
        return 1
    demo = Demo()
    ok = False
    try:
        ok = run_demo(demo)
    except DemoFailed as exc:
        print(f"[demo] failed: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("[demo] interrupted", file=sys.stderr)
    finally:
        demo.stop_all()
    if not ok:
        demo.show_log_tails()
        return 1
    say(f"done; logs and the database are in {_shown(DATA)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
