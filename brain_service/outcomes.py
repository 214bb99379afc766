"""What Brain does with a reported outcome, decided in one place as data.

`decide_completion` turns a worker's final word into the job's next state;
`account_change` turns one step result into what happens to its account.
Neither touches the store: the store applies what they return.
"""

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from brain_service.config import BrainConfig
from brain_service.errors import InvalidArgument

PENDING, LEASED = "PENDING", "LEASED"
SUCCEEDED, FAILED, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)

ACTIVE, COOLDOWN, NEEDS_OWNER, DISABLED = (
    "ACTIVE",
    "COOLDOWN",
    "NEEDS_OWNER",
    "DISABLED",
)


@dataclass(frozen=True)
class Decision:
    """The job's next state after a completion or an expired lease."""

    state: str
    available_at: datetime | None = None
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class AccountChange:
    """What one step result does to the account that performed it."""

    state: str | None = None
    reason: str = ""
    cooldown_until: datetime | None = None
    throttle_streak: int | None = None
    acted: bool = False


def retry_delay(attempts: int, config: BrainConfig) -> timedelta:
    """Exponential backoff with jitter: half fixed, half random."""
    ceiling = min(config.retry_max_s, config.retry_base_s * 2 ** max(attempts - 1, 0))
    return timedelta(seconds=ceiling / 2 + random.uniform(0, ceiling / 2))


def decide_completion(
    outcome: str,
    unfinished_steps: list[int],
    attempts: int,
    max_attempts: int,
    cancel_requested: bool,
    error_code: str,
    error_message: str,
    config: BrainConfig,
    now: datetime,
) -> Decision:
    """The next state of a leased job whose holder reported `outcome`."""
    if outcome == "SUCCEEDED":
        if unfinished_steps:
            raise InvalidArgument(
                "outcome", f"SUCCEEDED but steps {unfinished_steps} are unfinished"
            )
        return Decision(SUCCEEDED)

    if outcome == "CANCELLED":
        if not cancel_requested:
            raise InvalidArgument("outcome", "CANCELLED but no cancel was requested")
        return Decision(CANCELLED, error_code="cancelled", error_message="cancelled")

    if outcome == "FAILED":
        return Decision(FAILED, error_code=error_code, error_message=error_message)

    # RETRY: the unfinished steps run again after a backoff, if attempts remain.
    if not unfinished_steps:
        return Decision(SUCCEEDED)
    if cancel_requested:
        return Decision(CANCELLED, error_code="cancelled", error_message="cancelled")
    if attempts >= max_attempts:
        return Decision(
            FAILED,
            error_code="attempts_exhausted",
            error_message=(
                f"gave up after {attempts} of {max_attempts} attempts; last error: "
                f"{error_code or 'none'}: {error_message}"
            )[:1000],
        )
    return Decision(
        PENDING,
        available_at=now + retry_delay(attempts, config),
        error_code=error_code,
        error_message=error_message,
    )


def decide_expired(
    attempts: int, max_attempts: int, cancel_requested: bool, now: datetime
) -> Decision:
    """The next state of a leased job whose holder missed its deadline."""
    if cancel_requested:
        return Decision(CANCELLED, error_code="cancelled", error_message="cancelled")
    if attempts >= max_attempts:
        return Decision(
            FAILED,
            error_code="lease_expired",
            error_message=(
                f"lease expired on the last of {max_attempts} attempts "
                "and no attempts remain"
            ),
        )
    return Decision(
        PENDING,
        available_at=now,
        error_code="lease_expired",
        error_message=f"lease of attempt {attempts} expired; job handed on",
    )


def account_change(
    result: str,
    error_code: str,
    error_message: str,
    throttle_streak: int,
    config: BrainConfig,
    now: datetime,
) -> AccountChange:
    """What a step result means for its account."""
    if result in ("DONE", "ALREADY_DONE"):
        return AccountChange(throttle_streak=0, acted=True)
    if result == "ACCOUNT_NEEDS_OWNER":
        reason = f"{error_code or 'needs_owner'}: {error_message}"[:256]
        return AccountChange(state=NEEDS_OWNER, reason=reason, acted=True)
    if result == "THROTTLED":
        cooldown_s = min(config.cooldown_max_s, config.cooldown_s * 2**throttle_streak)
        return AccountChange(
            state=COOLDOWN,
            reason=f"{error_code or 'throttled'}: {error_message}"[:256],
            cooldown_until=now + timedelta(seconds=cooldown_s),
            throttle_streak=throttle_streak + 1,
            acted=True,
        )
    # TARGET_INVALID and TRANSIENT say nothing about the account.
    return AccountChange(acted=True)
