"""The link over a plain stream socket: the same `Relay` messages as the gRPC call, without gRPC.

Why: grpc.aio hands every message between its own poller thread and the
event loop. A message that comes alone (the link's usual case: a batch
every few milliseconds) cost about 300 µs of CPU on the core's side and
260 µs on the bridge's, measured with the link's own messages
(`RelayResponse`, 1 to 25 frames). That was about a fifth of the server
CPU of a stream's tokens at 200 steady streams. Here a message is one
`write()` on the socket and one read, on each side's own event loop.

It is for a core and bridges on one machine or one private network
(`streamgate serve` puts it on a Unix socket): no TLS, and no pings (a
core that dies closes the socket; the bridge sees it at once). Between
machines, and through a proxy, the gRPC `Relay` call remains the link.

Framing: every frame is a 4-byte big-endian length, a kind byte, then
the payload.
- The bridge's first frame is `HELLO`, holding the link token; then
  `MESSAGE` frames, each a serialised `RelayRequest`; `DONE` says it
  sends no more commands (gRPC's half-close: the open streams still end).
- The core sends `MESSAGE` frames, each a serialised `RelayResponse`,
  and last an `END`: the call's status (a gRPC status code's number) and
  its details, as gRPC's trailers would carry them.
- A connection that closes without its `END` (or without `DONE`, from
  the bridge) is a call that broke off: the core cancels every stream it
  carried, the bridge fails them as retryable.

The two ends keep the gRPC call's shape (`read()`, `write()`, `abort()`,
`cancel()`, `grpc.aio.EOF`, `AioRpcError`), so `RelaySession` and the
bridge's `_Link` run unchanged over either.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import grpc

from streamgate.link.v1 import link_pb2 as link_pb

HELLO, MESSAGE, DONE, END = 1, 2, 3, 4
_HEADER = struct.Struct(">IB")
#: A frame's payload may hold at most this much: a batch is cut well under it (`BATCH_BYTES`).
MAX_FRAME = 16 * 1024 * 1024
#: Bytes waiting in the socket's send buffer before a writer waits for the reader (flow control).
HIGH_WATER = 1024 * 1024
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def frame(kind: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(len(payload), kind) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame; raises `ConnectionResetError` when the connection ended (cleanly or not)."""
    try:
        size, kind = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        if size > MAX_FRAME:
            raise ConnectionResetError(f"a link frame of {size} bytes is over the limit")
        return kind, await reader.readexactly(size) if size else b""
    except asyncio.IncompleteReadError:
        raise ConnectionResetError("the link's connection closed") from None


def parse_address(address: str) -> tuple[str, int] | str:
    """`unix:/path` → the path; `HOST:PORT` → (host, port); raises ValueError."""
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        if not path:
            raise ValueError("a unix: link address needs a path, e.g. unix:/run/streamgate/link.sock")
        return path
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"a link address is unix:PATH or HOST:PORT, got {address[:100]!r}")
    return host.strip("[]"), int(port)


async def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    if writer.transport.is_closing():
        raise ConnectionResetError("the link's connection closed")
    writer.write(data)
    if writer.transport.get_write_buffer_size() > HIGH_WATER:
        await writer.drain()


class Aborted(Exception):
    """`StreamContext.abort()` ended the call (its `END` frame is written)."""


class StreamContext:
    """The core's end of one connection, shaped as the part of a gRPC servicer context `RelaySession` uses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.ended = False

    def peer(self) -> str:
        peer = self._writer.get_extra_info("peername")
        return f"link:{peer}" if peer else "link:unix"

    async def hello(self) -> bytes | None:
        """The link token the bridge presented (None: its first frame was not a `HELLO`)."""
        kind, payload = await read_frame(self._reader)
        return payload if kind == HELLO else None

    async def read(self) -> object:
        """The next `RelayRequest`; `grpc.aio.EOF` after `DONE`; `ConnectionResetError` when the bridge left."""
        kind, payload = await read_frame(self._reader)
        if kind == MESSAGE:
            return link_pb.RelayRequest.FromString(payload)
        if kind == DONE:
            return grpc.aio.EOF
        raise ConnectionResetError(f"unexpected link frame kind {kind}")

    async def write(self, message: link_pb.RelayResponse) -> None:
        await _write(self._writer, frame(MESSAGE, message.SerializeToString()))

    async def end(self, code: grpc.StatusCode, details: str = "") -> None:
        """The call's status, as its last frame (once)."""
        if self.ended:
            return
        self.ended = True
        with contextlib.suppress(ConnectionError):
            await _write(self._writer, frame(END, bytes([code.value[0]]) + details.encode()))

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        await self.end(code, details)
        raise Aborted(details)


class StreamCall:
    """The bridge's end of one connection, shaped as the part of a gRPC `Relay` call `_Link` uses."""

    def __init__(self, address: str, link_token: str | None) -> None:
        self._address = address
        self._token = (link_token or "").encode()
        self._connected: asyncio.Task[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.create_task(
            self._connect()
        )
        self._ended = False

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        target = parse_address(self._address)
        try:
            if isinstance(target, str):
                reader, writer = await asyncio.open_unix_connection(target, limit=MAX_FRAME)
            else:
                reader, writer = await asyncio.open_connection(*target, limit=MAX_FRAME)
        except OSError as exc:
            raise _unavailable(f"cannot reach the core's link at {self._address}: {exc.strerror or exc}") from None
        writer.write(frame(HELLO, self._token))
        return reader, writer

    async def _stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.shield(self._connected)
        except asyncio.CancelledError:
            if self._connected.cancelled():  # cancel() ended the call, not our caller
                raise _cancelled() from None
            raise

    async def write(self, request: link_pb.RelayRequest) -> None:
        _, writer = await self._stream()
        try:
            await _write(writer, frame(MESSAGE, request.SerializeToString()))
        except ConnectionError as exc:
            raise _unavailable(str(exc)) from None

    async def done_writing(self) -> None:
        _, writer = await self._stream()
        with contextlib.suppress(ConnectionError):
            await _write(writer, frame(DONE))

    async def read(self) -> object:
        """The next `RelayResponse`; `grpc.aio.EOF` after an OK `END`; raises `AioRpcError` otherwise."""
        reader, _ = await self._stream()
        try:
            kind, payload = await read_frame(reader)
        except ConnectionError:
            raise _cancelled() if self._ended else _unavailable("the core closed the link") from None
        if kind == MESSAGE:
            return link_pb.RelayResponse.FromString(payload)
        if kind == END and payload:
            self._ended = True
            code = _CODES.get(payload[0], grpc.StatusCode.UNKNOWN)
            if code is grpc.StatusCode.OK:
                return grpc.aio.EOF
            raise _error(code, payload[1:].decode(errors="replace"))
        raise _unavailable(f"unexpected link frame kind {kind}")

    def cancel(self) -> bool:
        """End the call: the core cancels every stream it carried (the connection closes without `DONE`)."""
        if self._ended and self._connected.done():
            return False
        self._ended = True
        if not self._connected.done():
            self._connected.cancel()
        elif not self._connected.cancelled() and self._connected.exception() is None:
            self._connected.result()[1].close()
        return True


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def _unavailable(details: str) -> grpc.aio.AioRpcError:
    return _error(grpc.StatusCode.UNAVAILABLE, details)


def _cancelled() -> grpc.aio.AioRpcError:
    return _error(grpc.StatusCode.CANCELLED, "cancelled")
