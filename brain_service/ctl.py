"""barterctl: the operator's command line for a running Brain.

It speaks only gRPC (AdminService) and never touches the database, so it runs
from any machine that can reach the Brain. Tables are for people; `--json`
prints the replies as JSON with the .proto field names. Every failure ends in
one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import ipaddress
import json
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from rich.console import Console

from barter.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from brain_service import ctl_render as render

PROG = "barterctl"

DEFAULT_BRAIN_URL = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 10.0

# Limits the AdminService contract sets on one request.
SUBMIT_BATCH_MAX = 1000
IMPORT_BATCH_MAX = 1000
WATCH_IDS_MAX = 1000
LIST_PAGE_MAX = 500
# A submit of more jobs than this shows only the first ones in its table.
SUBMIT_TABLE_ROWS = 50

# The contract's limits on account input, checked here so that one bad row is
# skipped instead of failing the whole import.
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9._]{1,30}")
PASSWORD_MAX_CHARS = 256
SETTINGS_MAX_BYTES = 64 * 1024

# A watch stream that drops (Brain restarting) is reopened this many times in a
# row before the watch gives up.
WATCH_RECONNECT_LIMIT = 5
WATCH_RECONNECT_MAX_DELAY_S = 5.0

EXIT_OK = 0
EXIT_RPC = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

ENVIRONMENT_HELP = f"""\
environment (a flag, where there is one, wins):
  BRAIN_URL                  Brain address host:port, or https://host:port for
                             TLS (default {DEFAULT_BRAIN_URL}); --brain
  ADMIN_API_KEY              admin key, sent as 'authorization: Bearer KEY'
                             (default: unset, none sent); --admin-key
  ADMIN_API_KEY_FILE         file holding the admin key; preferred over
                             ADMIN_API_KEY (default: unset)
  BARTERCTL_TIMEOUT_S        seconds to wait for each reply (default
                             {DEFAULT_TIMEOUT_S:g}); --timeout-s
  BRAIN_TLS_CA_FILE          PEM CA that signed the Brain's certificate; setting
                             it turns TLS on (default: unset, plaintext unless
                             https://; with https://, the system's roots)
  BRAIN_TLS_CLIENT_CERT_FILE PEM client certificate for mutual TLS
                             (default: unset)
  BRAIN_TLS_CLIENT_KEY_FILE  PEM key of that certificate (default: unset)

exit status:
  0  done
  1  the Brain could not be reached or refused the call
  2  bad usage or bad input (also when the Brain answers INVALID_ARGUMENT)
"""

JOB_STATES = {
    "pending": common_pb2.JOB_STATE_PENDING,
    "leased": common_pb2.JOB_STATE_LEASED,
    "succeeded": common_pb2.JOB_STATE_SUCCEEDED,
    "failed": common_pb2.JOB_STATE_FAILED,
    "cancelled": common_pb2.JOB_STATE_CANCELLED,
}
ACCOUNT_STATES = {
    "active": common_pb2.ACCOUNT_STATE_ACTIVE,
    "cooldown": common_pb2.ACCOUNT_STATE_COOLDOWN,
    "needs_owner": common_pb2.ACCOUNT_STATE_NEEDS_OWNER,
    "disabled": common_pb2.ACCOUNT_STATE_DISABLED,
}
ACTIONS = {"follow": common_pb2.ACTION_FOLLOW, "unfollow": common_pb2.ACTION_UNFOLLOW}

JOB_FILE_FIELDS = ("action", "target", "tier", "idempotency_key", "max_attempts")
ACCOUNT_CSV_FIELDS = ("username", "password", "session_file")
ACCOUNT_JSON_FIELDS = ("username", "password", "session_file", "settings")


# Errors


class CtlError(Exception):
    """Root of every failure barterctl reports; each line goes to stderr."""

    exit_code = EXIT_RPC

    def __init__(self, *lines: str) -> None:
        self.lines = [_one_line(line) for line in lines]
        super().__init__("; ".join(self.lines))


class UsageError(CtlError):
    """The command line or an input file cannot be used as given."""

    exit_code = EXIT_USAGE


class BrainUnreachable(CtlError):
    """No connection to the Brain."""


class BrainRefused(CtlError):
    """The Brain answered with an error status."""

    def __init__(self, code: grpc.StatusCode, *lines: str) -> None:
        super().__init__(*lines)
        self.code = code
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            self.exit_code = EXIT_USAGE


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def brain_error(exc: grpc.RpcError, brain_url: str, timeout_s: float) -> CtlError:
    """The one-line reason for a failed call, from its status."""
    code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
    details = _one_line(exc.details() or "")  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE:
        lowered = details.lower()
        if "connection refused" in lowered:
            return BrainUnreachable(
                f"cannot reach the Brain at {brain_url}: connection refused"
            )
        if "failed to connect" in lowered or "dns resolution failed" in lowered:
            return BrainUnreachable(f"cannot reach the Brain at {brain_url}: {details}")
        return BrainRefused(code, f"UNAVAILABLE: {details} (Brain at {brain_url})")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return BrainRefused(
            code,
            f"DEADLINE_EXCEEDED: no reply from the Brain at {brain_url} "
            f"within {timeout_s:g} s (--timeout-s)",
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return BrainRefused(
            code, f"{code.name}: {details} (set ADMIN_API_KEY or --admin-key)"
        )
    return BrainRefused(code, f"{code.name}: {details}")


# Talking to the Brain


@dataclass(frozen=True)
class Tls:
    """Client TLS material; `ca` empty means the system's trusted roots."""

    ca: bytes = b""
    client_cert: bytes = b""
    client_key: bytes = b""


@dataclass(frozen=True)
class Settings:
    """Global options, resolved from flags, then environment, then defaults."""

    brain_url: str
    admin_key: str
    json: bool
    timeout_s: float
    # None: plaintext, as on loopback.
    tls: Tls | None = None


def _grpc_target(brain_url: str) -> tuple[str, bool]:
    """host:port from BRAIN_URL, and whether its scheme (https://) asks for TLS."""
    for scheme, tls in (("grpc://", False), ("http://", False), ("https://", True)):
        if brain_url.startswith(scheme):
            return brain_url.removeprefix(scheme).rstrip("/"), tls
    if "://" in brain_url:
        raise UsageError(
            f"--brain {brain_url!r}: give host:port, or https://host:port for TLS"
        )
    return brain_url, False


# Calls go to any replica that answers, in turn.
_ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def _replicas(target: str) -> str:
    """A comma list of IPv4:port replicas as one `ipv4:` target."""
    addresses = [a.strip() for a in target.split(",") if a.strip()]
    if len(addresses) <= 1:
        return target
    literal = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        host = "127.0.0.1" if host == "localhost" else host
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise UsageError(
                f"--brain {address!r}: list replicas as IPv4:port, or use one DNS "
                "name that resolves to them all"
            ) from None
        if not port.isdigit():
            raise UsageError(f"--brain {address!r}: give host:port")
        literal.append(f"{host}:{port}")
    return "ipv4:" + ",".join(literal)


def _channel(settings: Settings) -> grpc.Channel:
    target, _ = _grpc_target(settings.brain_url)
    target = _replicas(target)
    options = [("grpc.service_config", _ROUND_ROBIN)]
    if settings.tls is None:
        return grpc.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=settings.tls.ca or None,
        private_key=settings.tls.client_key or None,
        certificate_chain=settings.tls.client_cert or None,
    )
    return grpc.secure_channel(target, credentials, options=options)


class Brain:
    """AdminService calls with the admin key and deadline attached."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.brain_url
        self.timeout_s = settings.timeout_s
        self._metadata: tuple[tuple[str, str], ...] = ()
        if settings.admin_key:
            self._metadata = (("authorization", f"Bearer {settings.admin_key}"),)
        self._channel = _channel(settings)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, request: Message) -> Any:
        """One unary call; a failure becomes a CtlError with its one-line reason."""
        rpc = getattr(self._stub, method)
        try:
            return rpc(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise brain_error(exc, self.url, self.timeout_s) from exc

    def open_watch(self, job_ids: Sequence[str]) -> grpc.Future:
        """A WatchJobs stream without a deadline; the caller cancels it."""
        request = admin_pb2.WatchJobsRequest(job_ids=list(job_ids))
        return self._stub.WatchJobs(request, metadata=self._metadata)

    def error(self, exc: grpc.RpcError) -> CtlError:
        return brain_error(exc, self.url, self.timeout_s)


# Input files


@dataclass(frozen=True)
class Row:
    """One record of an input file and where it stands, for messages."""

    where: str
    values: dict[str, object]
    # Set when the record is unusable whatever its fields say.
    error: str = ""


STDIN_PATH = Path("-")


def _read_text(path: Path) -> str:
    """The file's text; '-' is standard input."""
    try:
        if path == STDIN_PATH:
            return sys.stdin.read().removeprefix("\ufeff")
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text: {exc.reason}") from exc


def _file_format(path: Path, given: str | None) -> str:
    if given:
        return given
    suffix = path.suffix.lower()
    if suffix in (".json", ".csv"):
        return suffix[1:]
    if path == STDIN_PATH:
        raise UsageError("reading standard input needs --format json or csv")
    raise UsageError(f"{path}: cannot tell the format from the name; use --format")


def _json_list_rows(path: str, text: str) -> list[Row]:
    """The objects of a top-level JSON list, each with its starting line."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"
        ) from exc
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a JSON list of objects")
    rows: list[Row] = []
    for number, (line, item) in enumerate(_json_list_items(text), start=1):
        where = f"{path}:{line} (item {number})"
        if not isinstance(item, dict):
            rows.append(Row(where, {}, error="expected an object"))
        else:
            rows.append(Row(where, item))
    return rows


def _json_list_items(text: str) -> Iterator[tuple[int, object]]:
    """(line, value) for each element of a JSON list already known to be valid."""
    decoder = json.JSONDecoder()
    whitespace = re.compile(r"[ \t\r\n]*")

    def skip(pos: int) -> int:
        return whitespace.match(text, pos).end()  # type: ignore[union-attr]

    pos = skip(skip(0) + 1)  # past '['
    line, counted_to = 1, 0
    if text[pos] == "]":
        return
    while True:
        pos = skip(pos)
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        value, pos = decoder.raw_decode(text, pos)
        yield line, value
        pos = skip(pos)
        if text[pos] == "]":
            return
        pos += 1  # past ','


def _csv_rows(path: str, text: str, allowed: Sequence[str]) -> list[Row]:
    """Rows of a CSV file with a header naming some of `allowed`."""
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = next(reader)
    except StopIteration:
        raise UsageError(f"{path}: empty file; expected a header line") from None
    except csv.Error as exc:
        raise UsageError(f"{path}:1: bad CSV: {exc}") from exc
    columns = [name.strip().lower() for name in header]
    unknown = [name for name in columns if name not in allowed]
    if unknown or len(set(columns)) != len(columns):
        raise UsageError(
            f"{path}:1: header {','.join(columns)!r} must name columns among "
            f"{','.join(allowed)}, each once"
        )
    rows: list[Row] = []
    try:
        for record in reader:
            where = f"{path}:{reader.line_num}"
            if not any(cell.strip() for cell in record):
                continue
            if len(record) > len(columns):
                rows.append(Row(where, {}, error="more values than header columns"))
                continue
            values = {
                name: cell for name, cell in zip(columns, record, strict=False) if cell
            }
            rows.append(Row(where, values))
    except csv.Error as exc:
        raise UsageError(f"{path}:{reader.line_num}: bad CSV: {exc}") from exc
    return rows


def load_rows(path: Path, fmt: str | None, csv_fields: Sequence[str]) -> list[Row]:
    """The records of a .json or .csv input file, each with its line."""
    fmt = _file_format(path, fmt)
    text = _read_text(path)
    name = "<stdin>" if path == STDIN_PATH else str(path)
    if fmt == "json":
        return _json_list_rows(name, text)
    return _csv_rows(name, text, csv_fields)


def _no_unknown_fields(values: dict[str, object], known: Sequence[str]) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field; expected {', '.join(known)}")


def _string_field(values: dict[str, object], name: str, required: bool) -> str:
    value = values.get(name)
    if value is None or value == "":
        if required:
            raise ValueError(f"{name}: missing")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be a string")
    return value


def job_spec(values: dict[str, object]) -> admin_pb2.JobSpec:
    """A JobSpec from one file record; ValueError names the bad field."""
    _no_unknown_fields(values, JOB_FILE_FIELDS)
    action = _string_field(values, "action", required=False).strip() or "follow"
    if action.lower().removeprefix("action_") not in ACTIONS:
        raise ValueError(f"action: {action!r} is not follow or unfollow")
    max_attempts = values.get("max_attempts", 0) or 0
    if isinstance(max_attempts, str):
        if not max_attempts.strip().isdigit():
            raise ValueError(f"max_attempts: {max_attempts!r} is not a whole number")
        max_attempts = int(max_attempts)
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool):
        raise ValueError("max_attempts: must be a whole number")
    target = _string_field(values, "target", required=True).strip()
    if not USERNAME_PATTERN.fullmatch(target):
        raise ValueError(
            "target: must be 1-30 characters of letters, digits, '.' and '_'"
        )
    return admin_pb2.JobSpec(
        action=ACTIONS[action.lower().removeprefix("action_")],
        target=target,
        tier=_string_field(values, "tier", required=True).strip(),
        idempotency_key=_string_field(values, "idempotency_key", required=False),
        max_attempts=max_attempts,
    )


def load_job_specs(path: Path, fmt: str | None) -> list[tuple[str, admin_pb2.JobSpec]]:
    """Every job of a file, or UsageError listing every bad record by line."""
    specs: list[tuple[str, admin_pb2.JobSpec]] = []
    problems: list[str] = []
    for row in load_rows(path, fmt, JOB_FILE_FIELDS):
        try:
            if row.error:
                raise ValueError(row.error)
            specs.append((row.where, job_spec(row.values)))
        except ValueError as exc:
            problems.append(f"{row.where}: {exc}")
    if problems:
        raise UsageError(*_capped(problems), "nothing was submitted")
    if not specs:
        raise UsageError(f"{path}: no jobs in the file")
    return specs


def _capped(lines: list[str], limit: int = 20) -> list[str]:
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"... and {len(lines) - limit} more"]


def read_settings_file(path: Path) -> bytes:
    """instagrapi settings from a file: a JSON object of at most 64 KiB."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > SETTINGS_MAX_BYTES:
        raise ValueError(f"{path}: {len(data)} bytes; settings are at most 64 KiB")
    try:
        settings = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON settings object: {exc}") from exc
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: not a JSON settings object")
    return data


def check_username(username: str) -> str:
    if not USERNAME_PATTERN.fullmatch(username):
        raise ValueError(
            "username: must be 1-30 characters of letters, digits, '.' and '_'"
        )
    return username


def check_password(password: str) -> str:
    if len(password) > PASSWORD_MAX_CHARS:
        raise ValueError(f"password: at most {PASSWORD_MAX_CHARS} characters")
    return password


def account_input(values: dict[str, object], base_dir: Path) -> admin_pb2.AccountInput:
    """An AccountInput from one file record; ValueError names the bad field."""
    _no_unknown_fields(values, ACCOUNT_JSON_FIELDS)
    username = check_username(_string_field(values, "username", required=True).strip())
    password = check_password(_string_field(values, "password", required=False))
    session_file = _string_field(values, "session_file", required=False).strip()
    settings = values.get("settings")
    if session_file and settings is not None:
        raise ValueError("settings: give settings or session_file, not both")
    data = b""
    if session_file:
        data = read_settings_file(base_dir / session_file)
    elif settings is not None:
        if not isinstance(settings, dict):
            raise ValueError("settings: must be a JSON object")
        data = json.dumps(settings).encode()
        if len(data) > SETTINGS_MAX_BYTES:
            raise ValueError("settings: at most 64 KiB")
    return admin_pb2.AccountInput(username=username, password=password, settings=data)


# Commands


def _print(settings: Settings, message: Message, human: Callable[[], object]) -> None:
    """--json prints the message; otherwise `human()` renders it."""
    if settings.json:
        render.print_json(render.message_dict(message))
        return
    shown = human()
    if shown is not None:
        render.make_console().print(shown)


def cmd_submit(args: argparse.Namespace, settings: Settings, brain: Brain) -> int:
    """Submit one job from flags or many from a file, in batches of 1000."""
    if args.file:
        given = [n for n in ("target", "tier", "idempotency_key") if getattr(args, n)]
        if given or args.action or args.max_attempts is not None:
            raise UsageError("--file cannot be combined with single-job flags")
        specs = load_job_specs(Path(args.file), args.format)
    else:
        if not args.target or not args.tier:
            raise UsageError("submit needs --target and --tier, or --file")
        try:
            spec = job_spec(
                {
                    "action": args.action or "follow",
                    "target": args.target,
                    "tier": args.tier,
                    "idempotency_key": args.idempotency_key,
                    "max_attempts": args.max_attempts or 0,
                }
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        specs = [("--target", spec)]

    submitted: list[admin_pb2.SubmittedJob] = []
    for start in range(0, len(specs), SUBMIT_BATCH_MAX):
        batch = specs[start : start + SUBMIT_BATCH_MAX]
        request = admin_pb2.SubmitJobsRequest(jobs=[spec for _, spec in batch])
        try:
            reply = brain.call("SubmitJobs", request)
        except CtlError as exc:
            raise _batch_error(
                exc, batch, done=len(submitted), total=len(specs)
            ) from None
        submitted.extend(reply.jobs)

    response = admin_pb2.SubmitJobsResponse(jobs=submitted)
    if args.quiet and not settings.json:
        sys.stdout.write("".join(f"{item.job.job_id}\n" for item in submitted))
        return EXIT_OK
    shown = submitted[:SUBMIT_TABLE_ROWS]
    _print(settings, response, lambda: render.submitted_table(shown))
    if not settings.json:
        created = sum(1 for item in submitted if item.created)
        more = len(submitted) - len(shown)
        render.make_console().print(
            f"{created} created, {len(submitted) - created} already known"
            + (f"; {more} more not shown (-q or --json lists all)" if more else "")
        )
    return EXIT_OK


def _batch_error(
    exc: CtlError, batch: list[tuple[str, admin_pb2.JobSpec]], done: int, total: int
) -> CtlError:
    """Point a rejected batch's error at the job it names: its file line or flag."""
    lines = list(exc.lines)
    match = re.search(r"\bjobs\[(\d+)\]\.", lines[0])
    if match and int(match.group(1)) < len(batch):
        where = batch[int(match.group(1))][0]
        prefix = "" if where.startswith("--") else f"{where}: "
        lines[0] = lines[0].replace(match.group(0), prefix, 1)
    if done:
        lines.append(
            f"{done} of {total} jobs were submitted before this batch; "
            "resubmitting jobs with idempotency keys is safe"
        )
    exc.lines = lines
    return exc


def _job_states(names: Sequence[str] | None) -> list[int]:
    return [JOB_STATES[name] for name in names or ()]


def cmd_jobs_list(args: argparse.Namespace, settings: Settings, brain: Brain) -> int:
    """List jobs newest first, following pages up to --limit."""
    jobs: list[common_pb2.Job] = []
    token = args.page_token or ""
    while len(jobs) < args.limit:
        request = admin_pb2.ListJobsRequest(
            states=_job_states(args.state),
            tier=args.tier or "",
            target=args.target or "",
            page_size=min(args.limit - len(jobs), LIST_PAGE_MAX),
            page_token=token,
        )
        reply = brain.call("ListJobs", request)
        jobs.extend(reply.jobs)
        token = reply.next_page_token
        if not token:
            break

    response = admin_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)
    _print(settings, response, lambda: render.jobs_table(jobs))
    if not settings.json and token:
        render.make_console().print(
            f"more jobs: --page-token {token}", markup=False, soft_wrap=True
        )
    return EXIT_OK


def cmd_jobs_get(args: argparse.Namespace, settings: Settings, brain: Brain) -> int:
    """One job with its steps."""
    job = brain.call("GetJob", admin_pb2.GetJobRequest(job_id=args.job_id))
    _print(settings, job, lambda: render.job_detail(job))
    return EXIT_OK


def cmd_jobs_cancel(args: argparse.Namespace, settings: Settings, brain: Brain) -> int:
    """Cancel a job: at once when pending, between steps when leased."""
    job = brain.call("CancelJob", admin_pb2.CancelJobRequest(job_id=args.job_id))
    _print(settings, job, lambda: _cancel_line(job))
    return EXIT_OK


def _cancel_line(job: common_pb2.Job) -> str:
    state = render.job_state_name(job.state)
    if job.state == common_pb2.JOB_STATE_LEASED:
        return (
            f"job {job.job_id}: LEASED, cancel requested; "
            "its worker stops between steps"
        )
    return f"job {job.job_id}: {state}"


def cmd_jobs_retry(args: argparse.Namespace, settings: Settings, brain: Brain) -> int:
    """Send a failed or cancelled job back to PENDING with fresh attempts."""
    job = brain.call("RetryJob", admin_pb2.RetryJobRequest(job_id=args.job_id))
    _print(
        settings,
        job,
        lambda: f"job {job.job_id}: {render.job_state_name(job.state)}",
    )
    return EXIT_OK


def cmd_accounts_add(args: argparse.Namespace, settings: Settings, brain: Brain) -> int:
    """Add one donor account, its password read without echo or from stdin."""
    if args.password and args.password_stdin:
        raise UsageError("give --password or --password-stdin, not both")
    password = ""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise UsageError("--password-stdin: no password on standard input")
    elif args.password:
        password = getpass.getpass(f"password for {args.username}: ")
        if not password:
            raise UsageError("--password: empty password")
    try:
        account = admin_pb2.AccountInput(
            username=check_username(args.username),
            password=check_password(password),
            settings=read_settings_file(Path(args.settings_file))
            if args.settings_file
            else b"",
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    reply = brain.call("AddAccount", admin_pb2.AddAccountRequest(account=account))
    _print(settings, reply, lambda: render.account_line(reply))
    return EXIT_OK


def cmd_accounts_import(
    args: argparse.Namespace, settings: Settings, brain: Brain
) -> int:
    """Import accounts from CSV or JSON; bad rows are reported and skipped."""
    path = Path(args.file)
    base_dir = path.parent
    good: list[tuple[str, admin_pb2.AccountInput]] = []
    results: list[tuple[str, str, str]] = []
    seen: dict[str, str] = {}
    for row in load_rows(path, args.format, ACCOUNT_CSV_FIELDS):
        username = str(row.values.get("username", "")).strip()
        try:
            if row.error:
                raise ValueError(row.error)
            account = account_input(row.values, base_dir)
            first = seen.setdefault(account.username.lower(), row.where)
            if first != row.where:
                raise ValueError(f"username: {account.username} already at {first}")
        except ValueError as exc:
            results.append((row.where, username, f"skipped: {exc}"))
            continue
        good.append((row.where, account))
    if not good and not results:
        raise UsageError(f"{path}: no accounts in the file")

    replies: list[admin_pb2.ImportRowResult] = []
    for start in range(0, len(good), IMPORT_BATCH_MAX):
        batch = good[start : start + IMPORT_BATCH_MAX]
        request = admin_pb2.ImportAccountsRequest(
            accounts=[account for _, account in batch],
            update_existing=args.update_existing,
        )
        reply = brain.call("ImportAccounts", request)
        for row in reply.rows:
            where = batch[row.index][0] if 0 <= row.index < len(batch) else "?"
            outcome = "created" if row.created else "updated" if row.updated else ""
            outcome = f"rejected: {row.error}" if row.error else outcome or "unchanged"
            results.append((where, row.username, outcome))
            replies.append(
                admin_pb2.ImportRowResult(
                    index=start + row.index,
                    username=row.username,
                    created=row.created,
                    updated=row.updated,
                    error=row.error,
                )
            )

    skipped = [r for r in results if r[2].startswith(("skipped", "rejected"))]
    if settings.json:
        render.print_json(
            {
                "rows": [render.message_dict(r) for r in replies],
                "skipped": [
                    {"where": w, "username": u, "error": e.split(": ", 1)[1]}
                    for w, u, e in skipped
                    if e.startswith("skipped")
                ],
            }
        )
    else:
        results.sort(key=lambda r: _where_order(r[0]))
        console = render.make_console()
        console.print(render.import_table(results))
        counts = {
            name: sum(1 for r in results if r[2].startswith(name))
            for name in ("created", "updated", "unchanged")
        }
        console.print(
            f"{counts['created']} created, {counts['updated']} updated, "
            f"{counts['unchanged']} unchanged, {len(skipped)} skipped"
        )
    if skipped:
        raise UsageError(*_capped([f"{w}: {e}" for w, _, e in skipped]))
    return EXIT_OK


def _where_order(where: str) -> int:
    match = re.search(r":(\d+)", where)
    return int(match.group(1)) if match else 0


def cmd_accounts_list(
    args: argparse.Namespace, settings: Settings, brain: Brain
) -> int:
    """Accounts by username, with what keeps each from working."""
    accounts: list[common_pb2.Account] = []
    token = ""
    while len(accounts) < args.limit:
        request = admin_pb2.ListAccountsRequest(
            states=[ACCOUNT_STATES[name] for name in args.state or ()],
            page_size=min(args.limit - len(accounts), LIST_PAGE_MAX),
            page_token=token,
        )
        reply = brain.call("ListAccounts", request)
        accounts.extend(reply.accounts)
        token = reply.next_page_token
        if not token:
            break
    response = admin_pb2.ListAccountsResponse(accounts=accounts, next_page_token=token)
    _print(settings, response, lambda: render.accounts_table(accounts))
    return EXIT_OK


def cmd_accounts_reset(
    args: argparse.Namespace, settings: Settings, brain: Brain
) -> int:
    """Return a parked, cooling or disabled account to ACTIVE."""
    request = admin_pb2.ResetAccountRequest(username=args.username)
    reply = brain.call("ResetAccount", request)
    _print(settings, reply, lambda: render.account_line(reply))
    return EXIT_OK


def cmd_stats(args: argparse.Namespace, settings: Settings, brain: Brain) -> int:
    """Queue statistics."""
    stats = brain.call("GetStats", admin_pb2.GetStatsRequest())
    _print(settings, stats, lambda: render.stats_table(stats))
    return EXIT_OK


# Watching


def cmd_jobs_watch(args: argparse.Namespace, settings: Settings, brain: Brain) -> int:
    """Follow jobs as they change; with --until-final, until all are final."""
    job_ids = _watch_ids(args.job_ids)
    # One plain call first: a wrong address or key fails here at once, where a
    # stream would be retried as if the Brain were restarting.
    brain.call("GetStats", admin_pb2.GetStatsRequest())
    if not job_ids and args.until_final:
        job_ids = _unfinished_job_ids(brain)
        if not job_ids:
            if not settings.json:
                render.make_console().print("no unfinished jobs to watch")
            return EXIT_OK
    deadline = time.monotonic() + args.max_wait_s if args.max_wait_s else None
    console = render.make_console()
    watch = JobWatch(brain, job_ids)
    interrupted = False
    try:
        if settings.json:
            for jobs in watch.changes(args.until_final, deadline):
                for job in jobs:
                    render.print_json_line({"job": render.message_dict(job)})
        else:
            with render.WatchDisplay(console, job_ids) as display:
                for jobs in watch.changes(args.until_final, deadline):
                    for job in jobs:
                        display.changed(job)
                    display.update(watch.jobs)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        watch.close()

    _print_watch_summary(settings, console, watch)
    if args.until_final and not interrupted and not watch.all_final():
        final = sum(
            1 for j in watch.jobs.values() if j.state in render.FINAL_JOB_STATES
        )
        raise CtlError(
            f"gave up after {args.max_wait_s:g} s (--max-wait-s): "
            f"{final} of {len(job_ids)} jobs final"
        )
    if interrupted and args.until_final:
        return EXIT_INTERRUPTED
    return EXIT_OK


def _print_watch_summary(settings: Settings, console: Console, watch: JobWatch) -> None:
    jobs = list(watch.jobs.values())
    unseen = watch.unseen_ids()
    if settings.json:
        render.print_json_line(
            {
                "summary": {
                    "jobs": len(jobs),
                    "by_state": render.state_counts(jobs),
                    "unseen_job_ids": unseen,
                }
            }
        )
        return
    console.print(render.watch_summary(jobs, unseen))


def _watch_ids(given: Sequence[str]) -> list[str]:
    """Job ids from the command line, '-' reading more from stdin; deduplicated."""
    ids: list[str] = []
    for item in given:
        if item == "-":
            ids.extend(sys.stdin.read().split())
        else:
            ids.append(item)
    return list(dict.fromkeys(ids))


def _unfinished_job_ids(brain: Brain) -> list[str]:
    """Every PENDING or LEASED job now, for `watch --until-final` without ids."""
    ids: list[str] = []
    token = ""
    while True:
        request = admin_pb2.ListJobsRequest(
            states=_job_states(["pending", "leased"]),
            page_size=LIST_PAGE_MAX,
            page_token=token,
        )
        reply = brain.call("ListJobs", request)
        ids.extend(job.job_id for job in reply.jobs)
        token = reply.next_page_token
        if not token:
            return list(dict.fromkeys(ids))


class JobWatch:
    """WatchJobs streams (one per 1000 ids) merged into one flow of changes.

    Each stream is read on its own thread so that the main thread stays free
    to redraw, to notice Ctrl-C and to give up at a deadline.
    """

    def __init__(self, brain: Brain, job_ids: Sequence[str]) -> None:
        self._brain = brain
        self._job_ids = list(job_ids)
        self.jobs: dict[str, common_pb2.Job] = {}
        self._events: queue.Queue[tuple[str, object]] = queue.Queue()
        self._stop = threading.Event()
        self._calls: list[grpc.Future] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def all_final(self) -> bool:
        """True once every watched id has been seen in a final state."""
        return bool(self._job_ids) and all(
            job_id in self.jobs and self.jobs[job_id].state in render.FINAL_JOB_STATES
            for job_id in self._job_ids
        )

    def unseen_ids(self) -> list[str]:
        return [job_id for job_id in self._job_ids if job_id not in self.jobs]

    def changes(
        self, until_final: bool, deadline: float | None
    ) -> Iterator[list[common_pb2.Job]]:
        """Batches of changed jobs, until final (if asked) or the deadline."""
        chunks = [
            self._job_ids[i : i + WATCH_IDS_MAX]
            for i in range(0, len(self._job_ids), WATCH_IDS_MAX)
        ] or [[]]
        for chunk in chunks:
            thread = threading.Thread(
                target=self._read_stream, args=(chunk,), name="watch", daemon=True
            )
            thread.start()
            self._threads.append(thread)

        streams_open = len(chunks)
        while not (until_final and self.all_final()):
            wait_s = 0.2
            if deadline is not None:
                wait_s = min(wait_s, deadline - time.monotonic())
                if wait_s <= 0:
                    return
            try:
                first = self._events.get(timeout=wait_s)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < 1000:
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            changed: list[common_pb2.Job] = []
            for kind, payload in batch:
                if kind == "error":
                    raise payload  # type: ignore[misc]
                if kind == "end":
                    streams_open -= 1
                    continue
                job: common_pb2.Job = payload  # type: ignore[assignment]
                self.jobs[job.job_id] = job
                changed.append(job)
            if changed:
                yield changed
            if not streams_open:
                return  # every watched job is final: nothing more can change

    def _read_stream(self, job_ids: list[str]) -> None:
        """Feed one stream's events to the queue, reopening it when it drops.

        The Brain ends a stream of ids once they are all final; any other end
        (the Brain restarting) is a drop. Ends with one ("end", None) or
        ("error", CtlError) item.
        """
        failures = 0
        final: set[str] = set()
        while not self._stop.is_set():
            call = self._brain.open_watch(job_ids)
            with self._lock:
                if self._stop.is_set():
                    call.cancel()
                    return
                self._calls.append(call)
            problem: CtlError | None = None
            try:
                for event in call:  # type: ignore[attr-defined]
                    failures = 0
                    job = event.job
                    if job.state in render.FINAL_JOB_STATES:
                        final.add(job.job_id)
                    else:
                        final.discard(job.job_id)
                    self._events.put(("job", job))
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if self._stop.is_set() or code == grpc.StatusCode.CANCELLED:
                    return
                problem = self._brain.error(exc)
                if code != grpc.StatusCode.UNAVAILABLE:
                    self._events.put(("error", problem))
                    return
            if problem is None and job_ids and final.issuperset(job_ids):
                self._events.put(("end", None))
                return
            failures += 1
            if failures > WATCH_RECONNECT_LIMIT:
                problem = problem or CtlError(
                    f"the Brain at {self._brain.url} kept ending the watch"
                )
                self._events.put(("error", problem))
                return
            self._stop.wait(min(0.25 * 2**failures, WATCH_RECONNECT_MAX_DELAY_S))

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            for call in self._calls:
                call.cancel()
        for thread in self._threads:
            thread.join(timeout=2.0)


# The command line


class _Parser(argparse.ArgumentParser):
    """Usage errors become one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _global_options() -> argparse.ArgumentParser:
    """The options every command takes, before or after its name.

    Their defaults are SUPPRESS so that a subcommand's copy of an option does
    not overwrite the value given before the subcommand's name.
    """
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("global options")
    group.add_argument(
        "--brain",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="Brain address host:port, or https://host:port for TLS "
        f"[env BRAIN_URL, default {DEFAULT_BRAIN_URL}]",
    )
    group.add_argument(
        "--admin-key",
        metavar="KEY",
        default=argparse.SUPPRESS,
        help="admin bearer key, sent as 'authorization: Bearer KEY' "
        "[env ADMIN_API_KEY, default <unset>: no key sent]; prefer the variable, "
        "flags show up in process lists",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print replies as JSON with the .proto field names (default: tables)",
    )
    group.add_argument(
        "--timeout-s",
        metavar="S",
        type=_positive_float,
        default=argparse.SUPPRESS,
        help="seconds to wait for each reply "
        f"[env BARTERCTL_TIMEOUT_S, default {DEFAULT_TIMEOUT_S:g}]",
    )
    return parent


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _choice(choices: dict[str, int], kind: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        name = text.strip().lower()
        if name not in choices:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not one of {', '.join(choices)}"
            )
        return name

    parse.__name__ = kind
    return parse


def build_parser() -> argparse.ArgumentParser:
    """barterctl's commands; every --help names the variables and defaults."""
    common = _global_options()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="Operate a barter Brain: submit and follow jobs, manage donor "
        "accounts, read queue statistics.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=formatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        group: argparse._SubParsersAction, name: str, help_text: str
    ) -> argparse.ArgumentParser:
        return group.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=ENVIRONMENT_HELP,
            formatter_class=formatter,
            parents=[common],
        )

    submit = command(
        commands, "submit", "submit one job from flags or many from a file"
    )
    submit.set_defaults(handler=cmd_submit)
    submit.add_argument(
        "--action",
        type=_choice(ACTIONS, "action"),
        help="follow or unfollow (default follow)",
    )
    submit.add_argument("--target", help="Instagram username to act on")
    submit.add_argument("--tier", help="tier name from the Brain's BRAIN_TIERS")
    submit.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="resubmitting the same key returns the first job (default: none)",
    )
    submit.add_argument(
        "--max-attempts",
        type=_positive_int,
        metavar="N",
        help="claims before the job fails for good, 1-100 (default: the Brain's)",
    )
    submit.add_argument(
        "--file",
        metavar="PATH",
        help="jobs from a .json list of objects or a .csv with a header ('-' is "
        "stdin, with --format); fields "
        f"{', '.join(JOB_FILE_FIELDS)}; sent in batches of {SUBMIT_BATCH_MAX}",
    )
    submit.add_argument(
        "--format", choices=("json", "csv"), help="file format (default: from suffix)"
    )
    submit.add_argument(
        "-q", "--quiet", action="store_true", help="print only the job ids, one a line"
    )

    jobs = command(commands, "jobs", "list, inspect, watch, cancel and retry jobs")
    job_commands = jobs.add_subparsers(
        dest="jobs_command", metavar="COMMAND", required=True
    )

    listing = command(job_commands, "list", "list jobs, newest first")
    listing.set_defaults(handler=cmd_jobs_list)
    listing.add_argument(
        "--state",
        action="append",
        type=_choice(JOB_STATES, "state"),
        help=f"only jobs in this state, repeatable: {', '.join(JOB_STATES)} "
        "(default: all)",
    )
    listing.add_argument("--tier", help="only jobs of this tier")
    listing.add_argument("--target", help="only jobs on this target")
    listing.add_argument(
        "--limit",
        type=_positive_int,
        default=50,
        metavar="N",
        help="show at most N jobs, fetching pages as needed (default 50)",
    )
    listing.add_argument(
        "--page-token",
        metavar="TOKEN",
        help="continue where an earlier listing stopped (its next_page_token)",
    )

    get = command(job_commands, "get", "show one job with its steps")
    get.set_defaults(handler=cmd_jobs_get)
    get.add_argument("job_id", metavar="ID")

    watch = command(
        job_commands,
        "watch",
        "follow jobs live: one bar per job for a few ids, one overall bar for many",
    )
    watch.set_defaults(handler=cmd_jobs_watch)
    watch.add_argument(
        "job_ids",
        metavar="ID",
        nargs="*",
        help="jobs to watch; '-' reads ids from stdin (default: every job)",
    )
    watch.add_argument(
        "--until-final",
        action="store_true",
        help="exit 0 with a summary once every watched job is SUCCEEDED, FAILED or "
        "CANCELLED; without ids, watch the jobs unfinished now (default: watch "
        "until Ctrl-C, or until every given job is final)",
    )
    watch.add_argument(
        "--max-wait-s",
        type=_positive_float,
        metavar="S",
        help="stop after S seconds; with --until-final that is a failure, exit "
        "status 1 (default: no limit)",
    )

    cancel = command(job_commands, "cancel", "cancel a job")
    cancel.set_defaults(handler=cmd_jobs_cancel)
    cancel.add_argument("job_id", metavar="ID")

    retry = command(
        job_commands, "retry", "send a FAILED or CANCELLED job back to PENDING"
    )
    retry.set_defaults(handler=cmd_jobs_retry)
    retry.add_argument("job_id", metavar="ID")

    accounts = command(
        commands, "accounts", "add, import, list and reset donor accounts"
    )
    account_commands = accounts.add_subparsers(
        dest="accounts_command", metavar="COMMAND", required=True
    )

    add = command(account_commands, "add", "add one donor account")
    add.set_defaults(handler=cmd_accounts_add)
    add.add_argument("username", metavar="USERNAME")
    add.add_argument(
        "--password",
        action="store_true",
        help="prompt for the password without echo (default: no password)",
    )
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin",
    )
    add.add_argument(
        "--settings-file",
        metavar="PATH",
        help="instagrapi settings JSON (session) of at most 64 KiB (default: none)",
    )

    importing = command(
        account_commands,
        "import",
        "import accounts from a file; bad rows are reported by line and skipped",
    )
    importing.set_defaults(handler=cmd_accounts_import)
    importing.add_argument(
        "file",
        metavar="FILE",
        help="CSV with header username,password,session_file, or a JSON list of "
        "objects with username, password and session_file or settings; "
        "session_file paths are relative to FILE's folder; '-' is stdin, with "
        "--format",
    )
    importing.add_argument(
        "--format", choices=("json", "csv"), help="file format (default: from suffix)"
    )
    importing.add_argument(
        "--update-existing",
        action="store_true",
        help="replace the password and session of accounts that exist "
        "(default: leave them unchanged)",
    )

    account_listing = command(account_commands, "list", "list donor accounts")
    account_listing.set_defaults(handler=cmd_accounts_list)
    account_listing.add_argument(
        "--state",
        action="append",
        type=_choice(ACCOUNT_STATES, "state"),
        help=f"only accounts in this state, repeatable: {', '.join(ACCOUNT_STATES)} "
        "(default: all)",
    )
    account_listing.add_argument(
        "--limit",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="show at most N accounts (default 1000)",
    )

    reset = command(account_commands, "reset", "return an account to ACTIVE")
    reset.set_defaults(handler=cmd_accounts_reset)
    reset.add_argument("username", metavar="USERNAME")

    stats = command(commands, "stats", "queue statistics")
    stats.set_defaults(handler=cmd_stats)
    return parser


def resolve_settings(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """Flags win over the environment, which wins over the defaults."""
    brain_url = getattr(args, "brain", None) or environ.get("BRAIN_URL") or ""
    brain_url = brain_url.strip() or DEFAULT_BRAIN_URL
    admin_key = getattr(args, "admin_key", None) or _admin_key_from_env(environ)
    timeout_s = getattr(args, "timeout_s", None)
    if timeout_s is None:
        text = environ.get("BARTERCTL_TIMEOUT_S", "")
        try:
            timeout_s = _positive_float(text) if text else DEFAULT_TIMEOUT_S
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"BARTERCTL_TIMEOUT_S: {exc}") from exc
    return Settings(
        brain_url=brain_url,
        admin_key=admin_key.strip(),
        json=bool(getattr(args, "json", False)),
        timeout_s=timeout_s,
        tls=_tls_from_env(environ, https=_grpc_target(brain_url)[1]),
    )


def _admin_key_from_env(environ: dict[str, str]) -> str:
    """ADMIN_API_KEY, or the file ADMIN_API_KEY_FILE names (preferred, as in Brain)."""
    path = environ.get("ADMIN_API_KEY_FILE", "")
    if not path:
        return environ.get("ADMIN_API_KEY", "")
    return _read_env_file(path, "ADMIN_API_KEY_FILE").decode().strip()


def _tls_from_env(environ: dict[str, str], https: bool) -> Tls | None:
    """TLS when the URL says https:// or any BRAIN_TLS_* file is given."""
    names = (
        "BRAIN_TLS_CA_FILE",
        "BRAIN_TLS_CLIENT_CERT_FILE",
        "BRAIN_TLS_CLIENT_KEY_FILE",
    )
    paths = {name: environ.get(name, "") for name in names}
    if not https and not any(paths.values()):
        return None
    cert, key = paths["BRAIN_TLS_CLIENT_CERT_FILE"], paths["BRAIN_TLS_CLIENT_KEY_FILE"]
    if bool(cert) != bool(key):
        raise UsageError(
            "BRAIN_TLS_CLIENT_CERT_FILE and BRAIN_TLS_CLIENT_KEY_FILE go together"
        )
    read = {
        name: _read_env_file(path, name) if path else b""
        for name, path in paths.items()
    }
    return Tls(
        ca=read["BRAIN_TLS_CA_FILE"],
        client_cert=read["BRAIN_TLS_CLIENT_CERT_FILE"],
        client_key=read["BRAIN_TLS_CLIENT_KEY_FILE"],
    )


def _read_env_file(path: str, env: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{env}: cannot read {path}: {exc.strerror or exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run one barterctl command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        settings = resolve_settings(args, dict(os.environ))
        brain = Brain(settings)
        try:
            return args.handler(args, settings, brain)
        finally:
            brain.close()
    except CtlError as exc:
        _flush_stdout()
        for line in exc.lines:
            sys.stderr.write(f"{PROG}: {line}\n")
        return exc.exit_code
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `head`) left; nothing more to say to anyone.
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the last line of defence, no traceback
        sys.stderr.write(
            f"{PROG}: internal error: {type(exc).__name__}: {_one_line(str(exc))}\n"
        )
        return EXIT_RPC


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        _silence_stdout()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run() -> None:
    """The console script: main(), then leave without interpreter teardown.

    By then every line is written and the channel closed. gRPC's own threads
    can still hold up a normal exit (seen once as a `jobs watch` that printed
    its summary and then never exited), and a command-line tool must not
    hang after its work is done.
    """
    code = main()
    _flush_stdout()
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
