"""The one error model of streamgate.

Every failure a user can see is a `StreamError`: a code (the name of the gRPC
status it maps to), a message a person can read, and whether retrying may help.
Each transport maps the code once, in its own table.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"


class StreamError(Exception):
    """An expected failure of a stream: bad input, a limit, or the upstream."""

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable

    def __repr__(self) -> str:
        return f"StreamError({self.code.value}, {self.message!r}, retryable={self.retryable})"


def invalid(message: str) -> StreamError:
    return StreamError(ErrorCode.INVALID_ARGUMENT, message)
