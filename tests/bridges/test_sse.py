"""The whole chain live: upstream on loopback → core → bridge → an HTTP client reading SSE."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp
import pytest

from streamgate.bridges.app import BridgeServer
from streamgate.testing.sse import SSEParser, read_events
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.conftest import BridgeFactory, eventually


async def _frames(http: aiohttp.ClientSession, bridge: BridgeServer, **kwargs: Any) -> list[dict[str, Any]]:
    async with http.request(kwargs.pop("method", "POST"), f"{bridge.url}/query/stream", **kwargs) as response:
        assert response.status == 200, await response.text()
        return [frame async for frame in read_events(response)]


async def test_post_streams_the_documented_frames_byte_for_byte(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=3)
    async with http.post(f"{bridge.url}/query/stream", json={"query": "one two"}) as response:
        body = await response.read()

    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    blocks = body.split(b"\n\n")
    stream_id = json.loads(blocks[3].partition(b"\n")[2].removeprefix(b"data: "))["metadata"]["request_id"]
    sid = stream_id.encode()
    assert blocks[:3] == [
        # The first event also says how long EventSource waits before it reconnects.
        b"retry: 1000\nid: " + sid + b':0\ndata: {"content": "Streaming", "metadata": {}, "is_final": false}',
        b"id: " + sid + b':1\ndata: {"content": " sends", "metadata": {}, "is_final": false}',
        b"id: " + sid + b':2\ndata: {"content": " each", "metadata": {}, "is_final": false}',
    ]
    assert blocks[4:] == [b""], "nothing after the final frame"
    event_id, _, data = blocks[3].partition(b"\n")
    assert event_id == b"id: " + sid + b":3"  # one past the last chunk's
    final = json.loads(data.removeprefix(b"data: "))
    assert list(final) == ["content", "metadata", "is_final"]
    assert final["content"] == "" and final["is_final"] is True
    metadata = final["metadata"]
    assert metadata["final_response"] == "Streaming sends each"
    assert metadata["finish_reason"] == "stop"
    assert metadata["model"] == "openai/fake"
    assert metadata["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert metadata["cost_usd"] is None, "unknown price: null, not 0"
    assert set(metadata["metrics"]) == {"ttft_ms", "duration_ms", "tokens_per_second", "chunks"}
    assert metadata["metrics"]["chunks"] == 3


async def test_get_streams_the_same_frames_for_eventsource(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    frames = await _frames(http, bridge, method="GET", params={"query": "hi", "max_tokens": "2", "temperature": "0.5"})

    assert [f["content"] for f in frames[:-1]] == [token(0), token(1)]
    assert frames[-1]["metadata"]["finish_reason"] == "length"
    assert upstream.counters.bodies[-1]["temperature"] == 0.5


async def test_messages_model_and_parameters_reach_the_upstream(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    body = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "model": "openai/fake",
        "temperature": 0.2,
        "parameters": {"max_tokens": 4, "stop": "zzz"},
    }
    frames = await _frames(http, bridge, json=body)

    sent = upstream.counters.bodies[-1]
    assert sent["messages"] == body["messages"]
    assert (sent["temperature"], sent["max_tokens"], sent["stop"]) == (0.2, 4, ["zzz"])
    assert len(frames) == 5


async def test_frames_are_written_as_they_come(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=4, delay=0.3)
    loop = asyncio.get_running_loop()
    arrivals = []
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi"}) as response:
        async for _ in read_events(response):
            arrivals.append(loop.time())

    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap > 0.2 for gap in gaps[:3]), gaps


async def test_an_idle_stream_gets_keepalive_comments(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=2, first_token_delay=0.8)
    bridge = await make_bridge(keepalive_interval=0.2)
    parser = SSEParser()
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi"}) as response:
        frames = [frame async for frame in read_events(response, parser)]

    assert parser.comments.count("ping") >= 2
    assert frames[-1]["is_final"] is True
    assert [f["content"] for f in frames[:-1]] == [token(0), token(1)]


async def test_a_failure_mid_stream_ends_with_one_final_error_frame(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=10, drop_after=2)

    frames = await _frames(http, bridge, json={"query": "hi"})

    assert [f["is_final"] for f in frames] == [False, False, True]
    final = frames[-1]
    assert final["content"] == ""
    assert isinstance(final["error"], str) and final["error"]
    assert final["metadata"]["code"] == "UNAVAILABLE"
    assert final["metadata"]["retryable"] is True
    assert final["metadata"]["final_response"] == token(0) + token(1)


async def test_a_timeout_ends_with_a_final_error_frame(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=10, stall_after=1)
    bridge = await make_bridge(core_idle_timeout=0.3)

    frames = await _frames(http, bridge, json={"query": "hi"})

    assert frames[-1]["metadata"]["code"] == "DEADLINE_EXCEEDED"
    assert "no token for 0.3 s" in frames[-1]["error"]


async def test_disconnect_closes_the_upstream_within_a_second(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=200, delay=0.05)
    response = await http.post(f"{bridge.url}/query/stream", json={"query": "hi"})
    await response.content.readuntil(b"\n\n")

    response.close()

    await eventually(lambda: upstream.counters.disconnects == 1, within=1.0)
    await eventually(lambda: not bridge.state.streams)


async def test_many_disconnects_leave_nothing_behind(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi"}) as first:
        await first.read()  # the bridge's link to the core is up: its tasks are part of the baseline
    upstream.default = Scenario(tokens=200, delay=0.02)
    baseline = len(asyncio.all_tasks())
    for _round in range(3):
        responses = [await http.post(f"{bridge.url}/query/stream", json={"query": "hi"}) for _ in range(20)]
        for response in responses:
            await response.content.readuntil(b"\n\n")
        for response in responses:
            response.close()
    await eventually(lambda: upstream.counters.disconnects == 60, within=3.0)
    await eventually(lambda: not bridge.state.streams and upstream.counters.active == 0)
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline, within=2.0)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"query": ""}', 400, "No query provided"),
        (b"{}", 400, "No query provided"),
        (b'{"query": "hi"', 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"query": 5}', 400, "query must be a string"),
        (b'{"query": "hi", "colour": "red"}', 400, "unknown field(s): colour"),
        (b'{"query": "hi", "max_tokens": "ten"}', 400, "parameters"),
        (b'{"query": "hi", "messages": "nope"}', 400, "messages must be a list"),
        (b'{"messages": [{"role": "user", "content": "hi", "mood": "x"}]}', 400, "mood"),
        (b'{"query": "\xff\xfe"}', 400, "not valid UTF-8"),
        (b"[" * 100 + b"]" * 100, 400, "nested more than"),
        (b'{"query": "hi", "temperature": 9}', 400, "temperature must be between 0 and 2"),
        (b'{"query": "hi", "model": "no-such-model"}', 400, "'no-such-model' is not offered here"),
        (b'{"query": "' + b"x" * (2 * 1024 * 1024) + b'"}', 413, "larger than the limit"),
    ],
)
async def test_errors_before_the_stream_are_plain_json_answers(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream, body: bytes, status: int, message: str
) -> None:
    async with http.post(f"{bridge.url}/query/stream", data=body) as response:
        answer = await response.json()

    assert response.status == status
    assert response.content_type == "application/json"
    assert message in answer["error"]["message"], answer
    assert answer["error"]["code"]
    assert upstream.counters.started == 0
    assert len(await _frames(http, bridge, json={"query": "still fine"})) == 9


async def test_over_the_core_limit_answers_429_with_retry_after(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=10, delay=0.05)
    bridge = await make_bridge(core_max_concurrent_streams=1)
    first = await http.post(f"{bridge.url}/query/stream", json={"query": "hi"})
    await first.content.readuntil(b"\n\n")

    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi"}) as refused:
        answer = await refused.json()

    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert answer["error"]["code"] == "RESOURCE_EXHAUSTED"
    first.close()


async def test_core_down_answers_503_and_readyz_says_so(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession
) -> None:
    bridge = await make_bridge(core="127.0.0.1:9")

    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi"}) as response:
        answer = await response.json()
    async with http.get(f"{bridge.url}/readyz") as ready:
        pass
    async with http.get(f"{bridge.url}/healthz") as live:
        pass

    assert response.status == 503
    assert answer == {"error": {"code": "UNAVAILABLE", "message": "the core is unavailable"}}
    assert ready.status == 503
    assert live.status == 200


async def test_readyz_is_ready_when_the_core_serves(bridge: BridgeServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{bridge.url}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"


async def test_cors_only_for_configured_origins(make_bridge: BridgeFactory, http: aiohttp.ClientSession) -> None:
    bridge = await make_bridge(cors_origins=("https://app.example",))
    url = f"{bridge.url}/query/stream"

    async with http.post(url, json={"query": "hi"}, headers={"Origin": "https://app.example"}) as allowed:
        await allowed.read()
    async with http.post(url, json={"query": "hi"}, headers={"Origin": "https://evil.example"}) as other:
        await other.read()
    async with http.options(url, headers={"Origin": "https://app.example"}) as preflight:
        pass

    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Access-Control-Allow-Origin" not in other.headers
    assert preflight.status == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]


async def test_bridge_shutdown_ends_open_streams_with_a_final_frame(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=200, delay=0.05)
    bridge = await make_bridge()
    response = await http.post(f"{bridge.url}/query/stream", json={"query": "hi"})
    reading = asyncio.create_task(_collect(response))
    await eventually(lambda: upstream.counters.active == 1)

    await bridge.stop(grace=0.2)
    frames = await reading

    assert frames[-1]["is_final"] is True
    assert frames[-1]["error"] == "the server is shutting down"
    assert frames[-1]["metadata"]["code"] == "UNAVAILABLE"
    assert [f["is_final"] for f in frames].count(True) == 1
    await eventually(lambda: upstream.counters.disconnects == 1)


async def _collect(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    return [frame async for frame in read_events(response)]


async def test_metrics_count_streams_frames_and_disconnects(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    await _frames(http, bridge, json={"query": "hi"})
    async with http.post(f"{bridge.url}/query/stream", json={"query": ""}):
        pass
    upstream.default = Scenario(tokens=200, delay=0.05)
    response = await http.post(f"{bridge.url}/query/stream", json={"query": "hi"})
    assert (await response.content.readuntil(b"\n\n")).startswith(b"retry: 1000\nid: ")  # the first frame
    response.close()
    await eventually(lambda: not bridge.state.streams)

    async with http.get(f"{bridge.url}/metrics") as answer:
        text = await answer.text()

    assert 'streamgate_bridge_streams_total{outcome="completed",transport="sse"} 1.0' in text
    assert 'streamgate_bridge_streams_total{outcome="invalid_argument",transport="sse"} 1.0' in text
    assert 'streamgate_bridge_disconnects_total{transport="sse"} 1.0' in text
    assert 'streamgate_bridge_open_streams{transport="sse"} 0.0' in text
    assert 'streamgate_bridge_frames_total{transport="sse"} 10.0' in text


@pytest.mark.parametrize("timeout", [1e14, 1e20, 1.7e308])
async def test_a_timeout_far_beyond_the_servers_is_capped_not_a_hang(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream, timeout: float
) -> None:
    upstream.default = Scenario(tokens=3)
    async with asyncio.timeout(5):
        events = await _frames(http, bridge, json={"query": "hi", "timeout": timeout})
    assert events[-1]["is_final"] and "error" not in events[-1], events[-1]
    assert "".join(e["content"] for e in events[:-1]) == "".join(token(i) for i in range(3))


async def test_upstream_text_that_is_not_valid_unicode_arrives_replaced_not_lost(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=3, words=("ok ", "bad \ud800 ", "end"))  # JSON allows a lone surrogate
    events = await _frames(http, bridge, json={"query": "hi"})
    assert [e["content"] for e in events[:-1]] == ["ok ", "bad \ufffd ", "end"]
    assert events[-1]["is_final"] and "error" not in events[-1], events[-1]
    assert events[-1]["metadata"]["final_response"] == "ok bad \ufffd end"


async def test_many_large_requests_at_once_all_stream(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    """20 requests near the body limit (1 MiB) reach the core together: more than one gRPC message
    (16 MiB) can hold, so the bridge must split them, not lose the link for every stream on it."""
    upstream.default = Scenario(tokens=3)
    query = "word " * (900 * 1024 // 5)

    results = await asyncio.gather(*(_frames(http, bridge, json={"query": query}) for _ in range(20)))

    for events in results:
        assert events[-1]["is_final"] and "error" not in events[-1], events[-1].get("error")
        assert "".join(e["content"] for e in events[:-1]) == "".join(token(i) for i in range(3))
