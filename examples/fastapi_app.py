"""streamgate inside a FastAPI app: SSE with sse-starlette, and a WebSocket query loop.

.venv/bin/pip install 'streamgate[fastapi]'     # scripts/setup already did
.venv/bin/python examples/fastapi_app.py        # the embedded model, on http://127.0.0.1:8081

curl -N -X POST http://127.0.0.1:8081/query/stream -H 'Content-Type: application/json' -d '{"query": "Hello"}'

The SSE endpoint is the streaming-handler documentation's, as written: `stream_sse` yields whole
frames, and `EventSourceResponse` sends them unchanged (a plain `StreamingResponse` would too).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse

from streamgate import LiteLLMConfig, LiteLLMProvider, StreamFormat, StreamingHandler

config = LiteLLMConfig(
    model=os.environ.get("MODEL", "streamgate/default"),
    api_base=os.environ.get("API_BASE"),
    enable_streaming=True,
)
llm_provider = LiteLLMProvider(config)
handler = StreamingHandler(llm_provider, StreamFormat.SSE)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await handler.cleanup()


app = FastAPI(lifespan=lifespan)


class QueryRequest(BaseModel):
    query: str


@app.post("/query/stream")
async def stream_query(request: QueryRequest) -> EventSourceResponse:
    messages = [{"role": "user", "content": request.query}]

    async def generate_stream() -> AsyncIterator[str]:
        async for chunk in handler.stream_sse(messages):
            yield chunk

    return EventSourceResponse(generate_stream(), media_type="text/event-stream")


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            try:
                data = await websocket.receive_json()
            except ValueError:  # not JSON: answer, and keep the connection
                await websocket.send_json({"type": "error", "content": "the message is not JSON"})
                continue
            query = data.get("query") if isinstance(data, dict) else None
            if not query:
                await websocket.send_json({"type": "error", "content": "No query provided"})
                continue
            messages = [{"role": "user", "content": query}]
            await handler.stream_websocket(websocket, messages)
    except WebSocketDisconnect:
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8081"))
    print(f"example listening on http://127.0.0.1:{port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
