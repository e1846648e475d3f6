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


async def test_a_listed_origin_may_call_the_openai_api_from_a_browser(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession
) -> None:
    """A browser asks first (the preflight: OPTIONS with the method and headers it will send), then sends."""
    bridge = await make_bridge(cors_origins=("http://app.example",))
    asking = {
        "Origin": "http://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with http.options(f"{bridge.url}/v1/chat/completions", headers=asking) as preflight:
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    chat = {"model": "openai/fake", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(f"{bridge.url}/v1/chat/completions", json=chat, headers={"Origin": "http://app.example"}) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "http://app.example"
    unlisted = {**asking, "Origin": "http://evil.example"}
    async with http.options(f"{bridge.url}/v1/chat/completions", headers=unlisted) as refused:
        assert refused.status == 403 and "Access-Control-Allow-Origin" not in refused.headers
