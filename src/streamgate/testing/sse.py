"""A Server-Sent Events reader for tests and benchmarks: `feed(bytes)` in, events out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class SSEParser:
    """Splits a byte stream into events (`data` payloads) and comment lines, as EventSource does."""

    _buffer: bytes = b""
    comments: list[str] = field(default_factory=list)

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete (a stream that ends with some was cut mid-frame)."""
        return self._buffer

    def feed(self, data: bytes) -> list[str]:
        """Events completed by `data`: each the joined `data:` lines of one event."""
        self._buffer = (self._buffer + data).replace(b"\r\n", b"\n")  # CRLF is valid SSE too
        events = []
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            lines = []
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line.startswith("data:"):
                    lines.append(line[5:].removeprefix(" "))
            if lines:
                events.append("\n".join(lines))
        return events


async def read_events(
    response: aiohttp.ClientResponse, parser: SSEParser | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an SSE response, as they arrive."""
    parser = parser or SSEParser()
    async for data in response.content.iter_any():
        for event in parser.feed(data):
            yield json.loads(event)
