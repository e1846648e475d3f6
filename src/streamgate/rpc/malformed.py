"""A request message that does not parse is the client's error: INVALID_ARGUMENT, not UNKNOWN.

grpc.aio deserializes a request before the handler runs; when protobuf refuses the bytes
(invalid UTF-8 in a string field, a corrupt wire format) the call ends UNKNOWN, with protobuf's
exception class in the details. This interceptor parses leniently instead: a message that does
not parse reaches the handler's wrapper as `Malformed`, which ends the call with INVALID_ARGUMENT
and a message a person can read. It covers requests of one message (every public method);
`Relay`'s stream of commands is the bridge's own link, behind its token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError


class Malformed:
    """Stands in for a request message whose bytes did not parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return Malformed(str(exc))

    return parse


async def _refuse(request: Malformed, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request message does not parse: {request.reason}")


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Answers a request message that does not parse with INVALID_ARGUMENT (see the module's docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        original = await continuation(details)
        handler: Any = original  # typed for sync servers; its behaviours here are async
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return original
        parse = _lenient(handler.request_deserializer)
        if handler.response_streaming:
            stream: Callable[..., AsyncIterator[Any]] = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                if isinstance(request, Malformed):
                    await _refuse(request, context)
                async for response in stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=parse, response_serializer=handler.response_serializer
            )
        unary: Callable[..., Awaitable[Any]] = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, Malformed):
                await _refuse(request, context)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=parse, response_serializer=handler.response_serializer
        )
