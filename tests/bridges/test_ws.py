"""WebSocket flows over the live chain: many queries per connection, errors, cancel, disconnect."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from streamgate.bridges.app import BridgeServer
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.conftest import BridgeFactory, eventually


async def _until_final(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = await ws.receive_json(timeout=10)
        messages.append(message)
        if message["type"] != "chunk":
            return messages


async def test_one_connection_serves_many_queries(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=3)
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await ws.send_str('{"query": "Hello, how are you?"}')
        first = await _until_final(ws)
        await ws.send_json({"messages": [{"role": "user", "content": "again"}], "max_tokens": 2})
        second = await _until_final(ws)

    stream_id = first[3]["metadata"]["request_id"]
    assert first[:3] == [{"type": "chunk", "content": token(i), "stream_id": stream_id, "seq": i} for i in range(3)]
    assert first[3]["type"] == "complete"
    assert (first[3]["stream_id"], first[3]["seq"]) == (stream_id, 3)  # one past the last chunk's
    assert second[-1]["stream_id"] != stream_id
    assert first[3]["content"] == "Streaming sends each"
    assert first[3]["metadata"]["final_response"] == "Streaming sends each"
    assert first[3]["metadata"]["usage"]["completion_tokens"] == 3
    assert [m["type"] for m in second] == ["chunk", "chunk", "complete"]
    assert second[-1]["metadata"]["finish_reason"] == "length"


async def test_the_wire_shapes_are_exact(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=1)
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await ws.send_str('{"query": "hi"}')
        chunk = await ws.receive_str()
        complete = json.loads(await ws.receive_str())
        await ws.send_str('{"query": ""}')
        empty = await ws.receive_str()

    stream_id = complete["metadata"]["request_id"]
    # The documented shape, then the extension's fields: the stream id and the sequence.
    assert chunk == '{"type": "chunk", "content": "Streaming", "stream_id": "' + stream_id + '", "seq": 0}'
    assert list(complete) == ["type", "content", "metadata", "stream_id", "seq"]
    assert empty == '{"type": "error", "content": "No query provided"}'


async def test_bad_messages_get_an_error_and_the_connection_stays_open(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=2)
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        answers = []
        for bad in ('{"query": ""}', "{}", "not json", '{"query": 7}', '{"query": "hi", "x": 1}', "[" * 50):
            await ws.send_str(bad)
            answers.append(await ws.receive_json(timeout=5))
        await ws.send_bytes(b"\x00\x01")
        answers.append(await ws.receive_json(timeout=5))
        await ws.send_str('{"query": "and now a real one"}')
        last = await _until_final(ws)

    assert answers[0] == {"type": "error", "content": "No query provided"}
    assert answers[1] == {"type": "error", "content": "No query provided"}
    assert all(a["type"] == "error" for a in answers)
    assert "not valid JSON" in answers[2]["content"]
    assert "query must be a string" in answers[3]["content"]
    assert "unknown field(s): x" in answers[4]["content"]
    assert "nested" in answers[5]["content"]
    assert "binary messages are not supported" in answers[6]["content"]
    assert last[-1]["type"] == "complete"


async def test_cancel_stops_the_stream_and_closes_the_upstream(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=200, delay=0.05)
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await ws.send_json({"query": "hi"})
        received = [await ws.receive_json(timeout=5) for _ in range(3)]
        await ws.send_json({"type": "cancel"})
        rest = await _until_final(ws)
        await eventually(lambda: upstream.counters.disconnects == 1, within=1.0)

        upstream.default = Scenario(tokens=2)
        await ws.send_json({"query": "after the cancel"})
        after = await _until_final(ws)

    final = rest[-1]
    assert final["type"] == "complete"
    assert final["metadata"]["finish_reason"] == "cancelled"
    chunks = [m["content"] for m in [*received, *rest[:-1]]]
    assert final["content"] == "".join(chunks)
    assert final["metadata"]["final_response"] == final["content"]
    # What the provider produced before the cancel was billed: the complete message says what and how much.
    metadata = final["metadata"]
    assert metadata["model"] == "openai/fake"
    assert metadata["usage"]["prompt_tokens"] > 0
    assert metadata["usage"]["completion_tokens"] >= len(chunks)
    assert metadata["metrics"]["chunks"] == len(chunks) and metadata["metrics"]["ttft_ms"] > 0
    assert "cost_usd" in metadata  # None here: litellm has no price for openai/fake (unknown, not 0)
    assert after[-1]["type"] == "complete"


async def test_a_cancel_sent_before_the_stream_is_admitted_still_stops_it(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=200, delay=0.05, first_token_delay=0.2)
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await ws.send_str(json.dumps({"query": "hi"}))
        await ws.send_str(json.dumps({"type": "cancel"}))  # on its heels: the core has not admitted it yet
        messages = await _until_final(ws)

    assert [m["type"] for m in messages] == ["complete"]
    assert messages[0]["metadata"]["finish_reason"] == "cancelled"
    await eventually(lambda: upstream.counters.active == 0, within=2.0)
    assert upstream.counters.finished == 0, "the upstream never ran to its end for a cancelled query"


async def test_a_failure_ends_the_query_with_an_error_message(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=10, drop_after=2)
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await ws.send_json({"query": "hi"})
        messages = await _until_final(ws)

    assert [m["type"] for m in messages] == ["chunk", "chunk", "error"]
    assert messages[-1]["content"]
    assert messages[-1]["metadata"]["code"] == "UNAVAILABLE"
    assert messages[-1]["metadata"]["final_response"] == token(0) + token(1)


async def test_closing_the_socket_mid_stream_closes_the_upstream(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=200, delay=0.05)
    ws = await http.ws_connect(f"{bridge.url}/query/ws")
    await ws.send_json({"query": "hi"})
    await ws.receive_json(timeout=5)

    await ws.close()

    await eventually(lambda: upstream.counters.disconnects == 1, within=1.0)
    await eventually(lambda: not bridge.state.streams)


async def test_over_the_limit_a_websocket_gets_an_error_and_close_code_1013(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=50, delay=0.05)
    bridge = await make_bridge(core_max_concurrent_streams=1)
    async with http.ws_connect(f"{bridge.url}/query/ws") as busy, http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await busy.send_json({"query": "hi"})
        await busy.receive_json(timeout=5)
        await ws.send_json({"query": "hi"})
        error = await ws.receive_json(timeout=5)
        closing = await ws.receive(timeout=5)

    assert error["type"] == "error"
    assert "too many concurrent streams" in error["content"]
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert closing.data == 1013
