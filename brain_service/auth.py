"""Who may call what: bearer keys per role, checked before any handler runs.

Workers carry HANDS_API_KEY and may call JobService only; operators carry
ADMIN_API_KEY and may call AdminService only. Health and reflection stay
open so that probes and grpcurl work without a key.
"""

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from brain_service.settings import SettingError

ROLE_OF_SERVICE = {
    "barter.v1.JobService": "worker",
    "barter.v1.AdminService": "admin",
}


def read_key(value: str, file: str, env: str) -> str:
    """A key from its variable or, preferred, from the file its _FILE names."""
    if file:
        try:
            value = Path(file).read_text().strip()
        except OSError as exc:
            raise SettingError(
                f"{env}_FILE: cannot read {file}: {exc.strerror}"
            ) from None
    if value and len(value) < 16:
        raise SettingError(f"{env}: a key needs at least 16 characters")
    return value


def _bearer(metadata: Any) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode()
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.encode()
    return None


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str):
    """A handler of the same shape as `handler` that only aborts."""

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class KeyCheck(grpc.aio.ServerInterceptor):
    """Refuses calls without the right role's key; open when no keys are set."""

    def __init__(self, worker_key: str, admin_key: str) -> None:
        self._keys = {"worker": worker_key.encode(), "admin": admin_key.encode()}
        self.enabled = bool(worker_key or admin_key)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        service = details.method.split("/")[1] if details.method.count("/") >= 2 else ""
        role = ROLE_OF_SERVICE.get(service)
        if handler is None or role is None or not self.enabled:
            return handler

        presented = _bearer(details.invocation_metadata)
        if presented is None:
            return _refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing 'authorization: Bearer <key>' metadata",
            )
        # Both comparisons always run, so timing says nothing about which
        # key came close.
        matches = {
            name: bool(key) and hmac.compare_digest(presented, key)
            for name, key in self._keys.items()
        }
        if matches[role]:
            return handler
        if any(matches.values()):
            return _refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"this key may not call {service}",
            )
        return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown key")
