"""`make demo` end to end: Brain, two dry-run Hands and barterctl as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_demo_runs_every_job_to_a_final_state(tmp_path):
    """The demo ends with every job final, the bad target failed, accounts parked."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRAIN_", "HANDS_", "BARTERCTL_", "ADMIN_API_KEY"))
    }
    env["BARTER_DEMO_DIR"] = str(tmp_path / "demo-data")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = json.loads((EXAMPLES / "jobs.json").read_text())
    succeeded = len(jobs) - 1
    assert f"[demo] jobs by state: failed 1, succeeded {succeeded}" in done.stdout
    assert "NEEDS_OWNER" in done.stdout and "COOLDOWN" in done.stdout
    assert "Traceback" not in done.stderr

    # Every process the demo started is gone: nothing holds its logs open.
    logs = list((tmp_path / "demo-data").glob("*.log"))
    assert {p.name for p in logs} >= {"brain.log", "hands-1.log", "hands-2.log"}
    for log in logs:
        lines = log.read_text().splitlines()
        if log.name.startswith("hands"):
            assert '"worker_stopped"' in lines[-1], lines[-3:]


def test_example_jobs_fit_the_example_workforce():
    """The example jobs need no more accounts than stay healthy in the dry run."""
    jobs = json.loads((EXAMPLES / "jobs.json").read_text())
    accounts = json.loads((EXAMPLES / "accounts.json").read_text())
    rules = json.loads((EXAMPLES / "dry_run_rules.json").read_text())
    sizes = {"free_test": 1, "small": 3, "standard": 5}

    assert len(jobs) >= 20
    targets = [job["target"] for job in jobs]
    assert len(set(targets)) == len(targets) and "no_such_user_zz" in targets
    assert {job["tier"] for job in jobs} == set(sizes)

    usernames = {account["username"] for account in accounts}
    assert {"demo_throttled", "demo_challenged"} <= usernames
    assert all("password" not in account for account in accounts)
    healthy = usernames - set(rules["accounts"])
    assert max(sizes[job["tier"]] for job in jobs) <= len(healthy)
    assert rules["targets"] == {"no_such_user_zz": "TARGET_INVALID"}
