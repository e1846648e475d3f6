"""`/query/stream`: a query in (POST JSON or GET query string), Server-Sent Events out.

Frames are written as events arrive. Whatever ends the stream, the last frame
is the one final frame: the core's final event, or one the bridge makes when
the core is lost or the bridge shuts down. When the client leaves, aiohttp
cancels this handler (`handler_cancellation=True`) and the gRPC call is
cancelled with it, so the core closes the upstream request. A client that
stops reading is made to leave: a `WriteGuard` aborts its connection when a
write waits on it for `--write-stall-timeout`.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from streamgate.contract import Completion, ErrorCode, Failure, StreamError, invalid
from streamgate.link.client import CoreStream
from streamgate.v1 import streamgate_pb2 as pb

from . import framing, query
from .body import BodyRefused, read_json
from .errors import error_response
from .resume import RETRY_MS, answer_reconnect
from .state import STATE, OpenStream, WriteGuard

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
TRANSPORT = "sse"


async def _read_request(request: web.Request, body_timeout: float) -> pb.GenerateRequest:
    if request.method == "GET":
        return query.from_query_string(request.query)
    return query.from_json(await read_json(request, body_timeout))


async def stream_sse(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    metrics = state.metrics
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id is not None:  # an EventSource reconnecting: its stream resumed, never a new generation
        metrics.ended(TRANSPORT, "reconnect")
        parsed = framing.parse_event_id(last_event_id)
        if parsed is None:
            return answer_reconnect(state.delivered, last_event_id)
        return await _resume(request, *parsed)
    try:
        state.refuse_if_draining()
        generate = await _read_request(request, state.config.body_timeout)
        core = await state.client.open(generate, request.headers.get("Authorization"), TRANSPORT)
    except StreamError as error:
        metrics.ended(TRANSPORT, error.code.value.lower())
        return error_response(error)
    except BodyRefused as refused:
        metrics.ended(TRANSPORT, refused.label)
        return await refused.answer(request, error_response(refused.error, status=refused.status))

    return await _send(request, core, 0)


async def _send(request: web.Request, core: CoreStream, sequence: int) -> web.StreamResponse:
    """The SSE response of an admitted (or resumed) stream, its frames numbered from `sequence`."""
    state = request.app[STATE]
    response = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await response.prepare(request)
    except (asyncio.CancelledError, ConnectionError):
        core.cancel()
        raise
    # One timer: `: ping` after `keepalive_interval` s of silence, and the client dropped when a write waits
    # on it for `write_stall_timeout` s (which ends the stream as a client that left).
    config = state.config
    guard = WriteGuard(
        request.transport, config.write_stall_timeout, lambda: response.write(framing.PING), config.keepalive_interval
    )

    async def write(frame: bytes) -> None:
        guard.begin()
        try:
            await response.write(frame)
        finally:
            guard.end()

    stream_id = core.request_id
    event_id = framing.event_id
    first = framing.sse_retry(RETRY_MS)  # rides with the first event: no write of its own

    async def chunk(content: str, sequence: int) -> None:  # `write`, inlined: one call a token
        nonlocal first
        guard.begin()
        try:
            await response.write(framing.sse_chunk(content, first + event_id(stream_id, sequence)))
            first = b""
        finally:
            guard.end()

    async def final(event: Completion | Failure, sequence: int) -> None:
        await write(framing.sse_final(event, first + event_id(stream_id, sequence)))

    async def ended(reason: StreamError, sequence: int) -> None:
        await write(framing.sse_final(core.failure(reason), first + event_id(stream_id, sequence)))

    try:
        if await state.forward(OpenStream(core), TRANSPORT, chunk, final, ended, sequence) != "disconnected":
            guard.begin()
            await response.write_eof()
            guard.end()
    except ConnectionError:
        pass  # the client left after the final frame
    finally:
        guard.close()
    return response


async def resume_sse(request: web.Request) -> web.StreamResponse:
    """`GET /query/stream/{stream_id}` with `Last-Event-ID` or `?after=N`: a resumable stream's chunks
    past that sequence, then its live tail (for clients that are not an `EventSource`)."""
    after = -1
    last = request.headers.get("Last-Event-ID")
    if last is not None:
        parsed = framing.parse_event_id(last)
        if parsed is None or parsed[0] != request.match_info["stream_id"]:
            return error_response(invalid("Last-Event-ID is not an event id of this stream"))
        after = parsed[1]
    elif "after" in request.query:
        text = request.query["after"]
        digits = text.removeprefix("-")
        if not (digits.isascii() and digits.isdigit() and len(digits) < 20 and -1 <= int(text) <= framing.MAX_SEQUENCE):
            return error_response(invalid("after must be the sequence of the last event received (or -1)"))
        after = int(text)
    return await _resume(request, request.match_info["stream_id"], after)


async def stop_stream(request: web.Request) -> web.Response:
    """`DELETE /query/stream/{stream_id}`: stop a resumable stream (its upstream closes now, not
    after the grace); 204, or 404 when there is no such stream for these credentials."""
    state = request.app[STATE]
    try:
        stream_id, authorization = request.match_info["stream_id"], request.headers.get("Authorization")
        core = await state.client.attach(stream_id, framing.MAX_SEQUENCE, authorization)
    except StreamError as error:
        return error_response(error)
    core.cancel(stop=True)
    return web.Response(status=204)


async def _resume(request: web.Request, stream_id: str, after: int) -> web.StreamResponse:
    """The frames of stream `stream_id` past `after`: 204 when its final frame was delivered and
    nothing is left, 410 when it cannot be resumed; never a new generation."""
    state = request.app[STATE]
    final = state.delivered.final_sequence(stream_id)
    if final is not None and after >= final:
        return web.Response(status=204)
    try:
        core = await state.client.attach(stream_id, after, request.headers.get("Authorization"))
    except StreamError as error:
        state.metrics.ended(TRANSPORT, error.code.value.lower())
        if error.code is ErrorCode.NOT_FOUND:
            return answer_reconnect(state.delivered, f"{stream_id}:{after}")
        return error_response(error)
    return await _send(request, core, after + 1)
