"""The in-process API, as library-api.md shows it, against the test upstream over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
import uvicorn
from aiohttp import web
from fastapi import FastAPI, WebSocket

from streamgate import LiteLLMConfig, LiteLLMProvider, StreamFormat, StreamingHandler
from streamgate.library import HandlerClosedError
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.conftest import eventually

messages = [{"role": "user", "content": "Hello, how are you?"}]
ANSWER = "".join(token(i) for i in range(8))


@pytest.fixture
def openai_env(upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    """Point litellm's OpenAI provider at the test upstream, as OPENAI_API_BASE would in a deployment."""
    monkeypatch.setenv("OPENAI_API_BASE", upstream.api_base)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    return upstream


def _frames(text: str) -> list[dict[str, Any]]:
    blocks = [b.strip("\n") for b in text.split("\n\n") if b.strip()]
    assert all(b.startswith("data: ") for b in blocks), blocks
    return [json.loads(b.removeprefix("data: ")) for b in blocks]


async def test_the_sse_snippet_runs_as_written(openai_env: FakeUpstream, capsys: pytest.CaptureFixture[str]) -> None:
    config = LiteLLMConfig(model="gpt-4", enable_streaming=True)
    llm_provider = LiteLLMProvider(config)
    handler = StreamingHandler(llm_provider, StreamFormat.SSE)

    async for chunk in handler.stream_sse(messages):  # each chunk is one whole SSE frame, as in wire-formats.md
        print(chunk)

    frames = _frames(capsys.readouterr().out)
    assert "".join(f["content"] for f in frames[:-1]) == ANSWER  # tokens waiting together may share a chunk
    assert frames[-1]["is_final"] is True
    assert frames[-1]["metadata"]["final_response"] == ANSWER
    assert frames[-1]["metadata"]["model"] == "gpt-4"
    assert frames[-1]["metadata"]["cost_usd"] > 0, "gpt-4 is in litellm's price table"
    assert openai_env.counters.bodies[-1]["model"] == "gpt-4"


async def _serve_fastapi(app: FastAPI) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, within=5.0)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, port


async def _ws_messages(url: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_json(payload)
        received = []
        while True:
            message = await ws.receive_json(timeout=10)
            received.append(message)
            if message["type"] != "chunk":
                return received


async def test_the_fastapi_websocket_snippet_runs_as_written(openai_env: FakeUpstream) -> None:
    llm_provider = LiteLLMProvider(LiteLLMConfig(model="gpt-4", enable_streaming=True))
    app = FastAPI()
    handler = StreamingHandler(llm_provider, StreamFormat.WEBSOCKET)

    @app.websocket("/ws")  # FastAPI / Starlette
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await handler.stream_websocket(websocket, messages)

    server, task, port = await _serve_fastapi(app)
    try:
        received = await _ws_messages(f"ws://127.0.0.1:{port}/ws", {})
    finally:
        server.should_exit = True
        await task

    assert {m["type"] for m in received[:-1]} == {"chunk"}
    assert "".join(m["content"] for m in received[:-1]) == ANSWER
    assert received[-1]["type"] == "complete"
    assert received[-1]["content"] == "".join(token(i) for i in range(8))
    assert received[-1]["metadata"]["usage"]["completion_tokens"] == 8


async def test_stream_websocket_works_with_aiohttp(openai_env: FakeUpstream) -> None:
    handler = StreamingHandler(LiteLLMProvider(LiteLLMConfig(model="gpt-4")), StreamFormat.WEBSOCKET)

    async def endpoint(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        await handler.stream_websocket(ws, messages)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        received = await _ws_messages(f"ws://127.0.0.1:{port}/ws", {"query": "hi"})
    finally:
        await runner.cleanup()

    assert [m["type"] for m in received][-1] == "complete"
    assert "".join(m["content"] for m in received[:-1]) == ANSWER


async def test_without_streaming_the_answer_is_one_chunk_and_a_final_frame(openai_env: FakeUpstream) -> None:
    handler = StreamingHandler(LiteLLMProvider(LiteLLMConfig(model="gpt-4", enable_streaming=False)))

    frames = _frames("".join([frame async for frame in handler.stream_sse(messages)]))

    assert len(frames) == 2
    assert frames[0]["content"] == "".join(token(i) for i in range(8))
    assert frames[1]["is_final"] is True
    assert frames[1]["metadata"]["final_response"] == frames[0]["content"]
    assert openai_env.counters.bodies[-1].get("stream") in (None, False)


async def test_over_max_concurrent_streams_a_stream_is_refused_at_once(openai_env: FakeUpstream) -> None:
    openai_env.default = Scenario(tokens=50, delay=0.05)
    handler = StreamingHandler(LiteLLMProvider(LiteLLMConfig(model="gpt-4", max_concurrent_streams=1)))
    first = handler.stream_sse(messages)
    await anext(first)

    started = asyncio.get_running_loop().time()
    refused = _frames("".join([frame async for frame in handler.stream_sse(messages)]))
    took = asyncio.get_running_loop().time() - started

    assert took < 0.5
    assert len(refused) == 1
    assert refused[0]["is_final"] is True
    assert refused[0]["metadata"]["code"] == "RESOURCE_EXHAUSTED"
    assert "too many concurrent streams (limit 1)" in refused[0]["error"]
    await first.aclose()
    await eventually(lambda: openai_env.counters.disconnects == 1)


async def test_stream_timeout_ends_the_stream_with_a_final_error(openai_env: FakeUpstream) -> None:
    openai_env.default = Scenario(tokens=50, delay=0.1)
    handler = StreamingHandler(LiteLLMProvider(LiteLLMConfig(model="gpt-4", stream_timeout=0.3)))

    frames = _frames("".join([frame async for frame in handler.stream_sse(messages)]))

    assert frames[-1]["metadata"]["code"] == "DEADLINE_EXCEEDED"
    assert sum(f["is_final"] for f in frames) == 1


async def test_cleanup_closes_open_streams_is_idempotent_and_then_refuses(openai_env: FakeUpstream) -> None:
    openai_env.default = Scenario(tokens=200, delay=0.05)
    handler = StreamingHandler(LiteLLMProvider(LiteLLMConfig(model="gpt-4")))
    frames: list[str] = []

    async def consume() -> None:
        async for frame in handler.stream_sse(messages):
            frames.append(frame)

    consumer = asyncio.create_task(consume())
    await eventually(lambda: len(frames) >= 2)

    await handler.cleanup()
    await handler.cleanup()
    await consumer

    final = _frames(frames[-1])[0]
    assert final["is_final"] is True
    assert final["error"] == "the handler was cleaned up"
    await eventually(lambda: openai_env.counters.disconnects == 1)
    with pytest.raises(HandlerClosedError, match="cleaned up"):
        async for _ in handler.stream_sse(messages):
            pass


async def test_metrics_of_the_last_stream_and_the_aggregate_match_the_final_frame(openai_env: FakeUpstream) -> None:
    handler = StreamingHandler(LiteLLMProvider(LiteLLMConfig(model="gpt-4")))

    frames = _frames("".join([frame async for frame in handler.stream_sse(messages)]))
    await handler.stream_sse("and a second one").__anext__()

    reported = frames[-1]["metadata"]["metrics"]
    assert handler.last_metrics is not None
    assert handler.last_metrics.chunks == reported["chunks"] >= 1
    assert handler.last_metrics.ttft_ms == reported["ttft_ms"]
    snapshot = handler.metrics()
    assert snapshot.outcomes[("gpt-4", "completed")] == 1
    assert snapshot.completion_tokens == 8


async def test_bad_input_gets_a_clear_final_error(openai_env: FakeUpstream) -> None:
    handler = StreamingHandler(LiteLLMProvider(LiteLLMConfig(model="gpt-4")))

    empty = _frames("".join([f async for f in handler.stream_sse([])]))
    role = _frames("".join([f async for f in handler.stream_sse([{"role": "robot", "content": "x"}])]))
    parameter = _frames("".join([f async for f in handler.stream_sse(messages, temprature=1)]))

    assert "No query provided" in empty[0]["error"]
    assert "role must be one of" in role[0]["error"]
    assert "unknown parameter(s): temprature" in parameter[0]["error"]
    assert openai_env.counters.started == 0


async def test_each_stream_is_logged_with_its_metrics(
    openai_env: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    handler = StreamingHandler(LiteLLMProvider(LiteLLMConfig(model="gpt-4")))
    caplog.set_level(logging.DEBUG, logger="streamgate")

    async for _ in handler.stream_sse(messages):
        pass
    openai_env.default = Scenario(status=503)
    async for _ in handler.stream_sse(messages):
        pass

    records = [r for r in caplog.records if r.name.startswith("streamgate")]
    text = "\n".join(r.getMessage() for r in records)
    assert "started: model=gpt-4" in text
    assert "completed: model=gpt-4 finish=stop ttft=" in text
    assert "tokens=" in text and "tps=" in text
    assert any(r.levelno == logging.WARNING and "failed: UNAVAILABLE" in r.getMessage() for r in records)


async def _collect_sse(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = (await response.read()).decode().replace("\r\n", "\n")
    return _frames(text)


async def test_fastapi_sse_with_event_source_response_and_streaming_response(openai_env: FakeUpstream) -> None:
    from fastapi.responses import StreamingResponse
    from sse_starlette.sse import EventSourceResponse

    handler = StreamingHandler(LiteLLMProvider(LiteLLMConfig(model="gpt-4")), StreamFormat.SSE)
    app = FastAPI()

    @app.post("/sse")
    async def sse(body: dict[str, str]) -> EventSourceResponse:
        return EventSourceResponse(handler.sse_events([{"role": "user", "content": body["query"]}]))

    @app.post("/raw")
    async def raw(body: dict[str, str]) -> StreamingResponse:
        return StreamingResponse(handler.stream_sse(body["query"]), media_type="text/event-stream")

    server, task, port = await _serve_fastapi(app)
    try:
        via_sse_starlette = await _collect_sse(f"http://127.0.0.1:{port}/sse", {"query": "hi"})
        via_streaming = await _collect_sse(f"http://127.0.0.1:{port}/raw", {"query": "hi"})
    finally:
        server.should_exit = True
        await task

    for frames in (via_sse_starlette, via_streaming):
        assert "".join(f["content"] for f in frames[:-1]) == ANSWER
        assert frames[-1]["is_final"] is True
        assert sum(f["is_final"] for f in frames) == 1
