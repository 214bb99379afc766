"""Hands' small parts on their own: outcome decision, backoff, dry-run, config, CLI."""

import asyncio
import json
import sys

import pytest
import structlog

from barter.v1 import jobs_pb2
from hands_service import cli, logs
from hands_service.brain_client import Backoff
from hands_service.config import ConfigError, HandsConfig, load_config
from hands_service.dry_run import DryRunExecutor, DryRunRules
from hands_service.executor import AccountSession, JobContext, StepOutcome, StepReport
from hands_service.worker import JobFacts, decide_outcome

pytestmark = pytest.mark.timeout(10)

BRIEF_RULES = {
    "delay_s": 0.2,
    "accounts": {
        "demo_throttled": "THROTTLED",
        "demo_challenged": "ACCOUNT_NEEDS_OWNER",
    },
    "targets": {"no_such_user_zz": "TARGET_INVALID"},
}


@pytest.fixture(autouse=True)
def _default_structlog():
    yield
    structlog.reset_defaults()


def reports(*outcomes: StepOutcome) -> tuple[StepReport, ...]:
    return tuple(StepReport(o, error_code=o.name.lower()) for o in outcomes)


# --- decide_outcome ------------------------------------------------------------


def test_every_step_done_or_already_done_succeeds():
    """All claimed steps DONE or ALREADY_DONE => SUCCEEDED."""
    facts = JobFacts(2, reports(StepOutcome.DONE, StepOutcome.ALREADY_DONE))
    assert decide_outcome(facts).outcome == jobs_pb2.OUTCOME_SUCCEEDED


def test_an_invalid_target_fails_the_job_with_its_error_code():
    """A TARGET_INVALID step => FAILED carrying that step's error code."""
    facts = JobFacts(3, reports(StepOutcome.DONE, StepOutcome.TARGET_INVALID))
    verdict = decide_outcome(facts)
    assert verdict.outcome == jobs_pb2.OUTCOME_FAILED
    assert verdict.error_code == "target_invalid"


@pytest.mark.parametrize(
    "outcome",
    [StepOutcome.THROTTLED, StepOutcome.ACCOUNT_NEEDS_OWNER, StepOutcome.TRANSIENT],
)
def test_a_retryable_step_outcome_sends_the_job_back_for_retry(outcome):
    """THROTTLED / ACCOUNT_NEEDS_OWNER / TRANSIENT => RETRY with that cause."""
    verdict = decide_outcome(JobFacts(2, reports(outcome, StepOutcome.DONE)))
    assert verdict.outcome == jobs_pb2.OUTCOME_RETRY
    assert verdict.error_code == outcome.name.lower()


def test_cancel_wins_over_unfinished_and_failed_steps():
    """A cancel request => CANCELLED unless every step already finished."""
    unfinished = JobFacts(3, reports(StepOutcome.DONE), cancel_requested=True)
    assert decide_outcome(unfinished).outcome == jobs_pb2.OUTCOME_CANCELLED
    finished = JobFacts(1, reports(StepOutcome.DONE), cancel_requested=True)
    assert decide_outcome(finished).outcome == jobs_pb2.OUTCOME_SUCCEEDED


def test_a_lost_lease_is_never_completed():
    """Lease lost => no CompleteJob at all, whatever the steps did."""
    facts = JobFacts(1, reports(StepOutcome.DONE), lease_lost=True, shutting_down=True)
    assert decide_outcome(facts).outcome is None


def test_shutdown_hands_an_unfinished_job_back_as_worker_shutdown():
    """Shutting down mid-job => RETRY with error_code worker_shutdown."""
    facts = JobFacts(3, reports(StepOutcome.THROTTLED), shutting_down=True)
    verdict = decide_outcome(facts)
    assert verdict.outcome == jobs_pb2.OUTCOME_RETRY
    assert verdict.error_code == "worker_shutdown"


# --- backoff -------------------------------------------------------------------


def test_backoff_is_full_jitter_doubling_to_a_cap_and_resets():
    """Delays stay within [0, min(cap, initial * 2**n)] and restart after reset."""
    backoff = Backoff(0.2, 15.0)
    for n in range(12):
        assert 0 <= backoff.next_delay_s() <= min(15.0, 0.2 * 2**n)
    backoff.reset()
    assert backoff.next_delay_s() <= 0.2
    spread = {round(Backoff(1.0, 1.0).next_delay_s(), 6) for _ in range(50)}
    assert len(spread) > 40


# --- dry run -------------------------------------------------------------------


def test_dry_run_rules_from_the_brief_parse_and_target_rules_win():
    """The briefing's rules parse; a target rule beats an account rule."""
    rules = DryRunRules.from_json(json.dumps(BRIEF_RULES))
    assert rules.delay_s == 0.2
    assert rules.outcome_for("demo_throttled", "x") is StepOutcome.THROTTLED
    assert rules.outcome_for("demo_challenged", "x") is StepOutcome.ACCOUNT_NEEDS_OWNER
    assert (
        rules.outcome_for("demo_throttled", "no_such_user_zz")
        is StepOutcome.TARGET_INVALID
    )
    assert rules.outcome_for("anyone", "anybody") is StepOutcome.DONE


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"accounts": {"a": "EXPLODED"}}',
        '{"targets": ["a"]}',
        '{"delay_s": -1}',
        '{"delays": 1}',
    ],
)
def test_bad_dry_run_rules_are_a_config_error_naming_the_setting(text):
    """Malformed rules raise ConfigError that names HANDS_DRY_RUN_RULES."""
    with pytest.raises(ConfigError, match="HANDS_DRY_RUN_RULES"):
        DryRunRules.from_json(text)


def test_dry_run_ledger_gets_one_fsynced_line_per_done_step_only(tmp_path):
    """DONE steps append a JSON line to the ledger; other outcomes write nothing."""
    ledger = tmp_path / "effects.jsonl"
    rules = DryRunRules.from_json(json.dumps({**BRIEF_RULES, "delay_s": 0}))
    executor = DryRunExecutor(delay_s=9.0, rules=rules, ledger_path=str(ledger))
    job = JobContext(job_id="j1", target="someone")

    async def act():
        return [
            await executor.follow(job, AccountSession("alice")),
            await executor.unfollow(job, AccountSession("bob")),
            await executor.follow(job, AccountSession("demo_throttled")),
        ]

    done, undone, throttled = asyncio.run(act())
    assert done.outcome is undone.outcome is StepOutcome.DONE
    assert throttled.outcome is StepOutcome.THROTTLED
    assert throttled.error_code == "dry_run_throttled"
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(e["account"], e["action"]) for e in lines] == [
        ("alice", "follow"),
        ("bob", "unfollow"),
    ]
    assert set(lines[0]) == {"job_id", "account", "target", "action", "ts"}


# --- config and CLI --------------------------------------------------------------


def test_config_reads_the_environment_and_flags_override_it():
    """Environment values apply, and a flag beats its environment variable."""
    env = {"HANDS_CONCURRENCY": "3", "POLL_INTERVAL": "2.5", "BRAIN_URL": "h:1"}
    config = load_config(env, {"concurrency": "5"})
    assert config.concurrency == 5
    assert config.poll_interval_s == 2.5
    assert config.brain_url == "h:1"
    assert load_config({}) == HandsConfig()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HANDS_CONCURRENCY": "zero"}, "HANDS_CONCURRENCY"),
        ({"HANDS_CONCURRENCY": "0"}, "HANDS_CONCURRENCY"),
        ({"POLL_INTERVAL": "-1"}, "POLL_INTERVAL"),
        ({"HANDS_EXECUTOR": "selenium"}, "HANDS_EXECUTOR"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ],
)
def test_unusable_settings_are_refused_by_name(env, named):
    """A bad value raises ConfigError naming its environment variable."""
    with pytest.raises(ConfigError, match=named):
        load_config(env)


def test_help_shows_every_option_with_its_variable_and_default(capsys):
    """`barter-hands run --help` names each setting's env variable and default."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for env, default in [
        ("BRAIN_URL", "'127.0.0.1:50051'"),
        ("HANDS_CONCURRENCY", "1"),
        ("POLL_INTERVAL", "0.0"),
        ("HANDS_CLAIM_WAIT_S", "30.0"),
        ("HANDS_EXECUTOR", "'dry-run'"),
        ("HANDS_DRY_RUN_DELAY_S", "0.2"),
        ("HANDS_DRY_RUN_RULES", "''"),
        ("HANDS_DRY_RUN_LEDGER", "''"),
        ("HANDS_DRAIN_TIMEOUT_S", "60.0"),
        ("HANDS_API_KEY", "<unset>"),
        ("LOG_FORMAT", "'auto'"),
        ("LOG_LEVEL", "'info'"),
    ]:
        assert f"env {env}, default {default}]" in text


def test_a_missing_instagram_executor_is_a_one_line_error(monkeypatch, capsys):
    """HANDS_EXECUTOR=instagram without its module exits 2 with one clear line."""
    monkeypatch.setitem(sys.modules, "hands_service.instagram", None)
    monkeypatch.setenv("HANDS_EXECUTOR", "instagram")
    assert cli.main(["run", "--log-format", "json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("barter-hands: HANDS_EXECUTOR=instagram")


def test_a_bad_flag_value_exits_2_naming_the_setting(capsys):
    """An unusable option value exits 2 with a message naming its variable."""
    assert cli.main(["run", "--concurrency", "0"]) == 2
    assert "HANDS_CONCURRENCY" in capsys.readouterr().err


def test_json_logs_go_to_stderr_one_object_per_line(capsys):
    """LOG_FORMAT=json writes one JSON object per event to stderr."""
    logs.configure("json", "info")
    logger = structlog.get_logger("test")
    logger.debug("hidden_event")
    logger.info("job_claimed", job_id="j1")
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    event = json.loads(line)
    assert event["event"] == "job_claimed" and event["job_id"] == "j1"
    assert event["level"] == "info"
