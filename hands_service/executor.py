"""The seam between the worker loop and whatever performs a step.

The worker knows nothing about Instagram: it hands each step to an
`Executor` and reports the `StepReport` it gets back. An executor never
raises for a failed step; every failure is an outcome from DESIGN.md's table.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field

from barter.v1 import common_pb2


class StepOutcome(enum.IntEnum):
    """A step's result; values are the wire enum's."""

    DONE = common_pb2.STEP_OUTCOME_DONE
    ALREADY_DONE = common_pb2.STEP_OUTCOME_ALREADY_DONE
    ACCOUNT_NEEDS_OWNER = common_pb2.STEP_OUTCOME_ACCOUNT_NEEDS_OWNER
    THROTTLED = common_pb2.STEP_OUTCOME_THROTTLED
    TARGET_INVALID = common_pb2.STEP_OUTCOME_TARGET_INVALID
    TRANSIENT = common_pb2.STEP_OUTCOME_TRANSIENT

    @property
    def finished(self) -> bool:
        """True when the step needs no further attempt."""
        return self in (StepOutcome.DONE, StepOutcome.ALREADY_DONE)


@dataclass(frozen=True)
class StepReport:
    """What happened when one account performed one step."""

    outcome: StepOutcome
    # Short machine-readable cause, e.g. "challenge_required"; at most 64 chars.
    error_code: str = ""
    # Human-readable detail, never a secret; at most 1000 chars.
    error_message: str = ""


@dataclass
class AccountSession:
    """Everything needed to act as one donor account."""

    username: str
    # instagrapi settings as UTF-8 JSON; empty when the account has none yet.
    settings: bytes = b""
    password: str = field(default="", repr=False)


@dataclass
class JobContext:
    """One claimed job as an executor sees it."""

    job_id: str
    target: str
    # Executor-private memo for the life of the job, e.g. the resolved
    # target id, so that the target is looked up once per job.
    scratch: dict[str, object] = field(default_factory=dict)


class Executor(abc.ABC):
    """Performs steps. One instance serves every job of a worker process."""

    @abc.abstractmethod
    async def follow(self, job: JobContext, account: AccountSession) -> StepReport:
        """Make `account` follow `job.target`."""

    @abc.abstractmethod
    async def unfollow(self, job: JobContext, account: AccountSession) -> StepReport:
        """Make `account` stop following `job.target`."""

    def take_refreshed_sessions(self) -> list[AccountSession]:
        """Sessions changed since the last call (e.g. after a fresh login).

        The worker sends them to Brain with its next progress update.
        """
        return []

    async def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release clients and connections."""
