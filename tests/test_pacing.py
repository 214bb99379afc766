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
