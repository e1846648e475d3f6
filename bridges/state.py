"""What the bridge's handlers share: the core client, metrics, and the streams open now."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from streamgate.core import Chunk, Completion, ErrorCode, Failure, StreamError

from .config import BridgeConfig
from .core_client import CoreClient, CoreStream
from .metrics import BridgeMetrics

SHUTTING_DOWN = StreamError(ErrorCode.UNAVAILABLE, "the server is shutting down", retryable=True)


class OpenStream:
    """A stream the bridge is serving; `end(error)` stops it from outside (shutdown, cancel)."""

    __slots__ = ("core", "ending")

    def __init__(self, core: CoreStream) -> None:
        self.core = core
        self.ending: StreamError | None = None

    def end(self, error: StreamError) -> None:
        self.ending = error
        self.core.cancel()

    def ended_by_us(self) -> StreamError | None:
        """The reason, when the stream was stopped by `end()` and not by cancelling this task."""
        task = asyncio.current_task()
        if self.ending is not None and (task is None or task.cancelling() == 0):
            return self.ending
        return None


@dataclass
class BridgeState:
    config: BridgeConfig
    client: CoreClient
    metrics: BridgeMetrics = field(default_factory=BridgeMetrics)
    streams: set[OpenStream] = field(default_factory=set)
    draining: bool = False
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

    async def relay(
        self,
        stream: OpenStream,
        transport: str,
        send_chunk: Callable[[str], Awaitable[object]],
        send_final: Callable[[Completion | Failure], Awaitable[object]],
        send_ended: Callable[[StreamError], Awaitable[object]],
    ) -> str:
        """Send a core stream to a client until its one final frame, and count how it ended, once.

        `send_ended` makes the final frame of a stream stopped by `OpenStream.end()` (shutdown,
        a WebSocket cancel). A client that leaves cancels the core call; a cancelled task
        re-raises. Returns the outcome: "OK", an error code, or "disconnected".
        """
        metrics, core = self.metrics, stream.core
        self.add(stream)
        metrics.open_streams.labels(transport).inc()
        frames = metrics.frames.labels(transport)
        outcome = "OK"
        try:
            async with contextlib.aclosing(core.events()) as events:
                try:
                    async for event in events:
                        if isinstance(event, Chunk):
                            await send_chunk(event.content)
                            frames.inc()
                            continue
                        if isinstance(event, Failure):
                            outcome = event.error.code.value
                        await send_final(event)
                        frames.inc()
                        break
                except asyncio.CancelledError:
                    reason = stream.ended_by_us()
                    if reason is None:
                        raise
                    outcome = reason.code.value
                    await send_ended(reason)
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
            metrics.outcomes.labels(transport, outcome).inc()
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
