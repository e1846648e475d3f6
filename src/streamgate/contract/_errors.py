"""The one error model of streamgate.

Every failure a user can see is a `StreamError`: a code (the name of the gRPC
status it maps to), a message a person can read, whether retrying may help, and,
where a program must tell one cause of a code from another, a reason (`Reason`:
google.rpc.ErrorInfo's idea). Each transport maps the code once, in its own table;
a reason may refine that (the OpenAI API answers an unknown model with 404).
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


class Reason(StrEnum):
    """Causes a program may act on, within a code (the code stays what the transports map)."""

    #: INVALID_ARGUMENT: the model asked for is not one this server offers.
    MODEL_NOT_FOUND = "model_not_found"
    #: RESOURCE_EXHAUSTED: the API key's spend limit for the period is reached.
    BUDGET_EXCEEDED = "budget_exceeded"


class StreamError(Exception):
    """An expected failure of a stream: bad input, a limit, or the upstream."""

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool = False, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.reason = reason

    def __repr__(self) -> str:
        reason = f", reason={self.reason.value}" if self.reason else ""
        return f"StreamError({self.code.value}, {self.message!r}, retryable={self.retryable}{reason})"


def invalid(message: str) -> StreamError:
    return StreamError(ErrorCode.INVALID_ARGUMENT, message)


def model_not_found(message: str) -> StreamError:
    return StreamError(ErrorCode.INVALID_ARGUMENT, message, reason=Reason.MODEL_NOT_FOUND)
