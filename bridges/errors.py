"""The bridge's one table: the error model to HTTP statuses and WebSocket close codes."""

from __future__ import annotations

from aiohttp import web

from streamgate.contract import ErrorCode, StreamError

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.CANCELLED: 499,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.PERMISSION_DENIED: 403,
}

#: Close codes (RFC 6455 and the IANA registry) for errors that end a WebSocket.
WS_CLOSE: dict[ErrorCode, int] = {
    ErrorCode.RESOURCE_EXHAUSTED: 1013,  # try again later
    ErrorCode.UNAUTHENTICATED: 1008,  # policy violation
    ErrorCode.UNAVAILABLE: 1013,
}

#: Seconds a client should wait before retrying a refused stream.
RETRY_AFTER_SECONDS = 1


def error_response(error: StreamError, status: int | None = None) -> web.Response:
    """`{"error": {"code": ..., "message": ...}}` with the status of the table (or `status`)."""
    status = status or HTTP_STATUS[error.code]
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status in (429, 503) else None
    body = {"error": {"code": error.code.value, "message": error.message}}
    return web.json_response(body, status=status, headers=headers)
