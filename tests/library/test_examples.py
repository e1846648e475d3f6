"""The README's examples, and the streaming-handler documentation's FastAPI example as written, run
as a user runs them (a process of their own), against the test upstream, and stream to real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Sequence
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


@contextlib.asynccontextmanager
async def _serving(argv: Sequence[str], port: int, env: dict[str, str], cwd: Path | None = None) -> AsyncIterator[str]:
    """Run `argv` as a process of its own until it answers HTTP on `port`; its URL."""
    process = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE)
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


@pytest.fixture(scope="module", params=["aiohttp_app.py", "fastapi_app.py"])
async def example_url(request: pytest.FixtureRequest, example_upstream: FakeUpstream) -> AsyncIterator[str]:
    port = _free_port()
    env = dict(
        os.environ, MODEL="openai/fake", API_BASE=example_upstream.api_base, OPENAI_API_KEY="test", PORT=str(port)
    )
    async with _serving([sys.executable, str(EXAMPLES / request.param)], port, env) as url:
        yield url


async def test_the_example_streams_sse(example_url: str) -> None:
    url = example_url
    async with aiohttp.ClientSession() as http, http.post(f"{url}/query/stream", json={"query": "hi"}) as response:
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


#: The streaming-handler documentation's FastAPI SSE example (library-api.md: "it must work as
#: written, with the import line changed to `from streamgate import ...`"), as a user saves it.
DOCUMENTED_FASTAPI_EXAMPLE = """\
from fastapi import FastAPI
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from streamgate import StreamingHandler, StreamFormat, LiteLLMProvider, LiteLLMConfig

app = FastAPI()

config = LiteLLMConfig(model="gpt-4", enable_streaming=True)
llm_provider = LiteLLMProvider(config)
handler = StreamingHandler(llm_provider, StreamFormat.SSE)


class QueryRequest(BaseModel):
    query: str


@app.post("/query/stream")
async def stream_query(request: QueryRequest):
    messages = [{"role": "user", "content": request.query}]

    async def generate_stream():
        async for chunk in handler.stream_sse(messages):
            yield chunk

    return EventSourceResponse(generate_stream(), media_type="text/event-stream")
"""


async def test_the_documented_fastapi_example_puts_each_frame_on_the_wire_once(
    example_upstream: FakeUpstream, tmp_path: Path
) -> None:
    # It used to send `data: data: {...}`: sse-starlette framed the whole frames of `stream_sse` again.
    (tmp_path / "docs_example.py").write_text(DOCUMENTED_FASTAPI_EXAMPLE)
    port = _free_port()
    env = dict(os.environ, OPENAI_API_BASE=example_upstream.api_base, OPENAI_API_KEY="test")
    argv = [sys.executable, "-m", "uvicorn", "docs_example:app", "--host", "127.0.0.1", "--port", str(port)]
    async with (
        _serving([*argv, "--log-level", "warning"], port, env, cwd=tmp_path) as url,
        aiohttp.ClientSession() as http,
        http.post(f"{url}/query/stream", json={"query": "hi"}) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        body = (await response.read()).decode()

    blocks = [b for b in body.replace("\r\n", "\n").split("\n\n") if b and not b.startswith(":")]  # `: ping`
    assert body.count("data:") == len(blocks), body
    assert all(b.startswith("data: {") and "\n" not in b for b in blocks), blocks  # one `data:` line a frame
    frames = [json.loads(b.removeprefix("data: ")) for b in blocks]
    chunks, final = frames[:-1], frames[-1]
    assert chunks and all(f == {"content": f["content"], "metadata": {}, "is_final": False} for f in chunks)
    assert "".join(f["content"] for f in chunks) == ANSWER
    assert list(final) == ["content", "metadata", "is_final"]
    assert (final["content"], final["is_final"]) == ("", True)
    assert final["metadata"]["final_response"] == ANSWER
    assert final["metadata"]["model"] == "gpt-4"
