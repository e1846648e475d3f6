"""The in-process API: `StreamingHandler` streams from a `LiteLLMProvider` inside your own app.

    handler = StreamingHandler(LiteLLMProvider(LiteLLMConfig(model="gpt-4")), StreamFormat.SSE)
    async for frame in handler.stream_sse(messages):   # whole SSE frames, as the bridge sends them
        ...
    EventSourceResponse(handler.stream_sse(messages))    # sse-starlette sends them unchanged (`SSEFrame`)
    await handler.stream_websocket(websocket, messages)  # aiohttp or Starlette/FastAPI WebSocket

The same `Gateway` as the gRPC core does the work (limits, timeouts, metrics,
error mapping), and the same framing functions as the bridge make the frames.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import AsyncGenerator, Iterable, Mapping
from enum import Enum
from typing import Any, Protocol, cast

from streamgate.bridges import framing
from streamgate.core import (
    ChatMessage,
    Chunk,
    Completion,
    ErrorCode,
    Failure,
    Gateway,
    GatewayStream,
    GenerationParameters,
    Metrics,
    Provider,
    Snapshot,
    StreamError,
    StreamRequest,
    Usage,
)

logger = logging.getLogger("streamgate.handler")

Messages = str | Iterable[Mapping[str, Any] | ChatMessage]


class StreamFormat(Enum):
    """The wire format a handler is meant for (each handler can still do both)."""

    SSE = "sse"
    WEBSOCKET = "websocket"


class HandlerClosedError(RuntimeError):
    """The handler was cleaned up; make a new one."""


class SSEFrame(str):
    """One whole SSE frame, `data: {...}\\n\\n`: a `str` that prints as the frame and is sent as it is.

    A plain streaming response writes its text (Starlette's `StreamingResponse` encodes it, aiohttp
    users write `frame.encode()`). sse-starlette's `EventSourceResponse` would frame a `str` again
    (`data: data: {...}`), but sends a `ServerSentEvent` as its `encode()` gives it: while
    sse-starlette is imported, the frames are `ServerSentEvent`s too, whose `encode()` is `str.encode`,
    the frame's own bytes. So the documentation's `EventSourceResponse(generate_stream())` over
    `stream_sse` puts each frame on the wire once, and streamgate never imports sse-starlette itself.
    """

    __slots__ = ()


@functools.cache
def _frame_type_with(base: type) -> type[SSEFrame]:
    return cast(type[SSEFrame], type("SSEFrame", (SSEFrame, base), {"__slots__": (), "__module__": __name__}))


def _frame_type() -> type[SSEFrame]:
    """`SSEFrame`, also a `ServerSentEvent` once sse-starlette is imported (see `SSEFrame`)."""
    base = getattr(sys.modules.get("sse_starlette.event"), "ServerSentEvent", None)
    return _frame_type_with(base) if isinstance(base, type) else SSEFrame


class _TextSocket(Protocol):
    async def send_text(self, data: str) -> None: ...


class _AiohttpSocket(Protocol):
    async def send_str(self, data: str, compress: int | None = None) -> None: ...


def _messages(messages: Messages) -> tuple[ChatMessage, ...]:
    if isinstance(messages, str):
        return (ChatMessage("user", messages),)
    result = []
    for i, message in enumerate(messages):
        if isinstance(message, ChatMessage):
            result.append(message)
            continue
        if not isinstance(message, Mapping):
            raise StreamError(ErrorCode.INVALID_ARGUMENT, f"messages[{i}] must be a mapping with role and content")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise StreamError(ErrorCode.INVALID_ARGUMENT, f"messages[{i}] needs a string role and string content")
        name = message.get("name")
        result.append(ChatMessage(role, content, name if isinstance(name, str) else None))
    return tuple(result)


class StreamingHandler:
    """Streams LLM output in-process, in the wire formats of the bridge."""

    def __init__(self, llm_provider: Provider, stream_format: StreamFormat = StreamFormat.SSE) -> None:
        self.provider = llm_provider
        self.format = stream_format
        self._gateway = Gateway(llm_provider)
        self._closed = False
        #: The final event of the last stream that ended (its metrics, usage, cost), or None.
        self.last_result: Completion | Failure | None = None

    @property
    def last_metrics(self) -> Metrics | None:
        """Time to first token, duration, tokens/s and chunks of the last stream."""
        return self.last_result.metrics if self.last_result is not None else None

    @property
    def active_streams(self) -> int:
        return self._gateway.active_streams

    def metrics(self) -> Snapshot:
        """Aggregate metrics of every stream this handler ran (the figures the core reports)."""
        return self._gateway.metrics.snapshot()

    def open(self, messages: Messages, *, model: str | None = None, **parameters: Any) -> GatewayStream:
        """Admit a stream, or raise `StreamError` at once (bad input, unknown model, over the limit).

        Iterate the stream for `Chunk`s and one final `Completion` or `Failure`;
        close it (`async with`) when done, which closes the upstream request.
        """
        if self._closed:
            raise HandlerClosedError("this StreamingHandler was cleaned up; create a new one")
        request = StreamRequest.create(
            messages=_messages(messages),
            model=model,
            parameters=GenerationParameters.from_mapping(parameters),
            transport="library",
        )
        return self._gateway.open(request)

    async def stream(
        self, messages: Messages, *, model: str | None = None, **parameters: Any
    ) -> AsyncGenerator[Chunk | Completion | Failure, None]:
        """The core's events: chunks, then one `Completion` or `Failure`; a refusal is a lone `Failure`."""
        try:
            stream = self.open(messages, model=model, **parameters)
        except StreamError as error:
            self.last_result = Failure(error, "", model or self.provider.config.model, Usage(), None, Metrics(), "")
            yield self.last_result
            return
        async with stream:
            async for event in stream:
                if not isinstance(event, Chunk):
                    self.last_result = event
                yield event

    async def stream_sse(
        self, messages: Messages, *, model: str | None = None, **parameters: Any
    ) -> AsyncGenerator[SSEFrame, None]:
        """Whole SSE frames (`data: {...}\\n\\n`), ending with exactly one `is_final` frame.

        Each is an `SSEFrame`: a `str` that a plain streaming response writes as it is, and that
        sse-starlette's `EventSourceResponse` sends as it is too (not framed a second time).
        """
        frame = _frame_type()
        events = self.stream(messages, model=model, **parameters)
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, Chunk):
                    yield frame(framing.sse_chunk(event.content).decode())
                else:
                    yield frame(framing.sse_final(event).decode())

    async def sse_events(
        self, messages: Messages, *, model: str | None = None, **parameters: Any
    ) -> AsyncGenerator[dict[str, str], None]:
        """The same frames' payloads as `{"data": json}` dicts, for an `EventSourceResponse` of your own
        events (sse-starlette frames each; `stream_sse` works there as well)."""
        async for frame in self.stream_sse(messages, model=model, **parameters):
            yield {"data": frame.removeprefix("data: ").removesuffix("\n\n")}

    async def stream_websocket(
        self,
        websocket: _AiohttpSocket | _TextSocket,
        messages: Messages,
        *,
        model: str | None = None,
        **parameters: Any,
    ) -> None:
        """Send `chunk` messages, then `complete` (or `error`), over an aiohttp or Starlette WebSocket."""
        send = getattr(websocket, "send_str", None) or getattr(websocket, "send_text", None)
        if send is None:
            raise TypeError("stream_websocket needs an aiohttp WebSocketResponse or a Starlette/FastAPI WebSocket")
        try:
            stream = self.open(messages, model=model, **parameters)
        except StreamError as error:
            await send(framing.ws_error(error.message))
            return
        async with stream:
            async for event in stream:
                if isinstance(event, Chunk):
                    await send(framing.ws_chunk(event.content))
                else:
                    self.last_result = event
                    await send(framing.ws_final(event))

    async def cleanup(self) -> None:
        """End open streams (closing their upstream requests) and refuse new ones. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._gateway.drain(grace=0.0, error=StreamError(ErrorCode.UNAVAILABLE, "the handler was cleaned up"))
        await self.provider.close()
        logger.debug("handler cleaned up")

    async def __aenter__(self) -> StreamingHandler:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cleanup()
