"""Translate upstream (litellm, openai, httpx) exceptions into `StreamError`, once, where they enter.

Only litellm's path raises them: the table (and with it litellm and openai) loads on the first
translation, so a core that never uses litellm never imports it.
"""

from __future__ import annotations

import asyncio
import functools

from streamgate.contract import ErrorCode, StreamError

_Table = tuple[tuple[type[BaseException], ErrorCode, bool, str], ...]

#: An upstream's HTTP error status → (code, retryable, summary): the lean path's answer for the status
#: (`core/openai_stream.py`), and litellm's exception for that status maps the same (`_table`).
HTTP_STATUS: dict[int, tuple[ErrorCode, bool, str]] = {
    400: (ErrorCode.INVALID_ARGUMENT, False, "the upstream rejected the request"),
    401: (ErrorCode.INTERNAL, False, "the upstream rejected the gateway's credentials"),
    403: (ErrorCode.INTERNAL, False, "the upstream denied access to the model"),
    404: (ErrorCode.INVALID_ARGUMENT, False, "the upstream does not know the model"),
    408: (ErrorCode.DEADLINE_EXCEEDED, True, "the upstream timed out"),
    422: (ErrorCode.INVALID_ARGUMENT, False, "the upstream rejected the request"),
    429: (ErrorCode.RESOURCE_EXHAUSTED, True, "the upstream is rate limiting"),
}
#: Any other 5xx; any other 4xx is `HTTP_STATUS[400]`.
SERVER_ERROR = (ErrorCode.UNAVAILABLE, True, "the upstream failed")
BROKE_OFF = "the upstream stream broke off"


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
        (litellm.MidStreamFallbackError, ErrorCode.UNAVAILABLE, True, BROKE_OFF),
        (litellm.Timeout, *HTTP_STATUS[408]),
        (litellm.RateLimitError, *HTTP_STATUS[429]),
        (litellm.AuthenticationError, *HTTP_STATUS[401]),
        (litellm.PermissionDeniedError, *HTTP_STATUS[403]),
        (litellm.NotFoundError, *HTTP_STATUS[404]),
        (litellm.UnprocessableEntityError, *HTTP_STATUS[422]),
        (litellm.BadRequestError, *HTTP_STATUS[400]),
        (litellm.APIConnectionError, ErrorCode.UNAVAILABLE, True, "cannot reach the upstream"),
        (litellm.ServiceUnavailableError, ErrorCode.UNAVAILABLE, True, "the upstream is unavailable"),
        (litellm.BadGatewayError, *SERVER_ERROR),
        (litellm.InternalServerError, *SERVER_ERROR),
        (openai.APIError, *SERVER_ERROR),
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
