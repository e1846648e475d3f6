"""A reconnect never runs a prompt again.

An `EventSource` reconnects by itself whenever its connection ends, the normal end of a stream
included, and sends the id of the last event it received as `Last-Event-ID`. Before frames had ids
nothing told such a reconnect from a new request, and each one generated (and paid for) the same
answer again. Now a request that carries `Last-Event-ID` never starts a generation: a resumable
stream goes on from the core's replay (`sse._resume`); past the final frame of a stream this bridge
delivered the answer is 204 No Content (which stops `EventSource`); anything else is 410 Gone with
the JSON error.
"""

from __future__ import annotations

from collections import OrderedDict

from aiohttp import web

from streamgate.contract import ErrorCode, StreamError

from .errors import error_response
from .framing import parse_event_id

#: Streams remembered as delivered; the oldest go first.
MAX_DELIVERED = 10_000
#: Milliseconds an `EventSource` waits before it reconnects (the stream's first `retry:` line).
RETRY_MS = 1000


class Delivered:
    """Stream id → the sequence of its final frame, for the streams whose final frame went out (bounded)."""

    __slots__ = ("_finals", "_limit")

    def __init__(self, limit: int = MAX_DELIVERED) -> None:
        self._finals: OrderedDict[str, int] = OrderedDict()
        self._limit = limit

    def add(self, stream_id: str, sequence: int) -> None:
        if not stream_id:
            return
        self._finals[stream_id] = sequence
        self._finals.move_to_end(stream_id)
        if len(self._finals) > self._limit:
            self._finals.popitem(last=False)

    def final_sequence(self, stream_id: str) -> int | None:
        return self._finals.get(stream_id)


def answer_reconnect(delivered: Delivered, last_event_id: str) -> web.Response:
    """What a request carrying `Last-Event-ID` gets: 204 after a delivered final frame, else 410."""
    parsed = parse_event_id(last_event_id)
    if parsed is not None:
        stream_id, sequence = parsed
        final = delivered.final_sequence(stream_id)
        if final is not None and sequence >= final:
            return web.Response(status=204)
    error = StreamError(
        ErrorCode.NOT_FOUND,
        "this stream cannot be resumed here, and a reconnect never starts a new generation:"
        " send the request again, without Last-Event-ID, to ask anew",
    )
    return error_response(error, status=410)
