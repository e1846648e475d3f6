"""The happy path through the core: chunks in order, one final completion, usage, cost, metrics."""

from __future__ import annotations

import asyncio
import gc
import logging

import grpc
import litellm
import pytest

from streamgate.core import LiteLLMProvider, openai_stream
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import Client, CoreFactory, collect


async def test_chunks_arrive_in_order_and_join_to_the_final_text(client: Client, upstream: FakeUpstream) -> None:
    result = await collect(client.stub, pb.GenerateRequest(query="Say something"))

    assert result.code == grpc.StatusCode.OK
    assert result.chunks == [token(i) for i in range(8)]
    completion = result.completion
    assert completion.text == "".join(result.chunks)
    assert completion.finish_reason == "stop"
    assert completion.model == "openai/fake"
    assert completion.metrics.chunks == 8
    assert 0 < completion.metrics.ttft_ms <= completion.metrics.duration_ms
    assert completion.request_id
    assert upstream.counters.finished == 1


async def test_usage_comes_from_the_upstream_stream(client: Client, upstream: FakeUpstream) -> None:
    result = await collect(client.stub, pb.GenerateRequest(query="one two three four"))

    usage = result.completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 8, 12)
    assert not result.completion.usage_estimated
    assert upstream.counters.bodies[-1]["stream_options"] == {"include_usage": True}


async def test_usage_is_counted_when_the_upstream_sends_none(client: Client, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=8, send_usage=False)

    result = await collect(client.stub, pb.GenerateRequest(query="one two three four"))

    # litellm counts the tokens itself here; either way the user gets usage.
    assert result.completion.usage.completion_tokens >= 8
    assert result.completion.usage.prompt_tokens >= 4


async def test_cost_comes_from_litellms_price_table(make_core: CoreFactory) -> None:
    core = await make_core(model="openai/gpt-4o")
    async with grpc.aio.insecure_channel(core.address) as channel:
        result = await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query="a b c"))

    prompt, completion = litellm.cost_per_token(model="openai/gpt-4o", prompt_tokens=3, completion_tokens=8)
    assert result.completion.HasField("cost_usd")
    assert result.completion.cost_usd == pytest.approx(prompt + completion)
    assert result.completion.cost_usd > 0


async def test_cost_is_unknown_not_zero_for_a_model_without_a_price(client: Client) -> None:
    result = await collect(client.stub, pb.GenerateRequest(query="hello"))

    assert result.code == grpc.StatusCode.OK
    assert not result.completion.HasField("cost_usd")


async def test_parameters_reach_the_upstream(client: Client, upstream: FakeUpstream) -> None:
    parameters = pb.GenerationParameters(temperature=0.25, max_tokens=3, top_p=0.5, stop=["zzz"], seed=7)
    messages = [pb.ChatMessage(role="system", content="Be brief."), pb.ChatMessage(role="user", content="Hi")]

    result = await collect(client.stub, pb.GenerateRequest(messages=messages, parameters=parameters))

    body = upstream.counters.bodies[-1]
    assert body["temperature"] == 0.25
    assert body["max_tokens"] == 3
    assert body["top_p"] == 0.5
    assert body["stop"] == ["zzz"]
    assert body["seed"] == 7
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert len(result.chunks) == 3
    assert result.completion.finish_reason == "length"


async def test_request_id_is_echoed_in_headers_and_final_message(client: Client) -> None:
    call = client.stub.Generate(pb.GenerateRequest(query="hi", request_id="req-42"))
    metadata = await call.initial_metadata()
    responses = [r async for r in call]

    assert ("x-request-id", "req-42") in list(metadata)
    assert responses[-1].completion.request_id == "req-42"


async def test_the_embedded_default_model_needs_no_key_and_answers_readably(make_core: CoreFactory) -> None:
    core = await make_core(model="streamgate/default", api_base=None, api_key=None, embedded_tokens_per_second=0)
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        first = await collect(stub, pb.GenerateRequest(query="Hello, how are you?"))
        second = await collect(stub, pb.GenerateRequest(query="Hello, how are you?"))
        other = await collect(stub, pb.GenerateRequest(query="What is the capital of France?"))
        short = await collect(stub, pb.GenerateRequest(query="Hello", parameters=pb.GenerationParameters(max_tokens=4)))

    text = first.completion.text
    assert text.startswith("Hello!")
    assert "streamgate" in text
    assert len(first.chunks) > 20, "streams word by word"
    assert second.completion.text == text, "deterministic"
    assert "capital of France" in other.completion.text
    assert first.completion.cost_usd == 0.0
    assert first.completion.HasField("cost_usd")
    assert first.completion.usage.completion_tokens == len(first.chunks)
    assert len(short.chunks) == 4
    assert short.completion.finish_reason == "length"


async def test_the_embedded_model_streams_at_its_configured_pace(make_core: CoreFactory) -> None:
    core = await make_core(model="streamgate/default", api_base=None, api_key=None, embedded_tokens_per_second=100)
    async with grpc.aio.insecure_channel(core.address) as channel:
        result = await collect(
            pb_grpc.StreamGateServiceStub(channel),
            pb.GenerateRequest(query="Tell me about streaming", parameters=pb.GenerationParameters(max_tokens=30)),
        )

    rate = result.completion.metrics.tokens_per_second
    assert 60 < rate < 130, rate
    assert result.completion.metrics.duration_ms > 250


@pytest.mark.parametrize("end_delay", [0.0, 0.05])
async def test_streams_one_after_another_reuse_one_upstream_connection(
    make_core: CoreFactory, upstream: FakeUpstream, end_delay: float
) -> None:
    # A new connection per stream costs every stream a connect (and, to a real provider, a TLS
    # handshake) before its first token: the core keeps the connection of a stream that ended,
    # even when the body's end comes a while after `[DONE]`. (No spare connection here: one
    # connection is then all five streams need.)
    upstream.default = Scenario(tokens=8, end_delay=end_delay)
    core = await make_core(preconnect=False)
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        for _ in range(5):
            result = await collect(stub, pb.GenerateRequest(query="Say something"))
            assert result.code == grpc.StatusCode.OK
            assert result.completion.finish_reason == "stop"
            await upstream.wait_idle()

    assert upstream.counters.finished == 5
    assert upstream.counters.connections == 1


async def test_a_body_that_never_ends_after_done_is_closed_without_holding_the_stream(
    client: Client, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.default = Scenario(tokens=8, end_delay=3600)

    result = await collect(client.stub, pb.GenerateRequest(query="Say something"))

    # The final frame does not wait for the body's end; the connection is closed once it is overdue.
    assert result.completion.finish_reason == "stop"
    assert result.completion.metrics.duration_ms < openai_stream.DRAIN_S * 1000
    assert upstream.counters.active == 1
    await upstream.wait_idle(timeout=openai_stream.DRAIN_S + 2)
    assert upstream.counters.disconnects == 1
    gc.collect()  # a task whose failure nobody read is reported when it is collected
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_core_stopped_while_a_connection_waits_for_its_end_logs_no_error(
    make_core: CoreFactory, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.default = Scenario(tokens=3, end_delay=3600)
    core = await make_core()
    async with grpc.aio.insecure_channel(core.address) as channel:
        result = await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query="hi"))
    assert result.completion.finish_reason == "stop"
    provider = core.gateway.provider
    assert isinstance(provider, LiteLLMProvider)
    assert len(provider.draining) == 1

    await core.stop(grace=0)  # closes the upstream connections, the one still waiting for its end too
    await upstream.wait_idle(timeout=openai_stream.DRAIN_S / 2)  # at once, not when overdue
    gc.collect()  # a task whose failure nobody read is reported when it is collected
    await asyncio.sleep(0)

    assert upstream.counters.disconnects == 1
    assert not provider.draining
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_an_answer_over_its_bound_is_cut_and_its_upstream_closed(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    # An upstream that would stream for a minute without max_tokens: the core keeps the answer's
    # text for the final event, so the answer has a bound of its own.
    upstream.default = Scenario(tokens=60_000, delay=0.001)
    core = await make_core(max_answer_chars=500)
    async with grpc.aio.insecure_channel(core.address) as channel:
        result = await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query="go on forever"))

    assert result.code == grpc.StatusCode.OK
    assert result.completion.finish_reason == "length"
    assert len(result.completion.text) == 500
    assert "".join(result.chunks) == result.completion.text
    assert result.completion.usage.completion_tokens > 0
    await upstream.wait_idle(2.0)  # the upstream request was closed, not read to its end
    assert upstream.counters.disconnects == 1
