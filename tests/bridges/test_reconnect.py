"""A reconnect never runs a prompt again (the issue on streams that survive, first step).

Regression: a plain `new EventSource('/query/stream?query=...')` that does not close itself on the
final frame reconnected every ~3 s, and each reconnect generated (and paid for) the same answer
again: frames had no `id:`, so nothing told a reconnect from a new request.
"""

from __future__ import annotations

import aiohttp
import pytest

from streamgate.bridges.app import BridgeServer
from streamgate.testing.upstream import FakeUpstream, Scenario


async def _stream_ids(http: aiohttp.ClientSession, bridge: BridgeServer) -> tuple[str, list[str]]:
    """A stream's id and the `id:` of each of its events, in order."""
    async with http.get(f"{bridge.url}/query/stream", params={"query": "hi"}) as response:
        body = (await response.read()).decode()
    ids = [line.removeprefix("id: ") for line in body.splitlines() if line.startswith("id: ")]
    return ids[-1].rpartition(":")[0], ids


async def test_every_event_has_an_id_of_its_stream_and_sequence(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=4)
    stream_id, ids = await _stream_ids(http, bridge)
    assert ids == [f"{stream_id}:{n}" for n in range(5)]  # 4 chunks, then the final frame


async def test_a_reconnect_after_the_final_frame_gets_204_and_generates_nothing(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=4)
    _, ids = await _stream_ids(http, bridge)
    started = upstream.counters.started

    async with http.get(
        f"{bridge.url}/query/stream", params={"query": "hi"}, headers={"Last-Event-ID": ids[-1]}
    ) as response:
        assert response.status == 204  # EventSource stops reconnecting on 204
        assert await response.read() == b""
    assert upstream.counters.started == started


@pytest.mark.parametrize(
    "last", ["chunk of a finished stream", "unknown", "not ours", "", "a digit not ASCII", "a sequence past int64"]
)
async def test_any_other_reconnect_gets_410_and_generates_nothing(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream, last: str
) -> None:
    upstream.default = Scenario(tokens=4)
    _, ids = await _stream_ids(http, bridge)
    started = upstream.counters.started
    header = {
        "chunk of a finished stream": ids[1],
        "unknown": "feedbeef:3",
        "not ours": "42",
        "": "",
        "a digit not ASCII": "a:\u00b2",  # isdigit() says yes, int() says no: was a 500
        "a sequence past int64": "a:" + "9" * 30,  # overflowed the link's int64: was a 500
    }[last]

    for method in ("GET", "POST"):
        async with http.request(
            method, f"{bridge.url}/query/stream?query=hi", json={"query": "hi"}, headers={"Last-Event-ID": header}
        ) as response:
            assert response.status == 410
            error = (await response.json())["error"]
    assert error["code"] == "NOT_FOUND"
    assert "never starts a new generation" in error["message"]
    assert upstream.counters.started == started
