"""The bridge's view of the core: one `Relay` call that carries every stream, each ending with one final event.
(`CoreStream`, one stream's handle, is in `_core_stream.py`.)

`CoreClient.open()` returns once the core has admitted the stream or raises
the core's refusal as a `StreamError`, so the bridge can still answer with a
plain HTTP error. `CoreStream` then yields the core's events; if the link
breaks before the final event (the core died), it makes the final `Failure`
itself, with the text received so far.

One call carries all streams (see `streamgate/link/server.py` for why): a
reader task hands each frame to its stream, a writer task sends the open and
cancel commands in batches. A link that broke fails the streams it carried;
the next `open()` starts a new one. The call carries the core's link token
(`x-streamgate-link-token`): without it the core refuses the link.

Flow control: the commands waiting for the writer are bounded
(`COMMAND_BYTES`). A core that reads no more commands (it stops while its own
outbox is full) holds the writer; then `open()` waits for room before it
queues another, instead of the bridge buffering every request for it.

Cancellation: `CoreStream.cancel()` sends a `RelayCancel` (the core closes
the upstream request) and makes a consumer waiting in `events()` raise
CancelledError, as a cancelled gRPC call would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import streamgate._telemetry as _telemetry
from streamgate.contract import (
    MAX_REQUEST_ID,
    ErrorCode,
    StreamError,
    error_from_proto,
    error_from_status,
    event_from_proto,
)
from streamgate.link._core_stream import CoreStream
from streamgate.link._stream import StreamCall, parse_address
from streamgate.link._wire import BATCH_BYTES, TOKEN_HEADER, client_keepalive
from streamgate.link.v1 import link_pb2 as link_pb
from streamgate.link.v1 import link_pb2_grpc as link_grpc
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

__all__ = ["COMMAND_BYTES", "CORE_UNAVAILABLE", "CoreClient", "CoreStream"]

logger = logging.getLogger("streamgate.bridge")

CORE_UNAVAILABLE = "the core is unavailable"
#: A batch of commands stops growing past this many bytes: well under the 16 MiB a gRPC message may have.
#: What the commands waiting for the writer may hold (about one more batch than the one being written).
#: Over it, `open()` waits until the writer took them (cancels never wait: they are small, one a stream).
COMMAND_BYTES = BATCH_BYTES
#: Metadata key of the core's link token (see `streamgate/rpc/servicer.py`).


def _link_error(code: grpc.StatusCode, details: str | None) -> StreamError:
    error = error_from_status(code, details)
    if error.code is ErrorCode.UNAVAILABLE or code is grpc.StatusCode.PERMISSION_DENIED:
        # grpc's own words about a connection that failed mean nothing to a browser; nor does the
        # core's refusal of the link (no link token, or another one): that is for the operator's log
        return StreamError(ErrorCode.UNAVAILABLE, CORE_UNAVAILABLE, retryable=True)
    return error


def _check_credentials(authorization: str | None) -> None:
    """A header that is not printable ASCII (aiohttp hands such bytes on as surrogates) cannot be a key."""
    if authorization is not None and not (authorization.isascii() and authorization.isprintable()):
        raise StreamError(ErrorCode.UNAUTHENTICATED, "the credentials must be printable ASCII")


class _Link:
    """One `Relay` call and the streams it carries."""

    def __init__(self, call: Any, coalesce: bool) -> None:
        """`call`: the `Relay` call, over gRPC or over a plain socket (`streamgate.link._stream`)."""
        self._call: Any = call
        self.coalesce = coalesce
        self._streams: dict[int, CoreStream] = {}
        self._ids = itertools.count(1)
        self._commands: list[tuple[link_pb.RelayCommand, int]] = []  # and each one's size
        #: Bytes of the commands waiting for the writer.
        self.pending = 0
        self._ready = asyncio.Event()
        self._took = asyncio.Event()  # set when the writer took commands, or the link broke
        self.broken: StreamError | None = None
        self._reader = asyncio.create_task(self._read())
        self._writer = asyncio.create_task(self._write())

    def open(
        self, request: pb.GenerateRequest, authorization: str | None, transport: str = "", trace: bool = False
    ) -> CoreStream:
        command = link_pb.RelayCommand(open=link_pb.RelayOpen(request=request, transport=transport))
        if trace:  # the current span (the bridge's of this stream) is the parent of the core's
            carrier = _telemetry.headers()
            command.open.traceparent = carrier.get(_telemetry.TRACEPARENT, "")
            command.open.tracestate = carrier.get(_telemetry.TRACESTATE, "")
        return self._start(command, authorization, "open")

    def attach(self, request_id: str, after: int, authorization: str | None) -> CoreStream:
        command = link_pb.RelayCommand(attach=link_pb.RelayAttach(request_id=request_id, after=after))
        return self._start(command, authorization, "attach")

    def _start(self, command: link_pb.RelayCommand, authorization: str | None, kind: str) -> CoreStream:
        # The command first: whatever fails in building it must not leave a stream behind.
        command.stream_id = stream_id = next(self._ids)
        if authorization:
            getattr(command, kind).authorization = authorization
        stream = CoreStream(self, stream_id)
        self._streams[stream_id] = stream
        self._send(command)
        return stream

    def cancel(self, stream_id: int, stop: bool = False, finish: bool = False) -> None:
        if self.broken is None:
            cancel = link_pb.RelayCancel(stop=stop, finish=finish)
            self._send(link_pb.RelayCommand(stream_id=stream_id, cancel=cancel))

    def forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    @property
    def full(self) -> bool:
        return self.pending > COMMAND_BYTES

    async def room(self) -> None:
        """Wait until the commands waiting are within `COMMAND_BYTES`, or the link broke."""
        took = self._took
        while self.full and self.broken is None:
            took.clear()
            await took.wait()

    def _send(self, command: link_pb.RelayCommand) -> None:
        size = command.ByteSize()
        self._commands.append((command, size))
        self.pending += size
        self._ready.set()

    async def _write(self) -> None:
        call = self._call
        try:
            while True:
                await self._ready.wait()
                commands, size, count = self._commands, 0, 0
                for _, command_size in commands:  # a batch well under the 16 MiB a message may have
                    size += command_size
                    count += 1
                    if size >= BATCH_BYTES:
                        break
                batch, self._commands = commands[:count], commands[count:]
                if not self._commands:
                    self._ready.clear()
                self.pending -= size
                self._took.set()
                await call.write(link_pb.RelayRequest(commands=[command for command, _ in batch]))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call ended: the reader says why
        except Exception:  # a bug: end the call, so that the reader fails every stream instead of leaving it hanging
            logger.exception("the link to the core cannot send")
            call.cancel()

    async def _read(self) -> None:
        streams = self._streams
        error = StreamError(ErrorCode.UNAVAILABLE, CORE_UNAVAILABLE, retryable=True)
        try:
            while (response := await self._call.read()) is not grpc.aio.EOF:
                assert isinstance(response, link_pb.RelayResponse)
                for frame in response.frames:
                    stream = streams.get(frame.stream_id)
                    if stream is None:
                        continue  # cancelled here already
                    kind = frame.WhichOneof("frame")
                    if kind == "event":
                        stream._event(event_from_proto(frame.event))
                    elif kind == "admitted":
                        stream._admit(frame.admitted.request_id, frame.admitted.model)
                    elif kind == "refused":
                        stream._refuse(error_from_proto(frame.refused))
                        del streams[frame.stream_id]
        except grpc.aio.AioRpcError as exc:
            # However the call ended (a proxy between us resets it as INTERNAL, RST_STREAM), the link is
            # lost and each of its streams ends retryable UNAVAILABLE; only the core's own word that this
            # bridge broke the protocol (INVALID_ARGUMENT) is passed on as it is.
            if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                error = _link_error(exc.code(), exc.details())
            if exc.code() is grpc.StatusCode.PERMISSION_DENIED:
                logger.error("the core refused the link: %s", exc.details())
            elif exc.code() is not grpc.StatusCode.CANCELLED:
                logger.warning("the link to the core broke: %s %s", exc.code().name, exc.details())
        finally:
            self.broken = error
            self._took.set()  # an `open()` waiting for room: the link is gone
            self._call.cancel()  # whatever ended the reading (a bug included), the core must stop these streams
            self._writer.cancel()
            for stream in list(streams.values()):
                stream._lost(error)
            streams.clear()

    async def close(self) -> None:
        self._call.cancel()
        for task in (self._reader, self._writer):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class CoreClient:
    def __init__(
        self,
        address: str,
        *,
        coalesce: bool = True,
        link_token: str | None = None,
        trace: bool = False,
        link: str | None = None,
    ) -> None:
        """`coalesce`: chunks that waited together (the reader was slower than the core) come as one.

        `link`: where the core serves the link over a plain socket (`unix:PATH` or `HOST:PORT`, its
        `--link-listen`): the streams go there, not over a gRPC `Relay` call, at a fraction of the CPU
        a message (`streamgate.link._stream`). The other calls (health, models, usage) stay on gRPC.

        `link_token`: the core's link token (STREAMGATE_LINK_TOKEN); the core refuses a link without it.
        `trace`: each stream carries the current span's trace context (`RelayOpen.traceparent`), so that
        the core's span of it is that span's child.
        """
        self.address = address
        if link is not None:
            parse_address(link)  # a bad address fails here, not on the first stream
        self.link_address = link
        self._coalesce = coalesce
        self._trace = trace
        self._link_token = link_token
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", 16 * 1024 * 1024),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                # Notice a dead core quickly (pings the core's policy accepts), and reconnect quickly when it is back.
                *client_keepalive(),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1_000),
            ],
        )
        self._stub = link_grpc.LinkServiceStub(self._channel)
        self._public = pb_grpc.StreamGateServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._link: _Link | None = None

    async def open(
        self, request: pb.GenerateRequest, authorization: str | None = None, transport: str = ""
    ) -> CoreStream:
        """Start a stream; raises `StreamError` when the core refuses it or cannot be reached.

        `authorization` (the client's `Authorization` header) is passed on for the core to check;
        `transport` (sse, ws, openai) names the door the stream came in by, for the usage ledger.
        """
        link = await self._ready_link(authorization)
        stream = link.open(request, authorization, transport, self._trace)
        await stream.admitted()
        if request.resumable:
            stream.resumer = lambda after: self.attach(stream.request_id, after, authorization)
        return stream

    async def attach(self, request_id: str, after: int, authorization: str | None = None) -> CoreStream:
        """Read a resumable stream again: its chunks past sequence `after`, then its live tail; raises
        `StreamError` (NOT_FOUND when the core has no replay of it for these credentials)."""
        if not (request_id.isascii() and request_id.isprintable() and len(request_id) <= MAX_REQUEST_ID):
            raise StreamError(ErrorCode.NOT_FOUND, "no such stream")
        link = await self._ready_link(authorization)
        stream = link.attach(request_id, after, authorization)
        await stream.admitted()
        return stream

    async def _ready_link(self, authorization: str | None) -> _Link:
        """The link, opened again if it broke, with room for one more command."""
        _check_credentials(authorization)
        link = self._link
        if link is None or link.broken is not None:
            link = self._link = _Link(self._relay_call(), self._coalesce)
        if link.full:  # the core reads commands slower than they come: wait for the writer
            await link.room()
            if link.broken is not None:
                raise link.broken
        return link

    def _relay_call(self) -> Any:
        if self.link_address is not None:
            return StreamCall(self.link_address, self._link_token)
        token = self._link_token
        return self._stub.Relay(metadata=((TOKEN_HEADER, token),) if token else None)

    async def list_models(self, authorization: str | None = None) -> pb.ListModelsResponse:
        """The models a client may name (the core's `ListModels`); raises `StreamError`."""
        _check_credentials(authorization)
        metadata = (("authorization", authorization),) if authorization else None
        try:
            answer: pb.ListModelsResponse = await self._public.ListModels(
                pb.ListModelsRequest(), metadata=metadata, timeout=5.0
            )
        except grpc.aio.AioRpcError as exc:
            raise _link_error(exc.code(), exc.details()) from None
        return answer

    async def usage(self, request: pb.GetUsageRequest, authorization: str | None = None) -> pb.GetUsageResponse:
        """The usage ledger, grouped (the core's `GetUsage`); raises `StreamError`."""
        _check_credentials(authorization)
        metadata = (("authorization", authorization),) if authorization else None
        try:
            answer: pb.GetUsageResponse = await self._public.GetUsage(request, metadata=metadata, timeout=10.0)
        except grpc.aio.AioRpcError as exc:
            raise _link_error(exc.code(), exc.details()) from None
        return answer

    async def ready(self, timeout: float = 1.0) -> bool:
        """Whether the core answers its health check with SERVING."""
        try:
            answer = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        if self._link is not None:
            await self._link.close()
        await self._channel.close()
