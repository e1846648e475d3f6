"""The core killed mid-stream: every bridge stream ends with a final error frame; the bridge recovers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from streamgate.testing.sse import read_events
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.conftest import BridgeFactory, eventually


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def core_process(port: int, api_base: str) -> AsyncIterator[asyncio.subprocess.Process]:
    env = dict(os.environ, OPENAI_API_KEY="test", STREAMGATE_LOG_LEVEL="WARNING")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streamgate.cli",
        "core",
        "--grpc-port",
        str(port),
        "--metrics-port",
        "off",
        "--model",
        "openai/fake",
        "--api-base",
        api_base,
        env=env,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _ready(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(f"{url}/readyz") as response:
        return response.status == 200


async def _wait(predicate: Callable[[], Any], within: float) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, f"not true within {within} s"
        await asyncio.sleep(0.1)


async def test_sigkill_of_the_core_ends_every_stream_with_a_final_frame_and_the_bridge_recovers(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.05)
    port = _free_port()
    async with core_process(port, upstream.api_base) as core:
        bridge = await make_bridge(core=f"127.0.0.1:{port}")
        await _wait(lambda: _ready(http, bridge.url), within=60)
        responses = [await http.post(f"{bridge.url}/query/stream", json={"query": "hi"}) for _ in range(5)]
        for response in responses:
            await response.content.readuntil(b"\n\n")
        readers = [asyncio.create_task(_frames(r)) for r in responses]

        core.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        results = await asyncio.gather(*readers)
        ended_within = time.monotonic() - killed

    for frames in results:
        assert frames[-1]["is_final"] is True
        assert sum(f["is_final"] for f in frames) == 1
        assert frames[-1]["metadata"]["code"] == "UNAVAILABLE"
        assert frames[-1]["error"] == "lost the connection to the core"
        received = token(0) + "".join(f["content"] for f in frames[:-1])  # token(0): read before the kill
        assert frames[-1]["metadata"]["final_response"] == received
    assert ended_within < 1.0
    assert not await _ready(http, bridge.url)
    await eventually(lambda: upstream.counters.active == 0, within=2.0)

    upstream.default = Scenario(tokens=3)
    async with core_process(port, upstream.api_base):
        await _wait(lambda: _ready(http, bridge.url), within=60)
        async with http.post(f"{bridge.url}/query/stream", json={"query": "again"}) as response:
            frames = [frame async for frame in read_events(response)]
    assert frames[-1]["metadata"]["finish_reason"] == "stop", "the same bridge serves again, no restart"


async def _frames(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    async with response:
        return [frame async for frame in read_events(response)]
