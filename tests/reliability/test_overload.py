"""Overload: with a limit of N and 3N clients at once, exactly N stream, the rest are refused at once."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import grpc

from streamgate.testing.sse import read_events
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import BridgeFactory, CoreFactory, collect

N = 8
ANSWER = "".join(token(i) for i in range(20))


async def test_sse_clients_over_the_limit_get_429_at_once_and_the_rest_complete(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=20, delay=0.03)
    bridge = await make_bridge(core_max_concurrent_streams=N)

    async def client() -> tuple[int, float, str]:
        started = time.monotonic()
        async with http.post(f"{bridge.url}/query/stream", json={"query": "hi"}) as response:
            answered = time.monotonic() - started
            if response.status != 200:
                await response.read()
                return response.status, answered, ""
            frames = [frame async for frame in read_events(response)]
            assert sum(f["is_final"] for f in frames) == 1
            return 200, answered, frames[-1]["metadata"]["final_response"]

    async with asyncio.timeout(20):
        results = await asyncio.gather(*(client() for _ in range(3 * N)))

    admitted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert len(admitted) == N
    assert {r[0] for r in refused} == {429}
    assert all(r[1] < 1.0 for r in refused), "refused at once, not queued"
    assert all(r[2] == ANSWER for r in admitted)
    assert upstream.counters.started == N


async def test_grpc_clients_over_the_limit_get_resource_exhausted(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=20, delay=0.03)
    core = await make_core(max_concurrent_streams=N)
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        async with asyncio.timeout(20):
            results = await asyncio.gather(*(collect(stub, pb.GenerateRequest(query="hi")) for _ in range(3 * N)))

    codes = [r.code for r in results]
    assert codes.count(grpc.StatusCode.OK) == N
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2 * N
    assert all(r.completion.text == ANSWER for r in results if r.code == grpc.StatusCode.OK)
