"""The OpenAI-compatible front door, driven by the official `openai` Python SDK (from the lock), with
nothing changed but `base_url`: streaming and not, usage with streamgate's extension, the model list,
errors as the SDK's exception types, and a client that breaks out of the loop closes the upstream."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from streamgate.bridges.app import BridgeServer
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.conftest import BridgeFactory, eventually


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
    make_bridge: BridgeFactory, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    bridge = await make_bridge(core_max_concurrent_streams=1)
    async with _client(bridge) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(
                model="openai/not-offered", messages=[{"role": "user", "content": "hi"}]
            )
        assert bad.value.body["message"] and bad.value.body["type"] == "invalid_request_error"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="openai/fake", messages=[], stream=True)
    async with http.get(f"{bridge.url}/v1/nothing-here") as response:
        assert response.status == 404
        assert set((await response.json())["error"]) == {"message", "type", "param", "code"}


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
