"""The replay of resumable streams: what a stream produced, so that a client that lost its
connection reads it again from where it was, then the live tail, with no second upstream request.

A resumable stream runs in a task of its own (`Gateway.open_resumable`), not in its client's: it
writes its events to a `Replay`, and clients read the replay (`Replay.read(after)`), as many times
as they reconnect. While no client reads it, the stream goes on for `resume_grace` seconds, then
it is ended as cancelled, with its usage. A finished replay is kept for `resume_window` seconds
(a client that missed the final frame can still read it); all replays together hold at most
`resume_buffer_bytes`, the oldest finished ones going first. What is gone is answered NOT_FOUND,
never generated again.

`ReplayStore` is the interface (in memory here; `streamgate.core.shared` copies each replay to Redis,
so that another core serves a reconnect).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

from streamgate.contract import Chunk, ErrorCode, Event, StreamError

#: Bytes counted for an event besides its text (the final event's metadata, the list's slot).
EVENT_OVERHEAD = 64


def _size(event: Event) -> int:
    return EVENT_OVERHEAD + (len(event.content) if isinstance(event, Chunk) else 0)


def replay_not_found(stream_id: str) -> StreamError:
    return StreamError(
        ErrorCode.NOT_FOUND,
        f"stream {stream_id!r} cannot be resumed: it is unknown here, or its replay was dropped"
        " (it is never generated again)",
    )


class Replay:
    """One resumable stream's events, in order, the last one final once it ended."""

    __slots__ = (
        "_changed",
        "_on_away",
        "ended_at",
        "events",
        "final",
        "principal",
        "readers",
        "size",
        "stream",
        "stream_id",
    )

    def __init__(self, stream_id: str, principal: str | None, on_away: Callable[[Replay], None]) -> None:
        self.stream_id = stream_id
        self.principal = principal
        self.events: list[Event] = []
        self.final: Event | None = None
        self.size = 0
        self.readers = 0
        self.ended_at: float | None = None
        self._changed = asyncio.Event()
        self._on_away = on_away
        #: The stream that writes it (a `GatewayStream`), while it runs: ended when nobody reads.
        self.stream: Any = None

    def append(self, event: Event) -> int:
        """Keep one event (the stream's runner only); the bytes it added."""
        self.events.append(event)
        if not isinstance(event, Chunk):
            self.final = event
            self.ended_at = time.monotonic()
        self._changed.set()
        size = _size(event)
        self.size += size
        return size

    @property
    def final_sequence(self) -> int:
        """The sequence the final frame has (or will have): one past the last chunk's."""
        for event in reversed(self.events):
            if isinstance(event, Chunk):
                return event.index + 1
        return 0

    async def read(self, after: int = -1) -> AsyncGenerator[Event, None]:
        """The chunks with a sequence past `after`, then the live tail, to the one final event."""
        self.readers += 1
        try:
            at = 0
            while True:
                events = self.events
                while at < len(events):
                    event = events[at]
                    at += 1
                    if not isinstance(event, Chunk) or event.index > after:
                        yield event
                    if not isinstance(event, Chunk):
                        return
                self._changed.clear()
                await self._changed.wait()
        finally:
            self.readers -= 1
            if not self.readers and self.final is None:
                self._on_away(self)


class ReplayStore(Protocol):
    """Where the replays of resumable streams live."""

    def create(self, stream_id: str, principal: str | None, on_away: Callable[[Replay], None]) -> Replay: ...

    def find(self, stream_id: str, principal: str | None) -> Replay:
        """The replay of `stream_id` for this key's holder; raises `StreamError(NOT_FOUND)`."""
        ...

    def added(self, replay: Replay, size: int) -> None:
        """`replay` grew by `size` bytes (the store may drop finished replays to stay in bounds)."""
        ...

    def remove(self, stream_id: str) -> None: ...


class MemoryReplayStore:
    """Replays in this process: bounded in bytes and, once finished, in time."""

    def __init__(self, window: float, max_bytes: int) -> None:
        self.window = window
        self.max_bytes = max_bytes
        self.size = 0
        self._replays: OrderedDict[str, Replay] = OrderedDict()
        self._scanned = 0.0

    def __len__(self) -> int:
        return len(self._replays)

    def create(self, stream_id: str, principal: str | None, on_away: Callable[[Replay], None]) -> Replay:
        self._expire()
        if stream_id in self._replays:
            raise StreamError(
                ErrorCode.INVALID_ARGUMENT, f"request_id {stream_id!r} is already a resumable stream here"
            )
        replay = Replay(stream_id, principal, on_away)
        self._replays[stream_id] = replay
        return replay

    def find(self, stream_id: str, principal: str | None) -> Replay:
        self._expire()
        replay = self._replays.get(stream_id)
        if replay is None or replay.principal != principal:  # another key's stream is not there for you
            raise replay_not_found(stream_id)
        return replay

    def remove(self, stream_id: str) -> None:
        replay = self._replays.pop(stream_id, None)
        if replay is not None:
            self.size -= replay.size

    def added(self, replay: Replay, size: int) -> None:
        self.size += size
        if self.size > self.max_bytes:
            self._expire(over_bytes=True)

    def _expire(self, over_bytes: bool = False) -> None:
        """Drop finished replays past their window (looked for at most once a second), and, over the
        byte bound, the oldest finished ones."""
        now = time.monotonic()
        if not over_bytes and now - self._scanned < 1.0:
            return
        self._scanned = now
        for stream_id, replay in list(self._replays.items()):
            if replay.ended_at is None:
                continue
            if now - replay.ended_at >= self.window or (over_bytes and self.size > self.max_bytes):
                del self._replays[stream_id]
                self.size -= replay.size
