"""The OpenAI-compatible front door, driven by the official `openai` Python SDK (from the lock), with
nothing changed but `base_url`: streaming and not, usage with streamgate's extension, the model list,
errors as the SDK's exception types, and a client that breaks out of the loop closes the upstream.
Then what the SDK does not show: the fields the upstream receives, and the bridge's bounds on slow,
silent, leaving and foreign-origin clients, on raw HTTP (more SDK cases: test_openai_sdk.py, and
Node's: test_openai_node.py)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import httpx2
import openai
import pytest

from streamgate.bridges.app import BridgeServer
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.conftest import BridgeFactory, eventually

HI = [{"role": "user", "content": "hi"}]


def _client(bridge: BridgeServer, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{bridge.url}/v1", api_key=key, max_retries=0)


async def test_the_sdk_streams_a_chat_completion_with_usage_and_the_extension(
    bridge: BridgeServer, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=5)
    async with _client(bridge) as client:
        stream = await client.chat.completions.create(
            model="openai/fake",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            temperature=0.2,
            extra_body={"unknown_field": "ignored, as OpenAI-compatible servers do"},
        )
        chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(token(i) for i in range(5))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 5
    extra = usage_chunk.model_extra["streamgate"]  # type: ignore[index]
    assert extra["request_id"] and "ttft_ms" in extra and "cost_usd" in extra
    assert upstream.counters.started == 1


async def test_the_sdk_gets_a_whole_chat_completion(bridge: BridgeServer, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=3)
    async with _client(bridge) as client:
        answer = await client.chat.completions.create(
            model="openai/fake", messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
        )
    assert answer.choices[0].message.content == "".join(token(i) for i in range(3))
    assert answer.usage is not None and answer.usage.total_tokens > 0
    assert answer.model_extra["streamgate"]["request_id"]  # type: ignore[index]


async def test_the_sdk_lists_the_models_a_client_may_name(make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(core_allowed_models=("openai/other",))
    async with _client(bridge) as client:
        models = [m.id async for m in client.models.list()]
        one = await client.models.retrieve("openai/other")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("openai/nope")
    assert models == ["openai/fake", "openai/other"]
    assert one.id == "openai/other"


async def test_errors_come_as_the_sdks_exception_types(
    bridge: BridgeServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with _client(bridge) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="openai/fake", messages=HI, temperature="warm")  # type: ignore[arg-type]
        assert bad.value.body == {  # the SDK keeps OpenAI's error object
            "message": "Invalid type for 'temperature': expected a number, but got a string instead.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": None,
        }
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="openai/fake", messages=[], stream=True)
    async with http.get(f"{bridge.url}/v1/nothing-here") as response:
        assert response.status == 404
        assert set((await response.json())["error"]) == {"message", "type", "param", "code"}
    assert upstream.counters.started == 0


async def test_the_fields_reach_the_upstream_as_openai_defines_them(
    bridge: BridgeServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = {"model": "openai/fake", "messages": HI}
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"stop": "never", "max_tokens": 5, "max_completion_tokens": 2}, {"stop": ["never"], "max_tokens": 2}),
        ({"stop": ["a", "b"], "seed": 3, "user": "u-7", "n": 1}, {"stop": ["a", "b"], "seed": 3, "user": "u-7"}),
        ({"temperature": None, "stream": None, "n": None, "stop": None}, {}),  # null: unset, as OpenAI takes it
        ({"logprobs": True, "response_format": {"type": "text"}, "metadata": {"a": "b"}, "future_field": [1]}, {}),
    ]
    for extra, sent in cases:
        async with http.post(f"{bridge.url}/v1/chat/completions", json={**base, **extra}) as response:
            answer = await response.json()
        assert response.status == 200, answer
        assert answer["choices"][0]["message"]["content"]
        body = upstream.counters.bodies[-1]
        for name in ("stop", "max_tokens", "seed", "user", "temperature", "n", "logprobs", "response_format"):
            assert body.get(name) == sent.get(name), (extra, name, body)


async def test_a_body_slower_than_the_body_timeout_is_408_in_openais_envelope(
    make_bridge: BridgeFactory, upstream: FakeUpstream
) -> None:
    bridge = await make_bridge(body_timeout=0.3)
    reader, writer = await asyncio.open_connection(bridge.config.host, bridge.port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        async with asyncio.timeout(2):
            answer = await reader.read()  # to the end: the bridge closes the connection
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"]["type"] == "timeout_error"
    assert upstream.counters.started == 0


async def test_a_silent_stream_gets_pings_which_the_sdk_skips(
    make_bridge: BridgeFactory, upstream: FakeUpstream
) -> None:
    bridge = await make_bridge(keepalive_interval=0.1)
    upstream.default = Scenario(tokens=3, first_token_delay=0.35)
    raw = httpx2.AsyncClient()
    client = openai.AsyncOpenAI(base_url=f"{bridge.url}/v1", api_key="unused", max_retries=0, http_client=raw)
    async with client:
        response = await client.chat.completions.with_raw_response.create(model="openai/fake", messages=HI, stream=True)
        body = b"".join([part async for part in response.http_response.aiter_bytes()])
        stream = await client.chat.completions.create(model="openai/fake", messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert body.startswith(b": ping\n\n")
    assert text == "".join(token(i) for i in range(3))


async def test_a_client_that_leaves_before_the_first_token_closes_the_upstream(
    bridge: BridgeServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.default = Scenario(tokens=3, first_token_delay=30)
    body = {"model": "openai/fake", "messages": HI, "stream": True}
    waiting = asyncio.create_task(http.post(f"{bridge.url}/v1/chat/completions", json=body))
    await eventually(lambda: upstream.counters.active == 1)
    assert not waiting.done()  # the head waits for the first token

    waiting.cancel()

    await eventually(lambda: upstream.counters.disconnects == 1 and upstream.counters.active == 0, within=1.0)
    await eventually(lambda: not bridge.state.streams)


async def test_a_streaming_client_that_stops_reading_is_dropped_and_the_upstream_closed(
    make_bridge: BridgeFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=2000, delay=0.005, words=("x" * 1000,))  # 10 s, 2 MB
    bridge = await make_bridge(write_stall_timeout=0.5)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # else loopback buffers take megabytes
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (bridge.config.host, bridge.port))
        data = json.dumps({"model": "openai/fake", "messages": HI, "stream": True}).encode()
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
        await loop.sock_sendall(sock, head.encode() + data)
        await eventually(lambda: upstream.counters.active == 1)

        # It reads nothing: a write waits, the bridge drops it, and the upstream request is closed.
        await eventually(lambda: upstream.counters.disconnects == 1 and not bridge.state.streams, within=4.0)
    finally:
        sock.close()
    assert upstream.counters.finished == 0


async def test_a_client_that_breaks_out_of_the_loop_closes_the_upstream(
    bridge: BridgeServer, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.01)
    async with _client(bridge) as client:
        stream = await client.chat.completions.create(
            model="openai/fake", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.close()
    await eventually(lambda: upstream.counters.active == 0, within=1.0)
    assert upstream.counters.disconnects == 1


async def test_an_error_after_the_stream_started_is_the_sdks_api_error(
    make_bridge: BridgeFactory, upstream: FakeUpstream
) -> None:
    bridge = await make_bridge(core_idle_timeout=0.2)
    upstream.default = Scenario(tokens=10, stall_after=2)
    async with _client(bridge) as client:
        stream = await client.chat.completions.create(
            model="openai/fake", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError) as failed:
            async for _ in stream:
                pass
    assert "no token for" in str(failed.value)


async def test_a_page_of_another_origin_cannot_start_a_generation(
    bridge: BridgeServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # A "simple" cross-origin POST (text/plain, no preflight) that any web page can send to a gateway
    # it can reach, e.g. one on the visitor's own machine: it could spend the operator's upstream.
    body = json.dumps({"model": "openai/fake", "messages": HI})
    headers = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    async with http.post(f"{bridge.url}/v1/chat/completions", data=body, headers=headers) as response:
        answer = await response.json()
    assert response.status == 403
    assert answer["error"]["type"] == "permission_error"  # OpenAI's envelope, as on the rest of /v1
    assert upstream.counters.started == 0
