"""A POST body, read within `--body-timeout`, for every endpoint that takes one (SSE, the OpenAI API)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from streamgate.contract import ErrorCode, StreamError, invalid

from . import query
from .state import STATE


class BodyRefused(Exception):
    """A body that did not come within `--body-timeout` (408, and the connection is closed) or is over
    `--max-body-bytes` (413): `error`, its HTTP `status`, and the outcome `label` for the metrics."""

    def __init__(self, error: StreamError, status: int, label: str) -> None:
        super().__init__(error.message)
        self.error, self.status, self.label = error, status, label

    async def answer(self, request: web.Request, response: web.Response) -> web.Response:
        """Send `response` (the transport's own shape of `error`); after a 408, close the connection."""
        return await answer_and_close(request, response) if self.status == 408 else response


async def read_json(request: web.Request, timeout: float) -> Any:
    """The body as JSON; raises `BodyRefused`, or `StreamError(INVALID_ARGUMENT)` for a body that cannot
    be read or is not JSON."""
    try:
        async with asyncio.timeout(timeout):
            body = await request.read()
    except TimeoutError:
        late = StreamError(ErrorCode.DEADLINE_EXCEEDED, f"the request body did not arrive within {timeout:g} s")
        raise BodyRefused(late, 408, "body_timeout") from None
    except web.HTTPRequestEntityTooLarge:
        large = invalid(f"the body is larger than the limit of {request.app[STATE].config.max_body_bytes} bytes")
        raise BodyRefused(large, 413, "body_too_large") from None
    except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip over bytes that are not gzip
        raise invalid(f"the body cannot be read: {exc}") from None
    return query.loads(body)


async def answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send `response`, then close the connection (its request's body never came, and never will)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()
    return response
