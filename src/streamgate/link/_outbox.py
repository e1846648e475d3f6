"""The core's outbox of one link call: frames waiting to be written, bounded, chunks of a stream merged.

`RelaySession` (`streamgate.link.server`) puts each stream's frames here; its one writer task takes
what waits as one `RelayResponse` (built in place) at most every `RELAY_PAUSE`. See the server's
docstring for the flow control these bounds give.
"""

from __future__ import annotations

import asyncio

from streamgate.core import Chunk
from streamgate.link.v1 import link_pb2 as link_pb

from ._wire import BATCH_BYTES, merged_text

#: What the outbox of one call may hold (about one more batch than the one being written). Over it,
#: the call reads no more commands and every stream waits for the writer before its next event.
OUTBOX_BYTES = BATCH_BYTES
#: What one stream may have waiting in the outbox (its text, merged or not). Over it, that stream
#: waits for the writer before it takes its next event: the upstream is then read no faster than the
#: link drains. A sixteenth of a batch: far above what a stream that keeps up has waiting (one
#: millisecond of tokens), and 16 such streams still fit in one batch.
STREAM_BYTES = BATCH_BYTES // 16


class Place:
    """A stream's place in the outbox: its id, its chunk still open for merging, its text waiting."""

    __slots__ = ("id", "open", "pending")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.open: _Item | None = None
        #: Characters of this stream's text in the outbox (bytes, for ASCII).
        self.pending = 0


class _Item:
    """A frame in the outbox: a `RelayFrame`, or a chunk (its text parts, merged when taken)."""

    __slots__ = ("frame", "index", "parts", "size", "stream")

    def __init__(
        self, stream: Place, frame: link_pb.RelayFrame | None, index: int, parts: list[str], size: int
    ) -> None:
        self.stream = stream
        self.frame = frame
        self.index = index
        self.parts = parts
        #: A frame's encoded size; a chunk's characters.
        self.size = size


class Outbox:
    """Frames waiting to be written, in order per stream; pending chunks of a stream merged into one.

    Bounded: `chunk()` says when the stream must wait (`room()`) before its next event, and the
    call reads no more commands while `full`.
    """

    __slots__ = ("_closed", "_items", "_merge", "_ready", "_took", "bound", "size", "stream_bound", "urgent")

    def __init__(self, merge: bool) -> None:
        self._merge = merge
        self._items: list[_Item] = []
        self._ready = asyncio.Event()
        #: Set by a frame that starts a stream (admitted, refused, first chunk): it skips the writer's pause.
        self.urgent = asyncio.Event()
        #: Set each time the writer takes a batch: what waits for room looks again.
        self._took = asyncio.Event()
        self._closed = False
        #: Bytes waiting (a chunk's text counted in characters).
        self.size = 0
        self.bound = OUTBOX_BYTES
        self.stream_bound = STREAM_BYTES

    @property
    def full(self) -> bool:
        return self.size > self.bound

    def pending(self, stream_id: int) -> int:
        """Characters of text the stream has waiting (for tests; walks the outbox)."""
        return sum(item.size for item in self._items if item.frame is None and item.stream.id == stream_id)

    def close(self) -> None:
        """No more frames: `take()` returns what is left, then None."""
        self._closed = True
        self._ready.set()

    def frame(self, stream: Place, frame: link_pb.RelayFrame, urgent: bool = False) -> None:
        stream.open = None
        size = frame.ByteSize()
        self._items.append(_Item(stream, frame, 0, [], size))
        self.size += size
        self._ready.set()
        if urgent:
            self.urgent.set()

    def chunk(self, stream: Place, chunk: Chunk) -> bool:
        """Queue a chunk; True when the stream must wait for `room()` before its next event."""
        content = chunk.content
        n = len(content)
        self.size += n
        stream.pending += n
        item = stream.open
        if item is not None:
            item.parts.append(content)
            item.size += n
            item.index = chunk.index  # a merged chunk carries its last index: the sequence it reaches
        else:
            item = _Item(stream, None, chunk.index, [content], n)
            if self._merge:
                stream.open = item
            self._items.append(item)
            self._ready.set()
            if chunk.index == 0:  # time to first token
                self.urgent.set()
        return stream.pending > self.stream_bound or self.size > self.bound

    async def room(self, stream: Place | None = None) -> None:
        """Wait until the outbox is within its bound (and the stream, if given, within its own)."""
        took = self._took
        while self.size > self.bound or (stream is not None and stream.pending > self.stream_bound):
            took.clear()
            await took.wait()

    async def take(self) -> link_pb.RelayResponse | None:
        """What is waiting, once there is something, up to about `BATCH_BYTES`; None once closed and empty."""
        await self._ready.wait()
        items = self._items
        if not items:
            return None  # closed
        size = count = 0
        for item in items:
            # A chunk's characters are at most 4 bytes each in UTF-8.
            size += item.size if item.frame is not None else 16 + 4 * item.size
            count += 1
            if size >= BATCH_BYTES:
                break
        taken, self._items = (items, []) if count == len(items) else (items[:count], items[count:])
        if not self._items and not self._closed:
            self._ready.clear()
        # Built in place: a message given to a constructor or `append` is copied, and each chunk's frame
        # would be copied twice (into its frame, then into the batch).
        batch = link_pb.RelayResponse()
        frames = batch.frames
        taken_size = 0
        for item in taken:
            taken_size += item.size
            frame = item.frame
            if frame is None:
                stream = item.stream
                stream.pending -= item.size
                if stream.open is item:
                    stream.open = None  # on its way: later text starts a new chunk
                chunk = frames.add(stream_id=stream.id).event.chunk
                chunk.content = merged_text(item.parts)
                chunk.index = item.index
            else:
                frames.append(frame)
        self.size -= taken_size
        self._took.set()
        return batch
