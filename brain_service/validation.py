"""Turning request messages into store values, or InvalidArgument naming the field.

Every limit a field comment in the .proto files promises is checked here.
"""

import json
import re
import uuid
from collections.abc import Sequence

from barter.v1 import admin_pb2, common_pb2, jobs_pb2
from brain_service.config import Tier
from brain_service.errors import InvalidArgument
from brain_service.store import (
    AccountIn,
    CompletionIn,
    JobSpecIn,
    SessionIn,
    StepResultIn,
)

USERNAME = re.compile(r"[A-Za-z0-9._]{1,30}")
TOKEN = re.compile(r"[0-9a-f]{32}")
PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")

MAX_SUBMIT_BATCH = 1000
MAX_IMPORT_BATCH = 1000
MAX_WATCH_IDS = 1000
MAX_CLAIM_BATCH = 64
MAX_COMPLETION_BATCH = 256
MAX_PAGE_SIZE = 500
MAX_PASSWORD_CHARS = 256
MAX_SETTINGS_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 1000
MAX_ERROR_CODE_CHARS = 64
MAX_WORKER_ID_CHARS = 128

ACTIONS = {common_pb2.ACTION_FOLLOW: "follow", common_pb2.ACTION_UNFOLLOW: "unfollow"}
STEP_OUTCOMES = {
    value: name.removeprefix("STEP_OUTCOME_")
    for name, value in common_pb2.StepOutcome.items()
    if value != common_pb2.STEP_OUTCOME_UNSPECIFIED
}
OUTCOMES = {
    value: name.removeprefix("OUTCOME_")
    for name, value in jobs_pb2.Outcome.items()
    if value != jobs_pb2.OUTCOME_UNSPECIFIED
}
JOB_STATES = {
    value: name.removeprefix("JOB_STATE_")
    for name, value in common_pb2.JobState.items()
    if value != common_pb2.JOB_STATE_UNSPECIFIED
}
ACCOUNT_STATES = {
    value: name.removeprefix("ACCOUNT_STATE_")
    for name, value in common_pb2.AccountState.items()
    if value != common_pb2.ACCOUNT_STATE_UNSPECIFIED
}


def username(value: str, field: str) -> str:
    if not USERNAME.fullmatch(value):
        raise InvalidArgument(
            field,
            "must be 1-30 characters of letters, digits, '.' and '_'"
            + (f" (got {len(value)} characters)" if len(value) > 30 else ""),
        )
    return value.lower()


def job_id(value: str, field: str = "job_id") -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(field, "must be a job id (a UUID)") from None
    if len(value) != 36:
        raise InvalidArgument(field, "must be a job id in canonical 36-character form")
    return str(parsed)


def lease_token(value: str, field: str = "lease_token") -> str:
    if not TOKEN.fullmatch(value):
        raise InvalidArgument(field, "must be the 32 hex characters from the claim")
    return value


def bounded_text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(field, f"at most {limit} characters (got {len(value)})")
    if any(ch in value for ch in "\x00"):
        raise InvalidArgument(field, "must not contain NUL characters")
    return value


def page_size(value: int, default: int, field: str = "page_size") -> int:
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument(field, f"must be 0-{MAX_PAGE_SIZE} (got {value})")
    return value or default


def enum_values(values: Sequence[int], names: dict[int, str], field: str) -> list[str]:
    out = []
    for i, value in enumerate(values):
        if value not in names:
            raise InvalidArgument(f"{field}[{i}]", f"unknown value {value}")
        out.append(names[value])
    return out


def settings_json(value: bytes, field: str) -> bytes:
    if len(value) > MAX_SETTINGS_BYTES:
        raise InvalidArgument(
            field, f"at most {MAX_SETTINGS_BYTES} bytes (got {len(value)})"
        )
    if value:
        try:
            parsed = json.loads(value)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise InvalidArgument(field, "must be UTF-8 JSON, sanely nested") from None
        if not isinstance(parsed, dict):
            raise InvalidArgument(field, "must be a JSON object")
    return value


# JobService


def claim_request(
    request: jobs_pb2.ClaimJobRequest, max_wait_s: float
) -> tuple[str, float, int]:
    """worker_id, wait in seconds (capped), max_jobs."""
    worker = request.worker_id
    if not worker:
        raise InvalidArgument("worker_id", "is required")
    if len(worker) > MAX_WORKER_ID_CHARS or not PRINTABLE_ASCII.fullmatch(worker):
        raise InvalidArgument(
            "worker_id", f"must be 1-{MAX_WORKER_ID_CHARS} printable ASCII characters"
        )
    wait = request.wait
    if wait.seconds < 0 or wait.nanos < 0:
        raise InvalidArgument("wait", "must not be negative")
    if not 0 <= wait.nanos < 1_000_000_000:
        raise InvalidArgument("wait", "nanos must be 0-999999999")
    wait_s = min(wait.seconds + wait.nanos / 1e9, max_wait_s)
    if not 0 <= request.max_jobs <= MAX_CLAIM_BATCH:
        raise InvalidArgument("max_jobs", f"must be 0-{MAX_CLAIM_BATCH}")
    return worker, wait_s, request.max_jobs or 1


def step_results(
    results: Sequence[common_pb2.StepResult], field: str
) -> list[StepResultIn]:
    out = []
    for i, result in enumerate(results):
        where = f"{field}[{i}]"
        if result.step_index < 0 or result.step_index >= 100:
            raise InvalidArgument(f"{where}.step_index", "must be 0-99")
        if result.outcome not in STEP_OUTCOMES:
            raise InvalidArgument(f"{where}.outcome", "must be a known step outcome")
        out.append(
            StepResultIn(
                step_index=result.step_index,
                account_username=username(
                    result.account_username, f"{where}.account_username"
                ),
                outcome=STEP_OUTCOMES[result.outcome],
                error_code=bounded_text(
                    result.error_code, f"{where}.error_code", MAX_ERROR_CODE_CHARS
                ),
                error_message=bounded_text(
                    result.error_message, f"{where}.error_message", MAX_MESSAGE_CHARS
                ),
            )
        )
    return out


def refreshed_sessions(
    sessions: Sequence[common_pb2.AccountSession], field: str
) -> list[SessionIn]:
    out = []
    for i, session in enumerate(sessions):
        where = f"{field}[{i}]"
        if session.password:
            raise InvalidArgument(
                f"{where}.password", "workers send settings only, never passwords"
            )
        out.append(
            SessionIn(
                username=username(session.username, f"{where}.username"),
                settings=settings_json(session.settings, f"{where}.settings"),
            )
        )
    return out


def progress_update(request: jobs_pb2.ProgressUpdate) -> dict:
    """Keyword arguments for Store.renew_lease, less `now`."""
    return {
        "job_id": job_id(request.job_id),
        "token": lease_token(request.lease_token),
        "message": bounded_text(request.message, "message", MAX_MESSAGE_CHARS),
        "results": step_results(request.results, "results"),
        "sessions": refreshed_sessions(
            request.refreshed_sessions, "refreshed_sessions"
        ),
    }


def complete_request(request: jobs_pb2.CompleteJobRequest) -> CompletionIn:
    """One completion for Store.finish_jobs."""
    if request.outcome not in OUTCOMES:
        raise InvalidArgument(
            "outcome", "must be SUCCEEDED, FAILED, RETRY or CANCELLED"
        )
    return CompletionIn(
        job_id=job_id(request.job_id),
        token=lease_token(request.lease_token),
        outcome=OUTCOMES[request.outcome],
        results=step_results(request.results, "results"),
        error_code=bounded_text(request.error_code, "error_code", MAX_ERROR_CODE_CHARS),
        error_message=bounded_text(
            request.error_message, "error_message", MAX_MESSAGE_CHARS
        ),
        sessions=refreshed_sessions(request.refreshed_sessions, "refreshed_sessions"),
    )


def completion_batch(
    request: jobs_pb2.CompleteJobsRequest,
) -> list[CompletionIn | InvalidArgument]:
    """Each completion checked on its own: its CompletionIn, or why it is
    malformed (answered for that completion alone).

    Raises InvalidArgument for the whole call unless it holds 1-256
    completions of distinct jobs (ids compared in canonical form).
    """
    count = len(request.completions)
    if not 1 <= count <= MAX_COMPLETION_BATCH:
        raise InvalidArgument(
            "completions", f"must hold 1-{MAX_COMPLETION_BATCH} (got {count})"
        )
    checked: list[CompletionIn | InvalidArgument] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(request.completions):
        try:
            completion = complete_request(item)
        except InvalidArgument as exc:
            checked.append(exc)
            continue
        first = seen.setdefault(completion.job_id, i)
        if first != i:
            raise InvalidArgument(
                f"completions[{i}].job_id",
                f"job {completion.job_id} is also completions[{first}]",
            )
        checked.append(completion)
    return checked


# AdminService


def job_specs(
    request: admin_pb2.SubmitJobsRequest,
    tiers: dict[str, Tier],
    max_batch: int = MAX_SUBMIT_BATCH,
) -> list[JobSpecIn]:
    if not request.jobs:
        raise InvalidArgument("jobs", "at least one job is required")
    limit = min(max_batch, MAX_SUBMIT_BATCH)
    if len(request.jobs) > limit:
        raise InvalidArgument(
            "jobs", f"at most {limit} per call (got {len(request.jobs)})"
        )
    specs = []
    seen_keys: dict[str, int] = {}
    for i, job in enumerate(request.jobs):
        where = f"jobs[{i}]"
        if job.action not in ACTIONS:
            raise InvalidArgument(f"{where}.action", "must be FOLLOW or UNFOLLOW")
        if job.tier not in tiers:
            raise InvalidArgument(
                f"{where}.tier",
                f"unknown tier {job.tier[:64]!r}; known: {', '.join(sorted(tiers))}",
            )
        key = job.idempotency_key or None
        if key is not None:
            if len(key) > 128 or not PRINTABLE_ASCII.fullmatch(key):
                raise InvalidArgument(
                    f"{where}.idempotency_key",
                    "must be 1-128 printable ASCII characters",
                )
            if key in seen_keys:
                raise InvalidArgument(
                    f"{where}.idempotency_key",
                    f"repeats jobs[{seen_keys[key]}] in the same request",
                )
            seen_keys[key] = i
        if not 0 <= job.max_attempts <= 100:
            raise InvalidArgument(f"{where}.max_attempts", "must be 0-100")
        specs.append(
            JobSpecIn(
                action=ACTIONS[job.action],
                target=username(job.target, f"{where}.target"),
                tier=job.tier,
                idempotency_key=key,
                max_attempts=job.max_attempts,
            )
        )
    return specs


def list_jobs_request(request: admin_pb2.ListJobsRequest) -> dict:
    return {
        "states": enum_values(request.states, JOB_STATES, "states"),
        "tier": bounded_text(request.tier, "tier", 64),
        "target": username(request.target, "target") if request.target else "",
        "page_size": page_size(request.page_size, 50),
        "page_token": bounded_text(request.page_token, "page_token", 512),
    }


def watch_ids(request: admin_pb2.WatchJobsRequest) -> list[str]:
    if len(request.job_ids) > MAX_WATCH_IDS:
        raise InvalidArgument("job_ids", f"at most {MAX_WATCH_IDS} ids")
    return [job_id(value, f"job_ids[{i}]") for i, value in enumerate(request.job_ids)]


def account_input(account: admin_pb2.AccountInput, field: str) -> AccountIn:
    return AccountIn(
        username=username(account.username, f"{field}.username"),
        password=bounded_text(
            account.password, f"{field}.password", MAX_PASSWORD_CHARS
        ),
        settings=settings_json(account.settings, f"{field}.settings"),
    )


def import_batch(request: admin_pb2.ImportAccountsRequest) -> int:
    if not request.accounts:
        raise InvalidArgument("accounts", "at least one account is required")
    if len(request.accounts) > MAX_IMPORT_BATCH:
        raise InvalidArgument("accounts", f"at most {MAX_IMPORT_BATCH} per call")
    return len(request.accounts)


def list_accounts_request(request: admin_pb2.ListAccountsRequest) -> dict:
    return {
        "states": enum_values(request.states, ACCOUNT_STATES, "states"),
        "page_size": page_size(request.page_size, 100),
        "page_token": bounded_text(request.page_token, "page_token", 512),
    }
