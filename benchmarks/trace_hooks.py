"""Time stamps inside the upstream, the core and the bridge, for benchmarks.trace: a stream followed hop by hop.

    python -m benchmarks.trace_hooks ROLE OUT -- ARGS...

ROLE is `upstream` (runs `python -m streamgate.testing.upstream ARGS`), `core` or `bridge` (run
`streamgate ARGS`). Before the program starts, a few functions on a stream's path are wrapped so
that each records `(event, key, tokens, time.time())`: `key` names the stream (the client's name
for it, which it sends as `request_id` and `user`, or the link's stream id, matched to the name
when the core admits it), `tokens` counts the stream's tokens so far (one word each, as the fake
upstream sends them), so that a token can be followed across processes whatever chunks carried
it. Also recorded: the event loop's lag (a 5 ms sleep, how late it wakes) and every garbage
collection (generation, duration). On SIGUSR1 the records are written to OUT/ROLE.json.

The wrapped functions are found by name (the code under test changes): a name that is missing is
reported on stderr and its events are simply absent. Nothing here is imported by the suite itself.

Events, in the order a token meets them:

| event | process | when |
| --- | --- | --- |
| b_open | bridge | `CoreClient.open()`: the request was read and parsed |
| b_send | bridge | the link's open command is queued (link stream id) |
| k_cmd | core | the core reads the open command (link stream id) |
| k_admit | core | the stream is admitted: its admitted frame is queued (link stream id → name) |
| k_post | core | the lean path sends the upstream request |
| u_in | upstream | the upstream has the request |
| u_tok | upstream | the upstream writes a token |
| k_delta | core | the core has read a delta from the upstream |
| k_take | core | the link's writer takes the chunk for the next message (link stream id) |
| k_msg | core | the link's writer takes a message to write (`tokens`: the frames it holds) |
| b_admit | bridge | the admitted frame arrives (link stream id → name) |
| b_recv | bridge | a chunk arrives from the link (link stream id) |
| b_write | bridge | the SSE frame of a chunk is built, to be written at once |
| b_read | bridge | a message of the link is read (`tokens`: the frames it holds) |
| k_finish | core | `GatewayStream._finish` (accounting, log line, ledger): its duration in `tokens`, µs |
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import json
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from pathlib import Path
from typing import Any

Record = tuple[str, str | int, int, float]

RECORDS: list[Record] = []
#: (time.time(), seconds late) of each 5 ms sleep of the loop sampler.
LAGS: list[tuple[float, float]] = []
#: (time.time() at the start, generation, seconds) of each collection.
COLLECTIONS: list[tuple[float, int, float]] = []
LAG_SLEEP_S = 0.005
_now = time.time
_user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="")


def record(event: str, key: str | int, tokens: int = 0) -> None:
    RECORDS.append((event, key, tokens, _now()))


def words(text: str, first: bool) -> int:
    """Tokens of the fake upstream in `text` (benchmarks.load.tokens_in)."""
    return text.count(" ") + (1 if first and text and not text.startswith(" ") else 0)


def _missing(what: str) -> None:
    print(f"trace_hooks: {what} not found: its events are absent", file=sys.stderr, flush=True)


def _wrap(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    original = getattr(owner, name, None)
    if original is None:
        _missing(f"{getattr(owner, '__name__', owner)}.{name}")
        return
    setattr(owner, name, functools.wraps(original)(make(original)))


# -- every process: the loop's lag and the collections --------------------------------------------


async def _sample_lag() -> None:
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(LAG_SLEEP_S)
        LAGS.append((_now(), loop.time() - start - LAG_SLEEP_S))


def _with_sampler(run: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(main: Coroutine[Any, Any, Any], *args: Any, **kwargs: Any) -> Any:
        async def sampled() -> Any:
            sampler = asyncio.ensure_future(_sample_lag())
            try:
                return await main
            finally:
                sampler.cancel()

        return run(sampled(), *args, **kwargs)

    return wrapped


_gc_start = 0.0


def _on_gc(phase: str, info: dict[str, int]) -> None:
    global _gc_start
    if phase == "start":
        _gc_start = time.perf_counter()
    else:
        took = time.perf_counter() - _gc_start
        COLLECTIONS.append((_now() - took, info["generation"], took))


def _common(out: Path) -> None:
    asyncio.run = _with_sampler(asyncio.run)
    try:
        import uvloop
    except ImportError:
        pass
    else:
        uvloop.run = _with_sampler(uvloop.run)
    gc.callbacks.append(_on_gc)

    def dump(signum: int, frame: object) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        data = {"records": RECORDS, "lags": LAGS, "collections": COLLECTIONS, "pid": os.getpid()}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(out)

    signal.signal(signal.SIGUSR1, dump)


# -- the upstream ---------------------------------------------------------------------------------


def _upstream() -> None:
    from streamgate.testing import upstream

    def answer(original: Any) -> Any:
        async def wrapped(self: Any, request: Any, body: dict[str, Any], *args: Any) -> Any:
            user = str(body.get("user") or "")
            _user.set(user)
            if user:
                record("u_in", user)
            return await original(self, request, body, *args)

        return wrapped

    def token(original: Any) -> Any:
        def wrapped(self: Any, i: int) -> str:
            text: str = original(self, i)
            if user := _user.get():
                record("u_tok", user, i + 1)  # written at once: one word a token
            return text

        return wrapped

    _wrap(upstream.FakeUpstream, "_answer", answer)
    _wrap(upstream.Scenario, "token", token)


# -- the core -------------------------------------------------------------------------------------


def _core() -> None:
    from streamgate.core import gateway, openai_stream
    from streamgate.link import _outbox, server

    def stream_chat(original: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
            body = args[3] if len(args) > 3 else kwargs["body"]
            user = str(body.get("user") or "")
            inner = original(*args, **kwargs)
            return _deltas(inner, user) if user else inner

        return wrapped

    async def _deltas(inner: AsyncGenerator[Any, None], user: str) -> AsyncGenerator[Any, None]:
        record("k_post", user)
        tokens = 0
        try:
            async for delta in inner:
                if delta.content:
                    tokens += words(delta.content, first=not tokens)
                    record("k_delta", user, tokens)
                yield delta
        finally:
            await inner.aclose()

    def command(original: Any) -> Any:
        def wrapped(self: Any, command: Any, *args: Any) -> Any:
            if command.WhichOneof("command") == "open":
                record("k_cmd", command.stream_id)
            return original(self, command, *args)

        return wrapped

    def frame(original: Any) -> Any:
        def wrapped(self: Any, stream: Any, frame: Any, *args: Any, **kwargs: Any) -> Any:
            if frame.WhichOneof("frame") == "admitted":
                record("k_admit", frame.stream_id)
                RECORDS.append(("k_name_of", frame.admitted.request_id, frame.stream_id, 0.0))
            return original(self, stream, frame, *args, **kwargs)

        return wrapped

    taken: dict[int, int] = {}

    def take(original: Any) -> Any:
        async def wrapped(self: Any, *args: Any) -> Any:
            batch = await original(self, *args)
            if batch:
                now = _now()
                RECORDS.append(("k_msg", 0, len(batch.frames), now))
                for f in batch.frames:
                    if f.WhichOneof("frame") == "event" and f.event.WhichOneof("event") == "chunk":
                        before = taken.get(f.stream_id, 0)
                        taken[f.stream_id] = tokens = before + words(f.event.chunk.content, first=not before)
                        RECORDS.append(("k_take", f.stream_id, tokens, now))
            return batch

        return wrapped

    def finish(original: Any) -> Any:
        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                record("k_finish", self.request.request_id, int((time.perf_counter() - start) * 1e6))

        return wrapped

    _wrap(openai_stream, "stream_chat", stream_chat)
    _wrap(server.RelaySession, "_command", command)
    _wrap(_outbox.Outbox, "frame", frame)
    _wrap(_outbox.Outbox, "take", take)
    _wrap(gateway.GatewayStream, "_finish", finish)


# -- the bridge -----------------------------------------------------------------------------------


def _bridge() -> None:
    from streamgate.bridges import framing
    from streamgate.link import client

    def open_(original: Any) -> Any:
        async def wrapped(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            if request.request_id:
                record("b_open", request.request_id)
            return await original(self, request, *args, **kwargs)

        return wrapped

    def send(original: Any) -> Any:
        def wrapped(self: Any, command: Any, *args: Any) -> Any:
            if command.WhichOneof("command") == "open":
                record("b_send", command.stream_id)
            return original(self, command, *args)

        return wrapped

    def admit(original: Any) -> Any:
        def wrapped(self: Any, request_id: str, *args: Any, **kwargs: Any) -> Any:
            record("b_admit", self.stream_id)
            RECORDS.append(("b_name_of", request_id, self.stream_id, 0.0))
            return original(self, request_id, *args, **kwargs)

        return wrapped

    received: dict[int, int] = {}

    def event(original: Any) -> Any:
        def wrapped(self: Any, event: Any, *args: Any) -> Any:
            content = getattr(event, "content", None)
            if content is not None and hasattr(event, "index"):
                before = received.get(self.stream_id, 0)
                received[self.stream_id] = tokens = before + words(content, first=not before)
                record("b_recv", self.stream_id, tokens)
            return original(self, event, *args)

        return wrapped

    written: dict[str, int] = {}

    def sse_chunk(original: Any) -> Any:
        def wrapped(content: str, event_id: bytes = b"", *args: Any) -> Any:
            at = event_id.rfind(b"id: ")
            if at >= 0:
                name = event_id[at + 4 :].rstrip(b"\n").rpartition(b":")[0].decode()
                before = written.get(name, 0)
                written[name] = tokens = before + words(content, first=not before)
                record("b_write", name, tokens)
            return original(content, event_id, *args)

        return wrapped

    def read(original: Any) -> Any:
        async def wrapped(self: Any, *args: Any) -> Any:
            message = await original(self, *args)
            record("b_read", 0, len(getattr(message, "frames", ())))
            return message

        return wrapped

    from grpc.aio import _call

    from streamgate.link import _stream

    _wrap(_call._StreamResponseMixin, "read", read)  # the link over gRPC
    _wrap(_stream.StreamCall, "read", read)  # the link over a plain socket
    _wrap(client.CoreClient, "open", open_)
    _wrap(client._Link, "_send", send)
    _wrap(client.CoreStream, "_admit", admit)
    _wrap(client.CoreStream, "_event", event)
    _wrap(framing, "sse_chunk", sse_chunk)


def main() -> None:
    role, out, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: python -m benchmarks.trace_hooks ROLE OUT -- ARGS..."
    _common(Path(out) / f"{role}.json")
    if role == "upstream":
        _upstream()
        from streamgate.testing import upstream

        sys.argv = ["upstream", *args]
        upstream.main()
        return
    {"core": _core, "bridge": _bridge}[role]()
    from streamgate.cli import main as cli

    sys.exit(cli(args))


if __name__ == "__main__":
    main()
