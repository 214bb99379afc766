"""An executor that acts on nothing: outcomes come from a rules file.

It is the default executor, for demos and tests. It opens no network
connection. Each step takes a configurable delay and ends with the outcome
the rules give its target or account (target rules win), DONE otherwise.
With a ledger path, every effect it "performs" (a DONE step) is appended
to that file as one JSON line, on disk before the step returns, so a test
can count effects across crashes and restarts.
"""

import asyncio
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hands_service.config import ConfigError
from hands_service.executor import (
    AccountSession,
    Executor,
    JobContext,
    StepOutcome,
    StepReport,
)


@dataclass(frozen=True)
class DryRunRules:
    """Outcomes per account and per target; anything not listed is DONE."""

    delay_s: float | None = None
    accounts: dict[str, StepOutcome] = field(default_factory=dict)
    targets: dict[str, StepOutcome] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str, origin: str = "rules") -> "DryRunRules":
        """Parse the rules JSON; raises ConfigError naming what is wrong."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"HANDS_DRY_RUN_RULES: {origin} is not JSON: {exc}"
            ) from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"HANDS_DRY_RUN_RULES: {origin} must be a JSON object")
        unknown = set(raw) - {"delay_s", "accounts", "targets"}
        if unknown:
            raise ConfigError(
                f"HANDS_DRY_RUN_RULES: {origin} has unknown keys {sorted(unknown)}"
            )
        delay_s = raw.get("delay_s")
        if delay_s is not None and (
            isinstance(delay_s, bool)
            or not isinstance(delay_s, int | float)
            or delay_s < 0
        ):
            raise ConfigError(
                f"HANDS_DRY_RUN_RULES: {origin}: delay_s must be a number >= 0"
            )
        return cls(
            delay_s=None if delay_s is None else float(delay_s),
            accounts=_outcomes(raw.get("accounts", {}), f"{origin}: accounts"),
            targets=_outcomes(raw.get("targets", {}), f"{origin}: targets"),
        )

    @classmethod
    def from_file(cls, path: str) -> "DryRunRules":
        """Read the rules file at `path`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"HANDS_DRY_RUN_RULES: cannot read {path}: {exc}"
            ) from exc
        return cls.from_json(text, origin=path)

    def outcome_for(self, account: str, target: str) -> StepOutcome:
        """The outcome of `account` acting on `target`."""
        if target in self.targets:
            return self.targets[target]
        return self.accounts.get(account, StepOutcome.DONE)


def _outcomes(raw: object, where: str) -> dict[str, StepOutcome]:
    if not isinstance(raw, dict):
        raise ConfigError(f"HANDS_DRY_RUN_RULES: {where} must be an object")
    table: dict[str, StepOutcome] = {}
    for username, name in raw.items():
        try:
            table[username] = StepOutcome[name]
        except (KeyError, TypeError):
            choices = ", ".join(o.name for o in StepOutcome)
            raise ConfigError(
                f"HANDS_DRY_RUN_RULES: {where}: {username!r} has outcome {name!r};"
                f" expected one of {choices}"
            ) from None
    return table


class DryRunExecutor(Executor):
    """Pretends to act: waits, then reports the outcome the rules give."""

    def __init__(
        self,
        delay_s: float = 0.2,
        rules: DryRunRules | None = None,
        ledger_path: str = "",
    ) -> None:
        self.rules = rules or DryRunRules()
        self.delay_s = delay_s if self.rules.delay_s is None else self.rules.delay_s
        self.ledger_path = ledger_path

    async def follow(self, job: JobContext, account: AccountSession) -> StepReport:
        """Pretend `account` follows `job.target`."""
        return await self._act(job, account, "follow")

    async def unfollow(self, job: JobContext, account: AccountSession) -> StepReport:
        """Pretend `account` unfollows `job.target`."""
        return await self._act(job, account, "unfollow")

    async def _act(
        self, job: JobContext, account: AccountSession, action: str
    ) -> StepReport:
        await asyncio.sleep(self.delay_s)
        outcome = self.rules.outcome_for(account.username, job.target)
        if outcome is StepOutcome.DONE:
            # No await between the effect and the return: a cancelled step has
            # either been written to the ledger and reported, or neither.
            self._record_effect(job, account, action)
            return StepReport(outcome)
        return StepReport(
            outcome,
            error_code=f"dry_run_{outcome.name.lower()}",
            error_message=f"dry-run rule: {outcome.name} for {account.username}"
            f" acting on {job.target}",
        )

    def _record_effect(
        self, job: JobContext, account: AccountSession, action: str
    ) -> None:
        if not self.ledger_path:
            return
        entry = {
            "job_id": job.job_id,
            "account": account.username,
            "target": job.target,
            "action": action,
            # Microseconds: the benchmark times dispatch against this stamp.
            "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
        }
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()

        # One write() on an O_APPEND descriptor keeps lines from several
        # processes whole; fsync puts it on disk before the step counts as done.
        fd = os.open(self.ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
