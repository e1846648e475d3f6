"""Limits, timeouts, cancellation and drain: every stream ends once, and the upstream is closed."""

from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf.duration_pb2 import Duration

from streamgate.rpc.server import CoreServer
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import Client, CoreFactory, collect, eventually, read_rest

SLOW = Scenario(tokens=200, delay=0.05)


async def _stub(core: CoreServer) -> tuple[grpc.aio.Channel, pb_grpc.StreamGateServiceStub]:
    channel = grpc.aio.insecure_channel(core.address)
    return channel, pb_grpc.StreamGateServiceStub(channel)


async def test_over_the_concurrency_limit_a_stream_is_refused_at_once(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=10, delay=0.05)
    core = await make_core(max_concurrent_streams=2)
    channel, stub = await _stub(core)
    async with channel:
        running = [stub.Generate(pb.GenerateRequest(query="hi")) for _ in range(2)]
        for call in running:
            await call.read()  # both admitted and streaming

        started = time.monotonic()
        refused = await collect(stub, pb.GenerateRequest(query="hi"))
        refused_after = time.monotonic() - started

        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit 2" in (refused.details or "")
        assert refused.chunks == []
        assert refused.final is None
        assert refused_after < 0.5
        for call in running:
            assert (await read_rest(call))[-1].HasField("completion")
        assert (await collect(stub, pb.GenerateRequest(query="hi"))).code == grpc.StatusCode.OK
    assert upstream.counters.started == 3


async def test_stream_timeout_ends_the_stream_with_deadline_exceeded(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = SLOW
    core = await make_core(stream_timeout=0.4)
    channel, stub = await _stub(core)
    async with channel:
        result = await collect(stub, pb.GenerateRequest(query="hi"))

    assert result.code == grpc.StatusCode.DEADLINE_EXCEEDED
    error = result.error
    assert error.code == pb.ERROR_CODE_DEADLINE_EXCEEDED
    assert "0.4 s" in error.message
    assert error.partial_text == "".join(result.chunks)
    assert len(result.chunks) >= 3
    assert error.usage.completion_tokens > 0
    await eventually(lambda: upstream.counters.disconnects == 1)


async def test_request_timeout_is_honoured_below_the_servers(client: Client, upstream: FakeUpstream) -> None:
    upstream.default = SLOW
    request = pb.GenerateRequest(query="hi", timeout=Duration(nanos=300_000_000))

    started = time.monotonic()
    result = await collect(client.stub, request)

    assert result.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5
    await eventually(lambda: upstream.counters.disconnects == 1)


async def test_first_token_timeout_ends_a_stream_whose_upstream_never_starts(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=5, first_token_delay=30)
    core = await make_core(first_token_timeout=0.3)
    channel, stub = await _stub(core)
    async with channel:
        result = await collect(stub, pb.GenerateRequest(query="hi"))

    assert result.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no first token within 0.3 s" in result.error.message
    assert result.error.retryable
    assert result.chunks == []
    await eventually(lambda: upstream.counters.disconnects == 1)


async def test_idle_timeout_ends_a_stream_that_stalls_midway(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=10, stall_after=3)
    core = await make_core(idle_timeout=0.3)
    channel, stub = await _stub(core)
    async with channel:
        result = await collect(stub, pb.GenerateRequest(query="hi"))

    assert result.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no token for 0.3 s" in result.error.message
    assert result.error.partial_text == "".join(token(i) for i in range(3))
    await eventually(lambda: upstream.counters.disconnects == 1)


async def test_a_steady_stream_longer_than_the_idle_timeout_is_not_ended_by_it(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=12, delay=0.1)  # 1.2 s in all, never 0.3 s without a token
    core = await make_core(idle_timeout=0.3, first_token_timeout=0.3)
    channel, stub = await _stub(core)
    async with channel:
        result = await collect(stub, pb.GenerateRequest(query="hi"))

    assert result.code == grpc.StatusCode.OK, result.details
    assert result.completion.text == "".join(token(i) for i in range(12))


async def test_the_idle_timeout_counts_from_the_last_token_not_from_the_start(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=30, delay=0.05, stall_after=8)  # tokens for 0.4 s, then silence
    core = await make_core(idle_timeout=0.3)
    channel, stub = await _stub(core)
    async with channel:
        started = asyncio.get_running_loop().time()
        result = await collect(stub, pb.GenerateRequest(query="hi"))
        took = asyncio.get_running_loop().time() - started

    assert result.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(result.chunks) == 8
    assert 0.6 <= took < 1.5, f"ended {took:.2f} s after the start: about 0.35 s of tokens, then 0.3 s idle"


async def test_client_deadline_closes_the_upstream(core: CoreServer, client: Client, upstream: FakeUpstream) -> None:
    upstream.default = SLOW

    result = await collect(client.stub, pb.GenerateRequest(query="hi"), timeout=0.4)

    assert result.code == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: upstream.counters.disconnects == 1)
    await eventually(lambda: core.gateway.active_streams == 0)


async def test_client_cancel_closes_the_upstream_within_a_second(
    core: CoreServer, client: Client, upstream: FakeUpstream
) -> None:
    upstream.default = SLOW
    call = client.stub.Generate(pb.GenerateRequest(query="hi"))
    for _ in range(3):
        await call.read()
    assert upstream.counters.active == 1

    call.cancel()

    took = await eventually(lambda: upstream.counters.disconnects == 1, within=1.0)
    assert took < 1.0
    await eventually(lambda: core.gateway.active_streams == 0)
    snapshot = core.gateway.metrics.snapshot()
    assert snapshot.outcomes == {("openai/fake", "cancelled"): 1}
    assert snapshot.completion_tokens >= 3, "what a cancelled stream sent still counts"
    assert upstream.counters.finished == 0


async def test_many_cancelled_streams_leave_nothing_open(
    core: CoreServer, client: Client, upstream: FakeUpstream
) -> None:
    upstream.default = SLOW
    calls = [client.stub.Generate(pb.GenerateRequest(query="hi")) for _ in range(50)]
    await asyncio.gather(*(call.read() for call in calls))
    assert core.gateway.active_streams == 50

    for call in calls:
        call.cancel()

    await eventually(lambda: upstream.counters.disconnects == 50, within=3.0)
    await eventually(lambda: core.gateway.active_streams == 0)
    assert upstream.counters.active == 0


async def test_drain_lets_open_streams_finish_within_the_grace(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=6, delay=0.05)
    core = await make_core()
    channel, stub = await _stub(core)
    async with channel:
        call = stub.Generate(pb.GenerateRequest(query="hi"))
        await call.read()
        stopping = asyncio.create_task(core.stop(grace=5.0))
        await eventually(lambda: core.gateway.draining)

        refused = await collect(stub, pb.GenerateRequest(query="hi"))
        rest = await read_rest(call)
        await stopping

    assert refused.code == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (refused.details or "")
    assert rest[-1].HasField("completion")
    assert await call.code() == grpc.StatusCode.OK


async def test_drain_ends_streams_past_the_grace_with_a_final_error(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = SLOW
    core = await make_core()
    channel, stub = await _stub(core)
    async with channel:
        task = asyncio.create_task(collect(stub, pb.GenerateRequest(query="hi")))
        await eventually(lambda: upstream.counters.active == 1)
        await asyncio.sleep(0.1)

        started = time.monotonic()
        await core.stop(grace=0.3)
        result = await task

    assert time.monotonic() - started < 2.0
    assert result.code == grpc.StatusCode.UNAVAILABLE
    assert result.error.code == pb.ERROR_CODE_UNAVAILABLE
    assert result.error.retryable
    assert result.error.partial_text == "".join(result.chunks) != ""
    await eventually(lambda: upstream.counters.disconnects == 1)
