"""What every failure of an Instagram call means for barter: one table.

`outcome_for` turns any exception raised while a step talks to Instagram
(instagrapi's own, requests' and curl's transport errors, JSON errors, and the
instagram executor's own deadline and session errors) into a `StepReport`. The
first matching rule of `OUTCOME_RULES` wins, so narrower rules come first.

instagrapi 3.2.2 has no `CheckpointRequired` or `ConsentRequired`: Instagram's
`checkpoint_required` and `consent_required` replies reach us as `UnknownError`
(HTTP 400) or a plain `ClientError` (HTTP 200 with status "fail"), so the table
also matches on what the reply says. Rules name such classes as strings, so they
keep working if a later instagrapi adds them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import requests
from curl_cffi.curl import CurlError
from curl_cffi.requests import exceptions as curl
from instagrapi import exceptions as ig

from hands_service.executor import StepOutcome, StepReport

ERROR_CODE_MAX_CHARS = 64
ERROR_MESSAGE_MAX_CHARS = 1000
REDACTED = "[redacted]"


class InstagramStepError(Exception):
    """Root of the instagram executor's own failures."""


class CallTimedOut(InstagramStepError):
    """An instagrapi call outlived barter's deadline for it."""

    def __init__(self, call_name: str, call_timeout_s: float) -> None:
        super().__init__(f"{call_name} did not finish within {call_timeout_s:g}s")
        self.call_name = call_name
        self.call_timeout_s = call_timeout_s


class ClientBusy(InstagramStepError):
    """The account's client is still held by an earlier call that timed out."""

    def __init__(self, username: str) -> None:
        super().__init__(
            f"the client of {username} is still busy with a timed-out call"
        )


class PasswordMissing(InstagramStepError):
    """The account needs a login and barter holds no password for it."""

    def __init__(self, username: str) -> None:
        super().__init__(f"{username} has no usable session and no password")


class SettingsUnreadable(InstagramStepError):
    """The stored instagrapi settings are not a JSON object."""

    def __init__(self, username: str, reason: str) -> None:
        super().__init__(f"stored settings of {username} are unreadable: {reason}")


class ChallengeRefused(InstagramStepError):
    """instagrapi tried to ask for a challenge code or a new password."""

    def __init__(self) -> None:
        super().__init__("barter never answers challenges; the owner must act")


class TargetPrivate(InstagramStepError):
    """The target is private and not followed yet.

    barter delivers follows; on a private account a follow is only a request
    that its owner may never accept, so the order cannot be met.
    """

    def __init__(self, target: str) -> None:
        super().__init__(f"{target} is private: a follow would only be a request")


class TargetBlocked(InstagramStepError):
    """The account blocks the target, so it cannot follow it."""

    def __init__(self, target: str) -> None:
        super().__init__(f"the account blocks {target}")


class ActionNotApplied(InstagramStepError):
    """Instagram answered the call but the relationship did not change.

    friendships/create answering with neither a follow nor a request is how
    Instagram quietly refuses actions while it limits an account.
    """

    def __init__(self, action: str) -> None:
        super().__init__(f"Instagram accepted the {action} call but did not apply it")


Matcher = type[BaseException] | str


@dataclass(frozen=True)
class OutcomeRule:
    """One row of the table: which failures it covers and what they mean."""

    # An exception class, or a class name for classes that some instagrapi
    # versions lack; names are compared along the exception's MRO.
    matches: Matcher
    outcome: StepOutcome
    error_code: str
    # Narrows the row to exceptions for which this returns True.
    when: Callable[[BaseException], bool] | None = None


def _status_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _reply_text(exc: BaseException) -> str:
    """What Instagram said, as far as the exception kept it."""
    parts = [str(exc)]
    for name in ("message", "raw_message", "error_type", "reason"):
        value = getattr(exc, name, None)
        if isinstance(value, str):
            parts.append(value)
    for name in ("checkpoint_url", "consent_data", "challenge"):
        if getattr(exc, name, None):
            parts.append(name)
    return " ".join(parts).casefold()


def _says(*words: str) -> Callable[[BaseException], bool]:
    def check(exc: BaseException) -> bool:
        text = _reply_text(exc)
        return any(word in text for word in words)

    return check


def _server_error(exc: BaseException) -> bool:
    code = _status_code(exc)
    return code is not None and 500 <= code <= 599


def _too_many_requests(exc: BaseException) -> bool:
    return _status_code(exc) == 429


NEEDS_OWNER = StepOutcome.ACCOUNT_NEEDS_OWNER
THROTTLED = StepOutcome.THROTTLED
TARGET_INVALID = StepOutcome.TARGET_INVALID
TRANSIENT = StepOutcome.TRANSIENT

OUTCOME_RULES: tuple[OutcomeRule, ...] = (
    # The executor's own failures.
    OutcomeRule(CallTimedOut, TRANSIENT, "call_timeout"),
    OutcomeRule(ClientBusy, TRANSIENT, "client_busy"),
    OutcomeRule(PasswordMissing, NEEDS_OWNER, "password_missing"),
    OutcomeRule(SettingsUnreadable, NEEDS_OWNER, "settings_unreadable"),
    OutcomeRule(ChallengeRefused, NEEDS_OWNER, "challenge_required"),
    OutcomeRule(TargetPrivate, TARGET_INVALID, "target_private"),
    OutcomeRule(TargetBlocked, TARGET_INVALID, "target_blocked"),
    OutcomeRule(ActionNotApplied, THROTTLED, "action_not_applied"),
    # Only the account's owner can help: challenges, checkpoints, logins.
    OutcomeRule(ig.AccountSuspended, NEEDS_OWNER, "account_suspended"),
    OutcomeRule(ig.ChallengeRequired, NEEDS_OWNER, "challenge_required"),
    OutcomeRule(ig.ChallengeSelfieCaptcha, NEEDS_OWNER, "challenge_selfie_captcha"),
    OutcomeRule(ig.ChallengeUnknownStep, NEEDS_OWNER, "challenge_unknown_step"),
    OutcomeRule(ig.ChallengeRedirection, NEEDS_OWNER, "challenge_redirection"),
    OutcomeRule(ig.ChallengeError, NEEDS_OWNER, "challenge_form"),
    OutcomeRule(ig.CaptchaChallengeRequired, NEEDS_OWNER, "captcha_required"),
    OutcomeRule("CheckpointRequired", NEEDS_OWNER, "checkpoint_required"),
    OutcomeRule("ConsentRequired", NEEDS_OWNER, "consent_required"),
    OutcomeRule(ig.TwoFactorRequired, NEEDS_OWNER, "two_factor_required"),
    OutcomeRule(ig.BadPassword, NEEDS_OWNER, "bad_password"),
    OutcomeRule(ig.BadCredentials, NEEDS_OWNER, "bad_credentials"),
    OutcomeRule(ig.ReloginAttemptExceeded, NEEDS_OWNER, "relogin_attempts_exceeded"),
    # Reached only after the executor's one fresh login was rejected too.
    OutcomeRule(ig.LoginRequired, NEEDS_OWNER, "login_required"),
    OutcomeRule(ig.ClientLoginRequired, NEEDS_OWNER, "login_required"),
    OutcomeRule(ig.ClientUnauthorizedError, NEEDS_OWNER, "unauthorized"),
    # Instagram wants the account to slow down.
    OutcomeRule(ig.PleaseWaitFewMinutes, THROTTLED, "please_wait"),
    OutcomeRule(ig.FeedbackRequired, THROTTLED, "feedback_required"),
    OutcomeRule(ig.RateLimitError, THROTTLED, "rate_limited"),
    OutcomeRule(ig.SentryBlock, THROTTLED, "sentry_block"),
    OutcomeRule(ig.ClientThrottledError, THROTTLED, "too_many_requests"),
    # instagrapi's reading of "the username you entered doesn't appear to
    # belong to an account" at login; the address is blocked, not the account.
    OutcomeRule(ig.ProxyAddressIsBlocked, THROTTLED, "address_blocked"),
    # The target cannot be acted on.
    OutcomeRule(ig.UserNotFound, TARGET_INVALID, "user_not_found"),
    OutcomeRule(ig.PrivateAccount, TARGET_INVALID, "target_private"),
    OutcomeRule(ig.InvalidTargetUser, TARGET_INVALID, "invalid_target"),
    # Replies that instagrapi leaves unclassified but that name the account's
    # problem (checkpoint_required and consent_required in 3.2.2).
    OutcomeRule(
        ig.ClientError, NEEDS_OWNER, "checkpoint_required", _says("checkpoint")
    ),
    OutcomeRule(ig.ClientError, NEEDS_OWNER, "consent_required", _says("consent")),
    OutcomeRule(ig.ClientError, NEEDS_OWNER, "challenge_required", _says("challenge")),
    OutcomeRule(ig.ClientError, THROTTLED, "please_wait", _says("please wait")),
    OutcomeRule(ig.ClientError, THROTTLED, "too_many_requests", _too_many_requests),
    # A 403 that is not a login, challenge or wait: Instagram refuses this
    # account's session, and retrying the same session will not change that.
    OutcomeRule(ig.ClientForbiddenError, NEEDS_OWNER, "forbidden"),
    # A 404 on an endpoint about the target: the target is gone. (instagrapi
    # turns a bare "Not Found" body into ChallengeRequired above.)
    OutcomeRule(ig.ClientNotFoundError, TARGET_INVALID, "not_found"),
    # The network or Instagram's servers let us down; try again later.
    OutcomeRule(ig.ClientJSONDecodeError, TRANSIENT, "unparsable_reply"),
    OutcomeRule(json.JSONDecodeError, TRANSIENT, "unparsable_reply"),
    OutcomeRule(ig.ClientConnectionError, TRANSIENT, "connection_error"),
    OutcomeRule(ig.ClientIncompleteReadError, TRANSIENT, "incomplete_read"),
    OutcomeRule(ig.ClientRequestTimeout, TRANSIENT, "request_timeout"),
    OutcomeRule(requests.Timeout, TRANSIENT, "request_timeout"),
    OutcomeRule(requests.ConnectionError, TRANSIENT, "connection_error"),
    OutcomeRule(requests.RequestException, TRANSIENT, "transport_error"),
    # instagrapi's curl transport turns curl's errors into requests' own; these
    # rows catch any that slip through.
    OutcomeRule(curl.Timeout, TRANSIENT, "request_timeout"),
    OutcomeRule(CurlError, TRANSIENT, "connection_error"),
    OutcomeRule(ig.ClientError, TRANSIENT, "server_error", _server_error),
    OutcomeRule(ig.ClientGraphqlError, TRANSIENT, "graphql_error"),
    OutcomeRule(ig.ClientBadRequestError, TRANSIENT, "bad_request"),
    OutcomeRule(ig.UnknownError, TRANSIENT, "unknown_instagram_error"),
    OutcomeRule(ig.ClientError, TRANSIENT, "instagram_error"),
    OutcomeRule(TimeoutError, TRANSIENT, "timeout"),
    OutcomeRule(ConnectionError, TRANSIENT, "connection_error"),
)

# Anything no rule covers is retried: a bug or a new instagrapi failure must
# not park accounts or fail jobs for good.
UNKNOWN_ERROR_CODE = "unexpected_error"


def _rule_matches(rule: OutcomeRule, exc: BaseException) -> bool:
    if isinstance(rule.matches, str):
        if rule.matches not in (cls.__name__ for cls in type(exc).__mro__):
            return False
    elif not isinstance(exc, rule.matches):
        return False
    return rule.when is None or rule.when(exc)


def rule_for(exc: BaseException) -> OutcomeRule | None:
    """The first row of the table covering `exc`, if any."""
    for rule in OUTCOME_RULES:
        if _rule_matches(rule, exc):
            return rule
    return None


# Values that look like credentials wherever they appear: Instagram bearer
# tokens, encrypted passwords, and key=value / "key": "value" pairs.
_TOKEN_PATTERNS = (
    re.compile(r"Bearer\s+IGT:\d+:[A-Za-z0-9+/=_.%-]+"),
    re.compile(r"IGT:\d+:[A-Za-z0-9+/=_.%-]+"),
    re.compile(r"#PWD_[A-Z_]+:\d+:\d+:[A-Za-z0-9+/=]+"),
)
_SECRET_PAIR = re.compile(
    r"(?P<key>\b(?:sessionid|csrftoken|authorization|password|enc_password|"
    r"access_token|token|cookie|set-cookie)\b['\"]?\s*[:=]\s*['\"]?)"
    r"(?P<value>[^'\"\s;,&}]+)",
    re.IGNORECASE,
)
# Shorter values are too likely to appear by accident to be worth replacing.
_MIN_SECRET_CHARS = 4


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret and anything shaped like one redacted."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_CHARS:
            text = text.replace(secret, REDACTED)
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return _SECRET_PAIR.sub(lambda m: m.group("key") + REDACTED, text)


def describe(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """A one-line, secret-free account of `exc` for StepReport.error_message."""
    detail = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    text = scrub(text, secrets)
    if len(text) > ERROR_MESSAGE_MAX_CHARS:
        text = text[: ERROR_MESSAGE_MAX_CHARS - 3] + "..."
    return text


def outcome_for(exc: BaseException, secrets: Iterable[str] = ()) -> StepReport:
    """The StepReport for a step that failed with `exc`."""
    rule = rule_for(exc)
    if rule is None:
        return StepReport(
            outcome=StepOutcome.TRANSIENT,
            error_code=UNKNOWN_ERROR_CODE,
            error_message=describe(exc, secrets),
        )
    return StepReport(
        outcome=rule.outcome,
        error_code=rule.error_code[:ERROR_CODE_MAX_CHARS],
        error_message=describe(exc, secrets),
    )
