"""Talking to Brain's JobService: the channel, the calls, their errors.

Every gRPC failure leaves this module as one of three typed errors, decided
in `_translate`: `LeaseLost` (the job is no longer ours), `BrainUnavailable`
(worth retrying after a backoff) or `BrainRejected` (retrying will not help).
A status that CompleteJobs reports for one completion of a batch goes through
the same `_translate`, so a caller cannot tell a batched completion from a
lone one.

Completions are batched: `BrainClient.complete` queues its request and a
`CompletionBatcher` sends everything queued in one CompleteJobs call, while
the requests that arrive meanwhile wait for the next call.
"""

import asyncio
import ipaddress
import json
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from google.protobuf.duration_pb2 import Duration

from barter.v1 import jobs_pb2, jobs_pb2_grpc
from hands_service.config import ConfigError, HandsConfig, HandsError

log = structlog.get_logger("hands_service.brain_client")

# A long-poll is held up to its wait; this much more covers the reply's trip.
CLAIM_GRACE_S = 10.0
# Brain's limits: jobs per ClaimJob reply, completions per CompleteJobs call.
MAX_CLAIM_BATCH = 64
MAX_COMPLETE_BATCH = 256
# Bytes of completions per CompleteJobs call: well under the Brain's default
# 4 MiB message limit, so that refreshed sessions (up to 64 KiB each) riding
# on many completions never make a call too large to be accepted.
MAX_COMPLETE_BATCH_BYTES = 1024 * 1024

_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        # Only the server cancels on its own (e.g. while shutting down); our own
        # cancellations surface as asyncio.CancelledError instead.
        grpc.StatusCode.CANCELLED,
    }
)


class BrainUnavailable(HandsError):
    """Brain did not answer (down, restarting, overloaded, too slow)."""


class LeaseLost(HandsError):
    """Brain says our lease on the job is stale: stop it and do not complete it."""


class BrainRejected(HandsError):
    """Brain refused the call for a reason a retry will not change."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}")


# CompletionResult carries a status as its number (google.rpc.Code).
_STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


def _translate(code: grpc.StatusCode, details: str) -> HandsError:
    """The typed error for a non-OK status, of a call or of one batch item."""
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return LeaseLost(details)
    if code in _RETRYABLE:
        return BrainUnavailable(f"{code.name}: {details}")
    return BrainRejected(code, details)


def _call_error(exc: grpc.aio.AioRpcError) -> HandsError:
    return _translate(exc.code(), exc.details() or "")


class Backoff:
    """Exponential backoff with full jitter: each delay is uniform in [0, cap]."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0

    def next_delay_s(self) -> float:
        """The delay before the next try; the cap doubles on every failure."""
        cap = min(self.max_s, self.initial_s * 2 ** min(self.failures, 32))
        self.failures += 1
        return random.uniform(0, cap)

    def reset(self) -> None:
        """Start again from the initial delay, after a success."""
        self.failures = 0


# Spread calls over every address the target resolves to, skipping dead ones.
_ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def _split_host(address: str) -> tuple[str, str]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"BRAIN_URL {address!r} is not host:port")
    return host.strip("[]"), port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def channel_target(brain_url: str) -> tuple[str, list[str]]:
    """The gRPC target for BRAIN_URL, and the hosts it names.

    One address (or DNS name) is used as it is; a comma list of IPv4
    addresses becomes one `ipv4:` target so that round-robin spreads calls
    over the replicas and fails over when one dies.
    """
    if brain_url.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        rest = brain_url.split(":", 1)[1].lstrip("/")
        hosts = [_split_host(a)[0] for a in rest.split(",") if a]
        return brain_url, hosts
    addresses = [a.strip() for a in brain_url.split(",") if a.strip()]
    if len(addresses) == 1:
        return addresses[0], [_split_host(addresses[0])[0]]
    pairs = [_split_host(a) for a in addresses]
    literal = []
    for host, port in pairs:
        host = "127.0.0.1" if host == "localhost" else host
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(
                f"BRAIN_URL: list replicas as IPv4:port, or use one DNS name that "
                f"resolves to all of them ({host!r} is neither)"
            ) from None
        literal.append(f"{host}:{port}")
    return "ipv4:" + ",".join(literal), [h for h, _ in pairs]


def channel_credentials(config: HandsConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials from the configured files, or None for plaintext."""
    if not config.tls_ca_file:
        if config.tls_cert_file:
            raise ConfigError("HANDS_TLS_CERT_FILE needs HANDS_TLS_CA_FILE")
        return None
    try:
        ca = Path(config.tls_ca_file).read_bytes()
        key = Path(config.tls_key_file).read_bytes() if config.tls_key_file else None
        cert = Path(config.tls_cert_file).read_bytes() if config.tls_cert_file else None
    except OSError as exc:
        raise ConfigError(f"TLS file {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def check_connection_settings(config: HandsConfig) -> None:
    """Raise ConfigError for a target, TLS file or key that cannot work."""
    open_channel(config, dry=True)
    config.read_api_key()


def open_channel(config: HandsConfig, dry: bool = False) -> grpc.aio.Channel | None:
    """The one place the channel to Brain is made (`dry`: only check settings)."""
    target, hosts = channel_target(config.brain_url)
    credentials = channel_credentials(config)
    if credentials is None and not config.allow_insecure:
        remote = [h for h in hosts if not _is_loopback(h)]
        if remote:
            raise ConfigError(
                f"BRAIN_URL: {remote[0]} is not loopback and claims carry account "
                "sessions; set HANDS_TLS_CA_FILE (or HANDS_ALLOW_INSECURE=1 if "
                "something else encrypts the link)"
            )
    if dry:
        return None
    max_reconnect_ms = int(config.backoff_max_s * 1000)
    options = [
        # Pings detect a dead peer during a long-poll that sends nothing. gRPC
        # sends at most two pings between data frames, which stays inside a
        # default server's ping policy (no GOAWAY too_many_pings).
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 0),
        # gRPC's own reconnect backoff grows to 120 s by default; keep it within
        # ours so a Brain that comes back is found quickly.
        ("grpc.initial_reconnect_backoff_ms", int(config.backoff_initial_s * 1000)),
        ("grpc.min_reconnect_backoff_ms", min(max_reconnect_ms, 1_000)),
        ("grpc.max_reconnect_backoff_ms", max_reconnect_ms),
        ("grpc.service_config", _ROUND_ROBIN),
    ]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


class ProgressStream:
    """One job's StreamProgress call: each update is answered by one ack.

    Updates are sent one at a time (the heartbeat and the step loop share the
    stream). A broken call is dropped and the next update opens a new one.
    """

    def __init__(
        self, stub: jobs_pb2_grpc.JobServiceStub, metadata: Sequence[tuple[str, str]]
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._call: grpc.aio.StreamStreamCall | None = None
        self._lock = asyncio.Lock()

    async def send(
        self, update: jobs_pb2.ProgressUpdate, timeout_s: float
    ) -> jobs_pb2.ProgressAck:
        """Send `update` and return its ack, or raise a typed error."""
        async with self._lock:
            if self._call is None:
                self._call = self._stub.StreamProgress(metadata=self._metadata)
            call = self._call
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that arrives together with the reply.
                async with asyncio.timeout(timeout_s):
                    return await self._exchange(call, update)
            except TimeoutError as exc:
                self._drop()
                raise BrainUnavailable(
                    f"no progress ack within {timeout_s:.1f} s"
                ) from exc
            except grpc.aio.AioRpcError as exc:
                self._drop()
                raise _call_error(exc) from exc
            except (asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
                self._drop()
                raise BrainUnavailable(f"progress stream closed: {exc}") from exc
            except BrainUnavailable:
                self._drop()
                raise
            except asyncio.CancelledError:
                # A half-finished exchange would pair the next update with this
                # update's ack; start the next one on a fresh call.
                self._drop()
                raise

    @staticmethod
    async def _exchange(
        call: grpc.aio.StreamStreamCall, update: jobs_pb2.ProgressUpdate
    ) -> jobs_pb2.ProgressAck:
        await call.write(update)
        ack = await call.read()
        if ack is grpc.aio.EOF:
            raise BrainUnavailable("Brain ended the progress stream")
        return ack

    def _drop(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def close(self) -> None:
        """End the call politely: half-close, let Brain finish, then cancel."""
        async with self._lock:
            call, self._call = self._call, None
        if call is None:
            return
        try:
            await asyncio.wait_for(call.done_writing(), 1.0)
            await asyncio.wait_for(call.code(), 1.0)
        except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass
        finally:
            call.cancel()


@dataclass
class _Completion:
    """One queued CompleteJob request and the caller waiting for its answer."""

    request: jobs_pb2.CompleteJobRequest
    deadline_mono: float
    answer: "asyncio.Future[jobs_pb2.CompleteJobResponse]"

    @property
    def job_id(self) -> str:
        return self.request.job_id

    def settle(
        self,
        error: HandsError | None = None,
        response: jobs_pb2.CompleteJobResponse | None = None,
    ) -> None:
        # A caller that was cancelled or timed out has stopped listening.
        if self.answer.done():
            return
        if error is not None:
            self.answer.set_exception(error)
        else:
            self.answer.set_result(response)


class CompletionBatcher:
    """Sends queued completions together, one CompleteJobs call at a time.

    Batching is natural: the sender never waits for a batch to fill. It takes
    whatever is queued when the previous call returns, so a quiet worker sends
    each completion at once and a busy one sends fewer, larger calls. The
    sender task starts with the first completion and ends when the queue is
    empty.
    """

    def __init__(
        self, stub: jobs_pb2_grpc.JobServiceStub, metadata: Sequence[tuple[str, str]]
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._queue: deque[_Completion] = deque()
        self._sender: asyncio.Task[None] | None = None
        # False once a Brain answered that it has no CompleteJobs (one from
        # before it, met during a rolling upgrade): each completion then goes
        # as its own CompleteJob call, until this worker restarts.
        self._batches_supported = True

    async def complete(
        self, request: jobs_pb2.CompleteJobRequest, timeout_s: float
    ) -> jobs_pb2.CompleteJobResponse:
        """Queue `request` and await its own result, or raise a typed error."""
        item = _Completion(
            request,
            time.monotonic() + timeout_s,
            asyncio.get_running_loop().create_future(),
        )
        self._queue.append(item)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(
                self._send_queued(), name="completion-sender"
            )
        try:
            # Leaving early cancels `answer`, which tells the sender to skip it.
            async with asyncio.timeout(timeout_s):
                return await item.answer
        except TimeoutError as exc:
            raise BrainUnavailable(
                f"no CompleteJobs reply within {timeout_s:.1f} s"
            ) from exc

    async def close(self) -> None:
        """Stop the sender; completions still waiting fail as unavailable."""
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.wait({sender})
        self._fail_queued()

    async def _send_queued(self) -> None:
        # The task copied the context of the caller that started it; that
        # caller's job is not the sender's.
        structlog.contextvars.unbind_contextvars("job_id", "attempt")
        try:
            while self._queue:
                batch = self._next_batch()
                if batch:
                    await self._send(batch)
        except asyncio.CancelledError:
            self._fail_queued()
            raise
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None

    def _next_batch(self) -> list[_Completion]:
        """Up to MAX_COMPLETE_BATCH queued completions and about
        MAX_COMPLETE_BATCH_BYTES (never fewer than one), at most one per job."""
        batch: list[_Completion] = []
        later: list[_Completion] = []
        job_ids: set[str] = set()
        size = 0
        now = time.monotonic()
        while self._queue and len(batch) < MAX_COMPLETE_BATCH:
            item = self._queue.popleft()
            if item.answer.done():
                continue
            if item.deadline_mono <= now:
                # Its caller's timeout is about to fire; sending it would only
                # give the whole call no time at all.
                item.settle(BrainUnavailable("timed out before it was sent"))
                continue
            if item.job_id in job_ids:
                # CompleteJobs refuses two completions of one job in one call;
                # the later one keeps its place at the head of the queue.
                later.append(item)
                continue
            item_size = item.request.ByteSize()
            if batch and size + item_size > MAX_COMPLETE_BATCH_BYTES:
                later.append(item)
                break
            job_ids.add(item.job_id)
            batch.append(item)
            size += item_size
        self._queue.extendleft(reversed(later))
        return batch

    async def _send(self, batch: list[_Completion]) -> None:
        """One CompleteJobs call for `batch`; every item ends answered."""
        # The call must not outlive the most impatient caller in it.
        timeout_s = max(0.0, min(i.deadline_mono for i in batch) - time.monotonic())
        request = jobs_pb2.CompleteJobsRequest(completions=[i.request for i in batch])
        try:
            if self._batches_supported:
                try:
                    reply = await self._stub.CompleteJobs(
                        request, timeout=timeout_s, metadata=self._metadata
                    )
                    self._settle(batch, reply)
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    log.warning("complete_jobs_unsupported", fallback="CompleteJob")
                    self._batches_supported = False
            await self._send_one_by_one(batch)
        except grpc.aio.AioRpcError as exc:
            self._fail(batch, _call_error(exc))
        except (asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            self._fail(batch, BrainUnavailable(f"channel closed: {exc}"))
        except asyncio.CancelledError:
            self._fail(batch, BrainUnavailable("the completion sender was stopped"))
            raise
        except Exception as exc:
            # The sender serves every job of the worker: it reports a bug to
            # the callers in the batch and carries on with the next one.
            log.error(
                "completion_batch_crashed",
                completions=len(batch),
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
            self._fail(
                batch, BrainUnavailable(f"CompleteJobs: {type(exc).__name__}: {exc}")
            )

    async def _send_one_by_one(self, batch: list[_Completion]) -> None:
        """Each completion as its own CompleteJob call, all at once."""

        async def send(item: _Completion) -> None:
            timeout_s = max(0.0, item.deadline_mono - time.monotonic())
            try:
                response = await self._stub.CompleteJob(
                    item.request, timeout=timeout_s, metadata=self._metadata
                )
            except grpc.aio.AioRpcError as exc:
                item.settle(_call_error(exc))
                return
            item.settle(response=response)

        await asyncio.gather(*(send(item) for item in batch))

    @staticmethod
    def _settle(batch: list[_Completion], reply: jobs_pb2.CompleteJobsResponse) -> None:
        # Job ids are distinct within a batch, so a result finds its item by id.
        results = {r.job_id: r for r in reply.results}
        for item in batch:
            result = results.get(item.job_id)
            if result is None:
                item.settle(BrainUnavailable("CompleteJobs returned no result for it"))
            elif result.code == grpc.StatusCode.OK.value[0]:
                item.settle(response=result.response)
            else:
                status = _STATUS_BY_NUMBER.get(result.code, grpc.StatusCode.UNKNOWN)
                item.settle(_translate(status, result.message))
        log.debug("completions_sent", completions=len(batch))

    @staticmethod
    def _fail(batch: list[_Completion], error: HandsError) -> None:
        for item in batch:
            item.settle(error)

    def _fail_queued(self) -> None:
        queued, self._queue = self._queue, deque()
        self._fail(list(queued), BrainUnavailable("the completion sender was stopped"))


class BrainClient:
    """JobService as typed calls: claim, stream progress, complete."""

    def __init__(self, channel: grpc.aio.Channel, api_key: str = "") -> None:
        self._stub = jobs_pb2_grpc.JobServiceStub(channel)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        self._completions = CompletionBatcher(self._stub, self._metadata)

    async def claim(
        self, worker_id: str, wait_s: float, max_jobs: int = 1
    ) -> list[jobs_pb2.ClaimedJob]:
        """Long-poll up to `wait_s` for jobs; an empty list when none came."""
        wait = Duration()
        wait.FromNanoseconds(int(wait_s * 1e9))
        request = jobs_pb2.ClaimJobRequest(
            worker_id=worker_id, wait=wait, max_jobs=max_jobs
        )
        try:
            reply = await self._stub.ClaimJob(
                request, timeout=wait_s + CLAIM_GRACE_S, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _call_error(exc) from exc
        return list(reply.jobs)

    def progress_stream(self) -> ProgressStream:
        """A progress stream for one job; the call opens with its first update."""
        return ProgressStream(self._stub, self._metadata)

    async def complete(
        self, request: jobs_pb2.CompleteJobRequest, timeout_s: float
    ) -> jobs_pb2.CompleteJobResponse:
        """Complete one job, batched with others; retrying is the caller's decision.

        Raises what a lone CompleteJob call would have: LeaseLost for a stale
        lease, BrainUnavailable when the batch's call failed or `timeout_s`
        passed, BrainRejected otherwise.
        """
        return await self._completions.complete(request, timeout_s)

    async def close(self) -> None:
        """Stop sending completions; call before closing the channel."""
        await self._completions.close()
