"""An OpenAI-compatible upstream on loopback, for tests and benchmarks.

It speaks `POST /v1/chat/completions` (streaming and not) the way OpenAI and
vLLM do, and misbehaves on request: paced tokens, a slow first token, a stall,
an HTTP error, a connection dropped mid-stream, a malformed chunk. It counts
what a gateway must get right: requests started, finished, and the ones whose
client went away before the end (`disconnects`).

Behaviour is chosen per model name: `upstream.scenarios["stall"] = Scenario(...)`
and a request for model `openai/stall` gets it; other models get `default`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WORDS = [
    "Streaming",
    "sends",
    "each",
    "token",
    "to",
    "the",
    "client",
    "as",
    "soon",
    "as",
    "the",
    "model",
    "produces",
    "it,",
    "so",
    "the",
    "reader",
    "sees",
    "the",
    "answer",
    "grow",
    "instead",
    "of",
    "waiting",
    "for",
    "the",
    "whole",
    "of",
    "it.",
    "",
]


@dataclass(frozen=True)
class Scenario:
    """How the upstream answers one request."""

    tokens: int = 8
    #: Seconds between tokens.
    delay: float = 0.0
    #: Seconds before the first token (after the HTTP headers).
    first_token_delay: float = 0.0
    #: Answer with this HTTP status and an OpenAI-style error body instead.
    status: int = 200
    #: With `status`: fail only this many requests of the scenario, then answer normally.
    fail_times: int | None = None
    #: After this many tokens, stop sending but keep the connection open.
    stall_after: int | None = None
    #: After this many tokens, drop the connection without finishing.
    drop_after: int | None = None
    #: After this many tokens, send a chunk that is not JSON.
    malformed_after: int | None = None
    #: Send a usage chunk when the client asks for it (`stream_options.include_usage`).
    send_usage: bool = True
    #: Echo this model name in chunks; defaults to the requested one.
    model: str | None = None
    #: Seconds between `data: [DONE]` and the end of the body (a real server's last packet may lag).
    end_delay: float = 0.0
    #: The tokens' text, in turn, instead of the default words (JSON escapes any text, even a lone surrogate).
    words: tuple[str, ...] = ()

    def token(self, i: int) -> str:
        return self.words[i % len(self.words)] if self.words else token(i)


@dataclass
class Counters:
    started: int = 0
    finished: int = 0
    disconnects: int = 0
    active: int = 0
    #: TCP connections that carried a request: fewer than `started` when clients reuse connections.
    connections: int = 0
    #: The last request bodies received, newest last.
    bodies: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))
    #: Their Authorization headers ("" when none), in the same order: which key reached this upstream.
    authorizations: deque[str] = field(default_factory=lambda: deque(maxlen=1000))
    #: Their W3C `traceparent` headers ("" when none), in the same order: the trace a request belongs to.
    traceparents: deque[str] = field(default_factory=lambda: deque(maxlen=1000))


def token(i: int) -> str:
    word = WORDS[i % len(WORDS)]
    return word if i == 0 else " " + word


class FakeUpstream:
    """Start with `await upstream.start()`; `upstream.api_base` is its `/v1` URL."""

    def __init__(self, default: Scenario | None = None) -> None:
        self.default = default or Scenario()
        self.scenarios: dict[str, Scenario] = {}
        self.counters = Counters()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._failed: dict[str, int] = {}
        self._connections: weakref.WeakSet[object] = weakref.WeakSet()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/counters", self._counters)
        # Cancel the handler when the client goes away, so a stalled answer
        # notices the disconnect at once, as a real server's socket would.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no request is being answered."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    @property
    def open_connections(self) -> int:
        """TCP connections open to this upstream now, busy or idle."""
        return len(self._runner.server.connections) if self._runner is not None and self._runner.server else 0

    async def _counters(self, request: web.Request) -> web.Response:
        """What tests in other languages and benchmarks check: started, finished, disconnects, active, connections."""
        c = self.counters
        return web.json_response(
            {
                "started": c.started,
                "finished": c.finished,
                "disconnects": c.disconnects,
                "active": c.active,
                "connections": c.connections,
            }
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if request.transport is not None and request.transport not in self._connections:
            self._connections.add(request.transport)
            self.counters.connections += 1
        body = await request.json()
        self.counters.bodies.append(body)
        self.counters.authorizations.append(request.headers.get("Authorization", ""))
        self.counters.traceparents.append(request.headers.get("traceparent", ""))
        scenario = self.scenarios.get(str(body.get("model", "")), self.default)
        self.counters.started += 1
        self.counters.active += 1
        self._idle.clear()
        try:
            response = await self._answer(request, body, scenario)
        except (asyncio.CancelledError, ConnectionResetError):
            self.counters.disconnects += 1
            raise
        finally:
            self.counters.active -= 1
            if self.counters.active == 0:
                self._idle.set()
        self.counters.finished += 1
        return response

    async def _answer(self, request: web.Request, body: dict[str, Any], sc: Scenario) -> web.StreamResponse:
        model = sc.model or str(body.get("model", "fake"))
        failed = self._failed.get(model, 0)
        if sc.status != 200 and (sc.fail_times is None or failed < sc.fail_times):
            self._failed[model] = failed + 1
            error = {"error": {"message": f"fake upstream answers {sc.status}", "type": "fake", "code": None}}
            return web.json_response(error, status=sc.status)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        count = min(sc.tokens, int(limit)) if limit else sc.tokens
        finish = "length" if limit and sc.tokens > int(limit) else "stop"
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": count,
            "total_tokens": prompt_tokens + count,
        }
        if not body.get("stream"):
            await asyncio.sleep(sc.first_token_delay + sc.delay * count)
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "".join(sc.token(i) for i in range(count)),
                            },
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        await asyncio.sleep(sc.first_token_delay)
        for i in range(count):
            if i == sc.stall_after:
                await asyncio.sleep(3600)
            if i == sc.drop_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if i == sc.malformed_after:
                await response.write(b"data: {this is not json\n\n")
            if i and sc.delay:
                await asyncio.sleep(sc.delay)
            text = sc.token(i)
            delta = {"role": "assistant", "content": text} if i == 0 else {"content": text}
            await response.write(chunk(delta, None))
        await response.write(chunk({}, finish))
        if sc.send_usage and (body.get("stream_options") or {}).get("include_usage"):
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        if sc.end_delay:
            await asyncio.sleep(sc.end_delay)
        await response.write_eof()
        return response


def main() -> None:
    """`python -m streamgate.testing.upstream`: run the fake upstream alone (benchmarks, demos)."""
    import argparse

    parser = argparse.ArgumentParser(description="An OpenAI-compatible fake upstream on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=100, help="tokens per answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    args = parser.parse_args()

    async def run() -> None:
        upstream = FakeUpstream(
            Scenario(tokens=args.tokens, delay=args.delay, first_token_delay=args.first_token_delay)
        )
        upstream.port = args.port
        await upstream.start()
        # What start-up left (aiohttp, the imports) stays out of collections: a full collection
        # over it stalled every answer at once, and the benchmark counted that as the gateway's
        # time to first token (a 20 ms gap between a request sent and received, traced).
        gc.collect()
        gc.freeze()
        print(f"upstream listening on {upstream.api_base}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
