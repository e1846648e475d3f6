"""`CoreStream`: the bridge's handle of one stream the core runs (`streamgate.link.client`): its
events as the link's reader hands them over, its final event made here when the link breaks first,
and its cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING

from streamgate.contract import Chunk, ErrorCode, Event, Failure, Metrics, StreamError, Usage
from streamgate.link._wire import merged_text

if TYPE_CHECKING:
    from streamgate.link.client import _Link

logger = logging.getLogger("streamgate.bridge")

LOST = StreamError(ErrorCode.UNAVAILABLE, "lost the connection to the core", retryable=True)


class CoreStream:
    """One stream of the link. Iterate `events()`; `cancel()` stops it (the core closes the upstream)."""

    __slots__ = (
        "_admitted",
        "_cancelled",
        "_ended",
        "_events",
        "_last",
        "_link",
        "_relink",
        "_successor",
        "_waiter",
        "first_chunk",
        "model",
        "request_id",
        "resumer",
        "started",
        "stream_id",
        "text",
    )

    def __init__(self, link: _Link, stream_id: int) -> None:
        self._link = link
        self.stream_id = stream_id
        self.request_id = ""
        #: The model the core admitted the stream for (its default when the request named none).
        self.model = ""
        self._admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._events: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False  # the final event arrived (or was made here)
        self._cancelled = False
        self.text: list[str] = []
        self.started = time.perf_counter()
        self.first_chunk: float | None = None
        #: For a resumable stream: attaches to it again through a new link, after a chunk index.
        self.resumer: Callable[[int], Awaitable[CoreStream]] | None = None
        self._relink = False  # the link broke under a resumable stream: attach again when read
        self._successor: CoreStream | None = None  # the same stream on the new link
        self._last = -1  # the index of the last chunk read

    # -- called by the link's reader --------------------------------------------------------------

    def _admit(self, request_id: str, model: str = "") -> None:
        self.request_id = request_id
        self.model = model
        if not self._admitted.done():
            self._admitted.set_result(None)

    def _refuse(self, error: StreamError) -> None:
        self._ended = True
        if not self._admitted.done():
            self._admitted.set_exception(error)

    def _event(self, event: Event) -> None:
        if self._ended:
            return
        if not isinstance(event, Chunk):
            self._ended = True
        self._events.append(event)
        self._wake()

    def _lost(self, error: StreamError) -> None:
        """The link broke: refused if not yet admitted, else a final failure made here."""
        if not self._admitted.done():
            self._refuse(error)
            return
        if self._ended:
            return
        if self.resumer is not None and error.code is ErrorCode.UNAVAILABLE:
            self._relink = True  # the core may be alive, the stream with it: `events()` attaches again
            self._wake()
            return
        self._event(self.failure(LOST if error.code is ErrorCode.UNAVAILABLE else error))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the bridge's side -------------------------------------------------------------------------

    async def admitted(self) -> None:
        try:
            await self._admitted
        except asyncio.CancelledError:
            self.cancel()
            raise

    @property
    def ended(self) -> bool:
        """The final event arrived (or was made here)."""
        return self._ended

    def finish(self) -> None:
        """A client's cancel that wants the stream's account: the core ends the stream as CANCELLED and
        its final event (what was produced, usage, cost) comes as any final does. Reading goes on."""
        if not (self._ended or self._cancelled):
            self._link.cancel(self.stream_id, finish=True)
            if self._successor is not None:
                self._successor.finish()

    def cancel(self, stop: bool = False) -> None:
        """Stop reading the stream; `stop`: stop the stream itself, resumable or not (a client's cancel)."""
        if self._cancelled:
            return
        self._cancelled = True
        if not self._admitted.done():
            self._admitted.cancel()
        if not self._ended:
            self._link.cancel(self.stream_id, stop)
        self._link.forget(self.stream_id)
        if self._successor is not None:
            self._successor.cancel(stop)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()

    def metrics(self) -> Metrics:
        """What the bridge measured itself (for a stream that has no final event from the core)."""
        now = time.perf_counter()
        ttft = (self.first_chunk - self.started) * 1000 if self.first_chunk is not None else 0.0
        return Metrics(ttft_ms=round(ttft, 3), duration_ms=round((now - self.started) * 1000, 3), chunks=len(self.text))

    async def events(self) -> AsyncGenerator[Event, None]:
        """The core's events, ending with exactly one `Completion` or `Failure`.

        Chunks that waited together (the client was slower than the core) come as one chunk,
        unless the client was made with `coalesce=False`.
        """
        queue = self._events
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._cancelled:
                    raise asyncio.CancelledError
                if not queue:
                    if self._relink:
                        self._relink = False
                        async for event in self._resumed():
                            yield event
                        return
                    self._waiter = loop.create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                    continue
                event = queue.popleft()
                if isinstance(event, Chunk):
                    if queue and isinstance(queue[0], Chunk) and self._link.coalesce:
                        parts = [event.content]
                        last = event.index
                        while queue and isinstance(nxt := queue[0], Chunk):
                            parts.append(nxt.content)
                            last = nxt.index
                            queue.popleft()
                        event = Chunk(merged_text(parts), last)  # its sequence: the last index it holds
                    if self.first_chunk is None:
                        self.first_chunk = time.perf_counter()
                    self.text.append(event.content)
                    self._last = event.index
                    yield event
                    continue
                yield event
                return
        finally:
            if self._ended:
                self._link.forget(self.stream_id)
            else:  # the reader stopped before the final event: the core must not go on for nobody
                self.cancel()

    async def _resumed(self) -> AsyncGenerator[Event, None]:
        """After the link broke: the rest of this resumable stream, through a new link (or the loss)."""
        assert self.resumer is not None
        try:
            successor = self._successor = await self.resumer(self._last)
        except StreamError:  # the core is gone, and the replay with it
            self._ended = True
            yield self.failure(LOST)
            return
        logger.info("stream %s resumed through a new link after chunk %d", self.request_id, self._last)
        async with contextlib.aclosing(successor.events()) as events:
            async for event in events:
                if isinstance(event, Chunk):
                    self.text.append(event.content)
                    self._last = event.index
                else:
                    self._ended = True
                yield event

    def failure(self, error: StreamError) -> Failure:
        """A final event made by the bridge, with what it received so far."""
        return Failure(
            error=error,
            partial_text="".join(self.text),
            model="",
            usage=Usage(0, len(self.text)),
            cost_usd=None,
            metrics=self.metrics(),
            request_id=self.request_id,
        )
