"""barter's benchmark: throughput, dispatch latency, queue depth, idle cost.

Everything goes through the real processes on loopback: `barter-brain
migrate` and `serve`, and `barter-hands run` with the dry-run executor. Each
run gets a throwaway store (a SQLite file, or a database on the machine's
PostgreSQL), and every process is stopped by its pid when the run ends.

Each figure is the median of several runs, shown with its spread (min-max).
Targets are printed beside the figures for information; the exit code is
non-zero only when the tool itself fails (a process dies, a job is lost).

    .venv/bin/python tests/bench.py            # the full benchmark, ~15 min
    .venv/bin/python tests/bench.py --quick    # a small version, ~2 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from barter.v1 import admin_pb2, common_pb2, jobs_pb2, jobs_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Both found through the line above when run as a script.
from bench_floor import relay_floor  # noqa: E402
from harness import (  # noqa: E402
    BrainProcess,
    HandsProcess,
    ThrowawayDatabase,
    postgres_reachable,
)

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
SECTIONS = ("throughput", "dispatch", "depth", "fleet", "hands-idle")

# Settings a benchmark Brain gets: pacing off, so that the queue and not the
# workforce rules sets the pace, and logging at warning (logging is costly).
BRAIN_ENV = {
    "BRAIN_ACCOUNT_MIN_GAP_S": "0",
    "BRAIN_ACCOUNT_MAX_PER_HOUR": "1000000000",
    "BRAIN_ACCOUNT_MAX_PER_DAY": "1000000000",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "warning",
}
HANDS_ENV = {
    "HANDS_EXECUTOR": "dry-run",
    "HANDS_DRY_RUN_DELAY_S": "0",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "warning",
}
# Variables of ours that must not leak from the caller's shell into a run.
SCRUBBED = ("BRAIN_", "HANDS_", "ADMIN_", "LOG_", "DATABASE_URL", "POLL_INTERVAL")

# Defaults of the full benchmark and of --quick; a flag given wins over both.
FULL = {
    "runs": 3,
    "jobs": 10_000,
    "hands": "1,2,4",
    "throughput_cap_s": 20.0,
    "dispatch_jobs": 200,
    "poll_jobs": 30,
    "depths": "10000,100000,1000000",
    "claims": 200,
    "claim_budget_s": 10.0,
    "idle_polls": 1000,
    "idle_window_s": 10.0,
}
QUICK = {
    "runs": 1,
    "jobs": 1000,
    "hands": "1,2,4",
    "throughput_cap_s": 15.0,
    "dispatch_jobs": 50,
    "poll_jobs": 10,
    "depths": "1000,10000,100000",
    "claims": 100,
    "claim_budget_s": 5.0,
    "idle_polls": 1000,
    "idle_window_s": 3.0,
}


class BenchFailed(Exception):
    """The tool could not measure: a process died, a job was lost, a bound ran out."""


# --- Readings from /proc -------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int:
    """A kB figure (VmRSS, VmHWM) from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchFailed(f"/proc/{pid}/status has no {key}")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces; the fields after it do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def mb(kb: int) -> float:
    return kb / 1024


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.M)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "memory_mb": round(int(mem_kb.group(1)) / 1024) if mem_kb else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "grpcio": grpc.__version__,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def commit() -> dict[str, Any]:
    """The checked-out commit, and whether tracked files differ from it."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


# --- Figures -------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Target:
    """A goal a figure's median is compared with: >=, < or <= a bound."""

    op: str
    bound: float

    def met(self, value: float) -> bool:
        if self.op == ">=":
            return value >= self.bound
        if self.op == "<":
            return value < self.bound
        return value <= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass
class Results:
    """Everything measured, in the order it was measured."""

    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(
        self,
        key: str,
        label: str,
        unit: str,
        runs: Sequence[float],
        target: Target | None = None,
        note: str = "",
    ) -> dict[str, Any]:
        """Record a figure from its per-run values (median, min, max)."""
        values = [float(v) for v in runs if not math.isnan(v)]
        figure: dict[str, Any] = {
            "label": label,
            "unit": unit,
            "median": statistics.median(values) if values else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
            "runs": [round(v, 4) for v in values],
            "note": note,
        }
        if target is not None and values:
            figure["target"] = str(target)
            figure["verdict"] = "PASS" if target.met(figure["median"]) else "MISS"
        self.figures[key] = figure
        return figure


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- Stores and processes ------------------------------------------------------


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}


class Stores:
    """Throwaway stores: SQLite files copied from one migrated template, or
    PostgreSQL databases migrated one by one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._template: Path | None = None
        self._count = 0

    def sqlite_template(self) -> Path:
        """A SQLite file `barter-brain migrate` made once for this benchmark."""
        if self._template is None:
            path = self.workdir / "template.db"
            brain = BrainProcess(self.workdir, database_url=f"sqlite:///{path}")
            brain.env = {**clean_env(), **BRAIN_ENV, "DATABASE_URL": brain.database_url}
            brain.migrate()
            with sqlite3.connect(path) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._template = path
        return self._template

    @contextmanager
    def new(self, kind: str) -> Iterator[tuple[str, Path]]:
        """A fresh, migrated store and a fresh work directory for one run."""
        self._count += 1
        workdir = self.workdir / f"run{self._count:03d}-{kind}"
        workdir.mkdir()
        if kind == "sqlite":
            path = workdir / "brain.db"
            shutil.copyfile(self.sqlite_template(), path)
            yield f"sqlite:///{path}", workdir
            return
        database = ThrowawayDatabase()
        try:
            brain = BrainProcess(workdir, database_url=database.url)
            brain.env = {**clean_env(), **BRAIN_ENV, "DATABASE_URL": database.url}
            brain.migrate()
            yield database.url, workdir
        finally:
            database.drop()


def start_brain(url: str, workdir: Path, stack: ExitStack, **env: str) -> BrainProcess:
    """`barter-brain serve` on a free loopback port, stopped when `stack` closes."""
    brain = BrainProcess(workdir, database_url=url)
    brain.env = {**clean_env(), **BRAIN_ENV, "DATABASE_URL": url, **env}
    stack.callback(brain.stop)
    brain.start()
    return brain


def start_hands(
    brain: BrainProcess, workdir: Path, name: str, stack: ExitStack, **env: str
) -> HandsProcess:
    """`barter-hands run` against `brain`, stopped when `stack` closes."""
    hands = HandsProcess(workdir, brain, name)
    hands.env = {**clean_env(), **HANDS_ENV, "BRAIN_URL": brain.address, **env}
    stack.callback(hands.stop)
    hands.start()
    return hands


def check_alive(*procs: BrainProcess | HandsProcess) -> None:
    """Fail the benchmark when a process we started has exited."""
    for proc in procs:
        code = proc.proc.poll() if proc.proc else None
        if code is not None:
            raise BenchFailed(
                f"{proc.log_path.stem} (pid {proc.proc.pid}) exited with {code} "
                f"during the run:\n{proc.log_tail()}"
            )


def stop_cleanly(results: Results, *procs: BrainProcess | HandsProcess) -> None:
    """SIGTERM, wait; an unclean exit is noted, not fatal (figures are taken)."""
    for proc in procs:
        code = proc.stop()
        if code not in (0, None):
            results.warnings.append(
                f"{proc.log_path} exited with {code} after SIGTERM:\n"
                f"{proc.log_tail(10)}"
            )


def import_accounts(brain: BrainProcess, count: int, prefix: str = "bench_a") -> None:
    admin = brain.admin()
    for start in range(0, count, 1000):
        names = [f"{prefix}{i}" for i in range(start, min(start + 1000, count))]
        reply = admin.ImportAccounts(
            admin_pb2.ImportAccountsRequest(
                accounts=[admin_pb2.AccountInput(username=n) for n in names]
            ),
            timeout=120,
        )
        refused = [row.error for row in reply.rows if row.error]
        if refused:
            raise BenchFailed(f"ImportAccounts refused rows: {refused[:3]}")


def submit_jobs(brain: BrainProcess, targets: Sequence[str]) -> list[str]:
    """SubmitJobs in batches of 1000; the created job ids in order."""
    admin = brain.admin()
    ids: list[str] = []
    for start in range(0, len(targets), 1000):
        reply = admin.SubmitJobs(
            admin_pb2.SubmitJobsRequest(
                jobs=[
                    admin_pb2.JobSpec(
                        action=common_pb2.ACTION_FOLLOW, target=t, tier="free_test"
                    )
                    for t in targets[start : start + 1000]
                ]
            ),
            timeout=120,
        )
        ids.extend(item.job.job_id for item in reply.jobs)
    return ids


def utc(value: object) -> float:
    """A store timestamp (naive UTC; a string on SQLite) as epoch seconds."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime), value
    return value.replace(tzinfo=UTC).timestamp()


def bounded_wait(
    check: Callable[[], bool],
    timeout_s: float,
    procs: Sequence[BrainProcess | HandsProcess],
    interval_s: float = 0.1,
) -> bool:
    """Poll `check` until true or `timeout_s`; processes must stay alive."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive(*procs)
        if check():
            return True
        time.sleep(interval_s)
    return check()


# --- 1. Throughput and 5. peak memory -------------------------------------------


def throughput_run(
    args: argparse.Namespace,
    stores: Stores,
    kind: str,
    hands_count: int,
    run: int,
    results: Results,
) -> dict[str, Any]:
    """Drain a backlog of one-step jobs with `hands_count` Hands; jobs/s from the
    first recorded step to the last finish, both read from the store."""
    with stores.new(kind) as (url, workdir), ExitStack() as stack:
        brain = start_brain(url, workdir, stack)
        import_accounts(brain, args.accounts)
        submit_jobs(brain, [f"tp{run}_{i}" for i in range(args.jobs)])

        profiler = None
        if args.py_spy and run == 1:
            profiler = subprocess.Popen(
                [
                    args.py_spy,
                    "record",
                    "--nonblocking",
                    "-p",
                    str(brain.proc.pid),
                    "-o",
                    str(args.profile_dir / f"brain-{kind}-hands{hands_count}.svg"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(_stop_profiler, profiler)

        hands = [
            start_hands(
                brain,
                workdir,
                f"h{i}",
                stack,
                HANDS_CONCURRENCY=str(args.concurrency),
            )
            for i in range(hands_count)
        ]
        procs = [brain, *hands]

        def finished() -> bool:
            states = dict(
                brain.query("SELECT state, count(*) FROM jobs GROUP BY state")
            )
            return sum(states.get(s, 0) for s in FINAL_STATES) >= args.jobs

        capped = not bounded_wait(finished, args.throughput_cap_s, procs, 0.25)
        check_alive(*procs)
        brain_hwm = proc_status_kb(brain.proc.pid, "VmHWM")
        hands_hwm = max(proc_status_kb(h.proc.pid, "VmHWM") for h in hands)
        if profiler is not None:
            _stop_profiler(profiler)

        # Draining Hands finish the jobs they hold, so nothing is left leased.
        stop_cleanly(results, *hands)
        return _throughput_figures(brain, args.jobs, capped, brain_hwm, hands_hwm)


def _stop_profiler(profiler: subprocess.Popen) -> None:
    if profiler.poll() is None:
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(30)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait(5)


def _throughput_figures(
    brain: BrainProcess, jobs: int, capped: bool, brain_hwm: int, hands_hwm: int
) -> dict[str, Any]:
    states = dict(brain.query("SELECT state, count(*) FROM jobs GROUP BY state"))
    succeeded = states.get("SUCCEEDED", 0)
    ((first_step, done_rows, done_jobs, workers),) = brain.query(
        "SELECT min(created_at), count(*), count(DISTINCT job_id),"
        " count(DISTINCT worker_id) FROM action_log WHERE result = 'DONE'"
    )
    ((last_finish,),) = brain.query(
        "SELECT max(finished_at) FROM jobs WHERE state = 'SUCCEEDED'"
    )

    # Every job succeeds exactly once with one recorded effect, or is still
    # waiting (only when the run hit its time cap); anything else is a loss.
    lost = []
    if states.get("FAILED") or states.get("CANCELLED"):
        lost.append(f"jobs failed or cancelled: {states}")
    if not capped and succeeded != jobs:
        lost.append(f"{jobs} submitted, {succeeded} succeeded: {states}")
    if done_rows != succeeded or done_jobs != succeeded:
        lost.append(
            f"{succeeded} jobs succeeded but the action log has {done_rows} DONE "
            f"rows for {done_jobs} jobs"
        )
    if lost:
        raise BenchFailed("throughput run lost jobs: " + "; ".join(lost))
    if succeeded < 2:
        raise BenchFailed(f"throughput run finished only {succeeded} jobs")

    window_s = utc(last_finish) - utc(first_step)
    return {
        "jobs_per_s": succeeded / window_s,
        "window_s": window_s,
        "jobs_done": succeeded,
        "capped": capped,
        "workers_seen": workers,
        "brain_peak_rss_mb": mb(brain_hwm),
        "hands_peak_rss_mb": mb(hands_hwm),
    }


def section_throughput(
    args: argparse.Namespace, stores: Stores, results: Results
) -> None:
    for kind in args.store_list:
        for count in args.hands_list:
            runs = []
            for run in range(1, args.runs + 1):
                figures = throughput_run(args, stores, kind, count, run, results)
                runs.append(figures)
                cap_note = (
                    f" (capped at {args.throughput_cap_s:g} s: "
                    f"{figures['jobs_done']}/{args.jobs} jobs)"
                    if figures["capped"]
                    else ""
                )
                say(
                    f"throughput {kind} hands={count} run {run}/{args.runs}: "
                    f"{figures['jobs_per_s']:.1f} jobs/s over "
                    f"{figures['window_s']:.1f} s{cap_note}"
                )
            capped = sum(r["capped"] for r in runs)
            note = f"{capped}/{len(runs)} runs hit the time cap" if capped else ""
            base = f"throughput.{kind}.hands_{count}"
            label = f"{count} Hands x{args.concurrency}"
            results.add(
                f"{base}.jobs_per_s",
                f"throughput, {label}",
                "jobs/s",
                [r["jobs_per_s"] for r in runs],
                note=note,
            )
            results.add(
                f"memory.{kind}.hands_{count}.brain_peak_rss_mb",
                f"Brain peak RSS, throughput {label}",
                "MB",
                [r["brain_peak_rss_mb"] for r in runs],
            )
            results.add(
                f"memory.{kind}.hands_{count}.hands_peak_rss_mb",
                f"Hands peak RSS (largest), throughput {label}",
                "MB",
                [r["hands_peak_rss_mb"] for r in runs],
            )
            results.details[base] = runs

        # The target is judged on the best Hands count.
        best = max(
            args.hands_list,
            key=lambda n: results.figures[f"throughput.{kind}.hands_{n}.jobs_per_s"][
                "median"
            ],
        )
        figure = results.figures[f"throughput.{kind}.hands_{best}.jobs_per_s"]
        target = Target(">=", 1500) if kind == "sqlite" else None
        results.add(
            f"throughput.{kind}.best.jobs_per_s",
            f"throughput, best ({best} Hands)",
            "jobs/s",
            figure["runs"],
            target,
        )


# --- 2. Dispatch latency --------------------------------------------------------


def dispatch_run(
    args: argparse.Namespace,
    stores: Stores,
    kind: str,
    poll_interval_s: float,
    jobs: int,
    gap_s: float,
) -> dict[str, Any]:
    """Submit `jobs` one at a time, `gap_s` apart, to idle Hands; latency from
    just before SubmitJobs to the step in the dry-run ledger."""
    with stores.new(kind) as (url, workdir), ExitStack() as stack:
        brain = start_brain(url, workdir, stack)
        warmups = args.dispatch_hands
        import_accounts(brain, jobs + warmups + 10)
        ledger = workdir / "ledger.jsonl"
        hands = [
            start_hands(
                brain,
                workdir,
                f"h{i}",
                stack,
                HANDS_CONCURRENCY=str(args.concurrency),
                POLL_INTERVAL=str(poll_interval_s),
                HANDS_DRY_RUN_LEDGER=str(ledger),
            )
            for i in range(args.dispatch_hands)
        ]
        procs = [brain, *hands]
        patience_s = 3 * poll_interval_s + 30

        # Warm-up jobs prove the Hands are connected; then they go idle again.
        warm = submit_jobs(brain, [f"dw{i}" for i in range(warmups)])
        if not bounded_wait(
            lambda: set(warm) <= set(_ledger(ledger)), patience_s, procs
        ):
            raise BenchFailed(f"warm-up jobs never ran:\n{hands[0].log_tail()}")
        time.sleep(1.0)

        # The floor under every figure below: one bare gRPC round trip to the
        # same Brain at the same pacing (a health check touches no store).
        health = health_pb2_grpc.HealthStub(brain.channel())
        health_rtt_ms: list[float] = []
        start = time.monotonic()
        for i in range(jobs):
            time.sleep(max(0.0, start + i * gap_s - time.monotonic()))
            sent = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            health_rtt_ms.append((time.perf_counter() - sent) * 1000)

        submitted: dict[str, float] = {}
        submit_rtt_ms: list[float] = []
        admin = brain.admin()
        start = time.monotonic()
        for i in range(jobs):
            time.sleep(max(0.0, start + i * gap_s - time.monotonic()))
            spec = admin_pb2.JobSpec(
                action=common_pb2.ACTION_FOLLOW, target=f"d{i}", tier="free_test"
            )
            sent = time.time()
            reply = admin.SubmitJobs(
                admin_pb2.SubmitJobsRequest(jobs=[spec]), timeout=30
            )
            submit_rtt_ms.append((time.time() - sent) * 1000)
            submitted[reply.jobs[0].job.job_id] = sent

        if not bounded_wait(
            lambda: set(submitted) <= set(_ledger(ledger)), patience_s, procs
        ):
            missing = set(submitted) - set(_ledger(ledger))
            raise BenchFailed(
                f"{len(missing)} of {jobs} dispatched jobs never ran within "
                f"{patience_s:g} s"
            )
        started = _ledger(ledger)
        latencies_ms = [(started[j] - t) * 1000 for j, t in submitted.items()]

        # The ledger line is written before the step is reported to Brain.
        def recorded() -> dict[str, object]:
            return dict(
                brain.query(
                    "SELECT job_id, min(created_at) FROM action_log GROUP BY job_id"
                )
            )

        if not bounded_wait(lambda: set(submitted) <= set(recorded()), 30, procs):
            raise BenchFailed("dispatched jobs ran but Brain never recorded them")
        stored = recorded()
        recorded_ms = [(utc(stored[j]) - t) * 1000 for j, t in submitted.items()]
        return {
            "p50_ms": percentile(latencies_ms, 50),
            "p95_ms": percentile(latencies_ms, 95),
            "p99_ms": percentile(latencies_ms, 99),
            "max_ms": max(latencies_ms),
            "recorded_p50_ms": percentile(recorded_ms, 50),
            "recorded_p99_ms": percentile(recorded_ms, 99),
            "submit_rtt_p50_ms": percentile(submit_rtt_ms, 50),
            "health_rtt_p50_ms": percentile(health_rtt_ms, 50),
            "health_rtt_p99_ms": percentile(health_rtt_ms, 99),
        }


def _ledger(path: Path) -> dict[str, float]:
    """job id -> epoch seconds of its step, from the dry-run ledger."""
    if not path.exists():
        return {}
    started = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            started[entry["job_id"]] = datetime.fromisoformat(entry["ts"]).timestamp()
    return started


def section_dispatch(
    args: argparse.Namespace, stores: Stores, results: Results
) -> None:
    modes = (
        ("long_poll", 0.0, args.dispatch_jobs, args.dispatch_gap_ms / 1000),
        ("poll", args.poll_interval, args.poll_jobs, args.poll_gap_ms / 1000),
    )
    if args.dispatch_jobs > 0:
        floors = []
        for run in range(1, args.runs + 1):
            figures = relay_floor(args.dispatch_jobs, args.dispatch_gap_ms / 1000)
            floors.append(figures)
            say(
                f"dispatch floor run {run}/{args.runs}: p50 "
                f"{figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms"
            )
        results.details["dispatch.floor"] = floors
        for q in ("p50", "p95", "p99"):
            results.add(
                f"dispatch.floor.{q}_ms",
                f"dispatch floor {q}: submit relayed to a held call, no store",
                "ms",
                [r[f"{q}_ms"] for r in floors],
            )
    for kind in args.store_list:
        for mode, interval_s, jobs, gap_s in modes:
            if jobs <= 0:
                continue
            runs = []
            for run in range(1, args.runs + 1):
                figures = dispatch_run(args, stores, kind, interval_s, jobs, gap_s)
                runs.append(figures)
                say(
                    f"dispatch {kind} {mode} run {run}/{args.runs}: "
                    f"p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms"
                )
            base = f"dispatch.{kind}.{mode}"
            results.details[base] = runs
            label = (
                "long-poll" if mode == "long_poll" else f"POLL_INTERVAL={interval_s:g}"
            )
            for q in ("p50", "p95", "p99"):
                target = Target("<", 3.0) if (mode, q) == ("long_poll", "p99") else None
                results.add(
                    f"{base}.{q}_ms",
                    f"dispatch {q}, {label}, {jobs} jobs",
                    "ms",
                    [r[f"{q}_ms"] for r in runs],
                    target,
                )
            results.add(
                f"{base}.submit_rtt_p50_ms",
                f"SubmitJobs round trip p50 (part of the above), {label}",
                "ms",
                [r["submit_rtt_p50_ms"] for r in runs],
            )
            for q in ("p50", "p99"):
                results.add(
                    f"{base}.health_rtt_{q}_ms",
                    f"bare health-check round trip {q}, same pacing (the floor)",
                    "ms",
                    [r[f"health_rtt_{q}_ms"] for r in runs],
                )
            results.add(
                f"{base}.recorded_p50_ms",
                f"submit to step recorded by Brain p50, {label}",
                "ms",
                [r["recorded_p50_ms"] for r in runs],
            )

        long_poll = f"dispatch.{kind}.long_poll"
        poll = f"dispatch.{kind}.poll"
        if f"{long_poll}.p50_ms" in results.figures and f"{poll}.p50_ms" in (
            results.figures
        ):
            for q in ("p50", "p99"):
                ratio = (
                    results.figures[f"{poll}.{q}_ms"]["median"]
                    / results.figures[f"{long_poll}.{q}_ms"]["median"]
                )
                results.add(
                    f"dispatch.{kind}.poll_over_long_poll.{q}",
                    f"dispatch {q}: polling / long-polling",
                    "x",
                    [ratio],
                )


# --- 3. Queue depth -------------------------------------------------------------


# Untimed claims stop after this long; timed ones never number fewer than this.
WARMUP_BUDGET_S = 3.0
MIN_CLAIMS = 10

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


@dataclass(frozen=True)
class Prototype:
    """The rows SubmitJobs wrote for one probe job, to clone for a backlog."""

    job: dict[str, Any]
    steps: list[dict[str, Any]]

    @property
    def job_id(self) -> str:
        return self.job["id"]


def read_prototype(path: str, job_id: str) -> Prototype:
    conn = sqlite3.connect(path)
    try:
        conn.row_factory = sqlite3.Row
        job = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        steps = conn.execute(
            'SELECT * FROM steps WHERE job_id = ? ORDER BY "index"', (job_id,)
        ).fetchall()
    finally:
        conn.close()
    if job is None or not steps:
        raise BenchFailed(f"the probe job {job_id} is not in {path}")
    prototype = Prototype(dict(job), [dict(s) for s in steps])
    stamp = prototype.job["created_at"]
    if not isinstance(stamp, str) or not TIMESTAMP.match(stamp):
        raise BenchFailed(
            f"jobs.created_at is stored as {stamp!r}; the direct backlog insert "
            "only knows 'YYYY-MM-DD HH:MM:SS.ffffff'"
        )
    return prototype


def insert_backlog(
    path: Path, prototype: Prototype, count: int, timeout_s: float
) -> None:
    """Clone the probe's rows `count` times straight into the SQLite file.

    A column holding the probe's id, target or submit time gets the clone's;
    every other column keeps what SubmitJobs wrote. Jobs come in batches of
    1000 sharing a submit time, as SubmitJobs would store them.
    """
    job, steps = prototype.job, prototype.steps
    probe = {"id": job["id"], "target": job["target"], "now": job["created_at"]}

    def clone(row: dict[str, Any], values: dict[str, str]) -> tuple:
        out = []
        for value in row.values():
            for key, probe_value in probe.items():
                if value == probe_value:
                    value = values[key]
                    break
            out.append(value)
        return tuple(out)

    def insert_sql(table: str, row: dict[str, Any]) -> str:
        columns = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join("?" for _ in row)
        return f'INSERT INTO "{table}" ({columns}) VALUES ({marks})'

    deadline = time.monotonic() + timeout_s
    base = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    ids = sorted(str(uuid.uuid4()) for _ in range(count))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        for start in range(0, count, 10_000):
            if time.monotonic() > deadline:
                raise BenchFailed(f"inserting {count} jobs took over {timeout_s:g} s")
            job_rows, step_rows = [], []
            for i in range(start, min(start + 10_000, count)):
                stamp = base + timedelta(milliseconds=i // 1000)
                values = {
                    "id": ids[i],
                    "target": f"q{i:08d}",
                    "now": stamp.strftime("%Y-%m-%d %H:%M:%S.%f"),
                }
                job_rows.append(clone(job, values))
                step_rows.extend(clone(step, values) for step in steps)
            conn.executemany(insert_sql("jobs", job), job_rows)
            conn.executemany(insert_sql("steps", steps[0]), step_rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def measure_claims(
    brain: BrainProcess, claims: int, warmup: int, budget_s: float
) -> tuple[list[float], bool]:
    """ClaimJob(wait=0) round trips in ms, each job completed at once; and
    whether the time budget cut the timed claims short."""
    jobs = brain.jobs()
    warmup_ends = time.monotonic() + WARMUP_BUDGET_S
    for _ in range(warmup):
        _claim_and_complete(jobs)
        if time.monotonic() > warmup_ends:
            break
    latencies_ms: list[float] = []
    deadline = time.monotonic() + budget_s
    while len(latencies_ms) < claims:
        if time.monotonic() > deadline and len(latencies_ms) >= MIN_CLAIMS:
            return latencies_ms, True
        latencies_ms.append(_claim_and_complete(jobs))
    return latencies_ms, False


def _claim_and_complete(jobs: jobs_pb2_grpc.JobServiceStub) -> float:
    request = jobs_pb2.ClaimJobRequest(
        worker_id="bench-claimer", wait=Duration(seconds=0), max_jobs=1
    )
    began = time.perf_counter()
    reply = jobs.ClaimJob(request, timeout=60)
    elapsed_ms = (time.perf_counter() - began) * 1000
    if len(reply.jobs) != 1:
        raise BenchFailed(f"a claim on a full queue returned {len(reply.jobs)} jobs")
    claimed = reply.jobs[0]
    results = [
        common_pb2.StepResult(
            step_index=step.index,
            account_username=step.account_username,
            outcome=common_pb2.STEP_OUTCOME_DONE,
        )
        for step in claimed.steps
    ]
    done = jobs.CompleteJob(
        jobs_pb2.CompleteJobRequest(
            job_id=claimed.job_id,
            lease_token=claimed.lease.token,
            outcome=jobs_pb2.OUTCOME_SUCCEEDED,
            results=results,
        ),
        timeout=60,
    )
    if done.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise BenchFailed(f"job {claimed.job_id} completed as {done.state}")
    return elapsed_ms


def section_depth(args: argparse.Namespace, stores: Stores, results: Results) -> None:
    if "sqlite" not in args.store_list:
        return
    with stores.new("sqlite") as (url, workdir), ExitStack() as stack:
        brain = start_brain(url, workdir, stack)
        (probe_id,) = submit_jobs(brain, ["probe_target"])
        brain.stop()
        prototype = read_prototype(url.removeprefix("sqlite:///"), probe_id)

    medians: dict[int, float] = {}
    for depth in args.depth_list:
        with stores.new("sqlite") as (url, workdir):
            began = time.monotonic()
            insert_backlog(
                Path(url.removeprefix("sqlite:///")),
                prototype,
                depth,
                args.setup_timeout_s,
            )
            insert_s = time.monotonic() - began
            runs, p95s, cuts = [], [], 0
            for run in range(1, args.runs + 1):
                with ExitStack() as brain_stack:
                    brain = start_brain(url, workdir, brain_stack)
                    if run == 1:
                        import_accounts(brain, args.accounts)
                        stats = brain.admin().GetStats(
                            admin_pb2.GetStatsRequest(), timeout=120
                        )
                        if stats.pending != depth:
                            raise BenchFailed(
                                f"Brain sees {stats.pending} pending jobs, not {depth}"
                            )
                    latencies, cut = measure_claims(
                        brain, args.claims, args.claim_warmup, args.claim_budget_s
                    )
                    cuts += cut
                    check_alive(brain)
                    stop_cleanly(results, brain)
                runs.append(statistics.median(latencies))
                p95s.append(percentile(latencies, 95))
                say(
                    f"depth {depth} run {run}/{args.runs}: {len(latencies)} claims,"
                    f" p50 {runs[-1]:.2f} ms, p95 {p95s[-1]:.2f} ms"
                )
        note = f"{cuts}/{args.runs} runs cut by the time budget" if cuts else ""
        results.details[f"depth.sqlite.{depth}"] = {
            "insert_s": insert_s,
            "claim_p50_ms": runs,
            "claim_p95_ms": p95s,
        }
        medians[depth] = results.add(
            f"depth.sqlite.{depth}.claim_p50_ms",
            f"claim latency p50, {depth:,} pending",
            "ms",
            runs,
            note=note,
        )["median"]
        results.add(
            f"depth.sqlite.{depth}.claim_p95_ms",
            f"claim latency p95, {depth:,} pending",
            "ms",
            p95s,
        )
    if len(medians) >= 2:
        low, high = min(medians), max(medians)
        results.add(
            "depth.sqlite.ratio_deepest_over_shallowest",
            f"claim p50 ratio, {high:,} / {low:,} pending",
            "x",
            [medians[high] / medians[low]],
            Target("<=", 1.5),
        )


# --- 4. Idle fleet --------------------------------------------------------------


async def hold_long_polls(
    address: str,
    polls: int,
    per_channel: int,
    settle_s: float,
    window_s: float,
    pid: int,
) -> dict[str, float]:
    """Hold `polls` ClaimJob(wait=60 s) calls on an empty queue, `per_channel`
    on each connection (as Hands slots share one), and watch the Brain idle."""
    channels = [
        grpc.aio.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(math.ceil(polls / per_channel))
    ]
    try:
        calls = [
            jobs_pb2_grpc.JobServiceStub(channels[i // per_channel]).ClaimJob(
                jobs_pb2.ClaimJobRequest(
                    worker_id=f"idle-{i}", wait=Duration(seconds=60), max_jobs=1
                ),
                timeout=120,
            )
            for i in range(polls)
        ]

        # Settled: the Brain has taken every call in and gone quiet.
        began = time.monotonic()
        await asyncio.sleep(1.0)
        quiet = 0
        while time.monotonic() - began < settle_s and quiet < 2:
            ticks = cpu_ticks(pid)
            await asyncio.sleep(0.5)
            quiet = quiet + 1 if (cpu_ticks(pid) - ticks) / CLK_TCK < 0.02 else 0
        ticks = cpu_ticks(pid)
        window_began = time.monotonic()
        await asyncio.sleep(window_s)
        cpu_s = (cpu_ticks(pid) - ticks) / CLK_TCK
        elapsed_s = time.monotonic() - window_began
        rss_kb = proc_status_kb(pid, "VmRSS")

        ended = [c for c in calls if c.done()]
        if ended:
            code = await ended[0].code()
            raise BenchFailed(
                f"{len(ended)} of {polls} long-polls ended during the window "
                f"(first: {code})"
            )
        for call in calls:
            call.cancel()
        return {
            "brain_rss_mb": mb(rss_kb),
            "brain_cpu_pct": cpu_s / elapsed_s * 100,
            "settle_s": window_began - began,
        }
    finally:
        for channel in channels:
            await channel.close()


def section_fleet(args: argparse.Namespace, stores: Stores, results: Results) -> None:
    runs = []
    for run in range(1, args.runs + 1):
        with stores.new("sqlite") as (url, workdir), ExitStack() as stack:
            brain = start_brain(
                url,
                workdir,
                stack,
                BRAIN_MAX_CONCURRENT_POLLS=str(max(2000, 2 * args.idle_polls)),
                BRAIN_MAX_WAIT_S="60",
            )
            time.sleep(1.0)
            before_kb = proc_status_kb(brain.proc.pid, "VmRSS")
            figures = asyncio.run(
                hold_long_polls(
                    brain.address,
                    args.idle_polls,
                    args.idle_per_channel,
                    15.0,
                    args.idle_window_s,
                    brain.proc.pid,
                )
            )
            check_alive(brain)
            figures["brain_rss_before_mb"] = mb(before_kb)
            runs.append(figures)
            stop_cleanly(results, brain)
        say(
            f"idle fleet run {run}/{args.runs}: {args.idle_polls} long-polls, "
            f"Brain {figures['brain_rss_mb']:.0f} MB RSS "
            f"({figures['brain_rss_before_mb']:.0f} MB before), "
            f"{figures['brain_cpu_pct']:.1f}% CPU"
        )
    results.details["fleet.sqlite"] = runs
    label = f"{args.idle_polls} idle long-polls"
    results.add(
        "fleet.sqlite.brain_rss_mb",
        f"Brain RSS, {label}",
        "MB",
        [r["brain_rss_mb"] for r in runs],
        Target("<", 150),
    )
    results.add(
        "fleet.sqlite.brain_rss_before_mb",
        "Brain RSS before the long-polls",
        "MB",
        [r["brain_rss_before_mb"] for r in runs],
    )
    results.add(
        "fleet.sqlite.brain_cpu_pct",
        f"Brain CPU, {label}, {args.idle_window_s:g} s window",
        "% of a core",
        [r["brain_cpu_pct"] for r in runs],
        Target("<", 5),
    )


def section_hands_idle(
    args: argparse.Namespace, stores: Stores, results: Results
) -> None:
    runs = []
    with stores.new("sqlite") as (url, workdir), ExitStack() as stack:
        brain = start_brain(url, workdir, stack)
        for run in range(1, args.runs + 1):
            with ExitStack() as hands_stack:
                hands = start_hands(
                    brain,
                    workdir,
                    f"idle{run}",
                    hands_stack,
                    HANDS_CONCURRENCY=str(args.concurrency),
                )
                time.sleep(args.hands_idle_wait_s)
                check_alive(brain, hands)
                runs.append(mb(proc_status_kb(hands.proc.pid, "VmRSS")))
                stop_cleanly(results, hands)
            say(f"hands idle run {run}/{args.runs}: {runs[-1]:.0f} MB RSS")
    results.add(
        "memory.hands_idle_rss_mb",
        f"Hands idle RSS (x{args.concurrency}, after {args.hands_idle_wait_s:g} s)",
        "MB",
        runs,
        Target("<", 60),
    )


# --- Report ---------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"barter bench  commit {report['commit']}"
        f"{' (+uncommitted changes)' if report['dirty'] else ''}  "
        f"{report['started_at']}  {report['duration_s']:.0f} s"
    )
    print(
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory_mb']:,} MB, "
        f"load {' '.join(m['loadavg_at_start'])} at start; "
        f"runs per figure: {report['settings']['runs']}"
    )
    rows = [("figure", "store", "median", "min-max", "unit", "target", "")]
    for key, fig in report["figures"].items():
        store = next((s for s in ("sqlite", "postgres") if f".{s}." in key), "")
        spread = f"{fmt(fig['min'])}-{fmt(fig['max'])}" if len(fig["runs"]) > 1 else ""
        rows.append(
            (
                fig["label"] + (f" [{fig['note']}]" if fig["note"] else ""),
                store,
                fmt(fig["median"]),
                spread,
                fig["unit"],
                fig.get("target", ""),
                fig.get("verdict", ""),
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [
            str(c).ljust(w) if i in (0, 1, 4, 5, 6) else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for line in report["warnings"]:
        print(f"warning: {line}")
    for line in report["errors"]:
        print(f"ERROR: {line}")


# --- Command line ---------------------------------------------------------------


def csv_ints(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    full, quick = FULL, QUICK
    parser = argparse.ArgumentParser(
        prog="tests/bench.py",
        description=(
            "Benchmark barter through its real processes: throughput, dispatch "
            "latency, claim latency against queue depth, the cost of an idle "
            "fleet, and memory. Prints a table and writes the same figures as "
            "JSON. Figures in brackets are the full defaults, then --quick's."
        ),
    )

    def option(name: str, kind: type, help: str) -> None:
        key = name.lstrip("-").replace("-", "_")
        parser.add_argument(
            name,
            type=kind,
            default=None,
            help=f"{help} [{full[key]}; quick {quick[key]}]",
        )

    parser.add_argument(
        "--quick", action="store_true", help="a small version (about 2 minutes)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results.json"),
        help="where to write the JSON [bench-results.json]",
    )
    parser.add_argument(
        "--stores",
        default="",
        help="comma list of sqlite, postgres [both when PostgreSQL is reachable]",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"which parts to run [{','.join(SECTIONS)}]",
    )
    option("--runs", int, "runs per figure; each figure is their median")
    option("--jobs", int, "one-step jobs per throughput run")
    option("--hands", str, "Hands process counts for throughput, comma list")
    option(
        "--throughput-cap-s",
        float,
        "stop a throughput run after this long; jobs/s is then taken over the "
        "jobs done so far",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="HANDS_CONCURRENCY, jobs each Hands holds at once (its maximum) [64]",
    )
    parser.add_argument(
        "--accounts", type=int, default=2000, help="donor accounts per store [2000]"
    )
    option("--dispatch-jobs", int, "jobs submitted one by one to long-polling Hands")
    parser.add_argument(
        "--dispatch-gap-ms", type=float, default=20, help="between submits [20]"
    )
    parser.add_argument(
        "--dispatch-hands", type=int, default=2, help="idle Hands for dispatch [2]"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=5.0,
        help="POLL_INTERVAL for the fixed-interval dispatch runs [5]",
    )
    option("--poll-jobs", int, "jobs submitted one by one to polling Hands")
    parser.add_argument(
        "--poll-gap-ms",
        type=float,
        default=200,
        help="between submits to polling Hands; wide enough that the jobs span "
        "more than one poll interval [200]",
    )
    option("--depths", str, "pending-job backlogs for claim latency, comma list")
    option("--claims", int, "timed claims per depth and run")
    parser.add_argument(
        "--claim-warmup",
        type=int,
        default=20,
        help=f"untimed claims first, for at most {WARMUP_BUDGET_S:g} s [20]",
    )
    option(
        "--claim-budget-s",
        float,
        f"seconds of timed claims per depth and run, at least {MIN_CLAIMS} claims",
    )
    option("--idle-polls", int, "long-polls one client holds on an idle Brain")
    option("--idle-window-s", float, "seconds the idle Brain is watched")
    parser.add_argument(
        "--idle-per-channel",
        type=int,
        default=16,
        help="long-polls per connection, as Hands slots share one [16]",
    )
    parser.add_argument(
        "--hands-idle-wait-s",
        type=float,
        default=5.0,
        help="seconds an idle Hands runs before its RSS is read [5]",
    )
    parser.add_argument(
        "--setup-timeout-s",
        type=float,
        default=600.0,
        help="bound on inserting one backlog [600]",
    )
    parser.add_argument(
        "--py-spy",
        default="",
        help="path to a py-spy binary: record the Brain during the first "
        "throughput run of each setting, as SVGs next to --out",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep run files here (kept)"
    )
    args = parser.parse_args(argv)

    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.hands_list = csv_ints(args.hands)
    args.depth_list = sorted(csv_ints(args.depths))
    args.section_list = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.section_list) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if args.stores:
        args.store_list = [s.strip() for s in args.stores.split(",") if s.strip()]
        if set(args.store_list) - {"sqlite", "postgres"}:
            parser.error("--stores takes sqlite and/or postgres")
    else:
        args.store_list = ["sqlite", "postgres"] if postgres_reachable() else ["sqlite"]
    if args.runs < 1 or args.jobs < 2 or not args.hands_list:
        parser.error("--runs >= 1, --jobs >= 2 and at least one --hands count")
    args.profile_dir = args.out.resolve().parent
    args.profile_dir.mkdir(parents=True, exist_ok=True)
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every process started is stopped by pid.
    signal.signal(signal.SIGTERM, _interrupt)
    began = time.monotonic()
    report: dict[str, Any] = {
        "tool": "barter-bench",
        "version": 1,
        **commit(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("profile_dir",)
        },
    }
    results = Results()
    say(
        f"barter bench: commit {report['commit']}, stores {args.store_list}, "
        f"sections {args.section_list}, runs {args.runs}"
    )

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="barter-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stores = Stores(workdir)
    sections = {
        "hands-idle": section_hands_idle,
        "fleet": section_fleet,
        "dispatch": section_dispatch,
        "depth": section_depth,
        "throughput": section_throughput,
    }
    code = 0
    try:
        for name in SECTIONS:
            if name in args.section_list:
                say(f"section {name}")
                sections[name](args, stores, results)
    except BenchFailed as exc:
        results.errors.append(str(exc))
        code = 1
    except KeyboardInterrupt:
        results.errors.append("interrupted")
        code = 130
    except Exception as exc:  # noqa: BLE001 - still write what was measured
        traceback.print_exc()
        results.errors.append(f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    report["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report["duration_s"] = round(time.monotonic() - began, 1)
    report["figures"] = results.figures
    report["targets"] = {
        key: {
            "median": fig["median"],
            "target": fig["target"],
            "verdict": fig["verdict"],
        }
        for key, fig in results.figures.items()
        if "verdict" in fig
    }
    report["details"] = results.details
    report["errors"] = results.errors
    report["warnings"] = results.warnings
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
