"""Requests whose bytes are not the message they claim to be.

grpc decodes a request before any handler runs and reports a decode error
as UNKNOWN with a traceback in the log. This interceptor decodes first and
answers INVALID_ARGUMENT instead, for barter's own services.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from brain_service.auth import ROLE_OF_SERVICE
from brain_service.errors import InvalidArgument


class _Undecodable:
    """Stands in for a request that did not decode."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _safe(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError) as exc:
            return _Undecodable(str(exc)[:200])

    return decode


def _message(service_method: str, request: _Undecodable) -> str:
    return f"request: not a valid {service_method} request: {request.reason}"


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Turns undecodable request bytes into INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        parts = details.method.split("/")
        if handler is None or len(parts) < 3 or parts[1] not in ROLE_OF_SERVICE:
            return handler
        name = parts[2]
        decode = _safe(handler.request_deserializer)
        serialize = handler.response_serializer

        if handler.request_streaming:
            inner = (
                handler.stream_stream
                if handler.response_streaming
                else handler.stream_unary
            )

            async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
                async for request in requests:
                    if isinstance(request, _Undecodable):
                        # Raised inside the handler's loop, where abort_on_error
                        # turns it into a status.
                        raise InvalidArgument("request", _message(name, request)[9:])
                    yield request

            if handler.response_streaming:
                # grpc tells a streaming behaviour by it being an async
                # generator function, so this must be one too.
                async def stream_stream(
                    requests: AsyncIterator[Any], context: Any
                ) -> AsyncIterator[Any]:
                    async for item in inner(checked(requests), context):
                        yield item

                return grpc.stream_stream_rpc_method_handler(
                    stream_stream,
                    request_deserializer=decode,
                    response_serializer=serialize,
                )

            async def stream_unary(requests: AsyncIterator[Any], context: Any) -> Any:
                return await inner(checked(requests), context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, request_deserializer=decode, response_serializer=serialize
            )

        if handler.response_streaming:

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, _message(name, request)
                    )
                async for item in handler.unary_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=decode, response_serializer=serialize
            )

        async def unary_unary(request: Any, context: Any) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, _message(name, request)
                )
            return await handler.unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=decode, response_serializer=serialize
        )
