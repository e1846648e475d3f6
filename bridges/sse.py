"""`/query/stream`: a query in (POST JSON or GET query string), Server-Sent Events out.

Frames are written as events arrive. Whatever ends the stream, the last frame
is the one final frame: the core's final event, or one the bridge makes when
the core is lost or the bridge shuts down. When the client leaves, aiohttp
cancels this handler (`handler_cancellation=True`) and the gRPC call is
cancelled with it, so the core closes the upstream request.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from streamgate.core import Completion, Failure, StreamError
from streamgate.core.errors import invalid
from streamgate.v1 import streamgate_pb2 as pb

from . import framing, query
from .errors import error_response
from .state import STATE, OpenStream

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
TRANSPORT = "sse"


class KeepAlive:
    """Sends `: ping` when nothing was written for `interval` seconds. One timer, no task per stream."""

    __slots__ = ("_handle", "_interval", "_loop", "_response", "last_write")

    def __init__(self, response: web.StreamResponse, interval: float) -> None:
        self._response = response
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self.last_write = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(self.last_write + interval, self._fire)

    def _fire(self) -> None:
        now = self._loop.time()
        if now - self.last_write >= self._interval:
            self.last_write = now
            ping = asyncio.ensure_future(self._response.write(framing.PING))
            ping.add_done_callback(lambda task: task.cancelled() or task.exception())
        self._handle = self._loop.call_at(self.last_write + self._interval, self._fire)

    def touch(self) -> None:
        self.last_write = self._loop.time()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def _read_request(request: web.Request) -> pb.GenerateRequest:
    if request.method == "GET":
        return query.from_query_string(request.query)
    body = await request.read()
    return query.from_json(query.loads(body))


async def stream_sse(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    metrics = state.metrics
    try:
        state.refuse_if_draining()
        generate = await _read_request(request)
        core = await state.client.open(generate, request.headers.get("Authorization"))
    except StreamError as error:
        metrics.outcomes.labels(TRANSPORT, error.code.value).inc()
        return error_response(error)
    except web.HTTPRequestEntityTooLarge:
        limit = state.config.max_body_bytes
        metrics.outcomes.labels(TRANSPORT, "413").inc()
        return error_response(invalid(f"the body is larger than the limit of {limit} bytes"), status=413)

    response = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await response.prepare(request)
    except (asyncio.CancelledError, ConnectionError):
        core.cancel()
        raise
    keepalive = KeepAlive(response, state.config.keepalive_interval)

    async def chunk(content: str) -> None:
        await response.write(framing.sse_chunk(content))
        keepalive.touch()

    async def final(event: Completion | Failure) -> None:
        await response.write(framing.sse_final(event))

    async def ended(reason: StreamError) -> None:
        await response.write(framing.sse_final(core.failure(reason)))

    try:
        if await state.relay(OpenStream(core), TRANSPORT, chunk, final, ended) != "disconnected":
            await response.write_eof()
    except ConnectionError:
        pass  # the client left after the final frame
    finally:
        keepalive.stop()
    return response
