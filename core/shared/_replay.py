"""Replays of resumable streams in Redis, so that a client resumes through any core.

The core that runs a stream keeps its replay in memory as before (`MemoryReplayStore`: its own
readers read it there) and copies it to a Redis stream, `{prefix}:replay:{key holder digest}:{stream
id}`: the marker `0-1` (its writer's token), then chunk i as entry `{i+1}-0` (field `c`, the text),
then the final event as `{final sequence + 1}-0` (field `f`, the `GenerateResponse` bytes). The key
holder is in the name, so another key finds nothing there: only the key that opened a stream reads
it again, as on one core.

Writes are batched: each event only marks its replay; one writer task sends every marked replay's new
entries in one command (the APPEND script, at most `WRITE_BYTES`), then pauses `WRITE_INTERVAL` (10
ms): a core makes at most about a hundred writes a second whatever its number of streams and tokens,
and a replay in Redis lags its stream by about that much. The replay lives `lease_seconds` while the
stream runs (refreshed by each write and by the courier's periodic refresh), then `--resume-window`
after its end (at least a second). Bounds: one stream's entries hold at most `--resume-buffer-bytes`
(counted as in memory; past it the oldest are trimmed, XTRIM MINID, and a reader from before them
gets NOT_FOUND); Redis's own `maxmemory` bounds them all (every replay has an expiry: a `volatile-*`
policy may evict them).

Redis away: a stream's events wait in its replay, in memory, and are written when Redis is back (the
whole replay again if Redis lost it). At most `MAX_WRITERS` replays wait so; past it, the finished
ones that this core's store has dropped go first (never shared), then the oldest finished ones.

A core asked for a stream it does not run (`Gateway.find_replay`) reads it from Redis
(`RemoteReplay`): XRANGE from the client's sequence, then XREAD BLOCK for the live tail, to the final
event. While it reads, it tells the running core so once a second (PUBLISH on `{prefix}:replays`),
which keeps the stream going as if its reader were local; a stop (DELETE, a WebSocket cancel) goes
the same way. A stream whose replay vanished from Redis while it was read (its core died: nothing
refreshes it) ends with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

from redis.asyncio import BlockingConnectionPool, Redis

from streamgate.contract import (
    Chunk,
    ErrorCode,
    Event,
    Failure,
    Metrics,
    StreamError,
    Usage,
    event_from_proto,
    event_to_proto,
)
from streamgate.v1 import streamgate_pb2 as pb

from ..replay import EVENT_OVERHEAD, MemoryReplayStore, Replay, _size, replay_not_found
from . import _scripts
from ._config import digest
from ._state import COMMAND_TIMEOUT, CONNECT_TIMEOUT, REDIS_ERRORS

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

    from ._state import SharedState

logger = logging.getLogger("streamgate.core")

#: Seconds the writer pauses after a write, so that what comes meanwhile shares the next one: a replay
#: in Redis lags its stream by about this much (plus a round trip), and a core makes at most about
#: 1 / WRITE_INTERVAL writes a second, whatever the number of streams and tokens.
WRITE_INTERVAL = 0.01
#: Bytes of events one write carries at most (counted as the store counts them); the rest waits a write.
WRITE_BYTES = 4 * 1024 * 1024
#: Milliseconds a remote reader's XREAD waits for the tail before it looks whether the stream lives.
BLOCK_MS = 1000
#: Entries a remote reader reads per command.
PAGE = 256
#: Seconds between a remote reader's "still reading" messages; the running core counts a reader
#: for three of them.
READ_MARK_SECONDS = 1.0
#: Connections the remote readers share (a blocked XREAD holds one); more readers wait for one.
MAX_READER_CONNECTIONS = 64
#: Replays being written at most (running ones, and finished ones waiting for Redis); past it the
#: finished ones that wait go first.
MAX_WRITERS = 10_000
UNREADABLE = "the resumable streams of other servers cannot be read now (Redis cannot be reached); retry shortly"


class _Writer:
    """What of one replay is in Redis."""

    __slots__ = ("bytes", "key", "started", "token", "trim", "written")

    def __init__(self, key: str, token: str) -> None:
        self.key = key
        self.token = token
        #: Events written (a prefix of the replay's events), whether the marker is there, the bytes
        #: those events count, and the first event not trimmed.
        self.written = 0
        self.started = False
        self.bytes = 0
        self.trim = 0


class SharedReplayStore(MemoryReplayStore):
    """This core's replays, in memory, each copied to Redis (see the module's docstring)."""

    def __init__(self, window: float, max_bytes: int, state: SharedState) -> None:
        super().__init__(window, max_bytes)
        self._state = state
        self._writers: dict[Replay, _Writer] = {}
        self._by_key: dict[str, Replay] = {}
        #: Replay key → when another core last said a client reads it there (monotonic).
        self._read_elsewhere: dict[str, float] = {}
        self._dirty: dict[Replay, None] = {}
        self._wake = asyncio.Event()
        self._tokens = itertools.count()
        self._prefix = f"{state.config.prefix}:replay"
        self._window_ms = max(1000, int(window * 1000))
        pool = BlockingConnectionPool.from_url(
            state.config.url,
            max_connections=MAX_READER_CONNECTIONS,
            timeout=COMMAND_TIMEOUT,
            socket_timeout=BLOCK_MS / 1000 + COMMAND_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
        )
        #: The remote readers' client: its own pool, as a blocked XREAD holds a connection.
        self.reader = Redis.from_pool(pool)

    def key(self, stream_id: str, principal: str | None) -> str:
        return f"{self._prefix}:{digest(principal)}:{stream_id}"

    # -- the running core's side ----------------------------------------------------------------------

    def create(self, stream_id: str, principal: str | None, on_away: Callable[[Replay], None]) -> Replay:
        replay = super().create(stream_id, principal, on_away)
        if len(self._writers) >= MAX_WRITERS:
            self._shed()
        key = self.key(stream_id, principal)
        self._writers[replay] = _Writer(key, f"{self._state.instance}:{next(self._tokens)}")
        self._by_key[key] = replay
        return replay

    def remove(self, stream_id: str) -> None:
        replay = self._replays.get(stream_id)
        super().remove(stream_id)
        if replay is not None:
            self._forget(replay)

    def added(self, replay: Replay, size: int) -> None:
        super().added(replay, size)
        if replay in self._writers:
            self._dirty[replay] = None
            self._wake.set()

    def _forget(self, replay: Replay) -> None:
        writer = self._writers.pop(replay, None)
        self._dirty.pop(replay, None)
        if writer is not None:
            if self._by_key.get(writer.key) is replay:
                del self._by_key[writer.key]
            self._read_elsewhere.pop(writer.key, None)

    def _shed(self) -> None:
        """Too many replays wait for Redis: drop the finished ones this store no longer holds, then
        the oldest finished ones."""
        finished = [replay for replay in self._writers if replay.final is not None]
        gone = [replay for replay in finished if self._replays.get(replay.stream_id) is not replay]
        dropped = gone or finished[: max(1, len(finished) // 2)]
        for replay in dropped:
            self._forget(replay)
        if dropped:  # (running streams are bounded by the concurrency limit: never dropped)
            waited = "shared state: %d replays waited for Redis; %d finished ones are not shared"
            logger.warning(waited, MAX_WRITERS, len(dropped))

    def read_elsewhere(self, replay: Replay) -> bool:
        """Whether a client reads this stream through another core now."""
        writer = self._writers.get(replay)
        if writer is None:
            return False
        said = self._read_elsewhere.get(writer.key)
        return said is not None and time.monotonic() - said < 3 * READ_MARK_SECONDS

    def control(self, message: bytes) -> None:
        """A message of the control channel: `read KEY` (a client reads it elsewhere) or `stop KEY`."""
        kind, _, key_bytes = message.partition(b" ")
        key = key_bytes.decode(errors="replace")
        replay = self._by_key.get(key)
        if replay is None:
            return  # another core's stream
        if kind == b"read":
            self._read_elsewhere[key] = time.monotonic()
        elif kind == b"stop" and replay.stream is not None:
            replay.stream.abort(StreamError(ErrorCode.CANCELLED, "cancelled by the client"))

    def refresh(self, pipe: Pipeline) -> None:
        """The running replays already in Redis live another lease period (the periodic refresh)."""
        for replay, writer in self._writers.items():
            if writer.started and replay.final is None:
                pipe.pexpire(writer.key, self._state.lease_ms)

    async def write_forever(self) -> None:
        """The writer task: what the replays added, in one command per write, one write per `WRITE_INTERVAL`."""
        while True:
            await self._wake.wait()
            await self._state.wait_up()
            self._wake.clear()
            try:
                await self._write_marked()
            except REDIS_ERRORS as exc:
                self._state.lost(exc)
                self._wake.set()  # written again once Redis is back
                continue
            if self._dirty:
                self._wake.set()  # what was marked meanwhile: after the pause
            await asyncio.sleep(WRITE_INTERVAL)

    async def write_all(self) -> None:
        """Write every marked replay's new events, however many writes it takes (at close)."""
        while self._dirty:
            await self._write_marked()

    async def _write_marked(self) -> None:
        """One write of the marked replays' new events (at most `WRITE_BYTES`); on failure they stay marked."""
        dirty, self._dirty = self._dirty, {}
        try:
            await self._write(dirty)
        except BaseException:
            self._dirty = dirty | self._dirty
            raise

    async def _write(self, dirty: dict[Replay, None]) -> None:
        """One APPEND script for every replay that has something new: what fits in `WRITE_BYTES`; the
        rest stays marked for the next write."""
        keys: list[str] = []
        args: list[str | bytes | int] = []
        sent: list[tuple[Replay, _Writer, int, int, int]] = []
        bound = max(self.max_bytes, EVENT_OVERHEAD)
        room = WRITE_BYTES
        for replay in dirty:
            writer = self._writers.get(replay)
            if writer is None:
                continue
            if room <= 0:
                self._dirty[replay] = None
                continue
            events = replay.events
            end = len(events)
            if end == writer.written and writer.started:
                continue
            size, trim, final = writer.bytes, writer.trim, False
            entries: list[str | bytes] = []
            at = writer.written
            while at < end and room > 0:
                event = events[at]
                at += 1
                size += _size(event)
                room -= _size(event)
                if isinstance(event, Chunk):
                    entries += (f"{event.index + 1}-0", "c", event.content)
                else:
                    final = True
                    entries += (f"{replay.final_sequence + 1}-0", "f", event_to_proto(event).SerializeToString())
            if at < end:
                self._dirty[replay] = None  # the rest next time
            minid = ""
            if size > bound:  # the oldest entries go (never the last: the final, or the tail)
                while size > bound and trim < at - 1:
                    size -= _size(events[trim])
                    trim += 1
                first = events[trim]
                minid = f"{first.index + 1 if isinstance(first, Chunk) else replay.final_sequence + 1}-0"
            ttl = self._window_ms if final else self._state.lease_ms
            keys.append(writer.key)
            args += ("0" if writer.started else "1", writer.token, ttl, minid, len(entries) // 3, *entries)
            sent.append((replay, writer, at, size, trim))
        if not sent:
            return
        results = await self._state.redis.evalsha(_scripts.APPEND_SHA, len(keys), *keys, *args)
        for (replay, writer, end, size, trim), result in zip(sent, results, strict=True):
            if result == 1:
                writer.written, writer.started, writer.bytes, writer.trim = end, True, size, trim
                if replay.final is not None and end == len(replay.events):
                    self._forget(replay)  # all of it is there, final included
            elif result == 0:  # the id is another stream's replay (a client reused its request id)
                logger.debug("stream %s: its replay is not shared (the id names another stream's)", replay.stream_id)
                self._forget(replay)
            else:  # Redis lost it (a restart): all of it again
                writer.written, writer.started, writer.bytes, writer.trim = 0, False, 0, 0
                self._dirty[replay] = None

    async def close(self) -> None:
        await self.reader.aclose()

    # -- another core's side --------------------------------------------------------------------------

    async def find_remote(self, stream_id: str, principal: str | None) -> RemoteReplay:
        """The replay in Redis of a stream another core runs (or ran); raises NOT_FOUND (also for
        another key's stream), UNAVAILABLE when Redis cannot be reached."""
        key = self.key(stream_id, principal)
        if not self._state.up:
            raise StreamError(ErrorCode.UNAVAILABLE, UNREADABLE, retryable=True)
        try:
            exists = await self.reader.exists(key)
        except REDIS_ERRORS as exc:
            self._state.lost(exc)
            raise StreamError(ErrorCode.UNAVAILABLE, UNREADABLE, retryable=True) from None
        if not exists:
            raise replay_not_found(stream_id)
        return RemoteReplay(self, key, stream_id)


class _RemoteStream:
    """What the link and the servicer reach through `replay.stream`: a stop goes to the running core."""

    __slots__ = ("_key", "_store")

    model = ""

    def __init__(self, store: SharedReplayStore, key: str) -> None:
        self._store = store
        self._key = key

    def abort(self, error: StreamError) -> None:
        state = self._store._state
        state.spawn(_publish(state.redis, state.channel, b"stop " + self._key.encode()))


async def _publish(redis: Redis, channel: str, message: bytes) -> None:
    with contextlib.suppress(*REDIS_ERRORS):
        await redis.publish(channel, message)


class RemoteReplay:
    """A stream another core runs (or ran), read from Redis."""

    __slots__ = ("_key", "_store", "stream", "stream_id")

    def __init__(self, store: SharedReplayStore, key: str, stream_id: str) -> None:
        self._store = store
        self._key = key
        self.stream_id = stream_id
        self.stream = _RemoteStream(store, key)

    def _failure(self, error: StreamError) -> Failure:
        return Failure(error, "", "", Usage(0, 0), None, Metrics(), self.stream_id)

    async def read(self, after: int = -1) -> AsyncGenerator[Event, None]:
        """The chunks with a sequence past `after`, then the live tail, to the one final event."""
        store, key = self._store, self._key
        redis, state = store.reader, store._state
        read_mark = b"read " + key.encode()
        cursor = f"{after + 1}-0"
        expected = after + 1
        marked = float("-inf")
        first = True
        try:
            while True:
                if time.monotonic() - marked >= READ_MARK_SECONDS:
                    marked = time.monotonic()
                    await redis.publish(state.channel, read_mark)
                entries: Any = await redis.xrange(key, min=f"({cursor}", max="+", count=PAGE)
                if not entries and first:  # a client that has every chunk still gets the final event
                    last: Any = await redis.xrevrange(key, "+", "-", count=1)
                    entries = [entry for entry in last if b"f" in entry[1]]
                first = False
                if not entries:
                    reply: Any = await redis.xread({key: cursor}, count=PAGE, block=BLOCK_MS)
                    entries = reply[0][1] if reply else []
                    if not entries and not await redis.exists(key):
                        gone = "the server that ran this stream went away before it ended"
                        yield self._failure(StreamError(ErrorCode.UNAVAILABLE, gone, retryable=True))
                        return
                for entry_id, fields in entries:
                    cursor = entry_id.decode()
                    sequence = int(cursor.partition("-")[0]) - 1
                    text = fields.get(b"c")
                    if sequence > expected:  # trimmed: the start of what the client lacks is gone
                        yield self._failure(replay_not_found(self.stream_id))
                        return
                    if text is not None:
                        expected = sequence + 1
                        yield Chunk(text.decode(), sequence)
                    elif b"f" in fields:
                        yield event_from_proto(pb.GenerateResponse.FromString(fields[b"f"]))
                        return
        except REDIS_ERRORS as exc:
            state.lost(exc)
            lost = "lost the stream's replay (Redis cannot be reached); resume again shortly"
            yield self._failure(StreamError(ErrorCode.UNAVAILABLE, lost, retryable=True))
