"""The executor that performs steps on Instagram with instagrapi.

One instagrapi `Client` per donor account lives for the whole process, built
from the settings Brain stores (cookies, authorization, device uuids) so the
device identity never changes. A stored session is used as it is; only when
Instagram rejects it does the executor log in with the password, once per
step, and hand the new settings to Brain through `take_refreshed_sessions`.

barter never answers challenges: instagrapi's challenge flow is off and its
code and password prompts raise, so a challenged account is reported as
ACCOUNT_NEEDS_OWNER. What every failure means is decided in one place,
`hands_service.instagram_outcomes`.

instagrapi is synchronous. Each call runs on a worker thread under barter's
own deadline (`call_timeout_s`), and every HTTP request of the client carries a
timeout (`http_timeout_s`), because instagrapi sends private requests without
one: its `request_timeout` is a pause before each request, not a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, TypeVar

import requests
import structlog
from instagrapi import Client
from instagrapi.exceptions import ClientUnauthorizedError, LoginRequired
from requests.adapters import BaseAdapter

from hands_service.executor import (
    AccountSession,
    Executor,
    JobContext,
    StepOutcome,
    StepReport,
)
from hands_service.instagram_outcomes import (
    ActionNotApplied,
    CallTimedOut,
    ChallengeRefused,
    ClientBusy,
    PasswordMissing,
    SettingsUnreadable,
    TargetBlocked,
    TargetPrivate,
    outcome_for,
)

T = TypeVar("T")
Action = Literal["follow", "unfollow"]

# JobContext.scratch keys: the target is resolved once per job.
TARGET_ID_KEY = "instagram_target_id"
TARGET_PRIVATE_KEY = "instagram_target_private"

# Errors meaning "this session is no longer accepted"; they earn one login.
SESSION_REJECTED: tuple[type[BaseException], ...] = (
    LoginRequired,
    ClientUnauthorizedError,
)

_INSTAGRAPI_LOG_NAME = "hands_service.instagram.instagrapi"


def _silenced_instagrapi_logger() -> logging.Logger:
    """A logger that drops everything instagrapi's clients write.

    instagrapi logs whole reply bodies at DEBUG (a login reply carries the new
    session token) and exceptions with their context at ERROR; barter logs its
    own events instead and never lets those lines out.
    """
    quiet = logging.getLogger(_INSTAGRAPI_LOG_NAME)
    quiet.setLevel(logging.CRITICAL + 1)
    quiet.propagate = False
    if not quiet.filters:
        quiet.addFilter(lambda record: False)
    return quiet


def _refuse_challenge(*args: object, **kwargs: object) -> NoReturn:
    raise ChallengeRefused()


class _DeadlineAdapter(BaseAdapter):
    """Passes an HTTP timeout to the adapter it wraps when the caller gave none."""

    def __init__(self, inner: BaseAdapter, timeout_s: float) -> None:
        super().__init__()
        self.inner = inner
        self.timeout_s = timeout_s

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | None = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        return self.inner.send(
            request,
            stream=stream,
            timeout=self.timeout_s if timeout is None else timeout,
            verify=verify,
            cert=cert,
            proxies=proxies,
        )

    def close(self) -> None:
        self.inner.close()


def _client_sessions(client: Client) -> list[requests.Session]:
    """Every requests session an instagrapi client sends through."""
    return [client.private, client.public, client.graphql]


def _settings_key(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


@dataclass(frozen=True)
class _Relationship:
    following: bool
    outgoing_request: bool
    blocking: bool


@dataclass
class _AccountClient:
    """An account's client, and what it knows about the account's settings."""

    username: str
    client: Client
    # Held by whichever thread is using the client; instagrapi is not
    # thread-safe, and a timed-out call may still be running.
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Canonical forms of the settings this client holds: the ones it was built
    # from and the ones it produced after a login.
    settings_keys: set[str] = field(default_factory=set)


@dataclass
class _Step:
    """One step being performed: who performs it, with which client."""

    account: AccountSession
    slot: _AccountClient
    log: Any
    # The one login a step may make has been made.
    logged_in: bool = False


@dataclass(frozen=True)
class _Target:
    username: str
    user_id: str
    private: bool


class InstagramExecutor(Executor):
    """Performs follow and unfollow steps on Instagram through instagrapi."""

    def __init__(
        self,
        *,
        call_timeout_s: float = 30.0,
        http_timeout_s: float | None = None,
        request_pause_s: float = 1.0,
        retry_backoff_factor: float | None = None,
        max_threads: int = 8,
        prepare_client: Callable[[Client], None] | None = None,
    ) -> None:
        """Configure the executor.

        call_timeout_s: barter's deadline for one instagrapi call (a lookup, a
            relationship check, a follow, a whole login).
        http_timeout_s: timeout of each HTTP request; defaults to call_timeout_s.
        request_pause_s: instagrapi's pause before each private request (its
            `request_timeout` setting); 1s is instagrapi's default.
        retry_backoff_factor: instagrapi's `session_retry_backoff_factor` for
            the transports that retry (the public session); None keeps its own.
        max_threads: threads running instagrapi calls; a call that outlives its
            deadline keeps its thread until its HTTP timeout ends it.
        prepare_client: called with every new Client before its first request,
            e.g. to mount a transport adapter; its adapters get the HTTP timeout.
        """
        self._call_timeout_s = call_timeout_s
        self._http_timeout_s = (
            call_timeout_s if http_timeout_s is None else http_timeout_s
        )
        self._request_pause_s = request_pause_s
        self._retry_backoff_factor = retry_backoff_factor
        self._prepare_client = prepare_client
        self._threads = ThreadPoolExecutor(
            max_workers=max_threads, thread_name_prefix="instagram"
        )
        self._clients: dict[str, _AccountClient] = {}
        self._refreshed: dict[str, AccountSession] = {}
        self._quiet_logger = _silenced_instagrapi_logger()

    async def follow(self, job: JobContext, account: AccountSession) -> StepReport:
        """Make `account` follow `job.target`, unless it already does."""
        return await self._run_step(job, account, "follow")

    async def unfollow(self, job: JobContext, account: AccountSession) -> StepReport:
        """Make `account` stop following `job.target`, unless it does not."""
        return await self._run_step(job, account, "unfollow")

    def take_refreshed_sessions(self) -> list[AccountSession]:
        """Settings produced since the last call, at most one per account."""
        refreshed = list(self._refreshed.values())
        self._refreshed.clear()
        return refreshed

    async def close(self) -> None:
        """Close every client's connections and stop the call threads."""
        for slot in self._clients.values():
            for session in _client_sessions(slot.client):
                session.close()
        self._clients.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _run_step(
        self, job: JobContext, account: AccountSession, action: Action
    ) -> StepReport:
        # A logger per step, so that it follows the current structlog set-up.
        step_log = structlog.get_logger().bind(
            job_id=job.job_id, account=account.username, action=action
        )
        slot: _AccountClient | None = None
        try:
            slot = self._client_for(account, step_log)
            report = await self._act(_Step(account, slot, step_log), job, action)
        except Exception as exc:
            report = outcome_for(exc, secrets=_secrets_of(account, slot))
            if report.outcome is StepOutcome.ACCOUNT_NEEDS_OWNER and slot is not None:
                # Start from Brain's stored settings once the owner has acted,
                # not from whatever a failed login left in this client.
                self._drop_client(slot)
        _log_report(step_log, report)
        return report

    async def _act(self, step: _Step, job: JobContext, action: Action) -> StepReport:
        if step.slot.client.user_id is None:
            # No session at all: nothing to reuse, so a login is the only way.
            await self._log_in(step)
        target = await self._resolve_target(step, job)
        relationship = await self._with_session(
            step, _read_relationship, step.slot.client, target.user_id
        )
        if action == "follow":
            return await self._follow(step, target, relationship)
        return await self._unfollow(step, target, relationship)

    async def _follow(
        self, step: _Step, target: _Target, relationship: _Relationship
    ) -> StepReport:
        if relationship.following or relationship.outgoing_request:
            return StepReport(StepOutcome.ALREADY_DONE)
        if relationship.blocking:
            raise TargetBlocked(target.username)
        if target.private:
            raise TargetPrivate(target.username)
        client = step.slot.client
        if await self._with_session(step, client.user_follow, target.user_id):
            return StepReport(StepOutcome.DONE)
        if "friendship_status" in client.last_json:
            # The reply of friendships/create itself, without a follow.
            raise ActionNotApplied("follow")
        # user_follow checks the relationship itself and found it in place.
        return StepReport(StepOutcome.ALREADY_DONE)

    async def _unfollow(
        self, step: _Step, target: _Target, relationship: _Relationship
    ) -> StepReport:
        if not (relationship.following or relationship.outgoing_request):
            return StepReport(StepOutcome.ALREADY_DONE)
        client = step.slot.client
        if not await self._with_session(step, client.user_unfollow, target.user_id):
            raise ActionNotApplied("unfollow")
        return StepReport(StepOutcome.DONE)

    async def _resolve_target(self, step: _Step, job: JobContext) -> _Target:
        if TARGET_ID_KEY not in job.scratch:
            # The private endpoint only: instagrapi's user_info_by_username
            # falls back to public lookups and would hide account problems.
            user = await self._with_session(
                step, step.slot.client.user_info_by_username_v1, job.target
            )
            job.scratch[TARGET_ID_KEY] = str(user.pk)
            job.scratch[TARGET_PRIVATE_KEY] = bool(user.is_private)
            step.log.debug("instagram_target_resolved", target_id=str(user.pk))
        return _Target(
            username=job.target,
            user_id=str(job.scratch[TARGET_ID_KEY]),
            private=bool(job.scratch[TARGET_PRIVATE_KEY]),
        )

    async def _with_session(self, step: _Step, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn`; if Instagram rejects the session, log in once and rerun it."""
        try:
            return await self._call(step.slot, fn, *args)
        except SESSION_REJECTED as exc:
            if step.logged_in:
                raise
            step.log.warning("instagram_session_rejected", reason=type(exc).__name__)
        await self._log_in(step)
        return await self._call(step.slot, fn, *args)

    async def _log_in(self, step: _Step) -> None:
        account = step.account
        if not account.password:
            raise PasswordMissing(account.username)
        step.logged_in = True
        client = step.slot.client
        # instagrapi refuses a third relogin per client; barter already allows
        # exactly one login per rejected session, so it keeps its own count.
        client.relogin_attempt = 0
        await self._call(
            step.slot, client.login, account.username, account.password, True
        )
        self._remember_settings(step.slot)
        step.log.info("instagram_logged_in")

    async def _call(self, slot: _AccountClient, fn: Callable[..., T], *args: Any) -> T:
        """Run one instagrapi call on a thread under barter's deadline."""
        # TODO: after an HTTP 408, instagrapi's private_request sleeps a
        # hard-coded 60 s and sends the request again. Such a call outlives its
        # deadline, keeps the client busy (client_busy) and may resend a follow
        # after barter gave up on it; the relationship check before every
        # follow keeps that from becoming a second follow.
        abandoned = threading.Event()

        def run() -> T:
            # Half the deadline, so that a client still held by an abandoned
            # call is reported as such rather than as a timeout of this one.
            if not slot.lock.acquire(timeout=self._call_timeout_s / 2):
                raise ClientBusy(slot.username)
            try:
                if abandoned.is_set():
                    # Its caller has given up; acting now would act unseen.
                    raise CallTimedOut(_call_name(fn), self._call_timeout_s)
                return fn(*args)
            finally:
                slot.lock.release()

        future = asyncio.get_running_loop().run_in_executor(self._threads, run)
        try:
            return await asyncio.wait_for(future, self._call_timeout_s)
        except TimeoutError:
            if not future.cancelled():
                raise
            raise CallTimedOut(_call_name(fn), self._call_timeout_s) from None
        finally:
            if future.cancelled() or not future.done():
                abandoned.set()

    def _client_for(self, account: AccountSession, step_log: Any) -> _AccountClient:
        """The account's client, rebuilt only when Brain's settings are new to it."""
        settings = _parse_settings(account)
        key = _settings_key(settings) if settings else ""
        slot = self._clients.get(account.username)
        if slot is not None and (not key or key in slot.settings_keys):
            return slot
        slot = _AccountClient(
            username=account.username, client=self._build_client(settings)
        )
        if key:
            slot.settings_keys.add(key)
        self._clients[account.username] = slot
        step_log.debug("instagram_client_built", had_settings=bool(key))
        if not key:
            # A new device identity: Brain must store it so that it stays.
            self._remember_settings(slot)
        return slot

    def _build_client(self, settings: dict[str, Any]) -> Client:
        client = Client(
            settings=settings,
            logger=self._quiet_logger,
            with_challenge_flow=False,
        )
        client.private_request_logger = self._quiet_logger
        client.public_request_logger = self._quiet_logger
        client.request_logger = self._quiet_logger
        client.handle_exception = None
        client.challenge_code_handler = _refuse_challenge
        client.change_password_handler = _refuse_challenge
        # Stored settings carry their own retry config; barter's wins.
        client.set_retry_config(
            request_timeout=self._request_pause_s,
            session_retry_backoff_factor=self._retry_backoff_factor,
        )
        if self._prepare_client is not None:
            self._prepare_client(client)
        for session in _client_sessions(client):
            wrapped: dict[int, _DeadlineAdapter] = {}
            for prefix, adapter in list(session.adapters.items()):
                if isinstance(adapter, _DeadlineAdapter):
                    continue
                if id(adapter) not in wrapped:
                    wrapped[id(adapter)] = _DeadlineAdapter(
                        adapter, self._http_timeout_s
                    )
                session.mount(prefix, wrapped[id(adapter)])
        return client

    def _drop_client(self, slot: _AccountClient) -> None:
        if self._clients.get(slot.username) is slot:
            del self._clients[slot.username]
        for session in _client_sessions(slot.client):
            session.close()

    def _remember_settings(self, slot: _AccountClient) -> None:
        settings = slot.client.get_settings()
        slot.settings_keys.add(_settings_key(settings))
        self._refreshed[slot.username] = AccountSession(
            username=slot.username,
            settings=json.dumps(settings, default=str).encode(),
        )


def _read_relationship(client: Client, user_id: str) -> _Relationship:
    """The account's relationship to `user_id`, with every error surfacing.

    instagrapi's user_friendship_v1 logs and swallows any ClientError (a
    challenge or a rejected session included) and returns None, so the
    executor asks the same endpoint itself.
    """
    reply = client.private_request(
        f"friendships/show/{user_id}/",
        params={"is_external_deeplink_profile_view": "false"},
    )
    return _Relationship(
        following=bool(reply.get("following")),
        outgoing_request=bool(reply.get("outgoing_request")),
        blocking=bool(reply.get("blocking")),
    )


def _parse_settings(account: AccountSession) -> dict[str, Any]:
    if not account.settings:
        return {}
    try:
        settings = json.loads(account.settings)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SettingsUnreadable(account.username, type(exc).__name__) from None
    if not isinstance(settings, dict):
        raise SettingsUnreadable(account.username, "not a JSON object")
    return settings


def _secrets_of(account: AccountSession, slot: _AccountClient | None) -> list[str]:
    """Every value an error message must not carry for this account."""
    found = [account.password]
    stored = _settings_or_empty(account)
    clients = [slot.client] if slot is not None else []
    for settings in [stored] + [c.settings or {} for c in clients]:
        found += _secret_values(settings.get("cookies"))
        found += _secret_values(settings.get("authorization_data"))
    for client in clients:
        found += _secret_values(client.private.cookies.get_dict())
        found += _secret_values(client.authorization_data)
        found += [client.authorization, client.password or ""]
    return [value for value in found if value]


def _secret_values(values: object) -> list[str]:
    """The string values of a cookie or authorization mapping, bar the user id."""
    if not isinstance(values, dict):
        return []
    return [
        value
        for name, value in values.items()
        if isinstance(value, str) and name != "ds_user_id"
    ]


def _settings_or_empty(account: AccountSession) -> dict[str, Any]:
    try:
        return _parse_settings(account)
    except SettingsUnreadable:
        return {}


def _call_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _log_report(step_log: Any, report: StepReport) -> None:
    fields = {"outcome": report.outcome.name, "error_code": report.error_code}
    if report.outcome.finished:
        step_log.info("instagram_step_finished", **fields)
    elif report.outcome is StepOutcome.TARGET_INVALID:
        step_log.info("instagram_step_target_invalid", **fields)
    else:
        step_log.warning("instagram_step_failed", **fields)
