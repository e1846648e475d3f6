"""`/query/ws`: many queries on one WebSocket, one after another.

Two tasks per connection: this handler reads messages (queries, `cancel`) and
a worker streams the queries in order; only the worker sends, so messages never
interleave. A bad message gets an `error` message and the connection stays
open. `{"type": "cancel"}` cancels the running stream's gRPC call (the core
closes the upstream) and the stream ends with `complete`, `finish_reason`
"cancelled". When the client leaves, the running call is cancelled; a client
that stops reading is made to leave: a `WriteGuard` aborts its connection when
a send waits on it for `--write-stall-timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from streamgate.contract import Completion, ErrorCode, Failure, Metrics, StreamError, invalid
from streamgate.v1 import streamgate_pb2 as pb

from . import framing, observe, query
from .errors import WS_CLOSE
from .state import STATE, BridgeState, OpenStream, WriteGuard

TRANSPORT = "websocket"
CANCELLED = StreamError(ErrorCode.CANCELLED, "cancelled by the client")
#: Messages (queries and errors to answer) that may wait while a stream runs.
MAX_PENDING = 64


@dataclass(frozen=True, slots=True)
class _Reject:
    message: str


@dataclass(frozen=True, slots=True)
class _Resume:
    """Read a resumable stream again, past the sequence `after`."""

    stream_id: str
    after: int


class Session:
    def __init__(
        self, ws: web.WebSocketResponse, state: BridgeState, guard: WriteGuard, authorization: str | None = None
    ) -> None:
        self.ws = ws
        self.state = state
        #: Every message the bridge sends goes through it (`send`), so a client that stops reading is dropped.
        self.guard = guard
        #: Passed on to the core with each query: the upgrade's header, or an `auth` message's key.
        self.authorization = authorization
        self.pending: asyncio.Queue[pb.GenerateRequest | _Resume | _Reject] = asyncio.Queue()
        self.queries = 0
        self.current: OpenStream | None = None
        #: A cancel arrived while no query was streaming but one was waiting or being admitted:
        #: it is for that one, which then ends cancelled (without an upstream call, if not yet sent).
        self._cancel_next = False

    def receive(self, text: str) -> None:
        """Handle one text message from the client, at once."""
        try:
            data = query.loads(text)
            if query.is_cancel(data):
                if self.current is not None:
                    self.current.finish(CANCELLED)  # its `complete` carries what it produced and cost
                elif self.queries:
                    self._cancel_next = True
                return
            if query.is_auth(data):
                self.authorization = f"Bearer {data['api_key']}"
                return
            resume = query.resume_of(data)
            request: pb.GenerateRequest | _Resume = _Resume(*resume) if resume is not None else query.from_json(data)
            if self.queries >= self.state.config.max_queued_queries + 1:
                raise invalid("too many queries waiting: wait for a complete message, or cancel")
        except StreamError as error:
            self._put(_Reject(error.message))
            return
        self.queries += 1
        self._put(request)

    def reject(self, message: str) -> None:
        self._put(_Reject(message))

    async def send(self, text: str) -> None:
        self.guard.begin()
        try:
            await self.ws.send_str(text)
        finally:
            self.guard.end()

    async def close(self, code: int, message: bytes) -> None:
        self.guard.begin()  # the close frame is a write too
        try:
            await self.ws.close(code=code, message=message)
        finally:
            self.guard.end()

    def _put(self, item: pb.GenerateRequest | _Resume | _Reject) -> None:
        if self.pending.qsize() >= MAX_PENDING:
            raise _Flooded
        self.pending.put_nowait(item)

    async def run(self) -> None:
        """The worker: answer each message in order."""
        ws = self.ws
        while True:
            item = await self.pending.get()
            if isinstance(item, _Reject):
                await self.send(framing.ws_error(item.message))
                continue
            try:
                if self.state.tracer is None:
                    await self._stream(item)
                else:
                    with observe.query_span(self.state.tracer):  # each query is a span of its own
                        await self._stream(item)
            finally:
                self.queries -= 1
            if ws.closed:
                return

    async def _stream(self, request: pb.GenerateRequest | _Resume) -> None:
        ws, state, metrics, guard, send = self.ws, self.state, self.state.metrics, self.guard, self.send
        resume = request if isinstance(request, _Resume) else None
        if isinstance(request, _Resume):
            model, request_id = "", request.stream_id
        else:
            model, request_id = request.model, request.request_id
        if self._cancel_next:  # cancelled before it started: answer so, and call no upstream
            self._cancel_next = False
            metadata = framing.cancelled_metadata("", model, Metrics(), request_id)
            metrics.ended(TRANSPORT, "cancelled")
            await send(framing.ws_complete("", metadata))
            return
        try:
            state.refuse_if_draining()
            if isinstance(request, _Resume):  # a resumable stream read again: never a new generation
                core = await state.client.attach(request.stream_id, request.after, self.authorization)
            else:
                core = await state.client.open(request, self.authorization, TRANSPORT)
        except StreamError as error:
            metrics.ended(TRANSPORT, error.code.value.lower())
            await send(framing.ws_error(error.message))
            if error.code in WS_CLOSE:
                await self.close(WS_CLOSE[error.code], error.message[:120].encode())
            return
        self.current = OpenStream(core)
        if self._cancel_next:  # the client cancelled while the core admitted it
            self._cancel_next = False
            self.current.finish(CANCELLED)

        stream_id, ids = core.request_id, framing.ws_ids

        async def chunk(content: str, sequence: int) -> None:  # `send`, inlined: one call a token
            guard.begin()
            try:
                await ws.send_str(framing.ws_chunk(content, ids(stream_id, sequence)))
            finally:
                guard.end()

        current = self.current

        async def final(event: Completion | Failure, sequence: int) -> None:
            if current.ending is CANCELLED and isinstance(event, Failure) and event.error.code is ErrorCode.CANCELLED:
                text, metadata = framing.cancelled_final(event)  # the client's cancel, with the core's account
                await send(framing.ws_complete(text, metadata, ids(stream_id, sequence)))
                return
            await send(framing.ws_final(event, ids(stream_id, sequence)))

        async def ended(reason: StreamError, sequence: int) -> None:
            if reason is CANCELLED:
                text = "".join(core.text)
                metadata = framing.cancelled_metadata(text, model, core.metrics(), core.request_id)
                await send(framing.ws_complete(text, metadata, ids(stream_id, sequence)))
            else:
                await send(framing.ws_final(core.failure(reason), ids(stream_id, sequence)))

        try:
            sequence = resume.after + 1 if resume is not None else 0
            await state.forward(self.current, TRANSPORT, chunk, final, ended, sequence)
        finally:
            self.current = None


class _Flooded(Exception):
    """More messages are waiting than a well-behaved client would send."""


async def stream_ws(request: web.Request) -> web.WebSocketResponse:
    state = request.app[STATE]
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=state.config.max_body_bytes)
    await ws.prepare(request)
    guard = WriteGuard(request.transport, state.config.write_stall_timeout)
    session = Session(ws, state, guard, request.headers.get("Authorization"))
    worker = asyncio.create_task(session.run())
    try:
        async for message in ws:
            if worker.done():
                break
            if message.type is WSMsgType.TEXT:
                session.receive(message.data)
            elif message.type is WSMsgType.BINARY:
                session.reject("binary messages are not supported: send JSON text")
    except _Flooded:
        await session.close(1008, b"too many messages waiting")
    finally:
        if session.current is not None:
            session.current.core.cancel()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await worker
        guard.close()
    return ws
