"""The official `openai` Python SDK against the bridge, sync (`OpenAI`) and async (`AsyncOpenAI`):
what a user of the SDK sees, with nothing changed but `base_url` and the API key.

- Streaming with `stream_options={"include_usage": True}` and not; `X-Request-ID` is the SDK's request id.
- Errors raised as the SDK's types: `BadRequestError` (with `param`), `AuthenticationError`,
  `NotFoundError`, `RateLimitError` (429 with `Retry-After`, which the SDK's own retry honours).
- An error after the stream started is the last `data:` line, an error object and no `[DONE]`:
  the SDK has yielded the chunks before it, then raises `openai.APIError` (not an `APIStatusError`:
  the status was 200) with `.body` the object, `.code` and `.type` from it.
- A client that leaves (the stream closed by `with`, `close()`, or an `async with` left by `break`)
  makes the gateway close the upstream request within a second.

The sync client blocks, so it runs in a thread while the servers run on the test's event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx2
import openai
import pytest

from streamgate.bridges.app import BridgeServer
from streamgate.core.auth import Keyring
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.conftest import BridgeFactory, eventually

KEY = "sdk-secret-key-0123"
HI = [{"role": "user", "content": "hi"}]
T = TypeVar("T")


def sync_client(bridge: BridgeServer, key: str = "unused", **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{bridge.url}/v1", api_key=key, **{"max_retries": 0, **options})


def async_client(bridge: BridgeServer, key: str = "unused", **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{bridge.url}/v1", api_key=key, **{"max_retries": 0, **options})


async def in_thread(work: Callable[[], T]) -> T:
    """Run the blocking SDK off the loop that serves it."""
    return await asyncio.to_thread(work)


def expected(n: int) -> str:
    return "".join(token(i) for i in range(n))


# -- answers ----------------------------------------------------------------------------------------


async def test_the_sync_sdk_streams_with_usage_and_the_extension(bridge: BridgeServer, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=6)

    def run() -> tuple[list[Any], str | None]:
        with sync_client(bridge) as client:
            stream = client.chat.completions.create(
                model="openai/fake", messages=HI, stream=True, stream_options={"include_usage": True}
            )
            with stream:
                return list(stream), stream.response.headers.get("x-request-id")

    chunks, request_id = await in_thread(run)

    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected(6)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (1, 6)
    assert last.usage.total_tokens == 7
    extension = last.model_extra["streamgate"]  # type: ignore[index]
    assert extension["request_id"] == request_id
    assert extension["ttft_ms"] > 0 and extension["tokens_per_second"] > 0
    assert all(c.id == f"chatcmpl-{request_id}" for c in chunks)
    assert upstream.counters.started == 1


async def test_the_sync_sdk_gets_a_whole_completion(bridge: BridgeServer, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=4)

    def run() -> Any:
        with sync_client(bridge) as client:
            return client.chat.completions.create(
                model="openai/fake", messages=HI, max_completion_tokens=3, stop=["never"], seed=7, user="u-1"
            )

    answer = await in_thread(run)

    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected(3)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    assert answer._request_id == answer.model_extra["streamgate"]["request_id"]  # type: ignore[index]
    sent = upstream.counters.bodies[-1]
    assert (sent["max_tokens"], sent["stop"], sent["seed"], sent["user"]) == (3, ["never"], 7, "u-1")


async def test_the_sync_sdk_lists_the_models(make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(core_allowed_models=("openai/other",))

    def run() -> tuple[list[str], str]:
        with sync_client(bridge) as client:
            return [m.id for m in client.models.list()], client.models.retrieve("openai/other").id

    assert await in_thread(run) == (["openai/fake", "openai/other"], "openai/other")


# -- errors before the stream -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_completion_tokens": 2.5}, "max_completion_tokens"),
        ({"seed": "7"}, "seed"),
        ({"stop": [1, 2]}, "stop"),
        ({"user": 42}, "user"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"n": 2}, "n"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
    ],
)
async def test_a_wrong_field_is_a_bad_request_error_naming_it(
    bridge: BridgeServer, upstream: FakeUpstream, extra: dict[str, Any], param: str
) -> None:
    body = {k: v for k, v in extra.items() if k != "messages"}
    messages = extra.get("messages", HI)

    def run() -> None:
        with sync_client(bridge) as client:
            client.chat.completions.create(model="openai/fake", messages=messages, stream=True, extra_body=body)

    with pytest.raises(openai.BadRequestError) as bad:
        await in_thread(run)

    assert bad.value.status_code == 400
    assert bad.value.param == param
    assert bad.value.type == "invalid_request_error"
    assert param.split("[")[0].split(".")[0] in bad.value.message
    assert upstream.counters.started == 0


async def test_without_a_valid_key_the_sdk_raises_authentication_error(
    make_bridge: BridgeFactory, upstream: FakeUpstream
) -> None:
    bridge = await make_bridge(core_keyring=Keyring.from_lines([f"sdk: {KEY}"]))
    wrong = "sdk-wrong-key-9876"

    def run() -> tuple[list[BaseException], str]:
        raised: list[BaseException] = []
        with sync_client(bridge, key=wrong) as client:
            for call in (
                lambda: client.chat.completions.create(model="openai/fake", messages=HI, stream=True),
                lambda: client.chat.completions.create(model="openai/fake", messages=HI),
                client.models.list,
            ):
                with pytest.raises(openai.AuthenticationError) as refused:
                    call()
                raised.append(refused.value)
        with sync_client(bridge, key=KEY) as client:
            answer = client.chat.completions.create(model="openai/fake", messages=HI)
        return raised, answer.choices[0].message.content or ""

    raised, text = await in_thread(run)

    for error in raised:
        assert isinstance(error, openai.AuthenticationError)
        assert error.status_code == 401 and error.code == "invalid_api_key"
        assert wrong not in str(error) and KEY not in str(error)
    assert text == expected(8)
    assert upstream.counters.started == 1


async def test_an_unknown_v1_path_is_not_found_error(bridge: BridgeServer) -> None:
    async with async_client(bridge) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.get("/embeddings-of-nothing", cast_to=httpx2.Response)
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("openai/nope")
    assert missing.value.status_code == 404
    assert missing.value.type == "invalid_request_error"


async def test_over_the_concurrency_limit_the_sdk_raises_rate_limit_error_and_its_retry_waits(
    make_bridge: BridgeFactory, upstream: FakeUpstream
) -> None:
    bridge = await make_bridge(core_max_concurrent_streams=1)
    upstream.default = Scenario(tokens=6, delay=0.05)
    async with async_client(bridge) as client, async_client(bridge, max_retries=2) as retrying:
        holder = await client.chat.completions.create(model="openai/fake", messages=HI, stream=True)
        await holder.__anext__()  # admitted: the one slot is taken, for about 0.3 s more

        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="openai/fake", messages=HI)

        # The SDK's own retry honours Retry-After: refused now, it waits the second it is told, and by
        # then the holder's stream is over.
        started = time.monotonic()
        answer = await retrying.chat.completions.create(model="openai/fake", messages=HI)
        waited = time.monotonic() - started
        await holder.close()

    assert limited.value.status_code == 429
    assert limited.value.code == "rate_limit_exceeded" and limited.value.type == "rate_limit_error"
    assert limited.value.response.headers["retry-after"] == "1"
    assert answer.choices[0].message.content == expected(6)
    assert waited >= 0.9  # the first try was refused, and the retry waited the second it was told


async def test_an_upstream_rate_limit_before_the_first_token_is_rate_limit_error_on_a_stream(
    bridge: BridgeServer, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(status=429)
    async with async_client(bridge) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="openai/fake", messages=HI, stream=True)
    assert limited.value.status_code == 429 and limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.request_id  # admitted: the stream has an id to look for in the logs
    assert upstream.counters.started == 3  # the core's own tries first (--retries 2)


async def test_a_first_token_timeout_is_a_504_until_a_ping_has_committed_the_stream(
    make_bridge: BridgeFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=3, first_token_delay=5)
    quiet = await make_bridge(core_first_token_timeout=0.2)  # pings every 15 s: none before the timeout
    pinged = await make_bridge(core_first_token_timeout=0.4, keepalive_interval=0.1)
    async with async_client(quiet) as client:
        with pytest.raises(openai.InternalServerError) as timed_out:
            await client.chat.completions.create(model="openai/fake", messages=HI, stream=True)
    async with async_client(pinged) as client:
        stream = await client.chat.completions.create(model="openai/fake", messages=HI, stream=True)
        with pytest.raises(openai.APIError) as failed:
            await _read_into([], stream)

    assert timed_out.value.status_code == 504 and timed_out.value.code == "timeout"
    assert "first token" in timed_out.value.message
    assert not isinstance(failed.value, openai.APIStatusError)  # the 200 went out with the first ping
    assert failed.value.code == "timeout"


# -- errors after the stream started ----------------------------------------------------------------


async def test_an_upstream_that_fails_mid_stream_is_the_sdks_api_error_after_the_text_so_far(
    bridge: BridgeServer, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=10, drop_after=3)

    def run() -> tuple[list[str], openai.APIError]:
        texts: list[str] = []
        with sync_client(bridge) as client:
            stream = client.chat.completions.create(model="openai/fake", messages=HI, stream=True)
            with pytest.raises(openai.APIError) as failed:
                texts.extend(chunk.choices[0].delta.content or "" for chunk in stream)
        return texts, failed.value

    texts, error = await in_thread(run)

    assert "".join(texts) == expected(3)
    assert not isinstance(error, openai.APIStatusError)  # the HTTP status was 200
    assert error.body == {"message": error.message, "type": "api_error", "param": None, "code": "service_unavailable"}
    assert error.code == "service_unavailable" and error.type == "api_error"


async def test_a_whole_completion_whose_upstream_fails_is_the_sdks_status_error(
    bridge: BridgeServer, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=10, drop_after=3)
    async with async_client(bridge) as client:
        with pytest.raises(openai.InternalServerError) as failed:
            await client.chat.completions.create(model="openai/fake", messages=HI)
    assert failed.value.status_code == 503 and failed.value.code == "service_unavailable"
    assert failed.value.response.headers["retry-after"] == "1"  # the SDK's retry (on by default) waits for it
    assert failed.value.request_id  # admitted: the stream has an id to look for in the logs


async def _read_into(texts: list[str], stream: openai.AsyncStream[Any]) -> None:
    async for chunk in stream:
        texts.append(chunk.choices[0].delta.content or "")


async def test_a_stall_mid_stream_is_the_async_sdks_api_error(
    make_bridge: BridgeFactory, upstream: FakeUpstream
) -> None:
    bridge = await make_bridge(core_idle_timeout=0.2)
    upstream.default = Scenario(tokens=10, stall_after=2)
    texts: list[str] = []
    async with async_client(bridge) as client:
        stream = await client.chat.completions.create(model="openai/fake", messages=HI, stream=True)
        with pytest.raises(openai.APIError) as failed:
            await _read_into(texts, stream)

    assert "".join(texts) == expected(2)
    assert failed.value.code == "timeout" and "no token for 0.2 s" in failed.value.message


# -- leaving ----------------------------------------------------------------------------------------


async def _left_within_a_second(upstream: FakeUpstream, bridge: BridgeServer) -> None:
    await eventually(lambda: upstream.counters.disconnects == 1 and upstream.counters.active == 0, within=1.0)
    await eventually(lambda: not bridge.state.streams)
    assert upstream.counters.finished == 0


@pytest.mark.parametrize("how", ["with", "close"])
async def test_a_sync_client_that_leaves_the_stream_closes_the_upstream(
    bridge: BridgeServer, upstream: FakeUpstream, how: str
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.01)
    client = sync_client(bridge)

    def run() -> str:
        stream = client.chat.completions.create(model="openai/fake", messages=HI, stream=True)
        if how == "with":
            with stream:
                for chunk in stream:
                    if chunk.choices[0].delta.content:
                        return chunk.choices[0].delta.content
        for chunk in stream:
            if chunk.choices[0].delta.content:
                stream.close()
                return chunk.choices[0].delta.content
        raise AssertionError("no content")

    try:
        assert await in_thread(run) == token(0)
        await _left_within_a_second(upstream, bridge)
    finally:
        await in_thread(client.close)


async def test_an_async_client_that_breaks_out_of_async_with_closes_the_upstream(
    bridge: BridgeServer, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.01)
    async with async_client(bridge) as client:
        async with await client.chat.completions.create(model="openai/fake", messages=HI, stream=True) as stream:
            async for chunk in stream:
                if chunk.choices[0].delta.content:
                    break
        await _left_within_a_second(upstream, bridge)
