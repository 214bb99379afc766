"""barterctl against a real Brain: a subprocess per command, as an operator runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from certs import make_pki
from harness import BIN, HandsProcess, free_port

from brain_service import ctl

ADMIN_KEY = "test-admin-key-0123456789"
HANDS_KEY = "test-hands-key-0123456789"
CTL_TIMEOUT_S = 60


@pytest.fixture
def store_kind() -> str:
    """barterctl is tested on SQLite only: the store is not what is under test."""
    return "sqlite"


@pytest.fixture
def secret_key() -> str:
    out = subprocess.run(
        [BIN / "barter-brain", "keygen"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


@pytest.fixture
def brain(make_brain, secret_key):
    """A fresh Brain that needs the admin key and can store secrets."""
    return make_brain(
        ADMIN_API_KEY=ADMIN_KEY, HANDS_API_KEY=HANDS_KEY, BRAIN_SECRET_KEY=secret_key
    )


def _ctl_env(address: str, key: str | None = ADMIN_KEY, **extra: str) -> dict[str, str]:
    """The caller's environment less anything barterctl reads, plus these."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRAIN_", "ADMIN_API_KEY", "BARTERCTL_"))
        and k != "COLUMNS"
    }
    env["BRAIN_URL"] = address
    if key is not None:
        env["ADMIN_API_KEY"] = key
    return {**env, **extra}


def run_ctl(
    brain,
    *args: str,
    stdin: str | None = None,
    key: str | None = ADMIN_KEY,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the installed barterctl; a traceback is always a failure."""
    address = brain if isinstance(brain, str) else brain.address
    done = subprocess.run(
        [BIN / "barterctl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_ctl_env(address, key, **(env or {})),
        cwd=cwd,
        timeout=CTL_TIMEOUT_S,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def ctl_json(brain, *args: str, **kwargs) -> dict:
    done = run_ctl(brain, "--json", *args, **kwargs)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("barterctl: "), lines[0]
    return lines[0]


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


# Jobs


def test_submit_get_list_cancel_retry_round_trip(brain):
    """A job submitted from flags can be read, listed, cancelled and retried."""
    submitted = ctl_json(
        brain, "submit", "--target", "Some.Target", "--tier", "small",
        "--idempotency-key", "round-trip-1", "--max-attempts", "7",
    )  # fmt: skip
    (item,) = submitted["jobs"]
    assert item["created"] is True
    job_id = item["job"]["job_id"]
    assert item["job"]["target"] == "some.target"
    assert item["job"]["state"] == "JOB_STATE_PENDING"

    job = ctl_json(brain, "jobs", "get", job_id)
    assert job["max_attempts"] == 7 and job["steps_total"] == 3
    assert len(job["steps"]) == 3

    listed = ctl_json(brain, "jobs", "list", "--state", "pending", "--tier", "small")
    assert [j["job_id"] for j in listed["jobs"]] == [job_id]

    cancelled = ctl_json(brain, "jobs", "cancel", job_id)
    assert cancelled["state"] == "JOB_STATE_CANCELLED"
    retried = ctl_json(brain, "jobs", "retry", job_id)
    assert retried["state"] == "JOB_STATE_PENDING"


def test_tables_for_people(brain):
    """Without --json the commands print tables naming the job and its steps."""
    done = run_ctl(brain, "submit", "--target", "table_target", "--tier", "small")
    assert done.returncode == 0, done.stderr
    assert "table_target" in done.stdout and "1 created" in done.stdout
    job_id = ctl_json(brain, "jobs", "list")["jobs"][0]["job_id"]

    shown = run_ctl(brain, "jobs", "get", job_id)
    assert shown.returncode == 0, shown.stderr
    assert job_id in shown.stdout and "steps" in shown.stdout
    assert "unassigned" in shown.stdout

    listed = run_ctl(brain, "jobs", "list")
    assert job_id in listed.stdout and "PENDING" in listed.stdout

    stats = run_ctl(brain, "stats")
    assert stats.returncode == 0 and "jobs pending" in stats.stdout


def test_same_idempotency_key_returns_the_first_job(brain):
    """Resubmitting an idempotency key reports the stored job as not created."""
    args = ("submit", "--target", "idem_target", "--tier", "free_test")
    first = ctl_json(brain, *args, "--idempotency-key", "same-key")
    again = ctl_json(brain, *args, "--idempotency-key", "same-key")
    assert again["jobs"][0]["created"] is False
    assert again["jobs"][0]["job"]["job_id"] == first["jobs"][0]["job"]["job_id"]


def test_submit_file_json_and_csv(brain, tmp_path):
    """Jobs come from a JSON list or a CSV file, all of them submitted."""
    jobs = [
        {"action": "follow", "target": f"json_target_{i}", "tier": "free_test"}
        for i in range(5)
    ]
    jobs.append({"action": "unfollow", "target": "json_unfollow", "tier": "small"})
    done = ctl_json(
        brain, "submit", "--file", str(write_json(tmp_path / "j.json", jobs))
    )
    assert len(done["jobs"]) == 6
    assert done["jobs"][5]["job"]["action"] == "ACTION_UNFOLLOW"

    csv_file = tmp_path / "jobs.csv"
    csv_file.write_text(
        "action,target,tier,idempotency_key\n"
        "follow,csv_one,free_test,csv-1\n"
        "\n"
        "unfollow,csv_two,standard,csv-2\n"
    )
    quiet = run_ctl(brain, "submit", "--file", str(csv_file), "-q")
    assert quiet.returncode == 0, quiet.stderr
    ids = quiet.stdout.split()
    assert len(ids) == 2
    assert ctl_json(brain, "jobs", "get", ids[1])["steps_total"] == 5

    piped = run_ctl(
        brain, "submit", "--file", "-", "--format", "csv", "-q",
        stdin=csv_file.read_text(),
    )  # fmt: skip
    assert piped.stdout.split() == ids  # the same idempotency keys
    unformatted = run_ctl(brain, "submit", "--file", "-", stdin="[]")
    assert unformatted.returncode == 2
    assert "needs --format" in one_error_line(unformatted)


def test_bad_job_file_rows_reported_by_line_and_nothing_sent(brain, tmp_path):
    """Every bad record is named by file line and field; no job is submitted."""
    path = tmp_path / "jobs.json"
    path.write_text(
        "[\n"
        '  {"target": "fine_target", "tier": "small"},\n'
        '  {"target": "bad target!", "tier": "small"},\n'
        '  {"action": "like", "target": "ok_target", "tier": "small"},\n'
        '  {"target": "no_tier"}\n'
        "]\n"
    )
    done = run_ctl(brain, "submit", "--file", str(path))
    assert done.returncode == 2
    errors = done.stderr.splitlines()
    assert f"barterctl: {path}:3 (item 2): target: must be 1-30" in errors[0]
    assert f"{path}:4 (item 3): action:" in errors[1]
    assert f"{path}:5 (item 4): tier: missing" in errors[2]
    assert errors[-1] == "barterctl: nothing was submitted"
    assert ctl_json(brain, "jobs", "list")["jobs"] == []


def test_unknown_tier_in_file_points_at_the_line(brain, tmp_path):
    """The Brain's INVALID_ARGUMENT for one job of a batch names that job's line."""
    path = tmp_path / "jobs.csv"
    path.write_text("target,tier\nfirst_one,small\nsecond_one,gold\n")
    done = run_ctl(brain, "submit", "--file", str(path))
    assert done.returncode == 2
    line = one_error_line(done)
    assert line.startswith(f"barterctl: INVALID_ARGUMENT: {path}:3: tier: unknown tier")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("--target", "has space", "--tier", "small"), "target: must be 1-30"),
        (("--target", "x" * 31, "--tier", "small"), "target: must be 1-30"),
        (("--target", "fine", "--tier", "gold"), "INVALID_ARGUMENT: tier: unknown"),
        (
            ("--target", "fine", "--tier", "small", "--max-attempts", "101"),
            "max_attempts: must be",
        ),
        (("--target", "fine"), "needs --target and --tier"),
        (("--target", "fine", "--tier", "small", "--action", "like"), "--action"),
    ],
)
def test_bad_submit_exits_2_with_one_line_naming_the_field(brain, args, field):
    """Bad input from flags ends with status 2 and one line naming what is wrong."""
    done = run_ctl(brain, "submit", *args)
    assert done.returncode == 2
    assert field in one_error_line(done)


def test_unknown_and_malformed_job_ids(brain):
    """NOT_FOUND exits 1, a malformed id exits 2; one line each."""
    missing = run_ctl(brain, "jobs", "get", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 1
    assert one_error_line(missing).startswith("barterctl: NOT_FOUND: job_id: no job")

    malformed = run_ctl(brain, "jobs", "cancel", "not-a-uuid")
    assert malformed.returncode == 2
    assert "INVALID_ARGUMENT: job_id:" in one_error_line(malformed)


def test_retry_of_a_pending_job_is_refused(brain):
    """Retrying a job that is not FAILED or CANCELLED fails with one line."""
    job_id = ctl_json(brain, "submit", "--target", "pending_one", "--tier", "small")[
        "jobs"
    ][0]["job"]["job_id"]
    done = run_ctl(brain, "jobs", "retry", job_id)
    assert done.returncode == 1
    assert "FAILED_PRECONDITION" in one_error_line(done)


def test_list_filters_and_pages(brain):
    """jobs list filters by target and continues from a page token."""
    for i in range(5):
        ctl_json(brain, "submit", "--target", f"page_{i}", "--tier", "free_test")
    first = ctl_json(brain, "jobs", "list", "--limit", "2")
    assert len(first["jobs"]) == 2 and first["next_page_token"]
    rest = ctl_json(
        brain, "jobs", "list", "--limit", "10", "--page-token", first["next_page_token"]
    )
    assert len(rest["jobs"]) == 3 and rest["next_page_token"] == ""
    targets = [j["target"] for j in first["jobs"] + rest["jobs"]]
    assert sorted(targets) == [f"page_{i}" for i in range(5)]

    only = ctl_json(brain, "jobs", "list", "--target", "page_3")
    assert [j["target"] for j in only["jobs"]] == ["page_3"]
    table = run_ctl(brain, "jobs", "list", "--limit", "2")
    assert "--page-token" in table.stdout


def test_big_file_goes_in_batches_and_list_follows_pages(brain, tmp_path):
    """2001 jobs go in three SubmitJobs calls; list --limit fetches page after page."""
    jobs = [{"target": f"bulk_{i}", "tier": "free_test"} for i in range(2001)]
    path = write_json(tmp_path / "bulk.json", jobs)
    done = run_ctl(brain, "submit", "--file", str(path))
    assert done.returncode == 0, done.stderr
    assert "2001 created" in done.stdout and "1951 more not shown" in done.stdout

    listed = ctl_json(brain, "jobs", "list", "--limit", "2001")
    assert len({j["job_id"] for j in listed["jobs"]}) == 2001
    assert listed["next_page_token"] == ""
    assert int(ctl_json(brain, "stats")["pending"]) == 2001


def test_stats_json(brain):
    """stats --json carries the QueueStats fields under their .proto names."""
    ctl_json(brain, "submit", "--target", "stats_target", "--tier", "small")
    stats = ctl_json(brain, "stats")
    assert int(stats["pending"]) == 1
    assert "accounts_needs_owner" in stats and "server_time" in stats


# Connection and credentials


def test_connection_refused_is_one_line_naming_the_url():
    """With nothing listening, barterctl says so in one line naming the address."""
    address = f"127.0.0.1:{free_port()}"
    expected = f"barterctl: cannot reach the Brain at {address}: connection refused"
    for command in (["stats"], ["jobs", "watch"], ["jobs", "list"]):
        done = run_ctl(address, *command)
        assert done.returncode == 1
        assert one_error_line(done) == expected


def test_flags_win_over_the_environment(brain):
    """--brain and --admin-key override BRAIN_URL and ADMIN_API_KEY."""
    wrong = f"127.0.0.1:{free_port()}"
    done = run_ctl(wrong, "--brain", brain.address, "--admin-key", ADMIN_KEY, "stats")
    assert done.returncode == 0, done.stderr


def test_missing_admin_key_is_refused(brain):
    """Without the admin key the Brain refuses and barterctl says how to fix it."""
    done = run_ctl(brain, "stats", key=None)
    assert done.returncode == 1
    line = one_error_line(done)
    assert "UNAUTHENTICATED" in line and "ADMIN_API_KEY" in line


# Accounts


def test_accounts_import_reports_bad_rows_by_line(brain, tmp_path):
    """Bad CSV rows are reported by line and skipped; the good ones are stored."""
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    (sessions / "carol.json").write_text('{"uuids": {"phone_id": "x"}}')
    (sessions / "broken.json").write_text("not json")
    path = tmp_path / "accounts.csv"
    path.write_text(
        "username,password,session_file\n"
        "alice,pw-alice,\n"
        "bad name!,pw,\n"
        "carol,,sessions/carol.json\n"
        "dave,,sessions/missing.json\n"
        "erin,,sessions/broken.json\n"
        "Alice,again,\n"
        "frank,,\n"
    )
    done = run_ctl(brain, "accounts", "import", str(path))
    assert done.returncode == 2
    errors = done.stderr.splitlines()
    assert len(errors) == 4
    assert errors[0].startswith(f"barterctl: {path}:3: skipped: username: must be")
    assert errors[1].startswith(f"barterctl: {path}:5: skipped:")
    assert "missing.json: cannot read" in errors[1]
    assert errors[2].startswith(f"barterctl: {path}:6: skipped:")
    assert "not a JSON settings object" in errors[2]
    assert f"{path}:7: skipped: username: Alice already at {path}:2" in errors[3]
    assert "3 created" in done.stdout and "4 skipped" in done.stdout

    accounts = ctl_json(brain, "accounts", "list")["accounts"]
    by_name = {a["username"]: a for a in accounts}
    assert sorted(by_name) == ["alice", "carol", "frank"]
    assert by_name["alice"]["has_password"] and not by_name["alice"]["has_session"]
    assert by_name["carol"]["has_session"] and not by_name["carol"]["has_password"]
    assert by_name["frank"]["state"] == "ACCOUNT_STATE_ACTIVE"


def test_accounts_import_json_with_settings(brain, tmp_path):
    """A JSON import takes settings inline; a non-object item is named by line."""
    path = tmp_path / "accounts.json"
    path.write_text(
        "[\n"
        '  {"username": "gina", "settings": {"cookies": {}}},\n'
        '  "henry",\n'
        '  {"username": "ivan", "pasword": "typo"},\n'
        '  {"username": "judy"}\n'
        "]\n"
    )
    done = run_ctl(brain, "--json", "accounts", "import", str(path))
    assert done.returncode == 2
    report = json.loads(done.stdout)
    assert [r["username"] for r in report["rows"]] == ["gina", "judy"]
    assert [s["where"] for s in report["skipped"]] == [
        f"{path}:3 (item 2)",
        f"{path}:4 (item 3)",
    ]
    assert "pasword: unknown field" in report["skipped"][1]["error"]

    again = run_ctl(brain, "accounts", "import", str(path))
    assert "unchanged" in again.stdout


def test_accounts_add_list_and_reset(brain, tmp_path):
    """accounts add reads the password from stdin; reset returns ACTIVE."""
    settings = write_json(tmp_path / "s.json", {"uuids": {}})
    done = run_ctl(
        brain, "--json", "accounts", "add", "Kim.Donor", "--password-stdin",
        "--settings-file", str(settings), stdin="s3cret pass\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    account = json.loads(done.stdout)
    assert account["username"] == "kim.donor"
    assert account["has_password"] and account["has_session"]
    assert "s3cret" not in done.stdout + done.stderr

    table = run_ctl(brain, "accounts", "list", "--state", "active")
    assert "kim.donor" in table.stdout and "password+session" in table.stdout
    assert ctl_json(brain, "accounts", "list", "--state", "needs_owner") == {
        "accounts": [],
        "next_page_token": "",
    }

    reset = ctl_json(brain, "accounts", "reset", "kim.donor")
    assert reset["state"] == "ACCOUNT_STATE_ACTIVE"
    unknown = run_ctl(brain, "accounts", "reset", "nobody_here")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in one_error_line(unknown)


def test_password_is_never_a_flag_value(brain):
    """--password takes no value, so a password can't land in shell history."""
    done = run_ctl(brain, "accounts", "add", "lee", "--password", "hunter2")
    assert done.returncode == 2
    assert "unrecognized arguments: hunter2" in one_error_line(done)
    empty = run_ctl(brain, "accounts", "add", "lee", "--password-stdin", stdin="")
    assert empty.returncode == 2
    assert "no password on standard input" in one_error_line(empty)


# Watching


def test_watch_until_final_ends_when_jobs_are_cancelled(brain):
    """watch --until-final exits 0 with a summary once every job is final."""
    ids = [
        ctl_json(brain, "submit", "--target", f"watch_{i}", "--tier", "free_test")[
            "jobs"
        ][0]["job"]["job_id"]
        for i in range(2)
    ]
    watcher = subprocess.Popen(
        [BIN / "barterctl", "jobs", "watch", "--until-final", *ids],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ctl_env(brain.address),
    )
    try:
        time.sleep(1.0)
        assert watcher.poll() is None, watcher.communicate()
        for job_id in ids:
            assert run_ctl(brain, "jobs", "cancel", job_id).returncode == 0
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(5)
    assert watcher.returncode == 0, err
    assert "CANCELLED" in out and "2 jobs" in out
    # Off a terminal, each change is one plain line.
    assert f"{ids[0]} PENDING follow watch_0 free_test 0/1" in out
    assert f"{ids[0]} CANCELLED follow watch_0 free_test 0/1" in out


def test_watch_json_lines_and_summary(brain):
    """--json watch prints one JSON event per line, then a summary line."""
    job_id = ctl_json(brain, "submit", "--target", "json_watch", "--tier", "small")[
        "jobs"
    ][0]["job"]["job_id"]
    ctl_json(brain, "jobs", "cancel", job_id)
    done = run_ctl(brain, "--json", "jobs", "watch", "--until-final", job_id)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["job"]["job_id"] == job_id
    assert lines[-1]["summary"]["by_state"] == {"CANCELLED": 1}


def test_watch_without_ids_until_final_watches_unfinished_jobs(brain):
    """Without ids, --until-final waits for the jobs unfinished at the start."""
    none = run_ctl(brain, "jobs", "watch", "--until-final")
    assert none.returncode == 0 and "no unfinished jobs" in none.stdout

    job_id = ctl_json(brain, "submit", "--target", "lone_job", "--tier", "small")[
        "jobs"
    ][0]["job"]["job_id"]
    gave_up = run_ctl(brain, "jobs", "watch", "--until-final", "--max-wait-s", "1.5")
    assert gave_up.returncode == 1
    assert "gave up after 1.5 s" in gave_up.stderr
    assert job_id in gave_up.stdout or "PENDING" in gave_up.stdout


def test_watch_unknown_job_fails(brain):
    """Watching an id the Brain does not know fails at once with NOT_FOUND."""
    done = run_ctl(
        brain, "jobs", "watch", "--until-final", "00000000-0000-4000-8000-00000000000a"
    )
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr.splitlines()[-1]


@pytest.mark.slow
def test_watch_follows_real_workers_to_the_end(brain, tmp_path):
    """With dry-run Hands working, watch --until-final sees every job finish."""
    ctl_json(brain, "accounts", "import", str(_donors(tmp_path, 4)))
    jobs = [{"target": f"busy_{i}", "tier": "small"} for i in range(4)]
    jobs.append({"target": "no_such_user_zz", "tier": "free_test"})
    submitted = ctl_json(
        brain, "submit", "--file", str(write_json(tmp_path / "j.json", jobs))
    )
    ids = [item["job"]["job_id"] for item in submitted["jobs"]]
    rules = write_json(
        tmp_path / "rules.json",
        {"delay_s": 0.05, "targets": {"no_such_user_zz": "TARGET_INVALID"}},
    )
    hands = HandsProcess(
        tmp_path,
        brain,
        "w1",
        HANDS_API_KEY=HANDS_KEY,
        HANDS_DRY_RUN_RULES=str(rules),
        HANDS_CONCURRENCY="2",
    ).start()
    try:
        done = run_ctl(
            brain, "jobs", "watch", "--until-final", "--max-wait-s", "45", *ids
        )
    finally:
        hands.stop()
    assert done.returncode == 0, done.stderr + hands.log_tail()
    assert "SUCCEEDED" in done.stdout and "jobs that did not succeed" in done.stdout
    states = {j["target"]: j["state"] for j in ctl_json(brain, "jobs", "list")["jobs"]}
    assert states.pop("no_such_user_zz") == "JOB_STATE_FAILED"
    assert set(states.values()) == {"JOB_STATE_SUCCEEDED"}


def _donors(tmp_path: Path, count: int) -> Path:
    return write_json(
        tmp_path / "donors.json", [{"username": f"donor_{i}"} for i in range(count)]
    )


# In-process: help and usage


COMMANDS = [
    [],
    ["submit"],
    ["jobs"],
    ["jobs", "list"],
    ["jobs", "get"],
    ["jobs", "watch"],
    ["jobs", "cancel"],
    ["jobs", "retry"],
    ["accounts"],
    ["accounts", "add"],
    ["accounts", "import"],
    ["accounts", "list"],
    ["accounts", "reset"],
    ["stats"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "barterctl")
def test_every_help_names_the_environment_and_defaults(command, capsys):
    """--help on every command names BRAIN_URL, ADMIN_API_KEY and their defaults."""
    assert ctl.main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "BRAIN_URL" in out and "127.0.0.1:50051" in out
    assert "ADMIN_API_KEY" in out and "BARTERCTL_TIMEOUT_S" in out
    assert "exit status" in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["jobs"],
        ["jobs", "list", "--state", "sleeping"],
        ["jobs", "list", "--limit", "0"],
        ["--timeout-s", "-1", "stats"],
        ["submit", "--file", "/nonexistent/jobs.json"],
        ["accounts", "import", "/nonexistent/accounts.txt"],
        ["--brain", "ftp://brain.example:21", "stats"],
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, capsys):
    """Bad usage is one line on stderr and exit status 2, never a traceback."""
    assert ctl.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("barterctl: ")


def test_global_options_work_after_the_command(capsys, monkeypatch):
    """--brain given after the command name is honoured like before it."""
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("BRAIN_URL", "127.0.0.1:1")
    assert ctl.main(["jobs", "list", "--brain", address]) == 1
    assert address in capsys.readouterr().err


def test_interrupted_watch_stops_cleanly(brain):
    """Ctrl-C during a watch of everything ends it with a summary, no traceback."""
    watcher = subprocess.Popen(
        [BIN / "barterctl", "jobs", "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ctl_env(brain.address),
    )
    try:
        time.sleep(1.5)
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=15)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(5)
    assert watcher.returncode == 0, err
    assert "Traceback" not in err and "0 jobs" in out


def test_mutual_tls_brain_with_ca_client_cert_and_key_file(make_brain, tmp_path):
    """Over mutual TLS, barterctl uses BRAIN_TLS_* files and ADMIN_API_KEY_FILE."""
    pki = make_pki(tmp_path / "pki")
    brain = make_brain(
        ADMIN_API_KEY=ADMIN_KEY,
        HANDS_API_KEY=HANDS_KEY,
        BRAIN_TLS_CERT_FILE=str(pki.server_cert),
        BRAIN_TLS_KEY_FILE=str(pki.server_key),
        BRAIN_TLS_CLIENT_CA_FILE=str(pki.ca),
    )
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY + "\n")
    env = {"ADMIN_API_KEY_FILE": str(key_file)}

    plaintext = run_ctl(brain, "stats", key=None, env=env)
    assert plaintext.returncode == 1
    one_error_line(plaintext)

    env["BRAIN_TLS_CA_FILE"] = str(pki.ca)
    no_client_cert = run_ctl(brain, "stats", key=None, env=env)
    assert no_client_cert.returncode == 1
    one_error_line(no_client_cert)

    env["BRAIN_TLS_CLIENT_CERT_FILE"] = str(pki.client_cert)
    half = run_ctl(brain, "stats", key=None, env=env)
    assert half.returncode == 2
    assert "go together" in one_error_line(half)

    env["BRAIN_TLS_CLIENT_KEY_FILE"] = str(pki.client_key)
    done = run_ctl(brain, "--json", "stats", key=None, env=env)
    assert done.returncode == 0, done.stderr
    assert "pending" in json.loads(done.stdout)


def test_module_runs_as_a_script():
    """python -m brain_service.ctl behaves as the console script."""
    done = subprocess.run(
        [sys.executable, "-m", "brain_service.ctl", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and "barterctl" in done.stdout
