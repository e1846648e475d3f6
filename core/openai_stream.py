"""The lean path: stream an OpenAI-compatible upstream (OpenAI, vLLM, most hosted APIs) directly.

litellm's stream wrapper costs about 0.45 ms of CPU a chunk; reading the SSE
lines with aiohttp and `json.loads` costs about 0.02 ms. litellm still resolves
the model, and prices it; this module only moves the bytes, and translates the
failures it meets (HTTP statuses, broken connections, malformed chunks) into
the one error model, once, here.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp

from streamgate.contract import ErrorCode, StreamError, Usage

from .translate import BROKE_OFF, HTTP_STATUS, SERVER_ERROR
from .upstream import Delta

#: Seconds a finished stream's connection may take to end its body before it is closed instead of reused.
DRAIN_S = 1.0


def _http_error(status: int, body: bytes) -> StreamError:
    code, retryable, summary = HTTP_STATUS.get(status) or (SERVER_ERROR if status >= 500 else HTTP_STATUS[400])
    detail = ""
    try:
        error = json.loads(body).get("error")
        detail = str(error.get("message") if isinstance(error, dict) else error or "")
    except (ValueError, AttributeError):
        detail = body[:200].decode(errors="replace").strip()
    detail = detail.split("\n", 1)[0][:300]
    return StreamError(
        code, f"{summary}: {detail} (HTTP {status})" if detail else f"{summary} (HTTP {status})", retryable=retryable
    )


def _count(value: Any) -> int:
    """A token count from the upstream's JSON; anything but a non-negative integer counts as none."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None  # absent, or not an object: counted by the gateway instead
    return Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))


def _delta(chunk: dict[str, Any]) -> Delta:
    usage = chunk.get("usage")
    choices = chunk.get("choices")
    content, finish = "", None
    if choices:
        choice = choices[0]
        content = (choice.get("delta") or {}).get("content") or ""
        finish = choice.get("finish_reason")
    return Delta(
        content=content,
        finish_reason=finish,
        usage=_usage(usage),
        model=chunk.get("model"),
    )


_DONE = object()


def _loads(data: bytes) -> Any:
    """`json.loads(data)`, in about two thirds of the time: bytes that are UTF-8 are decoded here.

    Whatever this does not read (not UTF-8: a byte order mark, UTF-16; or not JSON) goes to
    `json.loads` as bytes, to be decoded as it decides, or refused as it would be.
    """
    try:
        return json.loads(data.decode("utf-8", "surrogatepass"))  # as json.loads decodes UTF-8
    except ValueError:
        return json.loads(data)


def _parse(line: bytes) -> Delta | object | None:
    """A `Delta` for a `data:` line, `_DONE` for `[DONE]`, None for lines that carry nothing."""
    if not line.startswith(b"data:"):
        return None  # blank lines, comments, event names
    data = line[5:].strip()
    if data == b"[DONE]":
        return _DONE
    try:
        chunk = _loads(data)
    except ValueError:
        raise StreamError(ErrorCode.UNAVAILABLE, f"{BROKE_OFF}: a chunk is not JSON", retryable=True) from None
    if not isinstance(chunk, dict):
        raise StreamError(ErrorCode.UNAVAILABLE, f"{BROKE_OFF}: a chunk is not an object", retryable=True)
    if "error" in chunk and not chunk.get("choices"):
        error = chunk["error"]
        message = str(error.get("message", error) if isinstance(error, dict) else error)[:300]
        raise StreamError(ErrorCode.UNAVAILABLE, f"{BROKE_OFF}: {message}", retryable=True)
    return _delta(chunk)


#: The bytes that end a JSON string, escape in one, or may not stand in one unescaped.
_UNSAFE = re.compile(rb'["\\\x00-\x1f]')


class _Chunks:
    """`_parse`, with a shortcut for the chunk a stream repeats: the same bytes around different text.

    An upstream's content chunks differ only in their text (`{"id":"x",...,"delta":{"content":"TEXT"},
    "finish_reason":null}]}`). Once `json.loads` has read such a chunk, its bytes before and after the
    text are kept, and a line with the same bytes around text that needs no escape (no quote, backslash
    or control character) is that text's delta: the JSON is the same document with another string, so
    `json.loads` would read the same. Whatever else a line holds goes to `_parse`. The bytes are kept
    only once two other texts in their place read as those texts, and the rest as before. A stream
    whose chunks all differ (a provider that pads each with random text) stops being learnt after
    `LEARN` tries, since each costs it two more `json.loads`.
    """

    __slots__ = ("_ends", "_head", "_model", "_tail", "_tries")

    #: Chunks a stream may be learnt from.
    LEARN = 4

    def __init__(self) -> None:
        self._head: bytes | None = None  # none until a chunk is learnt
        self._tail = b""
        self._ends = 0
        self._model: str | None = None
        self._tries = self.LEARN

    def parse(self, line: bytes) -> Delta | object | None:
        """As `_parse`."""
        head = self._head
        if head is not None and line.startswith(head) and line.endswith(self._tail) and len(line) >= self._ends:
            text = line[len(head) : len(line) - len(self._tail)]
            if _UNSAFE.search(text) is None:
                try:
                    return Delta(text.decode("utf-8", "surrogatepass"), None, None, self._model)
                except UnicodeDecodeError:
                    pass  # `_parse` says how it fails
        item = _parse(line)
        if self._tries and isinstance(item, Delta) and item.content and not (item.finish_reason or item.usage):
            self._tries -= 1
            self._learn(line, item)
        return item

    def _learn(self, line: bytes, delta: Delta) -> None:
        text = b'"' + delta.content.encode("utf-8", "surrogatepass") + b'"'
        if line.count(text) != 1 or _UNSAFE.search(text, 1, len(text) - 1) is not None:
            return  # the text is escaped, or not only where the content is
        start = line.index(text) + 1
        head, tail = line[:start], line[start + len(text) - 2 :]
        for probe in ("a", "b"):
            try:
                if _parse(head + probe.encode() + tail) != Delta(probe, None, None, delta.model):
                    return
            except StreamError:
                return
        self._head, self._tail, self._ends, self._model = head, tail, len(head) + len(tail), delta.model


def _received(content: aiohttp.StreamReader) -> bytes:
    """What aiohttp had received when the connection broke.

    aiohttp raises the payload error before it hands over data it already
    holds; those tokens were sent, so they are read here rather than lost.
    """
    chunks = [bytes(b) for b in getattr(content, "_buffer", ())]
    if chunks:  # the first chunk may be partly read already
        chunks[0] = chunks[0][getattr(content, "_buffer_offset", 0) :]
    return b"".join(chunks)


def _deltas(lines: list[bytes], chunks: _Chunks) -> tuple[list[Delta], bool, StreamError | None]:
    """The deltas of complete lines; whether `[DONE]` was among them; the error of a bad line, which
    ends them (the deltas before it are still delivered)."""
    deltas: list[Delta] = []
    for line in lines:
        if not line:
            continue  # the blank line that ends each event
        try:
            item = chunks.parse(line)
        except StreamError as error:
            return deltas, False, error
        if item is _DONE:
            return deltas, True, None
        if isinstance(item, Delta):
            deltas.append(item)
    return deltas, False, None


def merge(deltas: list[Delta]) -> Delta:
    """One delta for several that were waiting together: their text joined, the last finish and usage."""
    return Delta(
        content="".join(d.content for d in deltas),
        finish_reason=next((d.finish_reason for d in reversed(deltas) if d.finish_reason), None),
        usage=next((d.usage for d in reversed(deltas) if d.usage is not None), None),
        model=next((d.model for d in reversed(deltas) if d.model), None),
    )


def _emit(deltas: list[Delta], coalesce: bool) -> list[Delta]:
    return [merge(deltas)] if coalesce and len(deltas) > 1 else deltas


async def stream_chat(
    session: aiohttp.ClientSession,
    url: str,
    api_key: str | None,
    body: dict[str, Any],
    *,
    coalesce: bool = True,
    draining: set[asyncio.Task[None]] | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> AsyncGenerator[Delta, None]:
    """Deltas of one streamed chat completion. Closing the generator closes the HTTP request.

    With `coalesce`, the lines that were already waiting together when read
    become one delta: a reader that keeps up gets one delta a token, one that
    fell behind catches up in one step instead of paying for every token.

    `draining` holds the tasks that wait for a finished response's last bytes before its connection
    goes back to the pool (see below); without it, such a connection is closed. Its owner stops them
    with `stop_draining` before closing the session.

    `extra_headers` go with the request too (a traced stream's `traceparent`).
    """
    headers = {"Accept": "text/event-stream"}
    if extra_headers:
        headers.update(extra_headers)
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        response = await session.post(url, json=body, headers=headers)
    except (aiohttp.ClientError, OSError) as exc:
        raise StreamError(ErrorCode.UNAVAILABLE, f"cannot reach the upstream: {exc}", retryable=True) from exc
    finished = clean = False
    pending = b""
    chunks = _Chunks()
    try:
        if response.status != 200:
            raise _http_error(response.status, await response.read())
        try:
            while data := await response.content.readany():
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                deltas, done, error = _deltas(lines, chunks)
                for delta in _emit(deltas, coalesce):
                    finished = finished or delta.finish_reason is not None
                    yield delta
                if error is not None:
                    raise error
                if done:
                    clean = True
                    return
        except aiohttp.ClientPayloadError as exc:
            deltas, _, _ = _deltas((pending + _received(response.content)).split(b"\n")[:-1], chunks)
            for delta in _emit(deltas, coalesce):
                yield delta
            raise StreamError(ErrorCode.UNAVAILABLE, f"{BROKE_OFF}: the connection was lost", retryable=True) from exc
        if not finished:  # some servers end without [DONE]; none should end without a finish reason
            raise StreamError(ErrorCode.UNAVAILABLE, f"{BROKE_OFF}: the connection ended early", retryable=True)
    except (aiohttp.ClientError, asyncio.IncompleteReadError, OSError) as exc:
        raise StreamError(ErrorCode.UNAVAILABLE, f"{BROKE_OFF}: {type(exc).__name__}", retryable=True) from exc
    finally:
        # Whatever ended the stream, the request ends here. An unread body means the connection is
        # closed, unless the stream ended cleanly with `[DONE]`: then only the body's end (chunked
        # encoding's last chunk) is left, usually a packet behind, and the connection is kept for
        # the next stream once it comes. A new connection costs that stream a connect before its
        # first token, and with a real provider a TLS handshake too.
        if response.content.at_eof():
            response.release()
        elif clean and draining is not None:
            drain = asyncio.get_running_loop().create_task(_release_at_end(response))
            draining.add(drain)
            drain.add_done_callback(draining.discard)
        else:
            response.close()


async def stop_draining(draining: set[asyncio.Task[None]]) -> None:
    """Close the connections still waiting for their body's end (their session is closing)."""
    loop = asyncio.get_running_loop()
    mine = [task for task in draining if task.get_loop() is loop]  # another loop's are its own to stop
    for task in mine:
        task.cancel()
    await asyncio.gather(*mine, return_exceptions=True)


async def _release_at_end(response: aiohttp.ClientResponse) -> None:
    """Back to the pool once the body has ended (within `DRAIN_S`); anything else closes the connection."""
    try:
        async with asyncio.timeout(DRAIN_S):
            while await response.content.readany():
                pass  # nothing should follow [DONE]; whatever does is dropped
    except asyncio.CancelledError:  # the provider or the loop is closing
        response.close()
        raise
    except Exception:  # overdue, or the connection failed or was closed (the provider's session closing)
        response.close()
        return
    response.release()
