"""The one table turning Instagram-call failures into step outcomes."""

from __future__ import annotations

import json
import re

import pytest
import requests
from curl_cffi.requests import exceptions as curl
from instagrapi import exceptions as ig

from hands_service.executor import StepOutcome
from hands_service.instagram_outcomes import (
    OUTCOME_RULES,
    ActionNotApplied,
    CallTimedOut,
    ClientBusy,
    PasswordMissing,
    TargetBlocked,
    TargetPrivate,
    describe,
    outcome_for,
    scrub,
)

NEEDS_OWNER = StepOutcome.ACCOUNT_NEEDS_OWNER
THROTTLED = StepOutcome.THROTTLED
TARGET_INVALID = StepOutcome.TARGET_INVALID
TRANSIENT = StepOutcome.TRANSIENT


class CheckpointRequired(ig.PrivateError):
    """Shaped like a class a later instagrapi may add."""


class ConsentRequired(ig.PrivateError):
    """Shaped like a class a later instagrapi may add."""


def _response(status: int) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    return response


CASES = [
    (
        ig.ChallengeRequired(message="challenge_required"),
        NEEDS_OWNER,
        "challenge_required",
    ),
    (ig.ChallengeUnknownStep("unknown step"), NEEDS_OWNER, "challenge_unknown_step"),
    (ig.ChallengeSelfieCaptcha("selfie"), NEEDS_OWNER, "challenge_selfie_captcha"),
    (ig.SelectContactPointRecoveryForm("form"), NEEDS_OWNER, "challenge_form"),
    (ig.RecaptchaChallengeForm("form"), NEEDS_OWNER, "challenge_form"),
    (ig.AccountSuspended("suspended"), NEEDS_OWNER, "account_suspended"),
    (CheckpointRequired("checkpoint"), NEEDS_OWNER, "checkpoint_required"),
    (ConsentRequired("consent"), NEEDS_OWNER, "consent_required"),
    (
        ig.UnknownError(message="checkpoint_required"),
        NEEDS_OWNER,
        "checkpoint_required",
    ),
    (ig.UnknownError(message="consent_required"), NEEDS_OWNER, "consent_required"),
    (ig.UnknownError(message="challenge_required"), NEEDS_OWNER, "challenge_required"),
    (ig.ClientError(message="checkpoint_required"), NEEDS_OWNER, "checkpoint_required"),
    (ig.LoginRequired(message="login_required"), NEEDS_OWNER, "login_required"),
    (ig.BadPassword("bad password"), NEEDS_OWNER, "bad_password"),
    (ig.TwoFactorRequired("two factor"), NEEDS_OWNER, "two_factor_required"),
    (ig.ReloginAttemptExceeded(), NEEDS_OWNER, "relogin_attempts_exceeded"),
    (ig.ClientForbiddenError("forbidden"), NEEDS_OWNER, "forbidden"),
    (PasswordMissing("donor_a"), NEEDS_OWNER, "password_missing"),
    (ig.PleaseWaitFewMinutes("Please wait a few minutes"), THROTTLED, "please_wait"),
    (ig.FeedbackRequired("feedback_required"), THROTTLED, "feedback_required"),
    (ig.RateLimitError("rate limited"), THROTTLED, "rate_limited"),
    (
        ig.ClientThrottledError("429", response=_response(429)),
        THROTTLED,
        "too_many_requests",
    ),
    (ig.SentryBlock("sentry"), THROTTLED, "sentry_block"),
    (ig.UserNotFound("User not found"), TARGET_INVALID, "user_not_found"),
    (
        ig.PrivateAccount("Not authorized to view user"),
        TARGET_INVALID,
        "target_private",
    ),
    (ig.InvalidTargetUser("Invalid target user"), TARGET_INVALID, "invalid_target"),
    (ig.ClientConnectionError("reset"), TRANSIENT, "connection_error"),
    (ig.ClientJSONDecodeError("JSONDecodeError"), TRANSIENT, "unparsable_reply"),
    (
        json.JSONDecodeError("Expecting value", "<html>", 0),
        TRANSIENT,
        "unparsable_reply",
    ),
    (requests.ReadTimeout("read timed out"), TRANSIENT, "request_timeout"),
    (requests.ConnectTimeout("connect timed out"), TRANSIENT, "request_timeout"),
    (requests.ConnectionError("reset"), TRANSIENT, "connection_error"),
    (
        ig.ClientError("502 Bad Gateway", response=_response(502)),
        TRANSIENT,
        "server_error",
    ),
    (ig.ClientError("boom", code=500), TRANSIENT, "server_error"),
    (
        ig.UnknownError(message="counter get error"),
        TRANSIENT,
        "unknown_instagram_error",
    ),
    (CallTimedOut("user_follow", 30.0), TRANSIENT, "call_timeout"),
    (ClientBusy("donor_a"), TRANSIENT, "client_busy"),
    (curl.Timeout("curl timed out"), TRANSIENT, "request_timeout"),
    (curl.ConnectionError("curl reset"), TRANSIENT, "connection_error"),
    (TargetPrivate("target_zz"), TARGET_INVALID, "target_private"),
    (TargetBlocked("target_zz"), TARGET_INVALID, "target_blocked"),
    (ActionNotApplied("follow"), THROTTLED, "action_not_applied"),
    (ValueError("boom"), TRANSIENT, "unexpected_error"),
]


@pytest.mark.parametrize(
    ("exc", "outcome", "error_code"),
    CASES,
    ids=[f"{type(exc).__name__}-{code}" for exc, _, code in CASES],
)
def test_failure_maps_to_outcome(exc, outcome, error_code):
    """Each kind of failure gets the outcome and code of its table row."""
    report = outcome_for(exc)

    assert (report.outcome, report.error_code) == (outcome, error_code)
    assert report.error_message.startswith(type(exc).__name__)


def test_unknown_failure_names_its_type_and_message():
    """An exception no row covers is TRANSIENT, described by type and message."""
    report = outcome_for(KeyError("user"))

    assert report.outcome is TRANSIENT
    assert report.error_message == "KeyError: 'user'"


def test_error_codes_are_short_snake_case():
    """Every code in the table fits StepReport.error_code's contract."""
    for rule in OUTCOME_RULES:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", rule.error_code), rule
        assert len(rule.error_code) <= 64


def test_known_secrets_are_scrubbed():
    """Passwords, session ids and cookies given as secrets never survive."""
    exc = ig.ClientError("failed for sessionid 1111%3Asecret99 with pw hunter2hunter2")

    message = describe(exc, secrets=["1111%3Asecret99", "hunter2hunter2"])

    assert "secret99" not in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer IGT:2:eyJkc191c2VyX2lkIjoiMTExMSJ9",
        "cookie sessionid=1111%3AabcDEF123; csrftoken=zzzYYYxxx",
        "{'sessionid': '1111%3AabcDEF123', 'csrftoken': 'zzzYYYxxx'}",
        '"enc_password": "#PWD_INSTAGRAM:4:1700000000:QUJDREVGRw=="',
    ],
)
def test_secret_shapes_are_scrubbed_without_being_known(text):
    """Bearer tokens, cookies and encrypted passwords are redacted by shape."""
    scrubbed = scrub(text)

    for leaked in ("eyJkc191c2Vy", "abcDEF123", "zzzYYYxxx", "QUJDREVGRw"):
        assert leaked not in scrubbed
    assert "[redacted]" in scrubbed


def test_long_messages_are_cut_to_the_wire_limit():
    """error_message never exceeds the 1000 characters the proto allows."""
    report = outcome_for(ig.UnknownError(message="x" * 5000))

    assert len(report.error_message) == 1000
