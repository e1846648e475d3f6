"""Slow peers against the live bridge: no connection, stream or core stream is held by a client for ever.

Raw sockets, so that the test decides exactly what is sent and when (or whether) anything is read.
A client that "stops reading" gets a small receive buffer and a small segment size: on loopback the
kernel would otherwise grow the bridge's send buffer to megabytes before a write has to wait.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
from typing import Any

import aiohttp
import pytest

from streamgate.bridges.app import BridgeServer
from streamgate.rpc.server import CoreServer
from streamgate.testing.upstream import FakeUpstream, Scenario
from tests.conftest import BridgeFactory, CoreFactory, eventually

#: 1000-character tokens: a reader that stops fills every buffer on the way in a few hundred of them.
BIG = ("x" * 1000,)


async def _connect(bridge: BridgeServer, *, slow_reader: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if slow_reader:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (bridge.config.host, bridge.port))
    return sock


async def _send(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def _trickle(sock: socket.socket, first: bytes, every: float = 0.1) -> None:
    """Send `first`, then one more byte every `every` s, until the connection breaks (a slowloris)."""
    with contextlib.suppress(OSError):
        await _send(sock, first)
        while True:
            await asyncio.sleep(every)
            await _send(sock, b"a")


async def _read_until_closed(sock: socket.socket, within: float) -> bytes:
    """What the bridge sends until it closes the connection (EOF or reset); fails after `within` s."""
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(within):
        while True:
            try:
                got = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                return data
            if not got:
                return data
            data += got


async def _read_head(sock: socket.socket) -> bytes:
    """The response head, read a byte at a time: nothing after it is read."""
    loop = asyncio.get_running_loop()
    head = b""
    async with asyncio.timeout(10):
        while not head.endswith(b"\r\n\r\n"):
            got = await loop.sock_recv(sock, 1)
            assert got, f"closed after {head!r}"
            head += got
    return head


def _post(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST /query/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
    return head.encode() + b"\r\n\r\n" + data


def _ws_upgrade() -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /query/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def _ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked frame, as a client sends it (text by default; 0x8 is close)."""
    mask = os.urandom(4)
    size = len(payload)
    length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _metrics(http: aiohttp.ClientSession, bridge: BridgeServer) -> str:
    async with http.get(f"{bridge.url}/metrics") as response:
        return await response.text()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


# --- the request head -----------------------------------------------------------------------------


async def test_connections_that_never_finish_a_request_head_are_closed_within_the_header_timeout(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession
) -> None:
    bridge = await make_bridge(header_timeout=0.5)
    loop = asyncio.get_running_loop()

    async def one(head: bytes) -> float:
        sock = await _connect(bridge)
        start = loop.time()
        trickle = asyncio.create_task(_trickle(sock, head)) if head else None
        try:
            assert await _read_until_closed(sock, within=5.0) == b"", "closed without an answer"
        finally:
            if trickle is not None:
                trickle.cancel()
            sock.close()
        return loop.time() - start

    # Half send nothing at all; half send a head a byte at a time that never ends (a header value).
    heads = [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "] * 25
    took = await asyncio.gather(*(one(head) for head in heads))

    assert max(took) < 1.5, sorted(took)
    await eventually(lambda: bridge.open_connections == 0)
    async with http.get(f"{bridge.url}/healthz") as response:
        assert response.status == 200


async def test_an_idle_kept_alive_connection_and_its_next_head_are_bounded_too(make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(header_timeout=0.5)
    loop = asyncio.get_running_loop()
    idle = await _connect(bridge)
    slow = await _connect(bridge)
    try:
        for sock in (idle, slow):
            await _send(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        start = loop.time()
        trickle = asyncio.create_task(_trickle(slow, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", every=0.05))
        answers = await asyncio.gather(*(_read_until_closed(sock, within=5.0) for sock in (idle, slow)))
        took = loop.time() - start
        trickle.cancel()
    finally:
        idle.close()
        slow.close()

    for answer in answers:  # the first request was answered; then the connection waited, and was closed
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b'{"status": "ok"}'), answer
    assert took < 1.5


# --- the request body -----------------------------------------------------------------------------


@pytest.mark.parametrize("trickle", [False, True], ids=["nothing", "a-byte-at-a-time"])
async def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(
    make_bridge: BridgeFactory, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture, trickle: bool
) -> None:
    bridge = await make_bridge(body_timeout=0.5)
    loop = asyncio.get_running_loop()
    sock = await _connect(bridge)
    head = b"POST /query/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    start = loop.time()
    sending = asyncio.create_task(_trickle(sock, head + b'{"query": ', every=0.1) if trickle else _send(sock, head))
    try:
        answer = await _read_until_closed(sock, within=5.0)
    finally:
        sending.cancel()
        sock.close()
    took = loop.time() - start

    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408 "), answer
    assert b"\r\nConnection: close" in status
    assert json.loads(body) == {
        "error": {"code": "DEADLINE_EXCEEDED", "message": "the request body did not arrive within 0.5 s"}
    }
    assert took < 1.5, "answered, and closed, within the body timeout"
    assert upstream.counters.started == 0
    assert not _errors(caplog)
    await eventually(lambda: bridge.open_connections == 0)


# --- a client that stops reading ------------------------------------------------------------------


async def _stalled(
    make_core: CoreFactory, make_bridge: BridgeFactory, **bridge: Any
) -> tuple[CoreServer, BridgeServer]:
    core = await make_core()
    return core, await make_bridge(core=core.address, header_timeout=30.0, **bridge)


async def test_an_sse_client_that_stops_reading_is_dropped_and_its_core_stream_ends(
    make_core: CoreFactory,
    make_bridge: BridgeFactory,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.default = Scenario(tokens=2000, delay=0.005, words=BIG)  # 10 s, 2 MB: far more than the buffers
    core, bridge = await _stalled(make_core, make_bridge, write_stall_timeout=0.5)
    sock = await _connect(bridge, slow_reader=True)
    try:
        await _send(sock, _post({"query": "hi"}))
        assert (await _read_head(sock)).startswith(b"HTTP/1.1 200 OK\r\n")
        await eventually(lambda: core.gateway.active_streams == 1)

        # It reads nothing more: a write waits, the bridge drops it, and the core stream is cancelled.
        await eventually(lambda: core.gateway.active_streams == 0, within=4.0)
        await eventually(lambda: upstream.counters.disconnects == 1 and not bridge.state.streams)
        await _read_until_closed(sock, within=2.0)  # reset
    finally:
        sock.close()

    text = await _metrics(http, bridge)
    assert 'streamgate_bridge_streams_total{outcome="disconnected",transport="sse"} 1.0' in text
    assert 'streamgate_bridge_disconnects_total{transport="sse"} 1.0' in text
    assert not _errors(caplog)


async def test_an_sse_client_that_stops_reading_near_the_end_is_dropped_after_its_stream(
    make_core: CoreFactory,
    make_bridge: BridgeFactory,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # About 55 kB in all: less than makes a write wait (64 kiB), more than the kernel takes for this
    # client. So the handler ends with bytes left in the transport's buffer, which a close would keep
    # trying to send for ever.
    upstream.default = Scenario(tokens=26, words=BIG)
    core, bridge = await _stalled(make_core, make_bridge, write_stall_timeout=0.5)
    sock = await _connect(bridge, slow_reader=True)
    try:
        await _send(sock, _post({"query": "hi"}))
        assert (await _read_head(sock)).startswith(b"HTTP/1.1 200 OK\r\n")
        await eventually(lambda: upstream.counters.finished == 1 and not bridge.state.streams, within=4.0)
        assert bridge.open_connections == 1

        await eventually(lambda: bridge.open_connections == 0, within=2.0)
    finally:
        sock.close()

    assert core.gateway.active_streams == 0
    text = await _metrics(http, bridge)
    assert 'streamgate_bridge_streams_total{outcome="completed",transport="sse"} 1.0' in text, "its stream was all sent"
    assert not _errors(caplog)


async def _open_ws(bridge: BridgeServer) -> socket.socket:
    sock = await _connect(bridge, slow_reader=True)
    await _send(sock, _ws_upgrade())
    assert (await _read_head(sock)).startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    return sock


async def test_a_websocket_client_that_stops_reading_is_dropped_and_its_core_stream_ends(
    make_core: CoreFactory,
    make_bridge: BridgeFactory,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.default = Scenario(tokens=2000, delay=0.005, words=BIG)
    core, bridge = await _stalled(make_core, make_bridge, write_stall_timeout=0.5)
    sock = await _open_ws(bridge)
    try:
        await _send(sock, _ws_frame(b'{"query": "hi"}'))
        await eventually(lambda: core.gateway.active_streams == 1)

        await eventually(lambda: core.gateway.active_streams == 0, within=4.0)
        await eventually(lambda: upstream.counters.disconnects == 1 and not bridge.state.streams)
        await _read_until_closed(sock, within=2.0)
    finally:
        sock.close()

    await eventually(lambda: bridge.open_connections == 0)
    text = await _metrics(http, bridge)
    assert 'streamgate_bridge_streams_total{outcome="disconnected",transport="websocket"} 1.0' in text
    assert not _errors(caplog)


async def test_a_websocket_client_that_closes_without_reading_is_dropped(
    make_core: CoreFactory,
    make_bridge: BridgeFactory,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.default = Scenario(tokens=26, words=BIG)  # about 55 kB: as the SSE case above
    core, bridge = await _stalled(make_core, make_bridge, write_stall_timeout=0.5)
    sock = await _open_ws(bridge)
    try:
        await _send(sock, _ws_frame(b'{"query": "hi"}'))
        await eventually(lambda: upstream.counters.finished == 1 and not bridge.state.streams, within=4.0)
        await _send(sock, _ws_frame(b"\x03\xe8", opcode=0x8))  # close (1000), and still read nothing

        await eventually(lambda: bridge.open_connections == 0, within=2.0)
    finally:
        sock.close()

    assert core.gateway.active_streams == 0
    assert not _errors(caplog)
