"""The chaos run: Brain and Hands doing real work while processes die and links break.

One bounded command. It starts a Brain (SQLite, or PostgreSQL with one or more
replicas on a throwaway database) and several `barter-hands run` processes
with the dry-run executor, each incarnation writing every effect it performs
to its own ledger file. The Hands reach the Brain only through loopback TCP
proxies (tests/tcp_proxy.py). Jobs of every tier are submitted in waves while,
at random, the run:

- kill-hands: SIGKILLs a Hands process (busy ones first) and restarts it;
- stop-hands: SIGSTOPs a Hands past its lease TTL, then SIGCONTs it;
- kill-brain: SIGKILLs a Brain and restarts it on the same port and database;
- cut-proxy: cuts a proxy's connections (reset, or blackhole as in a partition)
  and restores them.

For each disruption it records when it happened and which jobs the hit
process held (from the jobs table: LEASED rows and their worker_id), then how
long each of those jobs took to recover (a new lease or a final state).

When the chaos phase ends every disruption is undone, the run waits for all
jobs to be final (bounded), stops every process it started, and checks the
database, the ledgers and the logs, and prints a table. It exits 1 when:

- a job is lost (not final at the end);
- a job was completed more than once, or a step recorded more than once;
- a result was recorded after its job was final;
- an effect was performed but never recorded, with no disruption near it and
  no lease lost by the worker that performed it;
- a result was recorded that no ledger holds;
- a process crashed, exited on its own, or did not stop on SIGTERM.

Effects performed twice because a process died between acting and reporting
are expected (delivery is at least once) and are counted, not failed. Exit 2
means the run could not be set up or broke off.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import sqlalchemy

from barter.v1 import admin_pb2, admin_pb2_grpc, common_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import FAST_BRAIN_ENV, ThrowawayDatabase  # noqa: E402
from tcp_proxy import CUT_MODES, TcpProxy  # noqa: E402

BIN = Path(sys.executable).parent

DISRUPTIONS = ("kill-hands", "stop-hands", "kill-brain", "cut-proxy")
TIER_SIZES = {"free_test": 1, "small": 3, "standard": 5}
TIER_WEIGHTS = {"free_test": 4, "small": 3, "standard": 3}
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")

# How often the main loop looks at processes, timers and recoveries.
TICK_S = 0.1
RECOVERY_POLL_S = 0.25
SUBMIT_WAVE_S = 0.5
SUBMIT_TIMEOUT_S = 10.0
SUBMIT_RETRY_S = 0.5
BRAIN_START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# How far before or after a disruption an effect may lie and still have been
# kept from being recorded by it (a result is sent right after its effect).
EXPLAIN_SLACK_S = 2.0
# Checks that do not fail a run but whose first examples are worth printing.
SHOW_EXAMPLES = {
    "effects performed more than once",
    "effects never recorded, lease lapsed undisturbed",
    "claims over on arrival with no disruption between",
}
# How an unrecorded effect is explained when no disruption was near it.
LAPSED = "lease lapsed"
# Brain and Hands errors that mean a crash, not a recovered trouble.
CRASH_EVENTS = {"rpc_crashed", "sweeper_crashed", "brain_failed", "worker_task_crashed"}

EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2


# --- options -----------------------------------------------------------------


class _HelpFormatter(
    argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
):
    """Defaults after each option that has one; the docstring kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The chaos run's options; every one has a default."""
    parser = argparse.ArgumentParser(
        prog="tests/chaos.py",
        description=__doc__,
        epilog=(
            "Exit 0: every check passed; 1: a check failed (process log tails are\n"
            "printed and the work directory is kept); 2: the run could not be set up."
        ),
        formatter_class=_HelpFormatter,
    )
    add = parser.add_argument
    add(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="postgres: a throwaway database on BARTER_TEST_PG_URL, dropped at the end",
    )
    add(
        "--replicas",
        type=int,
        default=1,
        help="Brain replicas on one PostgreSQL database (needs --store postgres)",
    )
    add("--jobs", type=int, default=3000, help="jobs to submit")
    add("--hands", type=int, default=4, help="Hands processes")
    add("--hands-concurrency", type=int, default=4, help="HANDS_CONCURRENCY of each")
    add(
        "--accounts",
        type=int,
        default=0,
        help="donor accounts to import; 0 = enough for every slot, three times over",
    )
    add(
        "--duration-s",
        type=float,
        default=150.0,
        help="length of the chaos phase; jobs are submitted over its first 3/4",
    )
    add(
        "--settle-timeout-s",
        type=float,
        default=120.0,
        help="after the chaos phase, longest wait for every job to be final",
    )
    add(
        "--disruption-interval-s",
        type=float,
        default=5.0,
        help="mean time between two disruptions",
    )
    add(
        "--disruptions",
        default=",".join(DISRUPTIONS),
        help="comma-separated kinds to use; each happens at least once if time allows",
    )
    add("--lease-ttl-s", type=float, default=5.0, help="BRAIN_LEASE_TTL_S")
    add("--step-delay-s", type=float, default=0.05, help="HANDS_DRY_RUN_DELAY_S")
    add("--seed", type=int, default=None, help="random seed (default: random; printed)")
    add(
        "--workdir",
        type=Path,
        default=None,
        help="directory for the database, logs and ledgers (default: a new temp dir)",
    )
    add(
        "--keep",
        action="store_true",
        help="keep the work directory after a passing run (a failing run keeps it)",
    )
    add("--summary-json", type=Path, default=None, help="also write the summary here")
    add(
        "--brain-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the Brain (repeatable)",
    )
    add(
        "--hands-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the Hands (repeatable)",
    )
    return parser


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the options; exits 2 with a message when one is unusable."""
    parser = build_parser()
    options = parser.parse_args(argv)
    options.kinds = [k.strip() for k in options.disruptions.split(",") if k.strip()]
    unknown = set(options.kinds) - set(DISRUPTIONS)
    if unknown:
        parser.error(f"--disruptions: unknown kinds {sorted(unknown)}")
    if options.replicas < 1:
        parser.error("--replicas must be at least 1")
    if options.replicas > 1 and options.store != "postgres":
        parser.error("--replicas above 1 needs --store postgres")
    if options.jobs < 1 or options.hands < 1 or options.hands_concurrency < 1:
        parser.error("--jobs, --hands and --hands-concurrency must be at least 1")
    if options.lease_ttl_s <= 0 or options.duration_s <= 0:
        parser.error("--lease-ttl-s and --duration-s must be positive")
    if options.disruption_interval_s <= 0:
        parser.error("--disruption-interval-s must be positive")
    for name in ("brain_env", "hands_env"):
        pairs = {}
        for item in getattr(options, name):
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"--{name.replace('_', '-')}: {item!r} is not KEY=VALUE")
            pairs[key] = value
        setattr(options, name, pairs)
    if options.accounts <= 0:
        slots = options.hands * options.hands_concurrency
        options.accounts = max(50, slots * max(TIER_SIZES.values()) * 3)
    if options.seed is None:
        options.seed = random.SystemRandom().randrange(1_000_000)
    return options


# --- processes -----------------------------------------------------------------


def free_port_outside_ephemeral() -> int:
    """A free loopback port below the ephemeral range.

    A Brain's port is left unbound while it restarts; were it ephemeral, a
    reconnecting client could be handed it as its own source port (a TCP
    self-connect) and keep the Brain from binding it again.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10_000, max(low, 10_001))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SetupError("no free port below the ephemeral range")


class ProcessTable:
    """Every process the run started, so that all of them can be stopped by pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def spawn(
        self, argv: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen:
        with open(log_path, "a") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM, then SIGKILL."""
        alive = [p for p in self.procs if p.poll() is None]
        for proc in alive:
            _signal(proc, signal.SIGCONT)
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in alive:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(5)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def say(line: str) -> None:
    """Print at once: the run is followed live, and its output may be piped."""
    print(line, flush=True)


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file, or a note that it is missing."""
    if not path.exists():
        return f"({path.name} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Incarnation:
    """One start of a Hands process: its pid, log, ledger and how it ended."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    ledger_path: Path
    started_at: float
    ended_at: float | None = None
    end: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_id(self) -> str:
        """The worker id the process announced in its log, or '' before it did."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, errors="replace") as log:
            for line in log:
                match = re.search(r'"worker_id": ?"([^"]+)"', line)
                if match:
                    return match.group(1)
        return ""

    def covers(self, ts: float) -> bool:
        return self.started_at - 1 <= ts <= (self.ended_at or float("inf")) + 1


class HandsNode:
    """A Hands slot that the run keeps filled with one live incarnation."""

    def __init__(
        self, name: str, workdir: Path, env: dict[str, str], table: ProcessTable
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.env = env
        self.table = table
        self.incarnations: list[Incarnation] = []
        self.current: Incarnation | None = None
        self.stopped = False

    def start(self) -> Incarnation:
        number = len(self.incarnations) + 1
        label = f"{self.name}.{number}"
        log_path = self.workdir / f"{label}.log"
        ledger_path = self.workdir / f"ledger-{label}.jsonl"
        env = {**self.env, "HANDS_DRY_RUN_LEDGER": str(ledger_path)}
        proc = self.table.spawn([str(BIN / "barter-hands"), "run"], env, log_path)
        self.current = Incarnation(label, proc, log_path, ledger_path, time.time())
        self.incarnations.append(self.current)
        return self.current

    def running(self) -> bool:
        """Alive and not stopped: a candidate for the next disruption."""
        return self.current is not None and not self.stopped

    def end_current(self, how: str) -> Incarnation:
        assert self.current is not None
        ended = self.current
        ended.ended_at, ended.end = time.time(), how
        self.current = None
        return ended


class BrainNode:
    """One Brain replica: a fixed port, so that a restart comes back where it was."""

    def __init__(
        self, name: str, workdir: Path, env: dict[str, str], table: ProcessTable
    ) -> None:
        self.name = name
        self.env = env
        self.table = table
        self.port = free_port_outside_ephemeral()
        self.log_path = workdir / f"{name}.log"
        self.port_file = workdir / f"{name}.port"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.ready = False
        # Killed by the run and not yet restarted: its exit is expected.
        self.killed = False
        # The kill-brain disruption that ends when this Brain listens again.
        self.down_for: Disruption | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port_file.unlink(missing_ok=True)
        self.ready = False
        self.starts += 1
        self.killed = False
        argv = [
            str(BIN / "barter-brain"),
            "serve",
            "--listen",
            self.address,
            "--port-file",
            str(self.port_file),
        ]
        self.proc = self.table.spawn(argv, self.env, self.log_path)

    def check_ready(self) -> bool:
        """Whether this start is serving (it writes the port file once bound)."""
        if not self.ready and self.proc is not None and self.proc.poll() is None:
            self.ready = self.port_file.exists()
        return self.ready

    def kill(self) -> None:
        assert self.proc is not None
        self.killed = True
        _signal(self.proc, signal.SIGKILL)
        self.proc.wait(5)
        self.ready = False
        self.port_file.unlink(missing_ok=True)


# --- the store, read only --------------------------------------------------------


class StoreReader:
    """Raw reads of the Brain's tables, for observation and checks only."""

    def __init__(self, database_url: str) -> None:
        url = sqlalchemy.engine.make_url(database_url)
        if url.get_backend_name() == "sqlite":
            url = url.set(
                database=f"file:{url.database}?mode=ro", query={"uri": "true"}
            )
        self.engine = sqlalchemy.create_engine(url)

    def rows(self, sql: str, **params: object) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sqlalchemy.text(sql), params)]

    def try_rows(self, sql: str, **params: object) -> list[tuple] | None:
        """Like rows, but None when the store cannot be read right now."""
        try:
            return self.rows(sql, **params)
        except sqlalchemy.exc.OperationalError:
            return None

    def close(self) -> None:
        self.engine.dispose()


# --- what happened -------------------------------------------------------------


@dataclass
class Disruption:
    """One thing the run did to the system, and what it hit."""

    number: int
    kind: str
    target: str
    started_at: float
    detail: str = ""
    ended_at: float | None = None
    incarnation: str = ""
    # job_id -> the job's attempt count when it was hit
    held: dict[str, int] = field(default_factory=dict)
    # job_id -> seconds until the held lease ended (job PENDING again or final)
    released_s: dict[str, float] = field(default_factory=dict)
    # job_id -> seconds until the job had a new lease or was final
    recovered_s: dict[str, float] = field(default_factory=dict)

    def window(self) -> tuple[float, float]:
        return self.started_at, self.ended_at or self.started_at


@dataclass
class JobPlan:
    index: int
    tier: str
    target: str
    key: str


@dataclass
class Timer:
    due: float
    what: str
    action: Callable[[], None]


# --- the run ---------------------------------------------------------------------


class ChaosRun:
    """Starts everything, disrupts it for a while, waits for calm, collects facts."""

    def __init__(self, options: argparse.Namespace, workdir: Path) -> None:
        self.o = options
        self.workdir = workdir
        self.rng = random.Random(options.seed)
        self.run_tag = f"{options.seed:06d}"[-6:]
        self.table = ProcessTable()
        self.database: ThrowawayDatabase | None = None
        self.database_url = ""
        self.brains: list[BrainNode] = []
        self.proxies: list[TcpProxy] = []
        self.hands: list[HandsNode] = []
        self.store: StoreReader | None = None
        self.admin_channel: grpc.Channel | None = None
        self.plan: list[JobPlan] = []
        self.next_to_submit = 0
        self.submitted: dict[str, str] = {}  # idempotency key -> job id
        self.submit_failures = 0
        self.submit_repeats = 0
        self.submit_retry_at = 0.0
        self.disruptions: list[Disruption] = []
        self.unexpected_exits: list[str] = []
        self.timers: list[Timer] = []
        self.watched: dict[str, list[tuple[Disruption, int]]] = defaultdict(list)
        self.last_recovery_poll = 0.0
        self.started_at = time.time()
        self.chaos_ended_at = 0.0
        self.settled_at = 0.0
        self.facts: dict[str, list[tuple]] = {}

    # --- set-up ------------------------------------------------------------------

    def setup(self) -> None:
        o = self.o
        if o.store == "postgres":
            self.database = ThrowawayDatabase()
            self.database_url = self.database.url
        else:
            self.database_url = f"sqlite:///{self.workdir / 'brain.db'}"
        brain_env = {
            **os.environ,
            **FAST_BRAIN_ENV,
            "DATABASE_URL": self.database_url,
            "BRAIN_LEASE_TTL_S": str(o.lease_ttl_s),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            **o.brain_env,
        }
        migrate = subprocess.run(
            [str(BIN / "barter-brain"), "migrate"],
            env=brain_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if migrate.returncode != 0:
            raise SetupError(f"barter-brain migrate failed:\n{migrate.stderr[-3000:]}")

        for i in range(o.replicas):
            brain = BrainNode(f"brain{i + 1}", self.workdir, brain_env, self.table)
            brain.start()
            self.brains.append(brain)
        self._wait_brains_ready()
        self.proxies = [TcpProxy(b.port).start() for b in self.brains]
        self.store = StoreReader(self.database_url)

        self.admin_channel = grpc.insecure_channel(
            _target([b.address for b in self.brains]),
            options=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500),
            ],
        )
        self._import_accounts()
        self._plan_jobs()

        hands_env = {
            **os.environ,
            # Hands takes a comma list of replicas and round-robins over it.
            "BRAIN_URL": ",".join(p.address for p in self.proxies),
            "HANDS_EXECUTOR": "dry-run",
            "HANDS_CONCURRENCY": str(o.hands_concurrency),
            "HANDS_DRY_RUN_DELAY_S": str(o.step_delay_s),
            "HANDS_CLAIM_WAIT_S": "5",
            "HANDS_BACKOFF_MAX_S": "2",
            "HANDS_DRAIN_TIMEOUT_S": "5",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            **o.hands_env,
        }
        hands_env.pop("HANDS_DRY_RUN_RULES", None)
        for i in range(o.hands):
            node = HandsNode(f"hands{i + 1}", self.workdir, hands_env, self.table)
            node.start()
            self.hands.append(node)

    def _wait_brains_ready(self) -> None:
        deadline = time.monotonic() + BRAIN_START_TIMEOUT_S
        while not all(b.check_ready() for b in self.brains):
            for brain in self.brains:
                if brain.proc is not None and brain.proc.poll() is not None:
                    raise SetupError(
                        f"{brain.name} exited with {brain.proc.returncode}:\n"
                        + tail(brain.log_path)
                    )
            if time.monotonic() > deadline:
                raise SetupError("the Brain did not start listening in time")
            time.sleep(0.05)

    def _admin(self) -> admin_pb2_grpc.AdminServiceStub:
        assert self.admin_channel is not None
        return admin_pb2_grpc.AdminServiceStub(self.admin_channel)

    def _import_accounts(self) -> None:
        names = [f"chaos_{self.run_tag}_a{i:05d}" for i in range(self.o.accounts)]
        for chunk in _chunks(names, 1000):
            reply = self._admin().ImportAccounts(
                admin_pb2.ImportAccountsRequest(
                    accounts=[admin_pb2.AccountInput(username=n) for n in chunk]
                ),
                timeout=30,
            )
            errors = [r.error for r in reply.rows if r.error]
            if errors:
                raise SetupError(f"ImportAccounts refused rows: {errors[:3]}")

    def _plan_jobs(self) -> None:
        tiers = list(TIER_WEIGHTS)
        weights = [TIER_WEIGHTS[t] for t in tiers]
        self.plan = [
            JobPlan(
                index=i,
                tier=self.rng.choices(tiers, weights)[0],
                target=f"ct{self.run_tag}_{i:07d}",
                key=f"chaos-{self.run_tag}-{i}",
            )
            for i in range(self.o.jobs)
        ]

    # --- the main loop -------------------------------------------------------------

    def chaos_phase(self) -> None:
        o = self.o
        start = time.monotonic()
        end = start + o.duration_s
        submit_window_s = o.duration_s * 0.75
        waves = max(1, int(submit_window_s / SUBMIT_WAVE_S))
        first_round = list(o.kinds)
        self.rng.shuffle(first_round)
        # The first round brings every kind once, spaced to fit the phase.
        first_gap_s = min(
            o.disruption_interval_s, o.duration_s / (len(first_round) + 1)
        )
        next_disruption = start + first_gap_s
        say(
            f"chaos phase: {o.duration_s:.0f} s, {o.jobs} jobs in {waves} waves, "
            f"disruptions every ~{o.disruption_interval_s:g} s"
        )
        while (now := time.monotonic()) < end:
            wave = min(waves, int((now - start) / SUBMIT_WAVE_S) + 1)
            self._submit_up_to(math.ceil(o.jobs * wave / waves))
            if o.kinds and now >= next_disruption:
                if first_round:
                    started = self._disrupt([first_round[0]])
                    if started:
                        first_round.pop(0)
                else:
                    started = self._disrupt(o.kinds)
                if not started:
                    next_disruption = now + 0.5
                elif first_round:
                    next_disruption = now + first_gap_s
                else:
                    gap_s = o.disruption_interval_s * self.rng.uniform(0.5, 1.5)
                    next_disruption = now + gap_s
            self._tick()
            time.sleep(TICK_S)
        self.chaos_ended_at = time.time()

    def settle_phase(self) -> None:
        """Undo every disruption, submit what is left, wait for every job to end."""
        say("settling: undoing disruptions, waiting for every job to be final")
        for timer in sorted(self.timers, key=lambda t: t.due):
            timer.action()
        self.timers.clear()
        deadline = time.monotonic() + self.o.settle_timeout_s
        while time.monotonic() < deadline:
            self._submit_up_to(self.o.jobs)
            self._tick()
            if self.next_to_submit >= self.o.jobs and self._all_final():
                break
            time.sleep(TICK_S * 2)
        self.settled_at = time.time()
        self._poll_recoveries(force=True)

    def _tick(self) -> None:
        self._watch_processes()
        now = time.monotonic()
        due = [t for t in self.timers if t.due <= now]
        self.timers = [t for t in self.timers if t.due > now]
        for timer in due:
            timer.action()
        for brain in self.brains:
            if not brain.ready and brain.check_ready():
                self._brain_back(brain)
        self._poll_recoveries()

    def _all_final(self) -> bool:
        assert self.store is not None
        placeholders = ",".join(f"'{s}'" for s in FINAL_STATES)
        rows = self.store.try_rows(
            f"SELECT count(*) FROM jobs WHERE state NOT IN ({placeholders})"
        )
        return (
            rows is not None
            and rows[0][0] == 0
            and self._jobs_in_store() >= len(self.submitted)
        )

    def _jobs_in_store(self) -> int:
        assert self.store is not None
        rows = self.store.try_rows("SELECT count(*) FROM jobs")
        return rows[0][0] if rows else 0

    # --- submitting ------------------------------------------------------------------

    def _submit_up_to(self, count: int) -> None:
        """Submit planned jobs until `count` are in; a failed wave is retried later."""
        if time.monotonic() < self.submit_retry_at:
            return
        while self.next_to_submit < min(count, len(self.plan)):
            batch = self.plan[
                self.next_to_submit : min(count, self.next_to_submit + 500)
            ]
            request = admin_pb2.SubmitJobsRequest(
                jobs=[
                    admin_pb2.JobSpec(
                        action=common_pb2.ACTION_FOLLOW,
                        target=p.target,
                        tier=p.tier,
                        idempotency_key=p.key,
                        max_attempts=100,
                    )
                    for p in batch
                ]
            )
            try:
                reply = self._admin().SubmitJobs(request, timeout=SUBMIT_TIMEOUT_S)
            except grpc.RpcError:
                # The Brain is down or restarting; the idempotency keys make the
                # retry safe even if this wave was stored before the reply was lost.
                self.submit_failures += 1
                self.submit_retry_at = time.monotonic() + SUBMIT_RETRY_S
                return
            for plan, item in zip(batch, reply.jobs, strict=True):
                self.submitted[plan.key] = item.job.job_id
                self.submit_repeats += not item.created
            self.next_to_submit += len(batch)

    # --- disruptions ---------------------------------------------------------------

    def _disrupt(self, kinds: list[str]) -> bool:
        """Start one disruption of a kind from `kinds` that can happen now."""
        possible = [k for k in kinds if self._can(k)]
        if not possible:
            return False
        kind = self.rng.choice(possible)
        number = len(self.disruptions) + 1
        {
            "kill-hands": self._kill_hands,
            "stop-hands": self._stop_hands,
            "kill-brain": self._kill_brain,
            "cut-proxy": self._cut_proxy,
        }[kind](number)
        return True

    def _can(self, kind: str) -> bool:
        running = [h for h in self.hands if h.running()]
        if kind == "kill-hands":
            return bool(running)
        if kind == "stop-hands":
            return bool(running) and not any(h.stopped for h in self.hands)
        if kind == "kill-brain":
            return all(b.ready for b in self.brains)
        if kind == "cut-proxy":
            return all(p.cut_mode is None for p in self.proxies)
        return False

    def _pick_hands(self) -> HandsNode:
        """A running Hands, one that holds jobs when there is one."""
        running = [h for h in self.hands if h.running()]
        leased = self._leased_jobs() or []
        busy_pids = {_worker_pid(w) for _, _, w in leased}
        busy = [h for h in running if h.current and h.current.pid in busy_pids]
        return self.rng.choice(busy or running)

    def _leased_jobs(self) -> list[tuple[str, int, str]] | None:
        assert self.store is not None
        return self.store.try_rows(
            "SELECT id, attempts, worker_id FROM jobs WHERE state = 'LEASED'"
        )

    def _held_by(self, pid: int | None) -> dict[str, int]:
        """Jobs LEASED to the process `pid` (every leased job when None)."""
        for _ in range(20):
            rows = self._leased_jobs()
            if rows is not None:
                return {
                    job_id: attempts
                    for job_id, attempts, worker_id in rows
                    if pid is None or _worker_pid(worker_id) == pid
                }
            time.sleep(0.05)
        return {}

    def _record(self, disruption: Disruption) -> None:
        self.disruptions.append(disruption)
        for job_id, attempt in disruption.held.items():
            self.watched[job_id].append((disruption, attempt))
        offset = disruption.started_at - self.started_at
        say(
            f"  t+{offset:6.1f}s #{disruption.number:<3} {disruption.kind:<10} "
            f"{disruption.target:<9} {disruption.detail:<22} "
            f"held {len(disruption.held)} job(s)"
        )

    def _later(self, delay_s: float, what: str, action: Callable[[], None]) -> None:
        self.timers.append(Timer(time.monotonic() + delay_s, what, action))

    def _kill_hands(self, number: int) -> None:
        node = self._pick_hands()
        incarnation = node.current
        assert incarnation is not None
        _signal(incarnation.proc, signal.SIGKILL)
        incarnation.proc.wait(5)
        killed_at = time.time()
        node.end_current("killed")
        restart_in_s = self.rng.uniform(0.3, 2.0)
        disruption = Disruption(
            number,
            "kill-hands",
            node.name,
            killed_at,
            detail=f"restart in {restart_in_s:.1f}s",
            ended_at=killed_at,
            incarnation=incarnation.name,
            held=self._held_by(incarnation.pid),
        )
        self._record(disruption)
        self._later(restart_in_s, f"restart {node.name}", node.start)

    def _stop_hands(self, number: int) -> None:
        node = self._pick_hands()
        incarnation = node.current
        assert incarnation is not None
        _signal(incarnation.proc, signal.SIGSTOP)
        node.stopped = True
        stop_s = self.o.lease_ttl_s + self.rng.uniform(1.0, 3.0)
        disruption = Disruption(
            number,
            "stop-hands",
            node.name,
            time.time(),
            detail=f"for {stop_s:.1f}s",
            incarnation=incarnation.name,
            held=self._held_by(incarnation.pid),
        )
        self._record(disruption)

        def resume() -> None:
            _signal(incarnation.proc, signal.SIGCONT)
            node.stopped = False
            disruption.ended_at = time.time()

        self._later(stop_s, f"SIGCONT {node.name}", resume)

    def _kill_brain(self, number: int) -> None:
        brain = self.rng.choice(self.brains)
        brain.kill()
        down_s = self.rng.uniform(0.2, self.o.lease_ttl_s * 1.5)
        disruption = Disruption(
            number,
            "kill-brain",
            brain.name,
            time.time(),
            detail=f"restart in {down_s:.1f}s",
            held=self._held_by(None),
        )
        self._record(disruption)
        brain.down_for = disruption
        self._later(down_s, f"restart {brain.name}", brain.start)

    def _brain_back(self, brain: BrainNode) -> None:
        if brain.down_for is not None:
            brain.down_for.ended_at = time.time()
            down_s = brain.down_for.ended_at - brain.down_for.started_at
            say(f"           {brain.name} serving again after {down_s:.1f}s")
            brain.down_for = None

    def _cut_proxy(self, number: int) -> None:
        index = self.rng.randrange(len(self.proxies))
        proxy = self.proxies[index]
        mode = self.rng.choice(CUT_MODES)
        cut_s = self.rng.uniform(0.5, self.o.lease_ttl_s * 2)
        hit = proxy.cut(mode)
        disruption = Disruption(
            number,
            "cut-proxy",
            f"proxy{index + 1}",
            time.time(),
            detail=f"{mode} {cut_s:.1f}s, {hit} conn",
            held=self._held_by(None),
        )
        self._record(disruption)

        def restore() -> None:
            proxy.restore()
            disruption.ended_at = time.time()

        self._later(cut_s, f"restore proxy{index + 1}", restore)

    # --- watching --------------------------------------------------------------------

    def _watch_processes(self) -> None:
        """Restart anything that died without being killed, and remember it."""
        for node in self.hands:
            current = node.current
            if current is None or current.proc.poll() is None:
                continue
            code = current.proc.returncode
            self.unexpected_exits.append(
                f"{current.name} exited on its own with {code}"
            )
            say(f"  !! {current.name} exited on its own with {code}")
            node.end_current(f"exited {code}")
            node.stopped = False
            node.start()
        for brain in self.brains:
            if brain.killed or brain.proc is None or brain.proc.poll() is None:
                continue
            code = brain.proc.returncode
            self.unexpected_exits.append(f"{brain.name} exited on its own with {code}")
            say(f"  !! {brain.name} exited on its own with {code}")
            if brain.starts > 20:
                raise SetupError(f"{brain.name} keeps exiting:\n{tail(brain.log_path)}")
            brain.start()

    def _poll_recoveries(self, force: bool = False) -> None:
        """Note when each held job was released and when it recovered."""
        now = time.monotonic()
        if not self.watched:
            return
        if not force and now - self.last_recovery_poll < RECOVERY_POLL_S:
            return
        self.last_recovery_poll = now
        assert self.store is not None
        seen_at = time.time()
        for chunk in _chunks(list(self.watched), 400):
            marks = ",".join(f"'{j}'" for j in chunk)
            rows = self.store.try_rows(
                f"SELECT id, state, attempts FROM jobs WHERE id IN ({marks})"
            )
            if rows is None:
                return
            for job_id, state, attempts in rows:
                self.watched[job_id] = [
                    (d, attempt)
                    for d, attempt in self.watched[job_id]
                    if not _note_recovery(d, job_id, attempt, state, attempts, seen_at)
                ]
                if not self.watched[job_id]:
                    del self.watched[job_id]

    # --- the end -------------------------------------------------------------------

    def stop_processes(self) -> None:
        """Stop the Hands first (they drain), then the Brains."""
        for node in self.hands:
            if node.current is not None:
                _signal(node.current.proc, signal.SIGCONT)
                _signal(node.current.proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for node in self.hands:
            if node.current is None:
                continue
            try:
                code = node.current.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(node.current.proc, signal.SIGKILL)
                code = node.current.proc.wait(5)
                self.unexpected_exits.append(
                    f"{node.current.name} did not stop within {STOP_TIMEOUT_S:g} s "
                    "of SIGTERM"
                )
            node.end_current(f"stopped {code}")
        for brain in self.brains:
            if brain.proc is not None and brain.proc.poll() is None:
                _signal(brain.proc, signal.SIGTERM)
                try:
                    brain.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    _signal(brain.proc, signal.SIGKILL)
                    brain.proc.wait(5)
                    self.unexpected_exits.append(
                        f"{brain.name} did not stop within {STOP_TIMEOUT_S:g} s "
                        "of SIGTERM"
                    )

    def collect_facts(self) -> None:
        """Read everything the checks need from the store, before it is dropped."""
        assert self.store is not None
        read = self.store.rows
        self.facts["jobs"] = read(
            "SELECT id, idempotency_key, state, attempts, size, steps_done, "
            "finished_at, last_error_code FROM jobs"
        )
        self.facts["action_log"] = read(
            "SELECT job_id, step_index, attempt, account_username, target, action, "
            "result, worker_id, created_at FROM action_log"
        )

    def close(self) -> None:
        """Stop everything that is still running and drop the throwaway database."""
        if self.admin_channel is not None:
            self.admin_channel.close()
        self.table.stop_all()
        for proxy in self.proxies:
            proxy.stop()
        if self.store is not None:
            self.store.close()
        if self.database is not None:
            self.database.drop()

    def all_incarnations(self) -> list[Incarnation]:
        return [i for node in self.hands for i in node.incarnations]


def _note_recovery(
    d: Disruption, job_id: str, attempt: int, state: str, attempts: int, at: float
) -> bool:
    """Record what became of a held job; True once it has recovered."""
    new_lease = attempts > attempt
    if (state != "LEASED" or new_lease) and job_id not in d.released_s:
        d.released_s[job_id] = at - d.started_at
    if state in FINAL_STATES or new_lease:
        d.recovered_s[job_id] = at - d.started_at
        return True
    return False


class SetupError(Exception):
    """The chaos run could not be set up; the message says why."""


def _target(addresses: list[str]) -> str:
    """A gRPC target for one address, or an ipv4: list for several."""
    if len(addresses) == 1:
        return addresses[0]
    return "ipv4:" + ",".join(addresses)


def _worker_pid(worker_id: str | None) -> int | None:
    """The pid inside a Hands worker id (host-pid-hex)."""
    match = re.search(r"-(\d+)-[0-9a-f]{8}$", worker_id or "")
    return int(match.group(1)) if match else None


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- the checks ------------------------------------------------------------------


def _epoch(value: object) -> float:
    """Seconds since the epoch from a store or log timestamp (naive means UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert isinstance(value, datetime)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def read_json_lines(path: Path) -> Iterator[dict]:
    """The JSON objects of a log or ledger; other lines are passed over."""
    if not path.exists():
        return
    with open(path, errors="replace") as lines:
        for line in lines:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


@dataclass
class Effect:
    """One line of a Hands ledger: an effect that incarnation performed."""

    job_id: str
    account: str
    target: str
    action: str
    ts: float
    incarnation: str
    explained_by: str = ""


@dataclass
class Check:
    """One line of the verdict: what was counted, and whether a count fails."""

    name: str
    count: int
    fails: bool
    note: str = ""
    examples: list[str] = field(default_factory=list)


@dataclass
class Evidence:
    """Everything the checks read, gathered once after the run."""

    jobs: dict[str, tuple]  # id -> (id, key, state, attempts, size, done, fin...)
    finished_rows: list[tuple]  # action_log rows with DONE / ALREADY_DONE
    all_rows: list[tuple]
    acknowledged: set[str]
    brain_events: list[tuple[str, dict]]  # (brain name, event)
    hands_events: list[tuple[str, dict]]  # (incarnation name, event)
    effects: list[Effect]
    unreadable_ledger_lines: int
    incarnations: dict[str, Incarnation]


def gather_evidence(run: ChaosRun) -> Evidence:
    """Read the facts from the store, the ledgers and every process log."""
    rows = run.facts["action_log"]
    incarnations = {i.name: i for i in run.all_incarnations()}
    effects, unreadable = _read_ledgers(incarnations.values())
    return Evidence(
        jobs={row[0]: row for row in run.facts["jobs"]},
        finished_rows=[r for r in rows if r[6] in ("DONE", "ALREADY_DONE")],
        all_rows=rows,
        acknowledged=set(run.submitted.values()),
        brain_events=[
            (b.name, event) for b in run.brains for event in read_json_lines(b.log_path)
        ],
        hands_events=[
            (i.name, event)
            for i in incarnations.values()
            for event in read_json_lines(i.log_path)
        ],
        effects=effects,
        unreadable_ledger_lines=unreadable,
        incarnations=incarnations,
    )


def _read_ledgers(incarnations: Iterable[Incarnation]) -> tuple[list[Effect], int]:
    effects: list[Effect] = []
    unreadable = 0
    for inc in incarnations:
        if not inc.ledger_path.exists():
            continue
        for line in inc.ledger_path.read_text(errors="replace").splitlines():
            try:
                raw = json.loads(line)
                effects.append(
                    Effect(
                        raw["job_id"],
                        raw["account"],
                        raw["target"],
                        raw["action"],
                        _epoch(raw["ts"]),
                        inc.name,
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                unreadable += 1
    return effects, unreadable


def check_jobs(ev: Evidence) -> list[Check]:
    """Submitted, final, and lost: acknowledged or stored, and not final."""
    states = Counter(row[2] for row in ev.jobs.values())
    missing = sorted(ev.acknowledged - set(ev.jobs))
    not_final = sorted(j for j, row in ev.jobs.items() if row[2] not in FINAL_STATES)
    lost = [f"{j} missing from the store" for j in missing] + [
        f"{j} {ev.jobs[j][2]} after {ev.jobs[j][3]} attempt(s)" for j in not_final
    ]
    return [
        Check("jobs submitted", len(ev.acknowledged | set(ev.jobs)), False),
        Check(
            "jobs final",
            sum(states[s] for s in FINAL_STATES),
            False,
            ", ".join(f"{s} {states[s]}" for s in FINAL_STATES),
        ),
        Check("jobs lost (not final at the end)", len(lost), True, examples=lost),
    ]


def check_completed_twice(ev: Evidence) -> Check:
    """A job ended twice: two final transitions logged, or too many finished steps.

    The Brain logs `job_completed` only for a completion it applied (a repeat
    of the same word is not logged) and `lease_expired` for each expiry, so two
    final transitions of one job mean two holders both ended it. The Hands
    log each completion Brain answered with a final state, under its attempt:
    two attempts told "final" is the same fault seen from the other side.
    """
    final_transitions: Counter[str] = Counter()
    for _, event in ev.brain_events:
        name = event.get("event")
        final = (name == "job_completed" and event.get("state") in FINAL_STATES) or (
            name == "lease_expired" and event.get("new_state") in FINAL_STATES
        )
        if final:
            final_transitions[event.get("job_id", "")] += 1
    final_replies: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for name, event in ev.hands_events:
        state = str(event.get("state", "")).removeprefix("JOB_STATE_")
        if event.get("event") == "job_completed" and state in FINAL_STATES:
            final_replies[event.get("job_id", "")].add((name, event.get("attempt", 0)))
    finished = Counter(r[0] for r in ev.finished_rows)

    twice = {j for j, n in final_transitions.items() if n > 1}
    twice |= {j for j, holders in final_replies.items() if len(holders) > 1}
    twice |= {j for j, n in finished.items() if j in ev.jobs and n > ev.jobs[j][4]}
    twice |= {j for j, row in ev.jobs.items() if row[5] > row[4]}
    return Check(
        "jobs completed more than once",
        len(twice),
        True,
        "final transitions logged by the Brains and told to the Hands; "
        "finished steps beyond the tier size",
        examples=[
            f"{j}: {final_transitions[j]} final transitions logged, "
            f"{len(final_replies[j])} holders told final, {finished[j]} finished "
            f"steps of {ev.jobs[j][4] if j in ev.jobs else '?'}"
            for j in sorted(twice)
        ],
    )


def check_steps_twice(ev: Evidence) -> Check:
    """A step, or an account's effect on a target, recorded as finished twice."""
    per_step = Counter((r[0], r[1]) for r in ev.finished_rows)
    per_effect = Counter((r[3], r[5], r[4]) for r in ev.finished_rows)
    examples = [
        f"job {j} step {s}: {n} rows" for (j, s), n in per_step.items() if n > 1
    ]
    examples += [
        f"{account} {action} {target}: {n} rows"
        for (account, action, target), n in per_effect.items()
        if n > 1
    ]
    return Check(
        "steps recorded more than once",
        len(examples),
        True,
        "finished action_log rows per (job, step) and per (account, action, target)",
        examples=examples,
    )


def check_late_results(ev: Evidence) -> Check:
    """A result written after its job became final slipped past the lease fence."""
    late = [
        f"job {r[0]} step {r[1]} {r[6]} by {r[7]}"
        for r in ev.all_rows
        if r[0] in ev.jobs
        and ev.jobs[r[0]][6] is not None
        and _epoch(r[8]) > _epoch(ev.jobs[r[0]][6])
    ]
    return Check(
        "results recorded after the job was final", len(late), True, examples=late
    )


def check_effects(ev: Evidence, run: ChaosRun) -> list[Check]:
    """Compare what the Hands did (ledgers) with what the Brain recorded.

    Each recorded DONE is paired with the ledger line of the incarnation that
    reported it. Ledger lines left over are effects performed but never
    recorded: at-least-once delivery allows them when the process that
    performed them was killed or stopped, or lost the Brain (killed, or the
    link cut) right around that moment, or lost its lease because the Brain
    answered too late. Any other is a fault.
    """
    orphans, phantoms = _pair_effects(ev)
    lapses = _lease_lapses(ev)
    for effect in orphans:
        effect.explained_by = explain_effect(effect, run.disruptions, ev.incarnations)
        if not effect.explained_by and _lapsed_after(effect, lapses):
            effect.explained_by = LAPSED
    disrupted = [e for e in orphans if e.explained_by not in ("", LAPSED)]
    lapsed = [e for e in orphans if e.explained_by == LAPSED]
    unexplained = [e for e in orphans if not e.explained_by]
    unexplained_keys = {_effect_key(e) for e in unexplained + lapsed}

    per_effect = Counter(_effect_key(e) for e in ev.effects)
    repeated = sorted(k for k, n in per_effect.items() if n > 1)
    repeated_unexplained = [k for k in repeated if k in unexplained_keys]
    accounts_per_job: dict[str, set[str]] = defaultdict(set)
    for effect in ev.effects:
        accounts_per_job[effect.job_id].add(effect.account)
    over = [
        j
        for j, accounts in accounts_per_job.items()
        if j in ev.jobs and len(accounts) > ev.jobs[j][4]
    ]
    explained_by = Counter(e.explained_by for e in disrupted)
    checks = [
        Check(
            "effects performed more than once",
            len(repeated),
            False,
            f"same job, account and target in the ledgers; "
            f"{len(repeated) - len(repeated_unexplained)} explained by a disruption",
            examples=[
                f"job {j} {a}: {per_effect[(j, a, t, x)]} times"
                for j, a, t, x in repeated
            ],
        ),
        Check(
            "jobs whose target got more effects than the tier size",
            len(over),
            False,
            "a step redone by another account after its first effect went unrecorded",
        ),
        Check(
            "effects never recorded, explained by a disruption",
            len(disrupted),
            False,
            ", ".join(f"{k} {n}" for k, n in sorted(explained_by.items())),
        ),
        Check(
            "effects never recorded, lease lapsed undisturbed",
            len(lapsed),
            False,
            "no disruption near: the Brain acknowledged too late for the lease TTL",
            examples=_effect_examples(lapsed, run.started_at),
        ),
        Check(
            "effects never recorded and unexplained",
            len(unexplained),
            True,
            "no disruption near and the worker kept its lease",
            examples=_effect_examples(unexplained, run.started_at),
        ),
        Check(
            "results recorded that no ledger holds",
            len(phantoms),
            True,
            "DONE rows without the effect line of the worker that reported them",
            examples=phantoms,
        ),
    ]
    if ev.unreadable_ledger_lines:
        checks.append(
            Check("unreadable ledger lines", ev.unreadable_ledger_lines, False)
        )
    return checks


def _effect_examples(effects: list[Effect], started_at: float) -> list[str]:
    return [
        f"job {e.job_id} {e.account} by {e.incarnation} at t+{e.ts - started_at:.1f}s"
        for e in effects
    ]


def _lease_lapses(ev: Evidence) -> dict[tuple[str, str], list[float]]:
    """When each incarnation logged losing its lease on each job."""
    lapses: dict[tuple[str, str], list[float]] = defaultdict(list)
    for name, event in ev.hands_events:
        if event.get("event") == "lease_lost" and "job_id" in event:
            lapses[(name, event["job_id"])].append(_epoch(event["timestamp"]))
    return lapses


def _lapsed_after(effect: Effect, lapses: dict[tuple[str, str], list[float]]) -> bool:
    """Whether the performing incarnation lost its lease on the job after acting."""
    times = lapses.get((effect.incarnation, effect.job_id), [])
    return any(t >= effect.ts - EXPLAIN_SLACK_S for t in times)


def _effect_key(effect: Effect) -> tuple[str, str, str, str]:
    return effect.job_id, effect.account, effect.target, effect.action


def _pair_effects(ev: Evidence) -> tuple[list[Effect], list[str]]:
    """Pair each recorded DONE with its ledger line; return the unpaired of each."""
    by_key: dict[tuple[str, str], list[Effect]] = defaultdict(list)
    for effect in ev.effects:
        by_key[(effect.job_id, effect.account)].append(effect)
    owner_of_worker = {
        worker_id: inc.name
        for inc in ev.incarnations.values()
        if (worker_id := inc.worker_id())
    }
    paired: set[int] = set()
    phantoms: list[str] = []
    for row in ev.finished_rows:
        job_id, step, _, account, _, _, result, worker_id, created_at = row
        if result != "DONE":
            continue
        recorded_at = _epoch(created_at)
        owner = owner_of_worker.get(worker_id) or _owner_by_pid(
            ev.incarnations, worker_id, recorded_at
        )
        # The latest effect that incarnation made for this job and account
        # before the Brain recorded it (a later retry may have made another).
        candidates = [
            e
            for e in by_key.get((job_id, account), [])
            if e.incarnation == owner
            and id(e) not in paired
            and e.ts <= recorded_at + 1
        ]
        if not candidates:
            phantoms.append(f"job {job_id} step {step} by {account} ({worker_id})")
            continue
        paired.add(id(max(candidates, key=lambda e: e.ts)))
    return [e for e in ev.effects if id(e) not in paired], phantoms


def _owner_by_pid(
    incarnations: dict[str, Incarnation], worker_id: str, at: float
) -> str | None:
    pid = _worker_pid(worker_id)
    for inc in incarnations.values():
        if inc.pid == pid and inc.covers(at):
            return inc.name
    return None


def explain_effect(
    effect: Effect, disruptions: list[Disruption], incarnations: dict[str, Incarnation]
) -> str:
    """The disruption that kept an effect from being recorded, or ''.

    A step's result is sent right after its effect, so only a disruption
    around that moment can lose it: the performing process killed just after,
    or stopped around it (a stopped step finishes on SIGCONT, lease gone), or
    its Brain down or its link cut from just before until just after.
    """
    slack_s = EXPLAIN_SLACK_S
    inc = incarnations[effect.incarnation]
    if inc.end == "killed" and inc.ended_at is not None:
        if inc.ended_at - slack_s <= effect.ts <= inc.ended_at + slack_s:
            return "kill-hands"
    for d in disruptions:
        start, end = d.window()
        if d.kind == "kill-hands":
            continue
        if d.kind == "stop-hands" and d.incarnation != effect.incarnation:
            continue
        if start - slack_s <= effect.ts <= end + slack_s:
            return d.kind
    return ""


def check_claim_margins(ev: Evidence, run: ChaosRun) -> Check:
    """Leases that were already over when the claim reached the worker.

    Hands logs `lease_remaining_s` with each claim: what the TTL lost on the
    way is the time from the Brain fixing the deadline to the worker reading
    it. A blackholed link, a stopped worker or a Brain kill in between
    explains a late claim; the ones left mean the Brain itself was slow.
    """
    ttl_s = run.o.lease_ttl_s
    margins: list[float] = []
    late: list[str] = []
    for name, event in ev.hands_events:
        if event.get("event") != "job_claimed" or "lease_remaining_s" not in event:
            continue
        left_s = float(event["lease_remaining_s"])
        margins.append(left_s)
        if left_s > 0:
            continue
        read_at = _epoch(event["timestamp"])
        fixed_at = read_at + left_s - ttl_s
        if not _disrupted_between(run.disruptions, name, fixed_at, read_at):
            late.append(f"job {event.get('job_id')} to {name}: {left_s:.2f} s left")
    margins.sort()
    note = ""
    if margins:
        note = (
            f"lease left at claim: least {margins[0]:.2f} s, median "
            f"{margins[len(margins) // 2]:.2f} s of {ttl_s:g} s; "
            f"{sum(m <= 0 for m in margins)} over in all"
        )
    return Check(
        "claims over on arrival with no disruption between",
        len(late),
        False,
        note,
        examples=late,
    )


def _disrupted_between(
    disruptions: list[Disruption], incarnation: str, start: float, end: float
) -> bool:
    """Whether a disruption that delays replies overlapped [start, end]."""
    for d in disruptions:
        if d.kind == "kill-hands":
            continue
        if d.kind == "stop-hands" and d.incarnation != incarnation:
            continue
        d_start, d_end = d.window()
        if d_start - EXPLAIN_SLACK_S <= end and start <= d_end + EXPLAIN_SLACK_S:
            return True
    return False


def check_crashes(ev: Evidence, run: ChaosRun) -> Check:
    """Processes that exited without being killed, logged a crash, or hung."""
    crashes = list(run.unexpected_exits)
    for name, event in ev.brain_events + ev.hands_events:
        if event.get("event") in CRASH_EVENTS:
            crashes.append(f"{name}: {event['event']} {event.get('error', '')}".strip())
    return Check(
        "processes crashed, exited or hung on SIGTERM",
        len(crashes),
        True,
        examples=crashes,
    )


@dataclass
class Verdict:
    """The checks, and the numbers printed beside them."""

    checks: list[Check]
    recovery: list[dict]
    counters: dict[str, int]
    hands_warnings: dict[str, int]

    @property
    def passed(self) -> bool:
        return not any(c.fails and c.count for c in self.checks)


def judge(run: ChaosRun) -> Verdict:
    """Check the store, the ledgers and the logs against what must hold."""
    ev = gather_evidence(run)
    checks = [
        *check_jobs(ev),
        check_completed_twice(ev),
        check_steps_twice(ev),
        check_late_results(ev),
        *check_effects(ev, run),
        check_claim_margins(ev, run),
        check_crashes(ev, run),
    ]
    brain_counts = Counter(event.get("event") for _, event in ev.brain_events)
    hands_warnings = Counter(
        event.get("event", "")
        for _, event in ev.hands_events
        if event.get("level") in ("warning", "error")
        and event.get("event") not in CRASH_EVENTS
    )
    return Verdict(
        checks=checks,
        recovery=_recovery_table(run),
        counters={
            "stale writes refused": brain_counts["stale_write_refused"],
            "leases expired": brain_counts["lease_expired"],
            "submit calls failed and retried": run.submit_failures,
            "jobs answered from their idempotency key": run.submit_repeats,
        },
        hands_warnings=dict(hands_warnings),
    )


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return round(statistics.median(values), 2), round(max(values), 2)


def _recovery_table(run: ChaosRun) -> list[dict]:
    rows = []
    for kind in DISRUPTIONS:
        hits = [d for d in run.disruptions if d.kind == kind]
        if not hits and kind not in run.o.kinds:
            continue
        released = [s for d in hits for s in d.released_s.values()]
        recovered = [s for d in hits for s in d.recovered_s.values()]
        held = sum(len(d.held) for d in hits)
        rows.append(
            {
                "kind": kind,
                "count": len(hits),
                "jobs_held": held,
                "released_median_s": _stats(released)[0],
                "released_max_s": _stats(released)[1],
                "recovered_median_s": _stats(recovered)[0],
                "recovered_max_s": _stats(recovered)[1],
                "not_recovered": held - len(recovered),
            }
        )
    return rows


# --- the report ------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(run: ChaosRun, verdict: Verdict) -> None:
    """The summary table: disruptions with recovery times, then every check."""
    o = run.o
    brains = f"{o.replicas} Brain{'s' if o.replicas > 1 else ''}"
    say("")
    say(
        f"barter chaos run: {o.store}, {brains}, {o.hands} Hands x "
        f"{o.hands_concurrency}, {o.jobs} jobs, {o.duration_s:g} s of chaos, "
        f"lease TTL {o.lease_ttl_s:g} s, seed {o.seed}"
    )
    say(
        f"chaos phase {run.chaos_ended_at - run.started_at:.1f} s, settled in "
        f"{run.settled_at - run.chaos_ended_at:.1f} s; "
        f"{len(run.all_incarnations())} Hands incarnations, "
        f"{sum(b.starts for b in run.brains)} Brain starts"
    )
    say("")
    say("disruptions: seconds from each one to a held job being released by its")
    say("lease (PENDING again or final) and to its recovery (a new lease or final)")
    say(
        f"  {'kind':<11}{'count':>6}{'held':>6}  {'released med/max':>17}"
        f"  {'recovered med/max':>18}{'not recovered':>15}"
    )
    for row in verdict.recovery:
        released = (
            f"{_seconds(row['released_median_s'])} / {_seconds(row['released_max_s'])}"
        )
        recovered = (
            f"{_seconds(row['recovered_median_s'])} / "
            f"{_seconds(row['recovered_max_s'])}"
        )
        say(
            f"  {row['kind']:<11}{row['count']:>6}{row['jobs_held']:>6}  "
            f"{released:>17}  {recovered:>18}{row['not_recovered']:>15}"
        )
    say("")
    say("checks")
    width = max(len(c.name) for c in verdict.checks) + 2
    for check in verdict.checks:
        status = ("FAIL" if check.count else "ok") if check.fails else ""
        line = f"  {check.name:<{width}}{check.count:>6}  {status:<4}  {check.note}"
        say(line.rstrip())
        if check.count and (check.fails or check.name in SHOW_EXAMPLES):
            for example in check.examples[:5]:
                say(f"        {example}")
            if len(check.examples) > 5:
                say(f"        ... {len(check.examples) - 5} more")
    for name, count in verdict.counters.items():
        say(f"  {name:<{width}}{count:>6}")
    if verdict.hands_warnings:
        shown = ", ".join(f"{k} {n}" for k, n in sorted(verdict.hands_warnings.items()))
        say(f"  Hands warnings and errors logged: {shown}")
    say("")
    say(f"RESULT: {'PASS' if verdict.passed else 'FAIL'}")


def print_tails(run: ChaosRun) -> None:
    """The end of every Brain log and of each Hands slot's latest log."""
    logs = [b.log_path for b in run.brains]
    logs += [node.incarnations[-1].log_path for node in run.hands if node.incarnations]
    for path in logs:
        say(f"\n--- tail of {path} ---\n{tail(path)}")


def write_summary(path: Path, run: ChaosRun, verdict: Verdict) -> None:
    """The verdict and the disruption timeline as JSON, for tests and tools."""
    summary = {
        "passed": verdict.passed,
        "options": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(run.o).items()
        },
        "checks": [asdict(c) | {"examples": c.examples[:20]} for c in verdict.checks],
        "recovery": verdict.recovery,
        "counters": verdict.counters,
        "hands_warnings": verdict.hands_warnings,
        "unexpected_exits": run.unexpected_exits,
        "disruptions": [
            {
                "number": d.number,
                "kind": d.kind,
                "target": d.target,
                "detail": d.detail,
                "at_s": round(d.started_at - run.started_at, 3),
                "until_s": (
                    None
                    if d.ended_at is None
                    else round(d.ended_at - run.started_at, 3)
                ),
                "incarnation": d.incarnation,
                "held": d.held,
                "released_s": {k: round(v, 3) for k, v in d.released_s.items()},
                "recovered_s": {k: round(v, 3) for k, v in d.recovered_s.items()},
            }
            for d in run.disruptions
        ],
        "workdir": str(run.workdir),
    }
    path.write_text(json.dumps(summary, indent=2, default=str))


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through the `finally` that stops every process.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the chaos run with these arguments; returns the exit code."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    options = parse_options(argv)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="barter-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"barter chaos run, seed {options.seed}, work directory {workdir}")
    run = ChaosRun(options, workdir)
    try:
        run.setup()
        run.chaos_phase()
        run.settle_phase()
        run.stop_processes()
        run.collect_facts()
    except (SetupError, grpc.RpcError, sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        say(f"\nchaos run could not complete: {type(exc).__name__}: {exc}")
        print_tails(run)
        return EXIT_SETUP
    finally:
        run.close()
    verdict = judge(run)
    print_report(run, verdict)
    if options.summary_json:
        write_summary(options.summary_json, run, verdict)
    if not verdict.passed:
        print_tails(run)
        say(f"\nlogs, ledgers and the database are kept in {workdir}")
        return EXIT_FAILED
    if options.keep or options.workdir is not None:
        say(f"logs, ledgers and the database are in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
