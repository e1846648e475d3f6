"""A page of another origin may not stream through the gateway (the probe: CORS does not guard a
WebSocket, so any web page could open `/query/ws` on a gateway it can reach and read the answers)."""

from __future__ import annotations

import aiohttp
import pytest

from streamgate.bridges.app import BridgeServer
from streamgate.testing.upstream import FakeUpstream
from tests.conftest import BridgeFactory

EVIL = "http://evil.example"


async def test_a_websocket_from_another_origin_is_refused(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{bridge.url}/query/ws", headers={"Origin": EVIL})
    assert refused.value.status == 403
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi"}, headers={"Origin": EVIL}) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "PERMISSION_DENIED"
    assert upstream.counters.started == 0


async def test_the_pages_own_origin_and_the_allowed_ones_stream(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession
) -> None:
    bridge = await make_bridge(cors_origins=("http://app.example",))
    for origin in (bridge.url, "http://app.example", None):
        headers = {"Origin": origin} if origin else {}
        async with http.ws_connect(f"{bridge.url}/query/ws", headers=headers) as ws:
            await ws.send_str('{"query": "hi"}')
            while (reply := await ws.receive_json(timeout=10))["type"] == "chunk":
                pass
            assert reply["type"] == "complete", origin


async def test_a_page_that_re_points_its_own_name_here_is_refused(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    # DNS rebinding: evil.example resolves to 127.0.0.1, so Host and Origin agree with each other.
    host = f"evil.example:{bridge.port}"
    headers = {"Host": host, "Origin": f"http://{host}"}
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi"}, headers=headers) as response:
        assert response.status == 403
    assert upstream.counters.started == 0
