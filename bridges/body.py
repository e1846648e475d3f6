"""A POST body, read within `--body-timeout`, for every endpoint that takes one (SSE, the OpenAI API)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from streamgate.contract import invalid

from . import query


class BodyTimeout(Exception):
    """The body did not arrive within `--body-timeout`."""


async def read_json(request: web.Request, timeout: float) -> Any:
    """The body as JSON; raises `BodyTimeout`, or `StreamError(INVALID_ARGUMENT)` for a body that cannot be
    read or is not JSON (aiohttp's 413 for one over `--max-body-bytes` passes as it is)."""
    try:
        async with asyncio.timeout(timeout):
            body = await request.read()
    except TimeoutError:
        raise BodyTimeout from None
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
