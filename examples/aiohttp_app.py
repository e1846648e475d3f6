"""streamgate inside your own aiohttp app: an SSE endpoint and a WebSocket endpoint.

.venv/bin/python examples/aiohttp_app.py          # the embedded model, on http://127.0.0.1:8080
MODEL=openai/gpt-4o-mini OPENAI_API_KEY=... .venv/bin/python examples/aiohttp_app.py

curl -N -X POST http://127.0.0.1:8080/query/stream -d '{"query": "Hello"}'
"""

from __future__ import annotations

import json
import os

from aiohttp import WSMsgType, web

from streamgate import LiteLLMConfig, LiteLLMProvider, StreamFormat, StreamingHandler

config = LiteLLMConfig(
    model=os.environ.get("MODEL", "streamgate/default"),
    api_base=os.environ.get("API_BASE"),
    enable_streaming=True,
)
llm_provider = LiteLLMProvider(config)
handler = StreamingHandler(llm_provider, StreamFormat.SSE)


async def stream(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    messages = [{"role": "user", "content": body.get("query", "")}]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    async for frame in handler.stream_sse(messages):
        await response.write(frame.encode())
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type is not WSMsgType.TEXT:
            continue
        try:
            query = json.loads(message.data).get("query")
        except (ValueError, AttributeError):
            query = None
        if not query:
            await ws.send_json({"type": "error", "content": "No query provided"})
            continue
        await handler.stream_websocket(ws, [{"role": "user", "content": query}])
    return ws


async def cleanup(app: web.Application) -> None:
    await handler.cleanup()


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/query/stream", stream)
    app.router.add_get("/ws", websocket)
    app.on_cleanup.append(cleanup)
    return app


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"example listening on http://127.0.0.1:{port}", flush=True)
    web.run_app(create_app(), host="127.0.0.1", port=port, print=None, handler_cancellation=True)
