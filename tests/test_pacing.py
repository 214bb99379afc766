"""Per-account pacing is enforced when the Brain assigns the workforce."""

from harness import add_accounts, submit
from test_leases import claim, complete, get

from barter.v1 import admin_pb2


def test_an_account_at_its_hourly_limit_is_not_assigned(make_brain):
    """With one action an hour allowed, an account's second job waits for another."""
    brain = make_brain(BRAIN_ACCOUNT_MAX_PER_HOUR="1", BRAIN_ACCOUNT_MIN_GAP_S="0")
    add_accounts(brain, "alice")
    submit(brain, ["target1"])
    (first,) = claim(brain)
    complete(brain, first)
    (waiting,) = submit(brain, ["target2"])

    assert claim(brain, wait_s=0.3) == []
    assert (
        get(brain, waiting).pending_reason == "waiting for accounts: 1 needed, 0 free"
    )
    (account,) = brain.admin().ListAccounts(admin_pb2.ListAccountsRequest()).accounts
    assert account.actions_last_hour == 1 and account.actions_last_day == 1

    add_accounts(brain, "bob")
    (second,) = claim(brain, wait_s=5)
    assert second.job_id == waiting
    assert [s.account_username for s in second.steps] == ["bob"]


def test_an_account_at_its_daily_limit_is_not_assigned(make_brain):
    """The daily limit holds even when the hourly one would allow more."""
    brain = make_brain(
        BRAIN_ACCOUNT_MAX_PER_HOUR="10",
        BRAIN_ACCOUNT_MAX_PER_DAY="2",
        BRAIN_ACCOUNT_MIN_GAP_S="0",
    )
    add_accounts(brain, "alice")
    for target in ("target1", "target2"):
        submit(brain, [target])
        (job,) = claim(brain, wait_s=5)
        complete(brain, job)
    submit(brain, ["target3"])

    assert claim(brain, wait_s=0.3) == []


def test_an_account_rests_its_minimum_gap_between_actions(make_brain):
    """After acting, an account is not assigned again until the gap has passed."""
    brain = make_brain(BRAIN_ACCOUNT_MIN_GAP_S="1.5", BRAIN_WORKFORCE_RECHECK_S="0.2")
    add_accounts(brain, "alice")
    submit(brain, ["target1"])
    (first,) = claim(brain)
    complete(brain, first)
    (job_id,) = submit(brain, ["target2"])

    assert claim(brain, wait_s=0.5) == []
    (second,) = claim(brain, wait_s=5)
    assert second.job_id == job_id


def test_a_repeatedly_throttled_account_cools_down_longer_each_time(make_brain):
    """Each throttle in a row doubles the cooldown; a success resets it."""
    from barter.v1 import common_pb2, jobs_pb2

    brain = make_brain(BRAIN_COOLDOWN_S="0.4", BRAIN_ACCOUNT_MIN_GAP_S="0")
    add_accounts(brain, "alice")

    def run_once(target, outcome):
        submit(brain, [target])
        (job,) = claim(brain, wait_s=5)
        result = common_pb2.StepResult(
            step_index=0, account_username="alice", outcome=outcome
        )
        verdict = (
            jobs_pb2.OUTCOME_SUCCEEDED
            if outcome == common_pb2.STEP_OUTCOME_DONE
            else jobs_pb2.OUTCOME_FAILED
        )
        complete(brain, job, verdict, [result])
        (account,) = (
            brain.admin().ListAccounts(admin_pb2.ListAccountsRequest()).accounts
        )
        rest = account.cooldown_until.ToMilliseconds() - (
            account.state_changed_at.ToMilliseconds()
        )
        return account.state, rest

    throttled = common_pb2.STEP_OUTCOME_THROTTLED
    first = run_once("target1", throttled)
    second = run_once("target2", throttled)
    run_once("target3", common_pb2.STEP_OUTCOME_DONE)
    after_success = run_once("target4", throttled)

    assert first == (common_pb2.ACCOUNT_STATE_COOLDOWN, 400)
    assert second == (common_pb2.ACCOUNT_STATE_COOLDOWN, 800)
    assert after_success == (common_pb2.ACCOUNT_STATE_COOLDOWN, 400)
