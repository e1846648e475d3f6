"""The README's examples run as a user runs them, against the test upstream, and stream to real clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamgate.testing.sse import read_events
from streamgate.testing.upstream import FakeUpstream, token

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ANSWER = "".join(token(i) for i in range(8))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def example_upstream() -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()


@pytest.fixture(scope="module", params=["aiohttp_app.py", "fastapi_app.py"])
async def example_url(request: pytest.FixtureRequest, example_upstream: FakeUpstream) -> AsyncIterator[str]:
    port = _free_port()
    env = dict(
        os.environ, MODEL="openai/fake", API_BASE=example_upstream.api_base, OPENAI_API_KEY="test", PORT=str(port)
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / request.param), env=env, stdout=asyncio.subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(60), aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(url + "/"):
                        break
                except aiohttp.ClientConnectionError:
                    assert process.returncode is None, "the example exited"
                    await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        await process.wait()


async def test_the_example_streams_sse(example_url: str) -> None:
    url = example_url
    async with aiohttp.ClientSession() as http, http.post(f"{url}/stream", json={"query": "hi"}) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        frames = [frame async for frame in read_events(response)]

    assert "".join(f["content"] for f in frames[:-1]) == ANSWER  # tokens waiting together may share a chunk
    assert frames[-1]["is_final"] is True
    assert frames[-1]["metadata"]["final_response"] == ANSWER


async def test_the_example_serves_websocket_queries(example_url: str) -> None:
    url = example_url
    received: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws") as ws:
        await ws.send_str(json.dumps({"query": ""}))
        received.append(await ws.receive_json(timeout=10))
        for _ in range(2):
            await ws.send_json({"query": "hi"})
            while (message := await ws.receive_json(timeout=10))["type"] == "chunk":
                received.append(message)
            received.append(message)

    assert received[0] == {"type": "error", "content": "No query provided"}
    completes = [m for m in received if m["type"] == "complete"]
    assert [m["content"] for m in completes] == [ANSWER, ANSWER]
    assert "".join(m["content"] for m in received if m["type"] == "chunk") == ANSWER * 2
