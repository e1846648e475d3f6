"""The link lives however long it is quiet, and so do the streams that are silent on it.

Regression: the bridge pinged the core every 10 s and the core's gRPC server, by default, took a
ping less than 5 minutes after the last data as a strike: after about 2 minutes without traffic it
ended the link with GOAWAY `too_many_pings`, and every stream on it that was silent between tokens
ended with UNAVAILABLE "lost the connection to the core". The two sides' settings now come from one
place (`streamgate.link._wire`); here the interval is scaled down (1 s instead of 10 s) so that the
minutes become seconds. `STREAMGATE_SLOW_TESTS=1` runs the real interval for 150 s.
"""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp
import pytest

from streamgate.link import _wire
from streamgate.testing.sse import read_events
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.conftest import BridgeFactory

SLOW = os.environ.get("STREAMGATE_SLOW_TESTS") == "1"


@pytest.fixture
def scaled(monkeypatch: pytest.MonkeyPatch) -> float:
    """Seconds between the link's pings in this test (the real 10 s with STREAMGATE_SLOW_TESTS=1)."""
    if not SLOW:
        monkeypatch.setattr(_wire, "KEEPALIVE_MS", 1_000)
    return _wire.KEEPALIVE_MS / 1000


async def _stream(http: aiohttp.ClientSession, url: str) -> list[dict[str, object]]:
    async with http.post(f"{url}/query/stream", json={"query": "hi"}) as response:
        assert response.status == 200
        return [frame async for frame in read_events(response)]


@pytest.mark.timeout(400)
async def test_an_idle_link_outlives_the_servers_ping_strikes(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream, scaled: float
) -> None:
    bridge = await make_bridge()
    upstream.default = Scenario(tokens=3)
    assert not (await _stream(http, bridge.url))[-1].get("metadata", {}).get("error")  # type: ignore[union-attr]
    link = bridge.state.client._link
    assert link is not None

    await asyncio.sleep(15 * scaled)  # idle: about 15 pings, where 3 used to end the link

    frames = await _stream(http, bridge.url)
    assert frames[-1]["is_final"] and "error" not in frames[-1], frames[-1]
    assert bridge.state.client._link is link, "the link was not lost and opened again"


@pytest.mark.timeout(400)
async def test_a_stream_silent_between_tokens_for_many_pings_completes(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream, scaled: float
) -> None:
    silence = 8 * scaled  # 8 pings with no data (the real interval: 80 s)
    bridge = await make_bridge(core_idle_timeout=silence * 3, core_stream_timeout=silence * 10)
    upstream.default = Scenario(tokens=3, delay=silence)

    frames = await _stream(http, bridge.url)

    final = frames[-1]
    assert final["is_final"] and "error" not in final, json.dumps(final)
    assert final["metadata"]["final_response"] == "".join(token(i) for i in range(3))  # type: ignore[index]
