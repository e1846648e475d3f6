"""The Python client against a live core: order, final figures, cancel, deadline, limit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from streamgate.client import Chunk, Completion, Failure, StreamError, StreamgateClient
from streamgate.core import ErrorCode
from streamgate.rpc.server import CoreServer
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.conftest import CoreFactory, eventually

SLOW = Scenario(tokens=500, delay=0.05)
EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "python" / "example.py"


async def test_chunks_arrive_in_order_and_join_to_the_final_text(core: CoreServer) -> None:
    async with StreamgateClient(core.address) as client:
        events = [event async for event in client.generate("hi there")]

    chunks = [e for e in events if isinstance(e, Chunk)]
    final = events[-1]
    assert [c.index for c in chunks] == list(range(8))
    assert isinstance(final, Completion)
    assert final.text == "".join(c.content for c in chunks) == "".join(token(i) for i in range(8))
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (2, 8)
    assert final.metrics.chunks == 8 and final.metrics.ttft_ms > 0


async def test_leaving_the_loop_cancels_and_closes_the_upstream(core: CoreServer, upstream: FakeUpstream) -> None:
    upstream.default = SLOW
    async with StreamgateClient(core.address) as client:
        received = 0
        async for event in client.generate("hi"):
            received += isinstance(event, Chunk)
            if received == 3:
                break
        await eventually(lambda: upstream.counters.disconnects == 1, within=1.0)
    assert core.gateway.active_streams == 0


async def test_a_deadline_ends_the_stream_with_deadline_exceeded_and_the_partial_text(
    core: CoreServer, upstream: FakeUpstream
) -> None:
    upstream.default = SLOW
    async with StreamgateClient(core.address) as client:
        events = [event async for event in client.generate("hi", timeout=0.4)]
        with pytest.raises(StreamError) as caught:
            await client.complete("hi", timeout=0.3)

    final = events[-1]
    assert isinstance(final, Failure)
    assert final.error.code is ErrorCode.DEADLINE_EXCEEDED
    assert final.partial_text == "".join(e.content for e in events if isinstance(e, Chunk)) != ""
    assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED
    await eventually(lambda: upstream.counters.disconnects == 2)


async def test_the_concurrency_limit_raises_resource_exhausted(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = SLOW
    core = await make_core(max_concurrent_streams=2)
    async with StreamgateClient(core.address) as client:
        running = [client.generate("hi") for _ in range(2)]
        for stream in running:
            await anext(stream)
        with pytest.raises(StreamError) as caught:
            await client.complete("one too many")
        for stream in running:
            await stream.aclose()
    assert caught.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert caught.value.retryable


async def test_parameters_and_metrics(core: CoreServer, upstream: FakeUpstream) -> None:
    async with StreamgateClient(core.address) as client:
        completion = await client.complete(messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0.1)
        metrics = await client.metrics()
    assert completion.finish_reason == "length"
    assert upstream.counters.bodies[-1]["max_tokens"] == 3
    assert metrics.streams_started == 1


async def test_the_example_prints_chunks_and_the_final_figures(core: CoreServer) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), core.address, "hello", stdout=subprocess.PIPE
    )
    out, _ = await process.communicate()
    text = out.decode()
    assert text.startswith("".join(token(i) for i in range(8)))
    assert "tokens 1 in + 8 out" in text
    assert "time to first token" in text
