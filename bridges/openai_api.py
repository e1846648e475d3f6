"""`/v1/*`: the OpenAI-compatible API, so that the official SDKs and the tools built on them work
with nothing changed but `base_url` (and the API key, when auth is on).

- `POST /v1/chat/completions`, streaming (`stream: true`: `chat.completion.chunk` SSE events, then
  `data: [DONE]`) and not (one `chat.completion`). The fields OpenAI defines and the core supports are
  taken (messages, model, temperature, max_tokens / max_completion_tokens, top_p, stop, penalties,
  seed, user, n = 1, stream_options.include_usage); others are ignored, as OpenAI-compatible servers
  do. A field of the wrong type is a 400 whose `param` names it (JSON `null` leaves a field unset),
  as is what the core cannot carry: `n` other than 1, a content part other than text. It runs on the
  same core path as `/query/stream` (limits, timeouts, metrics; the body must come within
  `--body-timeout`, a client that stops reading is dropped after `--write-stall-timeout`, a silent
  stream gets `: ping` comments, which the SDKs skip; a client that leaves cancels the stream and the
  core closes the upstream).
- `GET /v1/models` and `GET /v1/models/{id}`: the models a client may name.
- Errors in OpenAI's envelope, `{"error": {"message", "type", "param", "code"}}`, with OpenAI's
  statuses (429 and 503 with `Retry-After`). A stream's head waits for its first token (or the first
  `: ping`), so a stream that fails before it is answered with its error's status too. An error after
  a stream started is one last `data:` line holding that object, and no `[DONE]`: the Python SDK
  raises `openai.APIError` from it (`.body` is the object, `.code` its code), the Node SDK an
  `APIError` without a status; both have yielded the chunks before it.
- The Python SDK keeps a stream's connection open after a bare `break` until the stream is closed
  (`with` / `async with`, `close()`) or collected: only then can the gateway close the upstream. The
  Node SDK aborts the request itself on `break`, and on its `AbortController`.
- `X-Request-ID` on every answer of an admitted stream (the SDKs' `_request_id` / `requestID`).
- Extension: the usage chunk (and the non-streaming answer) carries `streamgate`: cost, time to first
  token, tokens per second, request id. The SDKs keep unknown fields (`chunk.model_extra`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from streamgate.contract import Completion, ErrorCode, Failure, Reason, StreamError, invalid, model_not_found
from streamgate.link.client import CoreStream
from streamgate.v1 import streamgate_pb2 as pb

from . import framing, query
from .body import BodyRefused, read_json
from .errors import RETRY_AFTER_SECONDS
from .state import STATE, OpenStream, WriteGuard

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


#: Reasons that OpenAI answers in terms of their own: HTTP status, `code`, `param`.
OPENAI_REASON: dict[Reason, tuple[int, str, str | None]] = {
    Reason.MODEL_NOT_FOUND: (404, "model_not_found", "model"),
    Reason.BUDGET_EXCEEDED: (429, "budget_exceeded", None),
}


def _openai(error: StreamError) -> tuple[int, str, str | None, str | None]:
    """Status, `type`, `code` and `param` of an error (its reason first, then its code)."""
    status, kind, code = OPENAI_ERROR[error.code]
    if error.reason in OPENAI_REASON:
        status, code, param = OPENAI_REASON[error.reason]
        return status, kind, code, param
    return status, kind, code, None


def error_body(error: StreamError, param: str | None = None) -> dict[str, Any]:
    _, kind, code, reason_param = _openai(error)
    if param is None and isinstance(error, FieldError):
        param = error.param
    return {"error": {"message": error.message, "type": kind, "param": param or reason_param, "code": code}}


def error_response(error: StreamError, status: int | None = None) -> web.Response:
    status = status or _openai(error)[0]
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status in (429, 503) else None
    return web.json_response(error_body(error), status=status, headers=headers)


class FieldError(StreamError):
    """`INVALID_ARGUMENT` about one field of the request, which OpenAI's `param` names."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(ErrorCode.INVALID_ARGUMENT, message)
        self.param = param


# -- the request --------------------------------------------------------------------------------------

#: Integers: the bounds of the core's field (its own checks judge the values within them).
_INTEGERS = {"max_tokens": (0, 2**32 - 1), "max_completion_tokens": (0, 2**32 - 1), "seed": (-(2**63), 2**63 - 1)}
_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string", list: "an array"}


def _kind(value: Any) -> str:
    """What a JSON value is, in the words of OpenAI's errors."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _wrong_type(param: str, expected: str, value: Any) -> FieldError:
    return FieldError(param, f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts, which must all be text here."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _wrong_type(where, "a string or an array of content parts", content)
    texts = []
    for j, part in enumerate(content):
        if not (isinstance(part, Mapping) and isinstance(part.get("type"), str)):
            raise _wrong_type(f"{where}[{j}]", "a content part object with a type", part)
        if part["type"] != "text":
            raise FieldError(
                f"{where}[{j}].type",
                f"{where}[{j}] is a part of type {part['type']!r}: only text parts are supported here",
            )
        if not isinstance(part.get("text"), str):
            raise _wrong_type(f"{where}[{j}].text", "a string", part.get("text"))
        texts.append(part["text"])
    return "".join(texts)


def _messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list):
        raise _wrong_type("messages", "an array of messages", messages)
    if not messages:
        raise FieldError("messages", "messages must be a non-empty array")
    chat = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise _wrong_type(where, "an object", message)
        if not isinstance(message.get("role"), str):
            raise _wrong_type(f"{where}.role", "a string", message.get("role"))
        entry = {"role": message["role"], "content": _text(message.get("content"), f"{where}.content")}
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise _wrong_type(f"{where}.name", "a string", name)
            entry["name"] = name
        chat.append(entry)
    return chat


def _parameters(body: Mapping[str, Any]) -> dict[str, Any]:
    """The core's parameters from OpenAI's fields, each checked for its type; `null` means unset."""
    data: dict[str, Any] = {}
    for name in _NUMBERS:
        value = body.get(name)
        if value is not None and not _is_number(value):
            raise _wrong_type(name, "a number", value)
    for name, (low, high) in _INTEGERS.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise _wrong_type(name, "an integer", value)
        if not low <= value <= high:
            raise FieldError(name, f"{name} is out of range: {value}")
    stop = body.get("stop")
    strings = isinstance(stop, list) and all(isinstance(s, str) for s in stop)
    if stop is not None and not isinstance(stop, str) and not strings:
        raise _wrong_type("stop", "a string or an array of strings", stop)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _wrong_type("user", "a string", user)
    for name in _PARAMETERS:
        if body.get(name) is not None:
            data[name] = body[name]
    max_tokens = body.get("max_completion_tokens")  # the newer name wins
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        data["max_tokens"] = max_tokens
    return data


def parse_chat(body: Any) -> tuple[pb.GenerateRequest, bool, bool]:
    """The core's request from an OpenAI chat request: (GenerateRequest, stream, include_usage)."""
    if not isinstance(body, Mapping):
        raise invalid("the request body must be a JSON object")
    data: dict[str, Any] = {"messages": _messages(body.get("messages"))}
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise _wrong_type("model", "a string", model)
        data["model"] = model
    data.update(_parameters(body))
    n = body.get("n")
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool):
            raise _wrong_type("n", "an integer", n)
        if n != 1:
            raise FieldError("n", f"n must be 1 here: the gateway streams one choice per request, got {n}")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _wrong_type("stream", "a boolean", stream)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise _wrong_type("stream_options", "an object", options)
    include_usage = (options or {}).get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise _wrong_type("stream_options.include_usage", "a boolean", include_usage)
    return query.from_json(data), bool(stream), bool(include_usage)


# -- the answer ---------------------------------------------------------------------------------------


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


def _error_event(error: StreamError) -> bytes:
    """The last `data:` line of a stream that failed after it started."""
    return b"data: " + json.dumps(error_body(error), ensure_ascii=False).encode() + b"\n\n"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    metrics = state.metrics
    try:
        state.refuse_if_draining()
        generate, stream, include_usage = parse_chat(await read_json(request, state.config.body_timeout))
        core = await state.client.open(generate, request.headers.get("Authorization"), TRANSPORT)
    except StreamError as error:
        metrics.ended(TRANSPORT, error.code.value.lower())
        return error_response(error)
    except BodyRefused as refused:
        metrics.ended(TRANSPORT, refused.label)
        return await refused.answer(request, error_response(refused.error, status=refused.status))
    model = core.model or generate.model or "default"  # the model that answers, as OpenAI reports it
    if not stream:
        return await _whole(request, core, model)
    return await _stream(request, core, model, include_usage)


async def _stream(request: web.Request, core: CoreStream, model: str, include_usage: bool) -> web.StreamResponse:
    """`stream: true`: `chat.completion.chunk` events, then `[DONE]` (or the error object).

    The response head waits for the first token, as OpenAI's does, so that a stream that fails before
    it (the upstream's rate limit, the first-token timeout) is answered with the error's own status,
    which the SDKs raise as their type for it and retry when it is worth it. A first token that takes
    longer than `--keepalive-interval` gets the head and a `: ping`, so that no proxy gives up on a
    silent request; a failure after that is the last `data:` line.
    """
    state = request.app[STATE]
    config = state.config
    chunks = _Chunks(core.request_id, model)
    response = web.StreamResponse(headers={**SSE_HEADERS, "X-Request-ID": core.request_id})
    head: asyncio.Task[Any] | None = None  # the head on its way: the 200 is committed
    failed: list[Failure] = []  # a failure before the head: answered with its status instead

    async def start() -> None:
        nonlocal head
        if head is None:
            head = asyncio.ensure_future(response.prepare(request))
        await head

    async def ping() -> None:
        if not failed:
            await start()
            await response.write(framing.PING)

    # One timer: `: ping` after `keepalive_interval` s of silence, and the client dropped when a write waits
    # on it for `write_stall_timeout` s (which ends the stream as a client that left).
    guard = WriteGuard(request.transport, config.write_stall_timeout, ping, config.keepalive_interval)
    first = chunks.event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])

    async def write(frame: bytes) -> None:
        nonlocal first
        guard.begin()
        try:
            if head is None or not head.done():
                await start()
            await response.write(first + frame)  # the role chunk rides with the first event
            first = b""
        finally:
            guard.end()

    async def chunk(content: str, sequence: int) -> None:
        await write(chunks.delta(content))

    async def final(event: Completion | Failure, sequence: int) -> None:
        if isinstance(event, Failure):
            if head is None:
                failed.append(event)
            else:  # after the stream started: one last data line, the error object
                await write(_error_event(event.error))
            return
        frames = [chunks.event([{"index": 0, "delta": {}, "finish_reason": event.finish_reason}])]
        if include_usage:
            frames.append(chunks.event([], usage=_usage(event), streamgate=_extension(event)))
        await write(b"".join(frames) + DONE)

    async def ended(reason: StreamError, sequence: int) -> None:
        await final(core.failure(reason), sequence)

    try:
        outcome = await state.forward(OpenStream(core), TRANSPORT, chunk, final, ended)
        if failed:
            answer = error_response(failed[0].error)
            answer.headers["X-Request-ID"] = core.request_id
            return answer
        if outcome != "disconnected":
            guard.begin()
            await response.write_eof()
            guard.end()
    except ConnectionError:
        pass  # the client left after the last event
    finally:
        guard.close()
    return response


async def _whole(request: web.Request, core: CoreStream, model: str) -> web.Response:
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
        response = error_response(event.error)
    else:
        response = web.json_response(
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
    response.headers["X-Request-ID"] = core.request_id
    return response


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
    return error_response(model_not_found(f"the model {wanted!r} does not exist here"))
