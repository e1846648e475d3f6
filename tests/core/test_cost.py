"""Cost is right at every outcome: what the provider billed, no more and no less.

Regressions of issue 16: two requests to an upstream that could not be reached were each charged
(prompt tokens, priced), and a stream the client left counted no prompt and no cost at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import grpc

from streamgate.core.metrics import Snapshot
from streamgate.rpc.server import CoreServer
from streamgate.testing.upstream import FakeUpstream, Scenario
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import CoreFactory, collect, eventually

#: A model litellm has a price for; the test upstream answers any name.
PRICED = "openai/gpt-4o-mini"
QUERY = "tell me about the weather in spring, in a few words"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def snapshot(core: CoreServer) -> Snapshot:
    return core.gateway.metrics.snapshot(draining=False)


async def generate(core: CoreServer, **fields: object) -> tuple[pb.GenerateResponse | None, grpc.StatusCode]:
    async with grpc.aio.insecure_channel(core.address) as channel:
        result = await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query=QUERY, **fields))
    return result.final, result.code


async def test_an_upstream_never_reached_costs_nothing(make_core: CoreFactory) -> None:
    core = await make_core(model=PRICED, api_base=f"http://127.0.0.1:{closed_port()}/v1", retries=1)
    for _ in range(2):
        final, code = await generate(core)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert final is not None and final.HasField("error")
        assert (final.error.usage.prompt_tokens, final.error.usage.completion_tokens) == (0, 0)
        assert final.error.HasField("cost_usd") and final.error.cost_usd == 0.0  # known: nothing was billed
    seen = snapshot(core)
    assert (seen.prompt_tokens, seen.completion_tokens, seen.cost_usd) == (0, 0, 0.0)


async def test_an_upstream_that_refuses_costs_nothing(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(status=400)
    core = await make_core(model=PRICED)
    final, code = await generate(core)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert final is not None and final.error.usage.prompt_tokens == 0 and final.error.cost_usd == 0.0
    assert snapshot(core).cost_usd == 0.0


async def test_a_stream_cut_by_a_timeout_reports_and_prices_what_was_produced(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=20, stall_after=5, send_usage=False)
    core = await make_core(model=PRICED, idle_timeout=0.3)
    final, code = await generate(core)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert final is not None
    error = final.error
    assert error.usage.prompt_tokens > 5 and error.usage.completion_tokens >= 5  # the prompt, and 5 tokens' text
    assert error.cost_usd > 0
    assert snapshot(core).cost_usd == error.cost_usd


async def test_a_client_that_leaves_is_charged_for_what_the_provider_produced(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.01)
    core = await make_core(model=PRICED)
    async with grpc.aio.insecure_channel(core.address) as channel:
        call = pb_grpc.StreamGateServiceStub(channel).Generate(pb.GenerateRequest(query=QUERY))
        for _ in range(10):
            await call.read()
        call.cancel()
    await eventually(lambda: snapshot(core).active_streams == 0, within=5)
    seen = snapshot(core)
    assert seen.outcomes.get(("openai/gpt-4o-mini", "cancelled")) == 1, seen.outcomes
    assert seen.prompt_tokens > 5 and seen.completion_tokens >= 10
    assert seen.cost_usd > 0


async def test_a_model_without_a_price_stays_unknown_not_free(make_core: CoreFactory) -> None:
    core = await make_core()  # openai/fake: litellm has no price for it
    final, code = await generate(core)
    assert code == grpc.StatusCode.OK and final is not None
    assert final.completion.usage.completion_tokens > 0
    assert not final.completion.HasField("cost_usd")  # unknown, never 0


async def test_a_stream_ended_by_the_drain_reports_what_it_produced(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.01)
    core = await make_core(model=PRICED)
    async with grpc.aio.insecure_channel(core.address) as channel:
        call = pb_grpc.StreamGateServiceStub(channel).Generate(pb.GenerateRequest(query=QUERY))
        for _ in range(5):
            await call.read()
        draining = asyncio.create_task(core.gateway.drain(0.05))
        responses = []
        with contextlib.suppress(grpc.aio.AioRpcError):  # the final message, then the call's status
            while (response := await call.read()) is not grpc.aio.EOF:
                responses.append(response)
        await draining
    final = responses[-1]
    assert final.HasField("error") and final.error.code == pb.ERROR_CODE_UNAVAILABLE
    assert final.error.usage.completion_tokens >= 5 and final.error.cost_usd > 0
