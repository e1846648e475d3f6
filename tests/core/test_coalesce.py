"""Coalescing on the lean path: tokens already waiting together go out as one chunk; the text never changes."""

from __future__ import annotations

import grpc

from streamgate.testing.upstream import FakeUpstream, Scenario, token
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import CoreFactory, Result, collect


async def _generate(core_address: str) -> Result:
    async with grpc.aio.insecure_channel(core_address) as channel:
        return await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query="hi"))


async def test_a_burst_goes_out_in_fewer_chunks_with_the_same_text(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=500)
    core = await make_core(coalesce=True)

    result = await _generate(core.address)

    expected = "".join(token(i) for i in range(500))
    assert "".join(result.chunks) == result.completion.text == expected
    assert len(result.chunks) < 500, "tokens that arrived together were sent together"
    assert result.completion.usage.completion_tokens == 500
    assert result.completion.metrics.chunks == len(result.chunks)


async def test_a_paced_stream_keeps_one_chunk_a_token(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=6, delay=0.03)
    core = await make_core(coalesce=True)

    result = await _generate(core.address)

    assert result.chunks == [token(i) for i in range(6)]


async def test_a_drop_after_a_burst_still_delivers_what_arrived(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=50, drop_after=40)
    core = await make_core(coalesce=True)

    result = await _generate(core.address)

    assert result.code == grpc.StatusCode.UNAVAILABLE
    assert result.error.partial_text == "".join(token(i) for i in range(40))
