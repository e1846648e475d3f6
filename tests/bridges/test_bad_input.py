"""Bad input at every entry: a clear 400 / error message, the WebSocket kept open, nothing started upstream.

Regression tests for the probe: a lone surrogate in `query`, `model` or `request_id`, and a
timeout of 1e20, got a text/plain 500 over HTTP and dropped the WebSocket (close 1006); a
request id with a newline or an escape sequence reached the log raw.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest

from streamgate.bridges.app import BridgeServer
from streamgate.testing.sse import read_events
from streamgate.testing.upstream import FakeUpstream

SURROGATE = "lone surrogate: text must be valid Unicode"
PRINTABLE = "printable ASCII characters, without spaces"

#: (JSON body as sent on the wire, what the error message says)
BAD_BODIES = {
    "surrogate in query": (b'{"query": "\\ud800"}', SURROGATE),
    "surrogate in model": (b'{"query": "hi", "model": "\\udfff"}', SURROGATE),
    "surrogate in request_id": (b'{"query": "hi", "request_id": "a\\ud800"}', SURROGATE),
    "surrogate in a message": (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "Unpaired surrogate"),
    "surrogate in stop": (b'{"query": "hi", "stop": ["\\ud800"]}', "Unpaired surrogate"),
    "newline in request_id": (b'{"query": "hi", "request_id": "a\\nERROR forged"}', PRINTABLE),
    "escape in request_id": (b'{"query": "hi", "request_id": "\\u001b[2J"}', PRINTABLE),
    "control character in model": (b'{"query": "hi", "model": "openai/fake\\r"}', PRINTABLE),
    "temperature beyond a double": (b'{"query": "hi", "temperature": 1e400}', "Infinity"),
    "max_tokens beyond int32": (b'{"query": "hi", "max_tokens": 1e20}', "out of range"),
    "seed beyond int64": (b'{"query": "hi", "seed": 99999999999999999999999}', "out of range"),
    "timeout of the wrong type": (b'{"query": "hi", "timeout": "soon"}', "timeout must be a number"),
    "timeout that is not finite": (b'{"query": "hi", "timeout": NaN}', "timeout must be a number"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_a_bad_body_is_a_json_400(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream, case: str
) -> None:
    body, message = BAD_BODIES[case]
    async with http.post(f"{bridge.url}/query/stream", data=body) as response:
        answer = await response.json()
    assert response.status == 400, answer
    assert answer["error"]["code"] == "INVALID_ARGUMENT"
    assert message in answer["error"]["message"], answer
    assert upstream.counters.started == 0


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("query=hi&model=%ED%A0%80", PRINTABLE),  # not UTF-8: decoded with U+FFFD, not ASCII
        ("query=hi&request_id=%1B%5B2J", PRINTABLE),
        ("query=hi&request_id=a%0D%0Ab", PRINTABLE),
        ("query=hi&max_tokens=1e20", "out of range"),
        ("query=hi&temperature=inf", "temperature must be a number"),
        ("query=hi&top_p=nan", "top_p must be a number"),
        ("query=hi&seed=1e30", "out of range"),
    ],
)
async def test_a_bad_query_string_is_a_json_400(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream, query: str, message: str
) -> None:
    async with http.get(f"{bridge.url}/query/stream?{query}") as response:
        answer = await response.json()
    assert response.status == 400, answer
    assert message in answer["error"]["message"], answer
    assert upstream.counters.started == 0


@pytest.mark.parametrize("timeout", ["1e20", "1.7e308", "1e-300"])
async def test_an_extreme_timeout_is_capped_or_refused_never_a_500(
    bridge: BridgeServer, http: aiohttp.ClientSession, timeout: str
) -> None:
    for response_of in (
        http.post(f"{bridge.url}/query/stream", data=f'{{"query": "hi", "timeout": {timeout}}}'),
        http.get(f"{bridge.url}/query/stream?query=hi&timeout={timeout}"),
    ):
        async with response_of as response:
            if float(timeout) < 1e-9:  # rounds to no time at all: refused
                assert response.status == 400
                assert "timeout must be positive" in (await response.json())["error"]["message"]
                continue
            assert response.status == 200
            frames = [frame async for frame in read_events(response)]
            assert frames[-1]["is_final"] and "error" not in frames[-1]["metadata"], frames[-1]


async def test_bad_websocket_messages_get_an_error_and_the_socket_stays_open(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    bad = [body.decode() for body, _ in BAD_BODIES.values()]
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        for message in bad:
            await ws.send_str(message)
            reply: dict[str, Any] = await ws.receive_json(timeout=10)
            assert reply["type"] == "error", (message, reply)
            assert reply["content"]
        assert upstream.counters.started == 0
        await ws.send_str('{"query": "hi", "timeout": 1e20}')
        while (reply := await ws.receive_json(timeout=10))["type"] == "chunk":
            pass
        assert reply["type"] == "complete", reply
        assert not ws.closed


async def _raw(bridge: BridgeServer, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request as raw bytes (headers a client library would refuse); the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_credentials_that_are_not_ascii_are_refused_and_leave_nothing_behind(
    bridge: BridgeServer, upstream: FakeUpstream
) -> None:
    # The probe: bytes that are not UTF-8 in Authorization made a 500 with a traceback, and each
    # such request left a stream behind in the bridge (12 MiB per 10,000).
    for _ in range(50):
        status, body = await _raw(
            bridge, b"POST /query/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xe9\xff\r\n", b'{"query":"hi"}'
        )
        assert status == 401, body
        assert json.loads(body)["error"]["message"] == "the credentials must be printable ASCII"
    link = bridge.state.client._link
    assert link is None or not link._streams
    assert upstream.counters.started == 0


async def test_a_number_of_more_digits_than_python_converts_is_a_400(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    body = b'{"query": "hi", "seed": ' + b"9" * 5000 + b"}"
    async with http.post(f"{bridge.url}/query/stream", data=body) as response:
        assert response.status == 400
        assert "a number out of range" in (await response.json())["error"]["message"]
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await ws.send_str(body.decode())
        assert (await ws.receive_json(timeout=10))["type"] == "error"
        await ws.send_str('{"query": "hi"}')
        while (reply := await ws.receive_json(timeout=10))["type"] == "chunk":
            pass
        assert reply["type"] == "complete"


async def test_a_body_that_does_not_decode_is_a_400(bridge: BridgeServer, upstream: FakeUpstream) -> None:
    status, body = await _raw(
        bridge, b"POST /query/stream HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n", b"this is not gzip"
    )
    assert status == 400, body
    assert "the body cannot be read" in json.loads(body)["error"]["message"]
    assert upstream.counters.started == 0


async def test_a_websocket_auth_message_with_a_key_that_is_not_ascii_gets_an_error(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await ws.send_str('{"type": "auth", "api_key": "\\ud800"}')
        assert (await ws.receive_json(timeout=10))["type"] == "error"
        await ws.send_str('{"query": "hi"}')
        while (reply := await ws.receive_json(timeout=10))["type"] == "chunk":
            pass
        assert reply["type"] == "complete"


async def test_an_unknown_path_or_method_gets_the_json_error(bridge: BridgeServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{bridge.url}/no/such/path") as response:
        assert response.status == 404
        assert response.content_type == "application/json"
        assert (await response.json())["error"]["code"] == "NOT_FOUND"
    async with http.delete(f"{bridge.url}/query/stream") as response:
        assert response.status == 405
        assert "GET" in response.headers["Allow"]
        assert "DELETE is not allowed here" in (await response.json())["error"]["message"]


async def test_a_request_aiohttp_cannot_parse_is_not_logged_at_error(
    bridge: BridgeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    for _ in range(5):
        status, _ = await _raw(bridge, b"GET /query/stream?query=hi HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n")
        assert status == 400
    assert not [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= logging.WARNING]
