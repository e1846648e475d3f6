"""The embedded default model: `streamgate/default`.

A litellm custom provider, so it takes the same code path as any real one
(litellm's stream wrapper, usage, cost). It needs no key and no network,
answers deterministically at a steady, configurable pace, and says something
a person can read: a newcomer sees real streaming at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import litellm
from litellm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse

PROVIDER = "streamgate"
MODEL = "default"

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


def _usage(messages: list[dict[str, Any]], completion_tokens: int) -> dict[str, int]:
    prompt_tokens = sum(count_tokens(str(m.get("content") or "")) + 3 for m in messages)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class EmbeddedModel(CustomLLM):  # type: ignore[misc]  # litellm is untyped here
    """litellm custom handler for `streamgate/default`.

    The pace comes from the request's `tokens_per_second` parameter, else
    from the instance's default.
    """

    def __init__(self, tokens_per_second: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.tokens_per_second = tokens_per_second
        self._clock = clock

    def _pace(self, params: dict[str, Any]) -> float:
        value = params.get("tokens_per_second", self.tokens_per_second)
        return float(value) if isinstance(value, int | float) and value > 0 else 0.0

    async def astreaming(
        self, model: str, messages: list[dict[str, Any]], *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        params: dict[str, Any] = kwargs.get("optional_params") or {}
        tokens, finish = _generate(messages, params)
        pace = self._pace(params)
        start = self._clock()
        for i, piece in enumerate(tokens):
            if pace:
                delay = start + i / pace - self._clock()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 64 == 63:
                await asyncio.sleep(0)
            yield GenericStreamingChunk(
                text=piece, is_finished=False, finish_reason="", usage=None, index=0, tool_use=None
            )
        yield GenericStreamingChunk(
            text="",
            is_finished=True,
            finish_reason=finish,
            usage=_usage(messages, len(tokens)),
            index=0,
            tool_use=None,
        )

    async def acompletion(self, model: str, messages: list[dict[str, Any]], *args: Any, **kwargs: Any) -> ModelResponse:
        params: dict[str, Any] = kwargs.get("optional_params") or {}
        tokens, finish = _generate(messages, params)
        pace = self._pace(params)
        if pace:
            await asyncio.sleep(len(tokens) / pace)
        return ModelResponse(
            model=f"{PROVIDER}/{MODEL}",
            choices=[
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(tokens)},
                    "finish_reason": finish,
                }
            ],
            usage=_usage(messages, len(tokens)),
        )


_registered: EmbeddedModel | None = None


def register(tokens_per_second: float = 30.0) -> EmbeddedModel:
    """Register `streamgate/default` with litellm (once per process) at the given default pace."""
    global _registered
    if _registered is None:
        _registered = EmbeddedModel(tokens_per_second)
        litellm.custom_provider_map = [
            *[p for p in litellm.custom_provider_map if p.get("provider") != PROVIDER],
            {"provider": PROVIDER, "custom_handler": _registered},
        ]
        litellm_logger = logging.getLogger("LiteLLM")
        level = litellm_logger.level
        litellm_logger.setLevel(logging.ERROR)  # register_model warns about cache prices we do not need
        try:
            litellm.register_model(
                {
                    f"{PROVIDER}/{MODEL}": {
                        "input_cost_per_token": 0.0,
                        "output_cost_per_token": 0.0,
                        "litellm_provider": PROVIDER,
                        "mode": "chat",
                    }
                }
            )
        finally:
            litellm_logger.setLevel(level)
    _registered.tokens_per_second = tokens_per_second
    return _registered
