"""The instagram executor driving instagrapi's real Client over canned HTTP replies.

Nothing here reaches the network. instagrapi 3.2.2 sends through three
requests sessions per client: `client.private` (private API on i.instagram.com,
CAA login and graphql_www on b.i.instagram.com) with its own HTTP/2-over-curl
adapter mounted on "https://" and "http://", `client.public` (the password key
from i.instagram.com/api/v1/qe/sync/, web pages) and `client.graphql`, both
with a plain requests HTTPAdapter. `CannedInstagram` is a requests transport
adapter mounted on every one of those sessions, on the Instagram hosts' own
prefixes (longer, so they win over anything instagrapi mounts on "https://"
later) and on "https://" and "http://" (so an unforeseen host cannot reach a
real transport either). It answers from canned replies with real
`requests.Response` objects, and every test ends by checking that each request
was one it expected and that no other adapter is left on any session.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests
import structlog
from instagrapi import Client
from requests.adapters import BaseAdapter
from requests.cookies import extract_cookies_to_jar
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3 import HTTPHeaderDict
from urllib3.response import HTTPResponse

from hands_service.executor import AccountSession, JobContext, StepOutcome, StepReport
from hands_service.instagram import InstagramExecutor
from hands_service.instagram_outcomes import ChallengeRefused

FIXTURES = Path(__file__).parent / "fixtures" / "instagram"
REPLIES: dict[str, dict[str, Any]] = json.loads((FIXTURES / "replies.json").read_text())
STORED_SETTINGS: dict[str, Any] = json.loads(
    (FIXTURES / "stored_session_settings.json").read_text()
)
PASSWORD_KEY_PEM = (FIXTURES / "password_encryption_key.pem").read_bytes()
MAINTENANCE_HTML = (FIXTURES / "maintenance.html").read_text()

API = "https://i.instagram.com/api/v1/"
CAA = "https://b.i.instagram.com/api/v1/"
INSTAGRAM_HOSTS = {"i.instagram.com", "b.i.instagram.com", "www.instagram.com"}
MOUNT_PREFIXES = (
    "https://i.instagram.com/",
    "https://b.i.instagram.com/",
    "https://www.instagram.com/",
    "https://",
    "http://",
)

DONOR = "donor_a"
TARGET = "target_zz"
TARGET_ID = "2222"
PASSWORD = "correct-horse-battery-7"
STORED_SESSIONID = STORED_SETTINGS["authorization_data"]["sessionid"]
STORED_CSRF = STORED_SETTINGS["cookies"]["csrftoken"]
NEW_SESSIONID = "1111%3ANeWsEsSiOn9876543210fedcba%3A29%3AAYeNewTail"
NEW_CSRF = "NewCsrfTokenFromLogin0123456789"
NEW_AUTHORIZATION = (
    "Bearer IGT:2:"
    + base64.b64encode(
        json.dumps({"ds_user_id": "1111", "sessionid": NEW_SESSIONID}).encode()
    ).decode()
)
SECRETS = (PASSWORD, STORED_SESSIONID, STORED_CSRF, NEW_SESSIONID, NEW_CSRF)

USERNAMEINFO = API + f"users/{TARGET}/usernameinfo/"
FRIENDSHIP = API + f"friendships/show/{TARGET_ID}/"
FOLLOW = API + f"friendships/create/{TARGET_ID}/"
UNFOLLOW = API + f"friendships/destroy/{TARGET_ID}/"
LOGIN = (
    CAA + "bloks/async_action/com.bloks.www.bloks.caa.login.async.send_login_request/"
)


@dataclass(frozen=True)
class Reply:
    """One canned answer: a status, headers and body, or a failure to answer."""

    status: int = 200
    body: object = ""
    headers: tuple[tuple[str, str], ...] = ()
    error: Callable[[requests.PreparedRequest], BaseException] | None = None
    # Never answers; the thread is released when the test ends.
    hang: bool = False
    # Waits out the timeout the caller gave, then times out as a transport does.
    honour_timeout: bool = False


def canned(name: str) -> Reply:
    """The reply stored under `name` in fixtures/instagram/replies.json."""
    entry = REPLIES[name]
    return Reply(status=entry["status"], body=entry["body"])


def password_key_reply() -> Reply:
    """qe/sync's reply: the key instagrapi encrypts the password with."""
    return Reply(
        body={"status": "ok"},
        headers=(
            ("ig-set-password-encryption-key-id", "41"),
            (
                "ig-set-password-encryption-pub-key",
                base64.b64encode(PASSWORD_KEY_PEM).decode(),
            ),
        ),
    )


def login_success_reply() -> Reply:
    """The CAA login reply carrying a new session, as a Bloks action."""
    payload = {
        "login_response": json.dumps(
            {"logged_in_user": {"pk": 1111, "username": DONOR}, "status": "ok"}
        ),
        "headers": json.dumps({"IG-Set-Authorization": NEW_AUTHORIZATION}),
        "cookies": f"Set-Cookie: sessionid={NEW_SESSIONID}; csrftoken={NEW_CSRF}",
    }
    action = (
        "(bk.action.caa.HandleLoginResponse, " + json.dumps(json.dumps(payload)) + ")"
    )
    return Reply(body={"layout": {"bloks_payload": {"action": action}}, "status": "ok"})


def connection_reset(request: requests.PreparedRequest) -> BaseException:
    return requests.ConnectionError(
        ConnectionResetError(104, "Connection reset by peer"), request=request
    )


def _url_of(request: requests.PreparedRequest) -> str:
    parts = urlsplit(request.url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class CannedInstagram(BaseAdapter):
    """A requests transport adapter answering from canned replies only."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[tuple[str, str], list[Reply]] = {}
        self.seen: list[requests.PreparedRequest] = []
        self.timeouts: list[object] = []
        self.unexpected: list[str] = []
        self.clients: list[Client] = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    def on(self, method: str, url: str, *replies: Reply) -> None:
        """Answer `method url` with `replies` in turn, the last one for good."""
        self.routes[(method, url)] = list(replies)

    def calls(self, method: str, url: str) -> list[requests.PreparedRequest]:
        return [r for r in self.seen if r.method == method and _url_of(r) == url]

    def mount(self, client: Client) -> None:
        """Put this adapter in front of every session of `client`."""
        for session in (client.private, client.public, client.graphql):
            for prefix in MOUNT_PREFIXES:
                session.mount(prefix, self)
        self.clients.append(client)

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        url = _url_of(request)
        with self._lock:
            self.seen.append(request)
            self.timeouts.append(timeout)
            queue = self.routes.get((request.method, url))
            if urlsplit(url).hostname not in INSTAGRAM_HOSTS or not queue:
                self.unexpected.append(f"{request.method} {request.url}")
                raise requests.ConnectionError(
                    f"no canned reply for {url}", request=request
                )
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
        if reply.hang:
            self.release.wait(timeout=30)
            raise requests.ConnectionError(
                "released at the end of the test", request=request
            )
        if reply.honour_timeout:
            time.sleep(timeout[1] if isinstance(timeout, tuple) else timeout)
            raise requests.ReadTimeout(
                f"read timed out after {timeout}s", request=request
            )
        if reply.error is not None:
            raise reply.error(request)
        return self._response(request, reply)

    def close(self) -> None:
        pass

    def _response(
        self, request: requests.PreparedRequest, reply: Reply
    ) -> requests.Response:
        """A real Response, assembled the way requests' HTTPAdapter does it."""
        if isinstance(reply.body, str):
            body = reply.body.encode()
            content_type = "text/html; charset=utf-8"
        else:
            body = json.dumps(reply.body).encode()
            content_type = "application/json; charset=utf-8"
        pairs = [("Content-Type", content_type), *reply.headers]
        message = Message()
        for name, value in pairs:
            message[name] = value
        raw = HTTPResponse(
            body=BytesIO(body),
            headers=HTTPHeaderDict(pairs),
            status=reply.status,
            reason=HTTPStatus(reply.status).phrase,
            request_method=request.method,
            preload_content=False,
            decode_content=False,
            original_response=SimpleNamespace(
                msg=message, close=lambda: None, isclosed=lambda: True
            ),
        )
        response = requests.Response()
        response.status_code = reply.status
        response.headers = CaseInsensitiveDict(raw.headers)
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = raw
        response.reason = raw.reason
        response.url = request.url
        extract_cookies_to_jar(response.cookies, request, raw)
        response.request = request
        response.connection = self
        return response

    def assert_sealed(self) -> None:
        """Every request was expected, and nothing but this adapter can send."""
        assert self.unexpected == []
        for client in self.clients:
            for session in (client.private, client.public, client.graphql):
                for prefix, adapter in session.adapters.items():
                    assert getattr(adapter, "inner", adapter) is self, prefix
                for url in ("https://example.invalid/", "http://example.invalid/"):
                    adapter = session.get_adapter(url)
                    assert getattr(adapter, "inner", adapter) is self, url


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any Python-level connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a test tried to reach the network: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def instagram() -> Iterator[CannedInstagram]:
    transport = CannedInstagram()
    yield transport
    transport.release.set()
    transport.assert_sealed()


@pytest.fixture
def make_executor(
    instagram: CannedInstagram,
) -> Iterator[Callable[..., InstagramExecutor]]:
    executors: list[InstagramExecutor] = []

    def make(**options: Any) -> InstagramExecutor:
        options = {
            "call_timeout_s": 5.0,
            "request_pause_s": 0.0,
            "retry_backoff_factor": 0.0,
            "prepare_client": instagram.mount,
            **options,
        }
        executor = InstagramExecutor(**options)
        executors.append(executor)
        return executor

    yield make
    instagram.release.set()
    for executor in executors:
        asyncio.run(executor.close())


@pytest.fixture
def executor(make_executor: Callable[..., InstagramExecutor]) -> InstagramExecutor:
    return make_executor()


def donor(
    settings: dict[str, Any] | None = STORED_SETTINGS,
    password: str = PASSWORD,
    username: str = DONOR,
) -> AccountSession:
    return AccountSession(
        username=username,
        settings=json.dumps(settings).encode() if settings else b"",
        password=password,
    )


def new_job(job_id: str = "job-1") -> JobContext:
    return JobContext(job_id=job_id, target=TARGET)


def follow(
    executor: InstagramExecutor,
    account: AccountSession | None = None,
    job: JobContext | None = None,
) -> StepReport:
    return asyncio.run(executor.follow(job or new_job(), account or donor()))


def unfollow(
    executor: InstagramExecutor, account: AccountSession | None = None
) -> StepReport:
    return asyncio.run(executor.unfollow(new_job(), account or donor()))


def serve_target(
    instagram: CannedInstagram,
    user: str = "user_public",
    friendship: str = "friendship_none",
) -> None:
    instagram.on("GET", USERNAMEINFO, canned(user))
    instagram.on("GET", FRIENDSHIP, canned(friendship))


def serve_login(instagram: CannedInstagram, login: Reply | None = None) -> None:
    """Canned replies for instagrapi's whole CAA password login."""
    instagram.on(
        "POST", "https://b.i.instagram.com/graphql_www", canned("usdid_registered")
    )
    instagram.on(
        "POST",
        CAA + "bloks/async_action/com.bloks.www.bloks.caa.login."
        "process_client_data_and_redirect/",
        canned("caa_client_data"),
    )
    instagram.on(
        "POST",
        CAA + "attestation/create_android_keystore/",
        canned("attestation_keystore"),
    )
    instagram.on(
        "POST",
        CAA + "bloks/async_action/com.bloks.www.caa.login.oauth.token.fetch.async/",
        canned("caa_oauth_token"),
    )
    instagram.on("GET", API + "qe/sync/", password_key_reply())
    instagram.on("POST", LOGIN, login or login_success_reply())
    instagram.on("POST", API + "feed/reels_tray/", canned("reels_tray"))
    instagram.on("POST", API + "feed/timeline/", canned("timeline"))


def assert_report(
    report: StepReport, outcome: StepOutcome, error_code: str = ""
) -> None:
    assert (report.outcome, report.error_code) == (outcome, error_code), report
    assert len(report.error_code) <= 64
    assert len(report.error_message) <= 1000
    for secret in SECRETS:
        assert secret not in report.error_message
        assert unquote(secret) not in report.error_message


def authorization_of(request: requests.PreparedRequest) -> dict[str, Any]:
    header = request.headers["Authorization"]
    assert header.startswith("Bearer IGT:2:")
    return json.loads(base64.b64decode(header.rsplit(":", 1)[-1]))


# Sessions and logins


def test_stored_session_is_used_without_login(instagram, executor):
    """A stored session is sent as it is: no login and nothing refreshed."""
    serve_target(instagram)
    instagram.on("POST", FOLLOW, canned("follow_created"))

    report = follow(executor)

    assert_report(report, StepOutcome.DONE)
    assert instagram.calls("POST", LOGIN) == []
    assert all(urlsplit(r.url).hostname == "i.instagram.com" for r in instagram.seen)
    for request in instagram.seen:
        assert authorization_of(request)["sessionid"] == STORED_SESSIONID
        assert request.headers["X-IG-Device-ID"] == STORED_SETTINGS["uuids"]["uuid"]
    assert executor.take_refreshed_sessions() == []


def test_client_is_reused_across_jobs(instagram, executor):
    """Two jobs of one account share one client; each job looks its target up."""
    serve_target(instagram)
    instagram.on("POST", FOLLOW, canned("follow_created"))

    first = follow(executor, job=new_job("job-1"))
    second = follow(executor, job=new_job("job-2"))

    assert_report(first, StepOutcome.DONE)
    assert_report(second, StepOutcome.DONE)
    assert len(instagram.clients) == 1
    assert len(instagram.calls("GET", USERNAMEINFO)) == 2


def test_target_is_looked_up_once_per_job(instagram, executor):
    """The target's id is resolved once and reused by the job's other steps."""
    serve_target(instagram)
    instagram.on("POST", FOLLOW, canned("follow_created"))
    job = new_job()

    first = follow(executor, donor(username="donor_a"), job)
    second = follow(executor, donor(username="donor_b"), job)

    assert_report(first, StepOutcome.DONE)
    assert_report(second, StepOutcome.DONE)
    assert len(instagram.calls("GET", USERNAMEINFO)) == 1
    assert len(instagram.calls("POST", FOLLOW)) == 2
    assert job.scratch["instagram_target_id"] == TARGET_ID


def test_rejected_session_logs_in_once_and_refreshes_settings(instagram, executor):
    """login_required leads to one password login, a rerun, and new settings."""
    instagram.on("GET", USERNAMEINFO, canned("login_required"), canned("user_public"))
    instagram.on("GET", FRIENDSHIP, canned("friendship_none"))
    instagram.on("POST", FOLLOW, canned("follow_created"))
    serve_login(instagram)

    report = follow(executor)

    assert_report(report, StepOutcome.DONE)
    assert len(instagram.calls("POST", LOGIN)) == 1
    assert (
        authorization_of(instagram.calls("POST", FOLLOW)[0])["sessionid"]
        == NEW_SESSIONID
    )
    [refreshed] = executor.take_refreshed_sessions()
    assert refreshed.username == DONOR
    assert refreshed.password == ""
    settings = json.loads(refreshed.settings)
    assert settings["authorization_data"]["sessionid"] == NEW_SESSIONID
    assert settings["uuids"] == STORED_SETTINGS["uuids"]
    assert executor.take_refreshed_sessions() == []


def test_refreshed_settings_coming_back_keep_the_client(instagram, executor):
    """Brain handing back the settings the executor produced keeps its client."""
    instagram.on("GET", USERNAMEINFO, canned("login_required"), canned("user_public"))
    instagram.on("GET", FRIENDSHIP, canned("friendship_none"))
    instagram.on("POST", FOLLOW, canned("follow_created"))
    serve_login(instagram)
    follow(executor)
    [refreshed] = executor.take_refreshed_sessions()

    report = follow(
        executor, donor(settings=json.loads(refreshed.settings)), new_job("job-2")
    )

    assert_report(report, StepOutcome.DONE)
    assert len(instagram.clients) == 1
    assert len(instagram.calls("POST", LOGIN)) == 1


def test_session_rejected_after_login_needs_owner(instagram, executor):
    """A session rejected even after the one fresh login parks the account."""
    instagram.on("GET", USERNAMEINFO, canned("login_required"))
    serve_login(instagram)

    report = follow(executor)

    assert_report(report, StepOutcome.ACCOUNT_NEEDS_OWNER, "login_required")
    assert len(instagram.calls("POST", LOGIN)) == 1


def test_rejected_session_without_password_needs_owner(instagram, executor):
    """With no password, a rejected session cannot be renewed: owner needed."""
    instagram.on("GET", USERNAMEINFO, canned("login_required"))

    report = follow(executor, donor(password=""))

    assert_report(report, StepOutcome.ACCOUNT_NEEDS_OWNER, "password_missing")
    assert instagram.calls("POST", LOGIN) == []


def test_new_account_gets_a_device_identity_and_logs_in(instagram, executor):
    """An account without settings gets device ids once, logs in, and keeps them."""
    serve_target(instagram)
    instagram.on("POST", FOLLOW, canned("follow_created"))
    serve_login(instagram)

    report = follow(executor, donor(settings=None))

    assert_report(report, StepOutcome.DONE)
    assert len(instagram.calls("POST", LOGIN)) == 1
    [refreshed] = executor.take_refreshed_sessions()
    settings = json.loads(refreshed.settings)
    assert settings["authorization_data"]["sessionid"] == NEW_SESSIONID
    device_ids = {
        r.headers["X-IG-Device-ID"]
        for r in instagram.seen
        if "X-IG-Device-ID" in r.headers
    }
    assert device_ids == {settings["uuids"]["uuid"]}


def test_new_account_without_password_still_gets_its_device_identity(
    instagram, executor
):
    """Without settings or password: owner needed, but the new device ids are kept."""
    report = follow(executor, donor(settings=None, password=""))

    assert_report(report, StepOutcome.ACCOUNT_NEEDS_OWNER, "password_missing")
    assert instagram.seen == []
    [refreshed] = executor.take_refreshed_sessions()
    assert json.loads(refreshed.settings)["uuids"]["uuid"]


def test_unreadable_settings_need_owner(instagram, executor):
    """Stored settings that are not JSON are reported, not replaced."""
    account = AccountSession(username=DONOR, settings=b"{not json", password=PASSWORD)

    report = follow(executor, account)

    assert_report(report, StepOutcome.ACCOUNT_NEEDS_OWNER, "settings_unreadable")
    assert instagram.seen == []
    assert executor.take_refreshed_sessions() == []


# Follow and unfollow


def test_already_following_sends_nothing(instagram, executor):
    """An existing follow makes the step ALREADY_DONE without a follow call."""
    serve_target(instagram, friendship="friendship_following")

    assert_report(follow(executor), StepOutcome.ALREADY_DONE)
    assert instagram.calls("POST", FOLLOW) == []


def test_pending_follow_request_sends_nothing(instagram, executor):
    """A pending request to a private target counts as done: nothing is sent."""
    serve_target(instagram, user="user_private", friendship="friendship_requested")

    assert_report(follow(executor), StepOutcome.ALREADY_DONE)
    assert instagram.calls("POST", FOLLOW) == []


def test_private_target_is_invalid(instagram, executor):
    """An unfollowed private target is invalid: a follow would only be a request."""
    serve_target(instagram, user="user_private")

    assert_report(follow(executor), StepOutcome.TARGET_INVALID, "target_private")
    assert instagram.calls("POST", FOLLOW) == []


def test_blocked_target_is_invalid(instagram, executor):
    """A target the account blocks cannot be followed by it."""
    serve_target(instagram, friendship="friendship_blocking")

    assert_report(follow(executor), StepOutcome.TARGET_INVALID, "target_blocked")
    assert instagram.calls("POST", FOLLOW) == []


def test_user_not_found_is_invalid(instagram, executor):
    """A username Instagram does not know fails the job."""
    instagram.on("GET", USERNAMEINFO, canned("user_not_found"))

    assert_report(follow(executor), StepOutcome.TARGET_INVALID, "user_not_found")


def test_follow_without_effect_is_throttled(instagram, executor):
    """A follow call answered without a follow is Instagram quietly limiting."""
    serve_target(instagram)
    instagram.on("POST", FOLLOW, canned("follow_ignored"))

    assert_report(follow(executor), StepOutcome.THROTTLED, "action_not_applied")


def test_unfollow_of_followed_target_is_done(instagram, executor):
    """Unfollowing a followed target sends one unfollow call."""
    serve_target(instagram, friendship="friendship_following")
    instagram.on("POST", UNFOLLOW, canned("unfollow_destroyed"))

    assert_report(unfollow(executor), StepOutcome.DONE)
    assert len(instagram.calls("POST", UNFOLLOW)) == 1


def test_unfollow_of_unfollowed_target_sends_nothing(instagram, executor):
    """Unfollowing a target that is not followed is ALREADY_DONE."""
    serve_target(instagram)

    assert_report(unfollow(executor), StepOutcome.ALREADY_DONE)
    assert instagram.calls("POST", UNFOLLOW) == []


# Challenges and other account problems

CHALLENGES = [
    ("challenge_legacy", "challenge_required"),
    ("challenge_native", "challenge_required"),
    ("challenge_bloks_redirect", "challenge_required"),
    ("challenge_masked", "challenge_required"),
    ("account_suspended", "account_suspended"),
    ("checkpoint_required", "checkpoint_required"),
    ("checkpoint_status_fail", "checkpoint_required"),
    ("consent_required", "consent_required"),
]


def assert_no_challenge_answered(instagram: CannedInstagram) -> None:
    assert not [
        r for r in instagram.seen if "challenge" in r.url or "/bloks/apps/" in r.url
    ]


@pytest.mark.parametrize(("reply", "error_code"), CHALLENGES)
def test_challenge_during_follow_needs_owner(instagram, executor, reply, error_code):
    """A challenge, checkpoint or consent on the follow call parks the account."""
    serve_target(instagram)
    instagram.on("POST", FOLLOW, canned(reply))

    assert_report(follow(executor), StepOutcome.ACCOUNT_NEEDS_OWNER, error_code)
    assert len(instagram.calls("POST", FOLLOW)) == 1
    assert_no_challenge_answered(instagram)


@pytest.mark.parametrize(("reply", "error_code"), CHALLENGES)
def test_challenge_during_lookup_needs_owner(instagram, executor, reply, error_code):
    """A challenge on the target lookup surfaces as the account's problem."""
    instagram.on("GET", USERNAMEINFO, canned(reply))

    assert_report(follow(executor), StepOutcome.ACCOUNT_NEEDS_OWNER, error_code)
    assert_no_challenge_answered(instagram)


@pytest.mark.parametrize(
    ("reply", "error_code"),
    [
        ("challenge_legacy", "challenge_required"),
        ("challenge_bloks_redirect", "challenge_required"),
        ("checkpoint_required", "checkpoint_required"),
        ("bad_password", "bad_password"),
        ("two_factor_required", "two_factor_required"),
    ],
)
def test_login_problem_needs_owner(instagram, executor, reply, error_code):
    """A challenge, bad password or two-factor prompt at login parks the account."""
    instagram.on("GET", USERNAMEINFO, canned("login_required"))
    serve_login(instagram, login=canned(reply))

    assert_report(follow(executor), StepOutcome.ACCOUNT_NEEDS_OWNER, error_code)
    assert len(instagram.calls("POST", LOGIN)) == 1
    assert executor.take_refreshed_sessions() == []
    assert_no_challenge_answered(instagram)


def test_challenge_prompts_refuse_to_ask(instagram, executor):
    """instagrapi's code and password prompts raise instead of reading stdin."""
    serve_target(instagram, friendship="friendship_following")
    follow(executor)
    [client] = instagram.clients

    assert client.with_challenge_flow is False
    with pytest.raises(ChallengeRefused):
        client.challenge_code_handler(DONOR, 1)
    with pytest.raises(ChallengeRefused):
        client.change_password_handler(DONOR)


def test_account_with_problem_gets_a_fresh_client(instagram, executor):
    """After ACCOUNT_NEEDS_OWNER the next step starts from Brain's settings."""
    instagram.on("GET", USERNAMEINFO, canned("challenge_legacy"), canned("user_public"))
    instagram.on("GET", FRIENDSHIP, canned("friendship_following"))

    assert_report(
        follow(executor), StepOutcome.ACCOUNT_NEEDS_OWNER, "challenge_required"
    )
    assert_report(follow(executor, job=new_job("job-2")), StepOutcome.ALREADY_DONE)
    assert len(instagram.clients) == 2


# Throttling

THROTTLES = [
    ("feedback_required", "feedback_required"),
    ("please_wait", "please_wait"),
    ("rate_limit_error", "rate_limited"),
    ("too_many_requests", "too_many_requests"),
]


@pytest.mark.parametrize(("reply", "error_code"), THROTTLES)
def test_throttle_on_follow(instagram, executor, reply, error_code):
    """Feedback required, please wait, rate limits and 429s throttle the account."""
    serve_target(instagram)
    instagram.on("POST", FOLLOW, canned(reply))

    assert_report(follow(executor), StepOutcome.THROTTLED, error_code)


def test_429s_are_not_retried_by_the_private_transport(instagram, executor):
    """429s on the private API become THROTTLED after a single request.

    instagrapi's retries live in its transport adapters: its default private
    transport (HTTP/2 over curl) never retries, and the urllib3 retries of
    its "requests" transports sit inside the adapter this test replaces.
    """
    instagram.on("GET", USERNAMEINFO, canned("too_many_requests"))

    assert_report(follow(executor), StepOutcome.THROTTLED, "too_many_requests")
    assert len(instagram.calls("GET", USERNAMEINFO)) == 1


# Transient trouble


@pytest.mark.parametrize(
    ("reply", "error_code"),
    [
        (canned("bad_gateway"), "server_error"),
        (canned("service_unavailable"), "server_error"),
        (Reply(body=MAINTENANCE_HTML), "unparsable_reply"),
        (Reply(error=connection_reset), "connection_error"),
        (Reply(body={"status": "ok"}), "unexpected_error"),
    ],
    ids=[
        "502_html",
        "503_json",
        "html_instead_of_json",
        "connection_reset",
        "reply_without_user",
    ],
)
def test_transient_trouble_on_lookup(instagram, executor, reply, error_code):
    """5xx, HTML, a reset connection or an odd reply are retried later."""
    instagram.on("GET", USERNAMEINFO, reply)

    assert_report(follow(executor), StepOutcome.TRANSIENT, error_code)


def test_reply_echoing_the_session_is_scrubbed(instagram, executor):
    """A reply quoting the session, cookie or password reaches Brain redacted."""
    echo = f"bad session {STORED_SESSIONID} csrftoken={STORED_CSRF} pw {PASSWORD}"
    instagram.on("GET", USERNAMEINFO, Reply(400, {"message": echo, "status": "fail"}))

    report = follow(executor)

    assert_report(report, StepOutcome.TRANSIENT, "unknown_instagram_error")
    assert report.error_message.count("[redacted]") == 3


def test_unexpected_error_names_its_type(instagram, executor):
    """An exception no rule covers is TRANSIENT, with its type and message."""
    instagram.on("GET", USERNAMEINFO, Reply(body={"status": "ok"}))

    report = follow(executor)

    assert_report(report, StepOutcome.TRANSIENT, "unexpected_error")
    assert report.error_message == "KeyError: 'user'"


def test_transient_trouble_on_follow(instagram, executor):
    """A reset connection on the follow call itself is TRANSIENT."""
    serve_target(instagram)
    instagram.on("POST", FOLLOW, Reply(error=connection_reset))

    assert_report(follow(executor), StepOutcome.TRANSIENT, "connection_error")


def test_call_that_never_answers_times_out(instagram, make_executor):
    """A hung request ends at barter's own deadline as TRANSIENT."""
    executor = make_executor(call_timeout_s=0.3, http_timeout_s=30.0)
    instagram.on("GET", USERNAMEINFO, Reply(hang=True))

    started = time.monotonic()
    report = follow(executor)

    assert time.monotonic() - started < 2.0
    assert_report(report, StepOutcome.TRANSIENT, "call_timeout")


def test_requests_carry_an_http_timeout(instagram, make_executor):
    """Every request gets the HTTP timeout; a transport timeout is TRANSIENT."""
    executor = make_executor(call_timeout_s=5.0, http_timeout_s=0.2)
    instagram.on("GET", USERNAMEINFO, Reply(honour_timeout=True))

    started = time.monotonic()
    report = follow(executor)

    assert time.monotonic() - started < 2.0
    assert_report(report, StepOutcome.TRANSIENT, "request_timeout")
    assert instagram.timeouts == [0.2]


# Logs


def test_logs_never_carry_secrets(instagram, make_executor, caplog, capfd):
    """Nothing logged by barter or instagrapi carries a password, session or cookie."""
    executor = make_executor()
    instagram.on("GET", USERNAMEINFO, canned("login_required"), canned("user_public"))
    instagram.on("GET", FRIENDSHIP, canned("friendship_none"))
    instagram.on(
        "POST", FOLLOW, canned("challenge_legacy"), Reply(error=connection_reset)
    )
    serve_login(instagram)
    caplog.set_level(logging.DEBUG)

    with structlog.testing.capture_logs() as events:
        reports = [follow(executor), follow(executor, job=new_job("job-2"))]

    assert [r.outcome for r in reports] == [
        StepOutcome.ACCOUNT_NEEDS_OWNER,
        StepOutcome.TRANSIENT,
    ]
    assert {e["event"] for e in events} >= {
        "instagram_session_rejected",
        "instagram_logged_in",
        "instagram_step_failed",
    }
    out, err = capfd.readouterr()
    logged = "\n".join(
        [repr(events), caplog.text, out, err]
        + [r.exc_text or "" for r in caplog.records]
    )
    sent_authorizations = {
        r.headers["Authorization"]
        for r in instagram.seen
        if "Authorization" in r.headers
    }
    assert sent_authorizations
    for secret in (*SECRETS, *sent_authorizations):
        assert secret not in logged
        assert unquote(secret) not in logged


def test_client_held_by_a_hung_call_is_reported_busy(instagram, make_executor):
    """While an abandoned call still holds the client, the next step is TRANSIENT."""
    executor = make_executor(call_timeout_s=0.3, http_timeout_s=30.0)
    instagram.on("GET", USERNAMEINFO, Reply(hang=True))

    first = follow(executor)
    second = follow(executor, job=new_job("job-2"))

    assert_report(first, StepOutcome.TRANSIENT, "call_timeout")
    assert_report(second, StepOutcome.TRANSIENT, "client_busy")
    assert len(instagram.calls("GET", USERNAMEINFO)) == 1
