"""Timeouts at sub-millisecond margins end as DEADLINE_EXCEEDED on both event loops, never INTERNAL.

Regression: under uvloop, `call_at` with less than about 0.5 ms to go returns a plain `Handle`,
which has no `when()`; the stream's timer asked for it and about 2 streams in 1,000 with a 0.3 s
timeout ended `INTERNAL AttributeError`, with a traceback at ERROR.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from streamgate.core import Completion, ErrorCode, Failure, Gateway, LiteLLMConfig, StreamRequest
from streamgate.core.provider import LiteLLMProvider
from streamgate.testing.upstream import FakeUpstream, Scenario

Runner = Callable[[Coroutine[Any, Any, None]], None]
LOOPS: dict[str, Runner] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_the_stream_timer_takes_any_handle_its_loop_returns(loop: str) -> None:
    async def arm_at_tiny_margins() -> None:
        gateway = Gateway(LiteLLMProvider(LiteLLMConfig()))
        stream = gateway.open(StreamRequest.create(query="hi"))
        running = asyncio.get_running_loop()
        stream._loop = running
        try:
            for margin in (0.0001, 0.00005, 0.0003, 0.00001, 0.0002, 0.002, 0.0001):
                stream._arm(running.time() + margin)  # each earlier than the last: the timer moves
            await asyncio.sleep(0.005)
        finally:
            await stream.aclose()
        assert gateway.active_streams == 0

    LOOPS[loop](arm_at_tiny_margins())


@pytest.mark.parametrize("loop", list(LOOPS))
def test_streams_timed_out_at_tiny_margins_all_end_deadline_exceeded(loop: str) -> None:
    async def many_tiny_timeouts() -> None:
        upstream = FakeUpstream(Scenario(tokens=50, delay=0.0004, first_token_delay=0.001))
        await upstream.start()
        config = LiteLLMConfig(
            model="openai/fake", api_base=upstream.api_base, api_key="k", idle_timeout=0.0015, retries=0
        )
        provider = LiteLLMProvider(config)
        gateway = Gateway(provider)
        rng = random.Random(7)
        codes: list[str] = []

        async def one() -> None:
            request = StreamRequest.create(query="hi", timeout=rng.uniform(0.001, 0.03))
            async with gateway.open(request) as stream:
                async for event in stream:
                    if isinstance(event, Completion):
                        codes.append("OK")
                    elif isinstance(event, Failure):
                        codes.append(event.error.code.value)

        try:
            for _ in range(20):
                await asyncio.gather(*(one() for _ in range(20)))
        finally:
            await provider.close()
            await upstream.close()
        assert len(codes) == 400
        assert set(codes) <= {"OK", ErrorCode.DEADLINE_EXCEEDED.value}, sorted(set(codes))
        assert codes.count(ErrorCode.DEADLINE_EXCEEDED.value) > 100  # the margins were hit, not avoided

    LOOPS[loop](many_tiny_timeouts())
