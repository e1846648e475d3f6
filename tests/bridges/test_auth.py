"""API keys through the bridge: 401 over HTTP, WebSocket by header or first message."""

from __future__ import annotations

import aiohttp
import pytest

from streamgate.core.auth import Keyring
from streamgate.testing.upstream import FakeUpstream
from tests.conftest import BridgeFactory

KEY = "bridge-secret-key-1"


@pytest.fixture
async def secured(make_bridge: BridgeFactory) -> str:
    bridge = await make_bridge(core_keyring=Keyring.from_lines([f"web: {KEY}"]))
    return bridge.url


@pytest.mark.parametrize("header", [None, "Bearer wrong-key-0000", "Token abc"])
async def test_http_without_a_valid_key_is_401(
    secured: str, http: aiohttp.ClientSession, upstream: FakeUpstream, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    async with http.post(f"{secured}/query/stream", json={"query": "hi"}, headers=headers) as response:
        answer = await response.json()

    assert response.status == 401
    assert answer["error"]["code"] == "UNAUTHENTICATED"
    assert upstream.counters.started == 0


async def test_http_with_the_key_streams(secured: str, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with http.post(f"{secured}/query/stream", json={"query": "hi"}, headers=headers) as response:
        body = await response.read()
    assert response.status == 200
    assert b'"is_final": true' in body


async def test_websocket_with_the_key_in_a_header_or_the_first_message(
    secured: str, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{secured}/query/ws", headers={"Authorization": f"Bearer {KEY}"}) as ws:
        await ws.send_json({"query": "hi"})
        first = await ws.receive_json(timeout=5)
    async with http.ws_connect(f"{secured}/query/ws") as ws:
        await ws.send_json({"type": "auth", "api_key": KEY})
        await ws.send_json({"query": "hi"})
        second = await ws.receive_json(timeout=5)

    assert first["type"] == "chunk"
    assert second["type"] == "chunk"


async def test_websocket_without_a_key_gets_an_error_and_close_1008(secured: str, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(f"{secured}/query/ws") as ws:
        await ws.send_json({"query": "hi"})
        error = await ws.receive_json(timeout=5)
        closing = await ws.receive(timeout=5)

    assert error == {"type": "error", "content": "missing credentials: send 'Authorization: Bearer <API key>'"}
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert closing.data == 1008
