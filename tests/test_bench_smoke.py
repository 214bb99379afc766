"""`make bench` at its smallest: the tool runs end to end and writes its JSON.

Only the tool's working is checked, never a speed: the figures depend on the
machine and on the code being measured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SMALLEST = [
    "--quick",
    "--stores=sqlite",
    "--runs=1",
    "--jobs=100",
    "--hands=1",
    "--concurrency=4",
    "--accounts=200",
    "--throughput-cap-s=10",
    "--dispatch-jobs=5",
    "--dispatch-hands=1",
    "--poll-jobs=2",
    "--poll-interval=0.3",
    "--poll-gap-ms=50",
    "--depths=50,200",
    "--claims=10",
    "--claim-warmup=2",
    "--claim-budget-s=2",
    "--idle-polls=20",
    "--idle-window-s=0.5",
    "--hands-idle-wait-s=0.5",
]

FIGURES = [
    "throughput.sqlite.hands_1.jobs_per_s",
    "throughput.sqlite.best.jobs_per_s",
    "memory.sqlite.hands_1.brain_peak_rss_mb",
    "memory.sqlite.hands_1.hands_peak_rss_mb",
    "dispatch.floor.p50_ms",
    "dispatch.floor.p99_ms",
    "dispatch.sqlite.long_poll.p50_ms",
    "dispatch.sqlite.long_poll.p95_ms",
    "dispatch.sqlite.long_poll.p99_ms",
    "dispatch.sqlite.poll.p50_ms",
    "dispatch.sqlite.poll.p99_ms",
    "dispatch.sqlite.poll_over_long_poll.p50",
    "dispatch.sqlite.poll_over_long_poll.p99",
    "depth.sqlite.50.claim_p50_ms",
    "depth.sqlite.200.claim_p50_ms",
    "depth.sqlite.ratio_deepest_over_shallowest",
    "fleet.sqlite.brain_rss_mb",
    "fleet.sqlite.brain_cpu_pct",
    "memory.hands_idle_rss_mb",
]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_smallest_bench_writes_every_figure_as_json(tmp_path):
    """The smallest bench exits 0, prints its table and writes all figures as JSON."""
    out = tmp_path / "bench.json"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRAIN_", "HANDS_", "ADMIN_", "LOG_", "DATABASE_URL"))
    }
    bench = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "bench.py"),
            *SMALLEST,
            f"--out={out}",
            f"--workdir={tmp_path / 'runs'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        stdout, stderr = bench.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the bench then stops the processes it started.
        bench.send_signal(signal.SIGTERM)
        stdout, stderr = bench.communicate(timeout=60)
        pytest.fail(f"the bench outlived 90 s:\n{stderr[-3000:]}")
    assert bench.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "jobs/s" in stdout and "Traceback" not in stderr

    report = json.loads(out.read_text())
    assert report["errors"] == []
    assert report["commit"] and report["settings"]["runs"] == 1
    assert {"nproc", "cpu_model", "memory_mb"} <= report["machine"].keys()
    for key in FIGURES:
        figure = report["figures"][key]
        assert figure["median"] is not None, key
        assert figure["min"] <= figure["median"] <= figure["max"], key
        assert len(figure["runs"]) == 1, key
    for key, target in report["targets"].items():
        assert target["verdict"] in ("PASS", "MISS"), key
