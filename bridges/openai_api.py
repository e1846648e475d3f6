"""`/v1/*`: the OpenAI-compatible API, so that the official SDKs and the tools built on them work
with nothing changed but `base_url` (and the API key, when auth is on).

- `POST /v1/chat/completions`, streaming (`stream: true`: `chat.completion.chunk` SSE events, then
  `data: [DONE]`) and not (one `chat.completion`). The fields OpenAI defines and the core supports are
  taken (messages, model, temperature, max_tokens / max_completion_tokens, top_p, stop, penalties,
  seed, user, stream_options.include_usage); others are ignored, as OpenAI-compatible servers do;
  a wrong type is a 400. It runs on the same core path as `/query/stream` (limits, timeouts,
  metrics; a client that leaves cancels the stream and the core closes the upstream).
- `GET /v1/models` and `GET /v1/models/{id}`: the models a client may name.
- Errors in OpenAI's envelope, `{"error": {"message", "type", "param", "code"}}`, with OpenAI's
  statuses; an error after a stream started is one last `data:` line holding that object.
- Extension: the usage chunk (and the non-streaming answer) carries `streamgate`: cost, time to first
  token, tokens per second, request id. The SDKs keep unknown fields (`chunk.model_extra`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from streamgate.contract import Completion, ErrorCode, Failure, StreamError, invalid

from . import query
from .state import STATE, OpenStream

TRANSPORT = "openai"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"

#: The error model in OpenAI's terms: HTTP status, `type`, `code`.
OPENAI_ERROR: dict[ErrorCode, tuple[int, str, str | None]] = {
    ErrorCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    ErrorCode.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
    ErrorCode.PERMISSION_DENIED: (403, "permission_error", None),
    ErrorCode.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    ErrorCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    ErrorCode.DEADLINE_EXCEEDED: (504, "timeout_error", "timeout"),
    ErrorCode.CANCELLED: (499, "api_error", "cancelled"),
    ErrorCode.UNAVAILABLE: (503, "api_error", "service_unavailable"),
    ErrorCode.INTERNAL: (500, "api_error", "internal_error"),
}

#: OpenAI's request fields that map to the core's parameters.
_PARAMETERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "user", "stop")


def error_body(error: StreamError, param: str | None = None) -> dict[str, Any]:
    _, kind, code = OPENAI_ERROR[error.code]
    return {"error": {"message": error.message, "type": kind, "param": param, "code": code}}


def error_response(error: StreamError, status: int | None = None) -> web.Response:
    return web.json_response(error_body(error), status=status or OPENAI_ERROR[error.code][0])


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts, of which the text ones are kept."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)  # type: ignore[arg-type]
    raise invalid(f"{where}.content must be a string or a list of text parts")


def parse_chat(body: Any) -> tuple[Any, bool, bool]:
    """The core's request from an OpenAI chat request: (GenerateRequest, stream, include_usage)."""
    if not isinstance(body, Mapping):
        raise invalid("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list")
    chat = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise invalid(f"messages[{i}] must be an object with a role")
        entry = {"role": message["role"], "content": _text(message.get("content") or "", f"messages[{i}]")}
        if isinstance(message.get("name"), str):
            entry["name"] = message["name"]
        chat.append(entry)
    data: dict[str, Any] = {"messages": chat}
    model = body.get("model")
    if model is not None:
        data["model"] = model
    for name in _PARAMETERS:
        if body.get(name) is not None:
            data[name] = body[name]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        data["max_tokens"] = max_tokens
    stream = body.get("stream", False)
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, Mapping):
        raise invalid("stream must be true or false, and stream_options an object")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise invalid("stream_options.include_usage must be true or false")
    return query.from_json(data), stream, include_usage


def _extension(event: Completion | Failure) -> dict[str, Any]:
    """What streamgate adds to OpenAI's usage: cost and the stream's metrics."""
    return {
        "cost_usd": event.cost_usd,
        "ttft_ms": event.metrics.ttft_ms,
        "tokens_per_second": event.metrics.tokens_per_second,
        "request_id": event.request_id,
    }


def _usage(event: Completion | Failure) -> dict[str, int]:
    u = event.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


class _Chunks:
    """`chat.completion.chunk` events of one stream: one encoder, no I/O."""

    __slots__ = ("_head", "_tail")

    def __init__(self, request_id: str, model: str) -> None:
        head = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk", "created": int(time.time())}
        self._head = json.dumps({**head, "model": model})[:-1].encode()
        self._tail = b"}\n\n"

    def event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        more = json.dumps({"choices": choices, **extra}, ensure_ascii=False)[1:-1].encode()
        return b"data: " + self._head + b", " + more + self._tail

    def delta(self, content: str) -> bytes:
        return self.event([{"index": 0, "delta": {"content": content}, "finish_reason": None}])


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    metrics = state.metrics
    try:
        state.refuse_if_draining()
        generate, stream, include_usage = parse_chat(query.loads(await request.read()))
        core = await state.client.open(generate, request.headers.get("Authorization"))
    except StreamError as error:
        metrics.outcomes.labels(TRANSPORT, error.code.value).inc()
        return error_response(error)
    except web.HTTPRequestEntityTooLarge:
        metrics.outcomes.labels(TRANSPORT, "413").inc()
        return error_response(invalid("the body is larger than the server's limit"), status=413)
    model = generate.model or "default"
    if not stream:
        return await _whole(request, core, model)

    chunks = _Chunks(core.request_id, model)
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    await response.write(
        chunks.event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    )

    async def chunk(content: str, sequence: int) -> None:
        await response.write(chunks.delta(content))

    async def final(event: Completion | Failure, sequence: int) -> None:
        if isinstance(event, Failure):  # after the stream started: one last data line, the error object
            await response.write(b"data: " + json.dumps(error_body(event.error)).encode() + b"\n\n")
            return
        frames = [chunks.event([{"index": 0, "delta": {}, "finish_reason": event.finish_reason}])]
        if include_usage:
            frames.append(chunks.event([], usage=_usage(event), streamgate=_extension(event)))
        await response.write(b"".join(frames) + DONE)

    async def ended(reason: StreamError, sequence: int) -> None:
        await response.write(b"data: " + json.dumps(error_body(reason)).encode() + b"\n\n")

    await state.forward(OpenStream(core), TRANSPORT, chunk, final, ended)
    return response


async def _whole(request: web.Request, core: Any, model: str) -> web.Response:
    """`stream: false`: the whole answer as one `chat.completion`."""
    state = request.app[STATE]
    result: list[Completion | Failure] = []

    async def chunk(content: str, sequence: int) -> None:
        pass  # the text is in the final event

    async def final(event: Completion | Failure, sequence: int) -> None:
        result.append(event)

    async def ended(reason: StreamError, sequence: int) -> None:
        result.append(core.failure(reason))

    await state.forward(OpenStream(core), TRANSPORT, chunk, final, ended)
    event = result[0]
    if isinstance(event, Failure):
        return error_response(event.error)
    return web.json_response(
        {
            "id": f"chatcmpl-{event.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": event.model or model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": event.text},
                    "finish_reason": event.finish_reason,
                }
            ],
            "usage": _usage(event),
            "streamgate": _extension(event),
        }
    )


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        answer = await state.client.list_models(request.headers.get("Authorization"))
    except StreamError as error:
        return error_response(error)
    wanted = request.match_info.get("model_id")
    models = [{"id": m, "object": "model", "created": 0, "owned_by": "streamgate"} for m in answer.models]
    if wanted is None:
        return web.json_response({"object": "list", "data": models})
    for model in models:
        if model["id"] == wanted:
            return web.json_response(model)
    return error_response(StreamError(ErrorCode.NOT_FOUND, f"the model {wanted!r} does not exist here"))
