"""Translate upstream (litellm, openai, httpx) exceptions into `StreamError`, once, where they enter.

Only litellm's path raises them: the table (and with it litellm and openai) loads on the first
translation, so a core that never uses litellm never imports it.
"""

from __future__ import annotations

import asyncio
import functools

from streamgate.contract import ErrorCode, StreamError

_Table = tuple[tuple[type[BaseException], ErrorCode, bool, str], ...]


@functools.cache
def _table() -> _Table:
    """Checked in order: subclasses before their bases (litellm's ContextWindowExceededError is a
    BadRequestError, MidStreamFallbackError a ServiceUnavailableError)."""
    import openai
    from litellm import exceptions as litellm

    return (
        (
            litellm.ContextWindowExceededError,
            ErrorCode.INVALID_ARGUMENT,
            False,
            "the prompt is too long for the model",
        ),
        (
            litellm.ContentPolicyViolationError,
            ErrorCode.INVALID_ARGUMENT,
            False,
            "the provider refused the content",
        ),
        (litellm.MidStreamFallbackError, ErrorCode.UNAVAILABLE, True, "the upstream stream broke off"),
        (litellm.Timeout, ErrorCode.DEADLINE_EXCEEDED, True, "the upstream timed out"),
        (litellm.RateLimitError, ErrorCode.RESOURCE_EXHAUSTED, True, "the upstream is rate limiting"),
        (
            litellm.AuthenticationError,
            ErrorCode.INTERNAL,
            False,
            "the upstream rejected the gateway's credentials",
        ),
        (litellm.PermissionDeniedError, ErrorCode.INTERNAL, False, "the upstream denied access to the model"),
        (litellm.NotFoundError, ErrorCode.INVALID_ARGUMENT, False, "the upstream does not know the model"),
        (
            litellm.UnprocessableEntityError,
            ErrorCode.INVALID_ARGUMENT,
            False,
            "the upstream rejected the request",
        ),
        (litellm.BadRequestError, ErrorCode.INVALID_ARGUMENT, False, "the upstream rejected the request"),
        (litellm.APIConnectionError, ErrorCode.UNAVAILABLE, True, "cannot reach the upstream"),
        (litellm.ServiceUnavailableError, ErrorCode.UNAVAILABLE, True, "the upstream is unavailable"),
        (litellm.BadGatewayError, ErrorCode.UNAVAILABLE, True, "the upstream failed"),
        (litellm.InternalServerError, ErrorCode.UNAVAILABLE, True, "the upstream failed"),
        (openai.APIError, ErrorCode.UNAVAILABLE, True, "the upstream failed"),
        (asyncio.TimeoutError, ErrorCode.DEADLINE_EXCEEDED, True, "the upstream timed out"),
        (ConnectionError, ErrorCode.UNAVAILABLE, True, "the connection to the upstream failed"),
    )


def _detail(exc: BaseException) -> str:
    """The upstream's own words, without litellm's prefixes and advice."""
    text = str(getattr(exc, "message", None) or exc).strip()
    for prefix in ("litellm.", "OpenAIException - "):
        while prefix in text:
            text = text.split(prefix, 1)[1]
    text = text.split("\n", 1)[0].strip()
    return text[:300]


def translate(exc: BaseException) -> StreamError:
    """Map an exception raised by a provider to the one error model."""
    if isinstance(exc, StreamError):
        return exc
    for kind, code, retryable, summary in _table():
        if isinstance(exc, kind):
            detail = _detail(exc)
            message = f"{summary}: {detail}" if detail else summary
            return StreamError(code, message, retryable=retryable)
    return StreamError(ErrorCode.INTERNAL, f"unexpected upstream error: {type(exc).__name__}")
