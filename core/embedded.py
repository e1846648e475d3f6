"""The embedded default model: `streamgate/default`.

A provider of its own (`LiteLLMProvider` streams it without litellm), which
ends its streams the way a real one does (finish reason, usage, cost). It needs no key and no network,
answers deterministically at a steady, configurable pace, and says something
a person can read: a newcomer sees real streaming at once.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from streamgate.contract import Usage

from .upstream import Delta

PROVIDER = "streamgate"
MODEL = "default"
#: US dollars a prompt token and a completion token: it costs nothing.
PRICE = (0.0, 0.0)

_GREETING = (
    "Hello! I am the model built into streamgate. I need no API key and no network, so you can "
    "watch an answer stream right away: each word you see arrived as its own chunk, the moment "
    "it was produced. Ask me about streaming, gRPC, Server-Sent Events or WebSockets, or start "
    "streamgate with --model to talk to a real model."
)
_STREAMING = (
    "Streaming sends an answer while it is being written. The model produces one token at a "
    "time; streamgate forwards each one at once, over gRPC to services and over Server-Sent "
    "Events or a WebSocket to browsers, so the first words appear in a fraction of a second "
    "instead of after the whole answer is done. When the answer ends, one final message carries "
    "the full text, the token counts, the cost and the timing: time to first token and tokens "
    "per second. If the reader leaves early, streamgate closes the request to the model, so "
    "nobody pays for words that no one will read."
)
_GRPC = (
    "gRPC is how services stream from streamgate. Its core offers one server-streaming call, "
    "Generate, of streamgate.v1.StreamGateService: you send the prompt once, and the answer comes "
    "back as chunk messages, then exactly one final message with the full text, the token counts, "
    "the cost and the timing, or an error with its status code. Clients for Python, Go, "
    "TypeScript and Java are generated from the same proto files, and grpcurl works too, through "
    "server reflection."
)
_SSE = (
    "Server-Sent Events are how a browser reads a stream over plain HTTP. Send a query to "
    "/query/stream on the bridge and the answer comes back as data: lines, each one JSON object "
    "with a piece of the content, then one final frame with is_final set that carries the full "
    "text, the token counts, the cost and the time to first token. A page reads them with "
    "EventSource, which reconnects by itself, and ping comments keep a quiet stream open through "
    "proxies."
)
_WEBSOCKETS = (
    "WebSockets let a browser keep one connection open for many questions. Connect to /query/ws "
    "on the bridge, send a JSON message with your query, and the answer comes back as chunk "
    "messages, then one complete message with the full text and its metrics, or an error "
    "message. Send the next query on the same connection, or a cancel message to stop the one "
    "that is running: streamgate then closes the request to the model."
)
_MODELS = (
    "streamgate talks to models through litellm, so any provider it supports works: OpenAI, "
    "Anthropic, Ollama, vLLM and many more. Start it with --model, for example "
    "--model openai/gpt-4o-mini with OPENAI_API_KEY set, or --model ollama/llama3 with "
    "--api-base http://127.0.0.1:11434. I am only the built-in stand-in, so my answers are fixed."
)
_DEFAULT = (
    "You asked: \u201c{question}\u201d. I am the demonstration model built into streamgate, so I "
    "cannot really answer that, but I can show you how an answer travels. Every word here was "
    "sent as its own chunk the moment it was ready, and the last message of the stream tells you "
    "how long the first word took, how many tokens per second followed, and what the answer "
    "cost. To get real answers, start streamgate with --model and the name of any model that "
    "litellm knows."
)
#: The greeting's topics each have their own answer (tests/core/test_embedded.py asks each one):
#: the first pattern that matches answers, so a specific topic comes before streaming in general.
_TOPICS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(hello|hi|hey|good (morning|afternoon|evening)|how are you)\b", re.I), _GREETING),
    (re.compile(r"\bweb ?-?sockets?\b", re.I), _WEBSOCKETS),
    (re.compile(r"\b(sse|server-sent|server sent|event-?source)\b", re.I), _SSE),
    (re.compile(r"\b(grpc|protobuf|protocol buffers|proto)\b", re.I), _GRPC),
    (re.compile(r"\b(stream\w*|token\w*)\b", re.I), _STREAMING),
    (re.compile(r"\b(model|provider|openai|anthropic|ollama|vllm|litellm|api key)\w*\b", re.I), _MODELS),
)
_TOKEN = re.compile(r"\s*\S+")
_WORD = re.compile(r"\w+|[^\w\s]")


def answer_for(prompt: str) -> str:
    """The embedded model's whole answer to the last user message."""
    for pattern, text in _TOPICS:
        if pattern.search(prompt):
            return text
    question = " ".join(prompt.split())
    if len(question) > 120:
        question = question[:117].rstrip() + "..."
    return _DEFAULT.format(question=question)


def count_tokens(text: str) -> int:
    """The embedded model's token count: words and punctuation marks."""
    return len(_WORD.findall(text))


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


def _generate(messages: list[dict[str, Any]], params: dict[str, Any]) -> tuple[list[str], str]:
    """The answer's tokens after max_tokens and stop sequences, and the finish reason."""
    text = answer_for(_last_user_text(messages))
    finish = "stop"
    for stop in params.get("stop") or ():
        if stop and stop in text:
            text = text[: text.index(stop)]
    tokens = _TOKEN.findall(text)
    limit = params.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(tokens):
        tokens, finish = tokens[:limit], "length"
    return tokens, finish


def _pace(params: dict[str, Any], default: float) -> float:
    value = params.get("tokens_per_second", default)
    return float(value) if isinstance(value, int | float) and value > 0 else 0.0


def _usage(messages: list[dict[str, Any]], completion_tokens: int) -> Usage:
    prompt_tokens = sum(count_tokens(str(m.get("content") or "")) + 3 for m in messages)
    return Usage(prompt_tokens, completion_tokens)


async def stream(
    name: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    tokens_per_second: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncGenerator[Delta, None]:
    """The answer as `Delta`s, one a word, at `tokens_per_second` (0: at once), the way a provider's
    stream ends: the finish reason, then the usage. The pace is the request's `tokens_per_second`
    parameter, else `tokens_per_second`."""
    tokens, finish = _generate(messages, params)
    pace = _pace(params, tokens_per_second)
    start = clock()
    for i, piece in enumerate(tokens):
        if pace:
            delay = start + i / pace - clock()
            if delay > 0:
                await asyncio.sleep(delay)
        elif i % 64 == 63:
            await asyncio.sleep(0)
        yield Delta(content=piece, model=name)
    yield Delta(finish_reason=finish, model=name)
    yield Delta(usage=_usage(messages, len(tokens)), model=name)


async def complete(messages: list[dict[str, Any]], params: dict[str, Any], tokens_per_second: float = 30.0) -> Delta:
    """The whole answer as one `Delta`, after the time its stream would take."""
    tokens, finish = _generate(messages, params)
    pace = _pace(params, tokens_per_second)
    if pace:
        await asyncio.sleep(len(tokens) / pace)
    return Delta(
        content="".join(tokens),
        finish_reason=finish,
        usage=_usage(messages, len(tokens)),
        model=f"{PROVIDER}/{MODEL}",
    )
