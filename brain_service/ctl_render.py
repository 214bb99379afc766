"""How barterctl shows jobs, accounts and queue statistics to people.

Everything here turns wire messages into rich tables, plain lines or JSON; none
of it talks to the Brain. `barterctl` (brain_service/ctl.py) decides what to
fetch and hands the replies over.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from barter.v1 import admin_pb2, common_pb2

FINAL_JOB_STATES = frozenset(
    {
        common_pb2.JOB_STATE_SUCCEEDED,
        common_pb2.JOB_STATE_FAILED,
        common_pb2.JOB_STATE_CANCELLED,
    }
)

# Order in which job states are counted and listed, pipeline first.
JOB_STATE_ORDER = (
    common_pb2.JOB_STATE_PENDING,
    common_pb2.JOB_STATE_LEASED,
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
)

JOB_STATE_STYLE = {
    common_pb2.JOB_STATE_PENDING: "yellow",
    common_pb2.JOB_STATE_LEASED: "cyan",
    common_pb2.JOB_STATE_SUCCEEDED: "green",
    common_pb2.JOB_STATE_FAILED: "red",
    common_pb2.JOB_STATE_CANCELLED: "magenta",
}

ACCOUNT_STATE_STYLE = {
    common_pb2.ACCOUNT_STATE_ACTIVE: "green",
    common_pb2.ACCOUNT_STATE_COOLDOWN: "yellow",
    common_pb2.ACCOUNT_STATE_NEEDS_OWNER: "red",
    common_pb2.ACCOUNT_STATE_DISABLED: "dim",
}

# Wide enough that job ids and reasons are not wrapped when output is piped.
PIPED_CONSOLE_WIDTH = 200


class _Console(Console):
    """A rich Console that leaves a closed pipe to barterctl's main()."""

    def on_broken_pipe(self) -> None:
        # rich would exit with status 1 here, which barterctl keeps for errors.
        self.quiet = True
        raise BrokenPipeError


def make_console(stderr: bool = False) -> Console:
    """A console for stdout (or stderr) that does not wrap tables when piped."""
    console = _Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPED_CONSOLE_WIDTH
    return console


# Names and times


def job_state_name(state: int) -> str:
    """JOB_STATE_SUCCEEDED -> SUCCEEDED."""
    return _short_enum_name(common_pb2.JobState, state, "JOB_STATE_")


def account_state_name(state: int) -> str:
    """ACCOUNT_STATE_NEEDS_OWNER -> NEEDS_OWNER."""
    return _short_enum_name(common_pb2.AccountState, state, "ACCOUNT_STATE_")


def action_name(action: int) -> str:
    """ACTION_FOLLOW -> follow."""
    return _short_enum_name(common_pb2.Action, action, "ACTION_").lower()


def step_outcome_name(outcome: int) -> str:
    """STEP_OUTCOME_THROTTLED -> THROTTLED; unfinished steps show as '-'."""
    if outcome == common_pb2.STEP_OUTCOME_UNSPECIFIED:
        return "-"
    return _short_enum_name(common_pb2.StepOutcome, outcome, "STEP_OUTCOME_")


def _short_enum_name(enum_type: object, value: int, prefix: str) -> str:
    try:
        name = enum_type.Name(value)  # type: ignore[attr-defined]
    except ValueError:
        return str(value)
    return name.removeprefix(prefix)


def timestamp_text(message: Message, field: str, now: datetime | None = None) -> str:
    """A set Timestamp field as 'HH:MM:SSZ (in 4m)'; an unset one as ''."""
    if not message.HasField(field):
        return ""
    moment = getattr(message, field).ToDatetime(tzinfo=UTC)
    now = now or datetime.now(UTC)
    if abs(moment - now) < timedelta(hours=20):
        clock = moment.strftime("%H:%M:%SZ")
    else:
        clock = moment.strftime("%Y-%m-%d %H:%MZ")
    return f"{clock} ({relative_text(moment - now)})"


def relative_text(delta: timedelta) -> str:
    """+90 s -> 'in 1m30s'; -5 s -> '5s ago'."""
    seconds = int(delta.total_seconds())
    text = duration_text(abs(seconds))
    if seconds == 0:
        return "now"
    return f"in {text}" if seconds > 0 else f"{text} ago"


def duration_text(seconds: float) -> str:
    """3725 -> '1h2m5s'."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# JSON


def message_dict(message: Message) -> dict[str, object]:
    """A wire message as JSON-ready data, with the .proto field names."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def print_json(data: object) -> None:
    """Pretty JSON on stdout, for --json."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def print_json_line(data: object) -> None:
    """One compact JSON document per line, for streams (--json watch)."""
    sys.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# Jobs


def _job_note(job: common_pb2.Job) -> str:
    """The one thing worth knowing about a job besides its state."""
    if job.cancel_requested and job.state not in FINAL_JOB_STATES:
        return "cancel requested"
    if job.state == common_pb2.JOB_STATE_PENDING and job.pending_reason:
        return job.pending_reason
    if job.last_error_code or job.last_error_message:
        return ": ".join(p for p in (job.last_error_code, job.last_error_message) if p)
    return job.progress_message


def _state_text(job: common_pb2.Job) -> Text:
    return Text(job_state_name(job.state), style=JOB_STATE_STYLE.get(job.state, ""))


def jobs_table(jobs: Sequence[common_pb2.Job], title: str | None = None) -> Table:
    """Jobs one per row: id, state, target, steps, attempts, note."""
    now = datetime.now(UTC)
    table = Table(title=title, title_justify="left")
    table.add_column("job id", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("action")
    table.add_column("target", no_wrap=True)
    table.add_column("tier")
    table.add_column("steps", justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("updated", no_wrap=True)
    table.add_column("note", overflow="fold")
    for job in jobs:
        table.add_row(
            job.job_id,
            _state_text(job),
            action_name(job.action),
            job.target,
            job.tier,
            f"{job.steps_done}/{job.steps_total}",
            f"{job.attempts}/{job.max_attempts}",
            timestamp_text(job, "updated_at", now),
            _job_note(job),
        )
    return table


def submitted_table(submitted: Sequence[admin_pb2.SubmittedJob]) -> Table:
    """Jobs just submitted, marking those an idempotency key already knew."""
    table = Table()
    table.add_column("job id", no_wrap=True)
    table.add_column("submit")
    table.add_column("state")
    table.add_column("action")
    table.add_column("target", no_wrap=True)
    table.add_column("tier")
    table.add_column("idempotency key", overflow="fold")
    for item in submitted:
        job = item.job
        table.add_row(
            job.job_id,
            "created" if item.created else Text("existing", style="yellow"),
            _state_text(job),
            action_name(job.action),
            job.target,
            job.tier,
            job.idempotency_key,
        )
    return table


def job_detail(job: common_pb2.Job) -> Group:
    """One job's fields, then its steps."""
    now = datetime.now(UTC)
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column(overflow="fold")
    rows: list[tuple[str, str | Text]] = [
        ("job id", job.job_id),
        ("state", _state_text(job)),
        ("action", action_name(job.action)),
        ("target", job.target),
        ("tier", f"{job.tier} (priority {job.priority})"),
        ("steps", f"{job.steps_done}/{job.steps_total} done"),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("progress", job.progress_message),
        ("pending reason", job.pending_reason),
        (
            "last error",
            ": ".join(p for p in (job.last_error_code, job.last_error_message) if p),
        ),
        ("worker", job.worker_id),
        ("lease deadline", timestamp_text(job, "lease_deadline", now)),
        ("cancel requested", "yes" if job.cancel_requested else ""),
        ("idempotency key", job.idempotency_key),
        ("created", timestamp_text(job, "created_at", now)),
        ("updated", timestamp_text(job, "updated_at", now)),
        ("available", timestamp_text(job, "available_at", now)),
        ("finished", timestamp_text(job, "finished_at", now)),
    ]
    for name, value in rows:
        if value:
            fields.add_row(name, value)
    return Group(fields, Text(""), steps_table(job.steps))


def steps_table(steps: Iterable[common_pb2.Step]) -> Table:
    """A job's steps: which account, with what outcome."""
    table = Table(title="steps", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("account", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("error", overflow="fold")
    for step in steps:
        outcome = step_outcome_name(step.outcome)
        style = {"DONE": "green", "ALREADY_DONE": "green", "-": "dim"}.get(
            outcome, "red"
        )
        table.add_row(
            str(step.index),
            step.account_username or Text("unassigned", style="dim"),
            Text(outcome, style=style),
            ": ".join(p for p in (step.error_code, step.error_message) if p),
        )
    return table


def job_line(job: common_pb2.Job) -> str:
    """A job in one plain line, for logs and pipes."""
    parts = [
        datetime.now(UTC).strftime("%H:%M:%SZ"),
        job.job_id,
        job_state_name(job.state),
        f"{action_name(job.action)} {job.target}",
        job.tier,
        f"{job.steps_done}/{job.steps_total}",
    ]
    note = _job_note(job)
    if note:
        parts.append(f"({note})")
    return " ".join(parts)


def state_counts(jobs: Iterable[common_pb2.Job]) -> dict[str, int]:
    """{'PENDING': 2, 'SUCCEEDED': 7, ...} in pipeline order, zeros left out."""
    counts = Counter(job.state for job in jobs)
    ordered = [s for s in JOB_STATE_ORDER if counts[s]]
    ordered += sorted(s for s in counts if s not in JOB_STATE_ORDER)
    return {job_state_name(state): counts[state] for state in ordered}


def counts_text(counts: dict[str, int]) -> str:
    """'succeeded 7 · failed 1'."""
    return " · ".join(f"{name.lower()} {n}" for name, n in counts.items())


def watch_summary(jobs: Sequence[common_pb2.Job], unseen_ids: Sequence[str]) -> Group:
    """What a watch ended with: jobs per state and every job that did not succeed."""
    counts = state_counts(jobs)
    table = Table(title=f"{len(jobs)} jobs", title_justify="left")
    table.add_column("state")
    table.add_column("jobs", justify="right")
    for name, n in counts.items():
        table.add_row(name, str(n))
    if unseen_ids:
        table.add_row(Text("NOT SEEN", style="red"), str(len(unseen_ids)))
    parts: list[object] = [table]
    unhappy = [j for j in jobs if j.state != common_pb2.JOB_STATE_SUCCEEDED]
    if unhappy:
        parts.append(jobs_table(unhappy[:50], title="jobs that did not succeed"))
        if len(unhappy) > 50:
            parts.append(Text(f"... and {len(unhappy) - 50} more"))
    return Group(*parts)


class WatchDisplay:
    """Shows watched jobs as they change.

    On a terminal: one progress bar per job when a few are watched, else one
    bar of final jobs over all jobs. Elsewhere (pipes, logs): one line per change.
    """

    PER_JOB_BAR_LIMIT = 10

    def __init__(self, console: Console, job_ids: Sequence[str]) -> None:
        self._console = console
        self._job_ids = list(job_ids)
        self._live = console.is_terminal
        self._per_job = 0 < len(job_ids) <= self.PER_JOB_BAR_LIMIT
        self._seen: dict[str, tuple[int, int, bool]] = {}
        self._tasks: dict[str, TaskID] = {}
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._overall: TaskID | None = None

    def __enter__(self) -> WatchDisplay:
        if not self._live:
            return self
        if self._per_job:
            for job_id in self._job_ids:
                self._tasks[job_id] = self._progress.add_task(
                    f"{job_id[:8]} waiting for Brain", total=None
                )
        else:
            total = len(self._job_ids) or None
            self._overall = self._progress.add_task("final jobs", total=total)
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live:
            self._progress.stop()

    def update(self, jobs: dict[str, common_pb2.Job]) -> None:
        """Redraw after `jobs` (every job seen so far, by id) changed."""
        if not self._live:
            return
        if self._per_job:
            for job_id, task in self._tasks.items():
                job = jobs.get(job_id)
                if job is None:
                    continue
                style = JOB_STATE_STYLE.get(job.state, "default")
                state = job_state_name(job.state)
                self._progress.update(
                    task,
                    description=(
                        f"{job.job_id[:8]} {action_name(job.action)} {job.target:<20}"
                        f" {job.tier:<10} [{style}]{state:<9}[/]"
                    ),
                    total=max(job.steps_total, 1),
                    completed=job.steps_done,
                )
            return
        final = sum(1 for j in jobs.values() if j.state in FINAL_JOB_STATES)
        total = len(self._job_ids) or len(jobs)
        self._progress.update(
            self._overall,  # type: ignore[arg-type]
            description=f"final jobs [dim]({counts_text(state_counts(jobs.values()))})",
            total=max(total, 1),
            completed=final,
        )

    def changed(self, job: common_pb2.Job) -> None:
        """Note one event; off a terminal, print it when something moved."""
        # Pending reasons change with every claim elsewhere; only moves count.
        key = (job.state, job.steps_done, job.cancel_requested)
        if self._seen.get(job.job_id) == key:
            return
        self._seen[job.job_id] = key
        if not self._live:
            self._console.print(job_line(job), markup=False, soft_wrap=True)


# Accounts


def accounts_table(accounts: Sequence[common_pb2.Account]) -> Table:
    """Accounts one per row with what keeps them from working, if anything."""
    now = datetime.now(UTC)
    table = Table()
    table.add_column("username", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("reason", overflow="fold")
    table.add_column("cooldown until", no_wrap=True)
    table.add_column("last hour", justify="right")
    table.add_column("last day", justify="right")
    table.add_column("busy with job", no_wrap=True)
    table.add_column("login", no_wrap=True)
    for account in accounts:
        login = [
            name
            for name, present in (
                ("password", account.has_password),
                ("session", account.has_session),
            )
            if present
        ]
        table.add_row(
            account.username,
            Text(
                account_state_name(account.state),
                style=ACCOUNT_STATE_STYLE.get(account.state, ""),
            ),
            account.state_reason,
            timestamp_text(account, "cooldown_until", now),
            str(account.actions_last_hour),
            str(account.actions_last_day),
            account.busy_job_id,
            "+".join(login) or Text("none", style="dim"),
        )
    return table


def account_line(account: common_pb2.Account) -> str:
    """An account in one plain line."""
    state = account_state_name(account.state)
    reason = f" ({account.state_reason})" if account.state_reason else ""
    return f"account {account.username}: {state}{reason}"


def import_table(rows: Sequence[tuple[str, str, str]]) -> Table:
    """Import results: where in the file, which username, what happened."""
    table = Table()
    table.add_column("where", no_wrap=True)
    table.add_column("username", no_wrap=True)
    table.add_column("result", overflow="fold")
    for where, username, result in rows:
        style = {"created": "green", "updated": "cyan", "unchanged": "dim"}.get(
            result, "red"
        )
        table.add_row(where, username, Text(result, style=style))
    return table


# Stats


def stats_table(stats: admin_pb2.QueueStats) -> Table:
    """Queue statistics as one two-column table."""
    table = Table(show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    oldest = stats.oldest_due_age.ToTimedelta().total_seconds()
    table.add_row("jobs pending", str(stats.pending))
    table.add_row("  due now", str(stats.due))
    table.add_row("  waiting for workforce", str(stats.waiting_for_workforce))
    table.add_row("  oldest due", duration_text(oldest) if oldest else "-")
    table.add_row("jobs leased", str(stats.leased))
    table.add_row("jobs succeeded", Text(str(stats.succeeded), style="green"))
    table.add_row("jobs failed", Text(str(stats.failed), style="red"))
    table.add_row("jobs cancelled", str(stats.cancelled))
    table.add_section()
    table.add_row("accounts active", str(stats.accounts_active))
    table.add_row("  busy", str(stats.accounts_busy))
    table.add_row("accounts cooling down", str(stats.accounts_cooldown))
    table.add_row("accounts needing owner", str(stats.accounts_needs_owner))
    table.add_row("accounts disabled", str(stats.accounts_disabled))
    table.add_section()
    table.add_row("step attempts last hour", str(stats.actions_last_hour))
    if stats.HasField("server_time"):
        table.add_row(
            "server time",
            stats.server_time.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        )
    return table
