"""What the bridge's handlers share: the core client, metrics, and the streams open now."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from streamgate.contract import Chunk, Completion, ErrorCode, Failure, StreamError
from streamgate.link.client import CoreClient, CoreStream
from streamgate.link.pool import CorePool

from .config import BridgeConfig
from .metrics import BridgeMetrics
from .resume import Delivered

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

SHUTTING_DOWN = StreamError(ErrorCode.UNAVAILABLE, "the server is shutting down", retryable=True)

logger = logging.getLogger("streamgate.bridges")


class WriteGuard:
    """One timer over a stream's writes: drops a client that stops reading, and can fill silences.

    `begin()` before each write to the client, `end()` after it. A write to a client that reads returns at
    once (aiohttp waits only while the transport's buffer is over its high-water mark), so a write costs a
    clock read and two counter updates here, and no timer moves. When the timer finds that the writes
    waiting have waited `stall` seconds, it aborts the transport: aiohttp cancels the handler as when a
    client leaves, so the stream ends "disconnected" and its core stream is cancelled. With `idle` (an SSE
    `: ping`), the timer also writes `idle()` after `interval` seconds without a write; without it, the timer
    is armed only while writes come, once per `stall` seconds at most.

    `close()` when the handler is done writing: what is still in the transport's buffer (a client that
    stopped reading near the end) must leave within `stall` seconds too, or the transport is aborted.
    aiohttp would close it, and a close waits for the buffer to be sent: forever, to a client that does
    not read.
    """

    __slots__ = ("_handle", "_idle", "_interval", "_loop", "_stall", "_transport", "began", "pending")

    def __init__(
        self,
        transport: asyncio.Transport | None,
        stall: float,
        idle: Callable[[], Awaitable[object]] | None = None,
        interval: float = math.inf,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._stall = stall
        self._idle = idle
        self._interval = interval
        #: When the oldest write still waiting began; when none waits, when the last write began.
        self.began = self._loop.time()
        #: Writes begun and not ended.
        self.pending = 0
        self._handle: asyncio.TimerHandle | None = None
        if idle is not None:
            self._handle = self._loop.call_at(self.began + min(interval, stall), self._check)

    def begin(self) -> None:
        if not self.pending:
            self.began = self._loop.time()
        self.pending += 1
        if self._handle is None:
            self._handle = self._loop.call_at(self.began + self._stall, self._check)

    def end(self) -> None:
        self.pending -= 1

    def _check(self) -> None:
        self._handle = None
        now = self._loop.time()
        if self.pending:
            deadline = self.began + self._stall
            if now >= deadline:
                self._abort("a write waited on it")
            elif self._idle is None:
                self._handle = self._loop.call_at(deadline, self._check)
            else:  # the write may end sooner, and the silence after it needs its idle write in time
                self._handle = self._loop.call_at(min(deadline, now + self._interval), self._check)
            return
        if self._idle is None:
            return  # the next write arms it again
        if now - self.began >= self._interval:
            self.began = now
            self.pending += 1
            idle = asyncio.ensure_future(self._idle())
            idle.add_done_callback(self._idle_done)
        # Nothing can come due before the next idle write, or a stall of a write that begins from now.
        self._handle = self._loop.call_at(min(self.began + self._interval, now + self._stall), self._check)

    def _idle_done(self, write: asyncio.Future[object]) -> None:
        self.pending -= 1
        if not write.cancelled():
            write.exception()  # a client that left: the handler finds out by its own write

    def close(self) -> None:
        """The handler is done writing: stop the timer, and bound the wait for what it left unsent."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._idle = None
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size():
            self._handle = self._loop.call_later(self._stall, self._flushed)

    def _flushed(self) -> None:
        self._handle = None
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size():
            self._abort("its response's last bytes waited on it")

    def _abort(self, why: str) -> None:
        if self._transport is not None:
            logger.debug("dropped a client that stopped reading: %s for %g s", why, self._stall)
            self._transport.abort()


#: Seconds a client's cancel waits for the core's final event (with usage and cost) before ending the stream here.
FINISH_WAIT = 2.0


class OpenStream:
    """A stream the bridge is serving; `end(error)` stops it from outside (shutdown, cancel)."""

    __slots__ = ("core", "ending")

    def __init__(self, core: CoreStream) -> None:
        self.core = core
        self.ending: StreamError | None = None

    def end(self, error: StreamError) -> None:
        self.ending = error
        self.core.cancel(stop=True)  # a resumable stream too: it is stopped, not left

    def finish(self, error: StreamError) -> None:
        """A client's cancel: the core ends the stream and sends its final event, with what it cost;
        if that takes longer than `FINISH_WAIT` (a core gone quiet), the stream is ended here."""
        self.ending = error
        self.core.finish()

        def give_up() -> None:
            if not self.core.ended:
                self.end(error)

        asyncio.get_running_loop().call_later(FINISH_WAIT, give_up)

    def ended_by_us(self) -> StreamError | None:
        """The reason, when the stream was stopped by `end()` and not by cancelling this task."""
        task = asyncio.current_task()
        if self.ending is not None and (task is None or task.cancelling() == 0):
            return self.ending
        return None


@dataclass
class BridgeState:
    config: BridgeConfig
    client: CoreClient | CorePool
    metrics: BridgeMetrics = field(default_factory=BridgeMetrics)
    streams: set[OpenStream] = field(default_factory=set)
    #: Streams whose final frame went out, so that a reconnect after it is told so (`resume.py`).
    delivered: Delivered = field(default_factory=Delivered)
    draining: bool = False
    #: Traces each stream when set (`bridges/observe.py`); None: off.
    tracer: Tracer | None = None
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise SHUTTING_DOWN

    def add(self, stream: OpenStream) -> None:
        self.streams.add(stream)
        self._idle.clear()

    def remove(self, stream: OpenStream) -> None:
        self.streams.discard(stream)
        if not self.streams:
            self._idle.set()

    async def forward(
        self,
        stream: OpenStream,
        transport: str,
        send_chunk: Callable[[str, int], Awaitable[object]],
        send_final: Callable[[Completion | Failure, int], Awaitable[object]],
        send_ended: Callable[[StreamError, int], Awaitable[object]],
        sequence: int = 0,
    ) -> str:
        """Send a core stream to a client until its one final frame, and count how it ended, once.

        Each frame goes with its sequence: a chunk's (the last index it holds), then the final
        frame's, one past the last chunk's. `send_ended` makes the final frame of a stream stopped
        by `OpenStream.end()` (shutdown, a WebSocket cancel). A client that leaves cancels the core
        call; a cancelled task re-raises. Returns the outcome, as the metrics label it: "completed", an
        error code in lower case, or "disconnected". Times its first frame and its whole, from the
        stream's start at the bridge (`CoreStream.started`).
        """
        metrics, core = self.metrics, stream.core
        self.add(stream)
        metrics.open_streams.labels(transport).inc()
        frames = metrics.frames.labels(transport)
        outcome = "completed"  # `sequence`: the next frame's (past the `after` of a resumed stream)
        first = True  # no frame sent yet
        try:
            async with contextlib.aclosing(core.events()) as events:
                try:
                    async for event in events:
                        if isinstance(event, Chunk):
                            await send_chunk(event.content, event.index)
                            sequence = event.index + 1
                            frames.inc()
                            if first:
                                first = False
                                metrics.first_frame.labels(transport).observe(time.perf_counter() - core.started)
                            continue
                        if isinstance(event, Failure):
                            outcome = event.error.code.value.lower()
                        await send_final(event, sequence)
                        self.delivered.add(core.request_id, sequence)
                        frames.inc()
                        if first:
                            metrics.first_frame.labels(transport).observe(time.perf_counter() - core.started)
                        break
                except asyncio.CancelledError:
                    reason = stream.ended_by_us()
                    if reason is None:
                        raise
                    outcome = reason.code.value.lower()
                    await send_ended(reason, sequence)
                    self.delivered.add(core.request_id, sequence)
                    frames.inc()
        except asyncio.CancelledError:  # the client left: its handler was cancelled
            outcome = "disconnected"
            metrics.disconnects.labels(transport).inc()
            core.cancel()
            raise
        except ConnectionError:  # the client left while we wrote
            outcome = "disconnected"
            metrics.disconnects.labels(transport).inc()
            core.cancel()
        finally:
            self.remove(stream)
            metrics.open_streams.labels(transport).dec()
            metrics.duration.labels(transport).observe(time.perf_counter() - core.started)
            metrics.ended(transport, outcome, core.request_id)
        return outcome

    async def drain(self, grace: float) -> None:
        """Refuse new streams; let open ones finish for `grace` s; end the rest with a final error."""
        self.draining = True
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
            return
        except TimeoutError:
            pass
        for stream in list(self.streams):
            stream.end(SHUTTING_DOWN)
        try:
            async with asyncio.timeout(5.0):
                await self._idle.wait()
        except TimeoutError:
            pass


STATE = web.AppKey("streamgate_bridge", BridgeState)
