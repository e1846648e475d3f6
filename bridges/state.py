"""What the bridge's handlers share: the core client, metrics, and the streams open now."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from streamgate.core import ErrorCode, StreamError

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
