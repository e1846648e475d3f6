"""The link over a plain socket (`streamgate.link._stream`): the same streams as the gRPC `Relay` call,
each with exactly one final event, the same refusals, and the same clean-up when either side goes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamgate.contract import Chunk, Completion, ErrorCode, Failure, StreamError
from streamgate.link.client import CoreClient, CoreStream
from streamgate.rpc.server import CoreServer
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from streamgate.v1 import streamgate_pb2 as pb
from tests.conftest import LINK_TOKEN, CoreFactory, eventually


@pytest.fixture
async def core(make_core: CoreFactory, tmp_path: Path) -> CoreServer:
    return await make_core(link_listen=f"unix:{tmp_path}/link.sock")


@pytest.fixture
async def client(core: CoreServer) -> AsyncIterator[CoreClient]:
    assert core.link_address is not None
    client = CoreClient(core.address, link_token=LINK_TOKEN, link=core.link_address)
    yield client
    await client.close()


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def events(stream: CoreStream) -> list[object]:
    return [event async for event in stream.events()]


async def test_streams_over_the_socket_each_get_their_chunks_and_one_completion(
    client: CoreClient, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=6, delay=0.01)
    streams = [await client.open(pb.GenerateRequest(query=f"q{i}")) for i in range(3)]
    results = await asyncio.gather(*(events(stream) for stream in streams))
    for result in results:
        *chunks, final = result
        assert all(isinstance(chunk, Chunk) for chunk in chunks)
        assert isinstance(final, Completion), final
        assert "".join(chunk.content for chunk in chunks) == final.text == "".join(token(i) for i in range(6))
        assert final.usage.completion_tokens == 6
    assert len({stream.request_id for stream in streams}) == 3
    assert upstream.counters.started == 3


async def test_a_refusal_comes_back_as_the_cores_error_and_the_link_goes_on(
    client: CoreClient, upstream: FakeUpstream
) -> None:
    with pytest.raises(StreamError) as refused:
        await client.open(pb.GenerateRequest(query="hi", model="openai/not-configured"))
    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    stream = await client.open(pb.GenerateRequest(query="hi"))
    assert isinstance((await events(stream))[-1], Completion)
    assert upstream.counters.started == 1


async def test_a_bridge_with_another_link_token_is_refused_and_starts_nothing(
    core: CoreServer, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    client = CoreClient(core.address, link_token="another-token-0123456789", link=core.link_address)
    try:
        with pytest.raises(StreamError) as refused:
            await client.open(pb.GenerateRequest(query="hi"))
    finally:
        await client.close()
    assert refused.value.code is ErrorCode.UNAVAILABLE and refused.value.retryable
    assert "token" not in refused.value.message, "the browser is not told about the link's secret"
    assert "link token" in caplog.text, "the operator's log says why"
    assert upstream.counters.started == 0


async def test_closing_the_link_closes_every_upstream_request_it_carried(
    client: CoreClient, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.05)
    streams = [await client.open(pb.GenerateRequest(query="q")) for _ in range(4)]
    await eventually(lambda: upstream.counters.active == 4, within=3)
    await client.close()
    await eventually(lambda: upstream.counters.active == 0, within=2)
    assert upstream.counters.started == 4 and len(streams) == 4


async def test_a_cancelled_stream_closes_its_upstream_request_only(client: CoreClient, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.05)
    first = await client.open(pb.GenerateRequest(query="q"))
    second = await client.open(pb.GenerateRequest(query="q"))
    await eventually(lambda: upstream.counters.active == 2, within=3)
    first.cancel()
    await eventually(lambda: upstream.counters.active == 1, within=2)
    await asyncio.sleep(0.2)
    assert upstream.counters.active == 1
    assert not second.ended


async def test_a_core_that_drops_the_connection_fails_its_streams_as_retryable(
    core: CoreServer, client: CoreClient, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.02)
    stream = await client.open(pb.GenerateRequest(query="q"))
    received: list[object] = []

    async def read() -> None:
        async for event in stream.events():
            received.append(event)

    reader = asyncio.create_task(read())
    await eventually(lambda: len(received) >= 2, within=3)
    for writer in list(core.link._connections.values()):  # as a core that dies: the socket closes, no END
        writer.transport.abort()
    await asyncio.wait_for(reader, 3)
    final = received[-1]
    assert isinstance(final, Failure), final
    assert final.error.code is ErrorCode.UNAVAILABLE and final.error.retryable
    assert final.partial_text == "".join(c.content for c in received[:-1] if isinstance(c, Chunk)), "the text so far"
    await eventually(lambda: upstream.counters.active == 0, within=2)
    upstream.default = Scenario(tokens=3)
    again = await client.open(pb.GenerateRequest(query="q"))  # the next stream opens a new link
    assert isinstance((await events(again))[-1], Completion)


async def test_drain_sends_every_final_event_then_ends_the_link(
    core: CoreServer, client: CoreClient, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.02)
    streams = [await client.open(pb.GenerateRequest(query="q")) for _ in range(3)]
    readers = [asyncio.create_task(events(stream)) for stream in streams]
    await asyncio.sleep(0.2)
    await core.stop(grace=0.2)
    for result in await asyncio.wait_for(asyncio.gather(*readers), 5):
        final = result[-1]
        assert isinstance(final, Failure), final
        assert final.error.code is ErrorCode.UNAVAILABLE, "ended by the drain, said by the core"
        assert "shutting down" in final.error.message
    assert core.link_address is not None
    assert not _exists(core.link_address.removeprefix("unix:")), "the socket file is removed at stop"


async def test_the_socket_is_for_this_user_only(core: CoreServer) -> None:
    assert core.link_address is not None and core.link_address.startswith("unix:")
    assert os.stat(core.link_address.removeprefix("unix:")).st_mode & 0o077 == 0
