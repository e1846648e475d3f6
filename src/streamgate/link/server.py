"""The core's side of `Relay`: many streams over one gRPC call, for the bridge.

A call per stream costs the bridge and the core about 60 µs of CPU per
message each, and about 1.5 ms to open: more than the tokens it carries. One
`Relay` call carries every stream a bridge serves, and sends what is waiting
as one batch per write, so the per-message cost is shared by all the streams
that had something to send.

Each stream runs in its own task, exactly as a `Generate` handler would:
`Gateway.open()`, then its events until the one final event. The task puts
its events in an outbox; one writer task sends the outbox as a batch, and
while that write is in flight the next batch collects. With `coalesce` (the
default), chunks of one stream that wait in the outbox together are merged
into one chunk, so a bridge
that falls behind gets fewer, larger messages, and the outbox holds at most
one chunk per stream: its text is the stream's own output, which the
gateway keeps for the final event anyway.

Flow control: every buffer has a bound. A stream whose text waiting in the
outbox is over `STREAM_BYTES`, or any stream while the whole outbox is over
`OUTBOX_BYTES`, waits for the writer before it takes its next event, so the
upstream is read no faster than the link drains; and the call stops reading
commands while the outbox is over `OUTBOX_BYTES`, so a client that does not
read cannot make the core buffer more: gRPC's own flow control then pushes
back on it. Under the bounds, the path of a chunk has no await of its own.

Cancellation: a `RelayCancel` cancels the stream's task; the CancelledError
runs through `async with stream`, which closes the upstream request. When
the call ends (the bridge closed it or went away), every stream task it
carries is cancelled and awaited the same way, before the handler re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import stat
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

import streamgate._telemetry as _telemetry
from streamgate.contract import GRPC_STATUS, error_to_proto, event_to_proto, invalid, request_from_proto
from streamgate.core import Chunk, ErrorCode, Event, Failure, Gateway, GatewayStream, StreamError, StreamRequest
from streamgate.core.auth import Keyring
from streamgate.core.replay import Replay
from streamgate.link.v1 import link_pb2 as link_pb
from streamgate.link.v1 import link_pb2_grpc as link_grpc
from streamgate.v1 import streamgate_pb2 as pb

from ._outbox import Outbox, Place
from ._stream import MAX_FRAME, Aborted, StreamContext, parse_address
from ._wire import TOKEN_ENV, TOKEN_HEADER

if TYPE_CHECKING:
    from streamgate.core.shared import Lease, RemoteReplay

logger = logging.getLogger("streamgate.rpc")

#: Seconds the writer waits after a write, so that more frames join the next batch.
RELAY_PAUSE = 0.005
#: Opens in one request whose tasks may be created before the handler lets them run (each refusal
#: or admission then puts its frame in the outbox, and the outbox's bound holds the next ones back).
OPENS_PER_YIELD = 64
#: The bridge's doors (its metrics' names) as the usage ledger names them.
BRIDGE_TRANSPORTS = {"sse": "sse", "websocket": "ws", "openai": "openai"}

RelayContext = grpc.aio.ServicerContext[link_pb.RelayRequest, link_pb.RelayResponse]


class RelaySession:
    """One `Relay` call: the streams it carries, by the client's stream id."""

    def __init__(self, gateway: Gateway, keyring: Keyring, context: RelayContext | StreamContext) -> None:
        self._gateway = gateway
        self._keyring = keyring
        self._context = context
        self._outbox = Outbox(merge=gateway.config.coalesce)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: The resumable streams read on this call, by stream id: a cancel with `stop` ends them.
        self._replays: dict[int, Replay | RemoteReplay] = {}
        #: The other streams of this call, by stream id: a cancel with `finish` ends them as cancelled.
        self._live: dict[int, GatewayStream] = {}
        self._handler: asyncio.Task[object] | None = None
        self._reading = False  # waiting for commands (or for room to read them): where `close()` may interrupt
        self._closing = False
        self._interrupted = False  # `close()` cancelled the handler

    @property
    def outbox(self) -> Outbox:
        """What waits to be written (tests look at its `size` and `pending()`)."""
        return self._outbox

    def close(self) -> None:
        """Stop reading commands (the server is shutting down): the streams open now are served to
        their end, their last frames written, then the call ends with OK."""
        if self._closing:
            return
        self._closing = True
        if self._reading:
            assert self._handler is not None
            self._interrupted = True
            self._handler.cancel()  # interrupts the wait for the next command, nothing else

    async def run(self) -> None:
        """Serve commands until the client ends the call; then cancel and await every stream."""
        self._handler = handler = asyncio.current_task()
        assert handler is not None
        outbox = self._outbox
        writer = asyncio.create_task(self._write())
        writer.add_done_callback(self._writer_done)
        try:
            try:
                while not self._closing:
                    self._reading = True
                    try:
                        if outbox.full:
                            # The client reads slower than its streams write: read no more commands
                            # until the writer made room (gRPC's flow control then holds them back).
                            await outbox.room()
                            continue
                        request: object = await self._context.read()  # typed as the request, but EOF at the end
                    finally:
                        self._reading = False
                    if request is grpc.aio.EOF:
                        break
                    assert isinstance(request, link_pb.RelayRequest)
                    opens = 0
                    try:
                        for command in request.commands:
                            opens += self._command(command)
                            if opens >= OPENS_PER_YIELD or outbox.full:
                                if opens:
                                    opens = 0
                                    await asyncio.sleep(0)  # the streams opened so far start: their frames count
                                await outbox.room()
                    except StreamError as error:  # the client broke the protocol: end the call, loudly
                        await self._context.abort(GRPC_STATUS[error.code], error.message)
            except asyncio.CancelledError:
                if not self._interrupted or handler.uncancel() > 0:
                    raise
            # No more commands; serve the streams already open to their end.
            while self._tasks:
                await asyncio.wait(list(self._tasks.values()))
            self._outbox.close()
            await writer  # the last frames
        finally:
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            writer.cancel()
            await asyncio.wait([writer])  # its own failure, if any, was logged by `_writer_done`

    def _command(self, command: link_pb.RelayCommand) -> bool:
        """Start (True) or cancel (False) a stream; raises `StreamError(INVALID_ARGUMENT)` for a command
        that breaks the protocol."""
        stream_id = command.stream_id
        kind = command.WhichOneof("command")
        if kind == "cancel":
            if command.cancel.finish:  # end it as cancelled, and send its final event as for any end
                cancelled = StreamError(ErrorCode.CANCELLED, "cancelled by the client")
                live = self._live.get(stream_id)
                replay = self._replays.get(stream_id)
                if live is not None:
                    live.abort(cancelled)
                elif replay is not None and replay.stream is not None:
                    replay.stream.abort(cancelled)
                return False
            task = self._tasks.get(stream_id)
            if task is not None:
                task.cancel()
            replay = self._replays.pop(stream_id, None)
            if command.cancel.stop and replay is not None and replay.stream is not None:
                replay.stream.abort(StreamError(ErrorCode.CANCELLED, "cancelled by the client"))
            return False
        if kind not in ("open", "attach"):
            raise invalid(f"stream {stream_id}: a command with neither open, attach nor cancel")
        if stream_id in self._tasks:
            raise invalid(f"stream id {stream_id} is already open on this call")
        task = asyncio.create_task(self._serve(stream_id, command.open if kind == "open" else command.attach))
        self._tasks[stream_id] = task
        task.add_done_callback(lambda done: self._forget(stream_id, done))
        return True

    def _forget(self, stream_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(stream_id) is task:  # not a later stream that reused the id
            del self._tasks[stream_id]
            self._replays.pop(stream_id, None)
            self._live.pop(stream_id, None)

    def _principal(self, command: link_pb.RelayOpen | link_pb.RelayAttach) -> str | None:
        return self._keyring.authenticate(command.authorization or None) if self._keyring.enabled else None

    def _request(self, stream_id: int, command: link_pb.RelayOpen) -> StreamRequest:
        request = request_from_proto(command.request, self._principal(command))
        if command.transport:
            transport = BRIDGE_TRANSPORTS.get(command.transport)
            if transport is None:
                raise invalid(f"stream {stream_id}: unknown transport {command.transport[:20]!r}")
            request = dataclasses.replace(request, transport=transport)
        return request

    def _events(
        self,
        stream_id: int,
        command: link_pb.RelayOpen | link_pb.RelayAttach,
        request: StreamRequest | None = None,
        lease: Lease | None = None,
    ) -> tuple[str, AsyncIterator[Event]]:
        """The stream a command asks for, admitted (or attached to): its request id and its events."""
        gateway = self._gateway
        if isinstance(command, link_pb.RelayAttach):
            replay = self._replays[stream_id] = gateway.replays.find(command.request_id, self._principal(command))
            return replay.stream_id, replay.read(command.after)
        if request is None:
            request = self._request(stream_id, command)
        if command.traceparent and gateway.tracer is not None:  # the bridge's span: the parent of the core's
            _telemetry.adopt(command.traceparent, command.tracestate)  # (in this stream's own task)
        if request.resumable:
            replay = self._replays[stream_id] = gateway.open_resumable(request, lease)
            return request.request_id, replay.read()
        stream = self._live[stream_id] = gateway.open(request, lease)
        return stream.request.request_id, stream

    async def _shared_events(
        self, stream_id: int, command: link_pb.RelayOpen | link_pb.RelayAttach
    ) -> tuple[str, AsyncIterator[Event]]:
        """`_events` with state shared across cores (`--redis-url`): the stream's lease is taken first,
        and an attach finds a stream another core runs too (read from Redis)."""
        gateway = self._gateway
        assert gateway.shared is not None
        if isinstance(command, link_pb.RelayAttach):
            principal = self._principal(command)
            replay = self._replays[stream_id] = await gateway.find_replay(command.request_id, principal)
            return replay.stream_id, replay.read(command.after)
        request = self._request(stream_id, command)
        lease = await gateway.shared.admit(request)
        return self._events(stream_id, command, request, lease)

    def _model_of(self, stream_id: int) -> str:
        live = self._live.get(stream_id)
        if live is not None:
            return live.model
        replay = self._replays.get(stream_id)
        return replay.stream.model if replay is not None and replay.stream is not None else ""

    async def _serve(self, stream_id: int, command: link_pb.RelayOpen | link_pb.RelayAttach) -> None:
        outbox = self._outbox
        place = Place(stream_id)
        request_id: str | None = None
        ended = False
        try:
            try:
                if self._gateway.shared is None:
                    request_id, stream = self._events(stream_id, command)
                else:
                    request_id, stream = await self._shared_events(stream_id, command)
            except StreamError as error:
                outbox.frame(place, link_pb.RelayFrame(stream_id=stream_id, refused=error_to_proto(error)), urgent=True)
                return
            admitted = link_pb.RelayAdmitted(request_id=request_id, model=self._model_of(stream_id))
            outbox.frame(place, link_pb.RelayFrame(stream_id=stream_id, admitted=admitted))
            async with contextlib.aclosing(stream):  # type: ignore[type-var]  # both kinds have aclose()
                async for event in stream:
                    if isinstance(event, Chunk):
                        if outbox.chunk(place, event):
                            await outbox.room(place)  # over a bound: the next event waits for the writer
                        continue
                    frame = link_pb.RelayFrame(stream_id=stream_id, event=event_to_proto(event))
                    ended = True
                    outbox.frame(place, frame)
                    if isinstance(event, Failure):
                        return
        except Exception as exc:  # a bug: this stream ends with an error, the others on the call go on
            logger.exception("relay stream %s (%s): internal error", stream_id, request_id)
            if ended:
                return
            internal = StreamError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
            if request_id is None:
                outbox.frame(place, link_pb.RelayFrame(stream_id=stream_id, refused=error_to_proto(internal)))
            else:
                final = error_to_proto(internal)
                final.request_id = request_id
                outbox.frame(place, link_pb.RelayFrame(stream_id=stream_id, event=pb.GenerateResponse(error=final)))

    def _writer_done(self, writer: asyncio.Task[None]) -> None:
        """A writer that failed would leave every stream of the call without frames: end the call instead."""
        if writer.cancelled() or writer.exception() is None:
            return
        if isinstance(writer.exception(), ConnectionError):  # the bridge left: the reader ends the call too
            logger.info("relay: the bridge's connection closed while frames were being sent")
        else:
            logger.error("relay: cannot send, ending the call", exc_info=writer.exception())
        if self._handler is not None and not self._handler.done():
            self._handler.cancel()

    async def _write(self) -> None:
        context, outbox = self._context, self._outbox
        while (batch := await outbox.take()) is not None:
            await context.write(batch)
            # At most one write every 5 ms: what arrives meanwhile shares the next message. A
            # write costs 100-200 µs of CPU on the two sides together whatever it carries (grpc's
            # poller thread, serialising, parsing); a pause of 1 ms sent a message every 10 tokens
            # at 200 steady streams, 5 ms one every 20, and cut server CPU per token from 213 to
            # 184 µs at 200 and from 154 to 118 µs at 400 (benchmarks.run --phases steady --quick).
            # A chunk waits at most this long; the first frame after a quiet spell goes out at
            # once, and so does a stream's first chunk or its refusal (time to first token). An
            # admission may wait: no client sees anything of it before the first chunk.
            if not outbox.urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RELAY_PAUSE):
                        await outbox.urgent.wait()
            outbox.urgent.clear()


RELAY_OFF = (
    "Relay is the bridge's link and is off on this core: start the core and the bridge with the same"
    f" {TOKEN_ENV} (streamgate serve sets one itself)"
)
RELAY_WRONG_TOKEN = f"Relay needs the link token the core was started with ({TOKEN_HEADER} metadata)"


class LinkServicer(link_grpc.LinkServiceServicer):
    """The core's end of the link: `Relay` calls from bridges that hold the link token."""

    def __init__(self, gateway: Gateway, keyring: Keyring, link_token: str | None) -> None:
        """`link_token`: the secret a `Relay` call must carry; None refuses every Relay call."""
        self.gateway = gateway
        self.keyring = keyring
        self.sessions: set[RelaySession] = set()
        self._link_token = link_token.encode() if link_token else None
        #: The tasks serving link connections over a plain socket (`serve_stream`), and their writers.
        self._connections: dict[asyncio.Task[object], asyncio.StreamWriter] = {}

    async def Relay(  # type: ignore[override]  # grpc.aio: a bidi handler may write with context.write
        self,
        request_iterator: AsyncIterator[link_pb.RelayRequest],
        context: RelayContext,
    ) -> None:
        """Many streams over this one call (the bridge's link): see the module's docstring.

        Only for a bridge: the call must carry the core's link token, compared in constant time
        (never logged); without one configured, every Relay call is refused.
        """
        presented = dict(context.invocation_metadata() or ()).get(TOKEN_HEADER)
        refusal = self._refusal(presented.encode() if isinstance(presented, str) else None, context.peer())
        if refusal is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        await self._session(context)

    def _refusal(self, presented: bytes | None, peer: str) -> str | None:
        """Why a link that presented this token is refused (never with the token); None: it is the core's."""
        if self._link_token is None:
            logger.debug("link from %s refused: no link token configured", peer)
            return RELAY_OFF
        if presented is None or not hmac.compare_digest(presented, self._link_token):
            logger.debug("link from %s refused: missing or wrong link token", peer)
            return RELAY_WRONG_TOKEN
        return None

    async def _session(self, context: RelayContext | StreamContext) -> None:
        session = RelaySession(self.gateway, self.keyring, context)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One bridge's link over a plain stream socket (`streamgate.link._stream`): the same session
        as a `Relay` call, after the same check of the link token."""
        context = StreamContext(reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            refusal = self._refusal(await context.hello(), context.peer())
            if refusal is not None:
                await context.end(grpc.StatusCode.PERMISSION_DENIED, refusal)
                return
            await self._session(context)
            await context.end(grpc.StatusCode.OK)
        except (Aborted, ConnectionError):
            pass  # the call ended with its status already sent, or the bridge left (its streams were cancelled)
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def listen(self, address: str) -> tuple[asyncio.Server, str]:
        """Serve the link over a plain stream socket at `unix:PATH` (readable by this user only) or
        `HOST:PORT` (0: a free port); returns the server and the address bridges connect to."""
        target = parse_address(address)
        if isinstance(target, str):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(target).st_mode):
                    os.unlink(target)  # a socket left by a core that was killed
            server = await asyncio.start_unix_server(self.serve_stream, target, limit=MAX_FRAME)
            os.chmod(target, 0o600)
            return server, f"unix:{target}"
        server = await asyncio.start_server(self.serve_stream, *target, limit=MAX_FRAME)
        host, port = server.sockets[0].getsockname()[:2]
        return server, f"{host}:{port}"

    async def stop_listening(self, server: asyncio.Server, grace: float) -> None:
        """Stop taking link connections; give those open `grace` seconds to send their last frames."""
        names = [sock.getsockname() for sock in server.sockets]
        server.close()
        for name in names:
            if isinstance(name, str) and name:  # a Unix socket's file
                with contextlib.suppress(OSError):
                    os.unlink(name)
        connections = list(self._connections)
        if connections:
            _, late = await asyncio.wait(connections, timeout=grace)
            for task in late:  # as if the bridge left: the session cancels its streams and ends
                self._connections[task].transport.abort()
            if late:
                await asyncio.wait(late)
        await server.wait_closed()

    def close(self) -> None:
        """End every Relay call once the streams it carries have ended (shutdown, after the drain)."""
        for session in self.sessions:
            session.close()
