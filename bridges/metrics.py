"""The bridge's Prometheus metrics (its own registry, exposed at `/metrics`).

Label values are lower-case, as the core's: a stream's `outcome` is `completed`, the error code it
ended with in lower case (`invalid_argument`, `resource_exhausted`, `deadline_exceeded`, `cancelled`,
`unavailable`, ...: the core's `streamgate_streams_finished` and `streamgate_streams_rejected` say the
same), or what only the bridge sees: `disconnected` (the client left mid-stream), `reconnect` (an
`EventSource` reconnecting, never a new stream), `body_timeout` (408) and `body_too_large` (413).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from aiohttp import web

#: Seconds from a stream's start at the bridge (its request read, the core asked) to its first frame sent.
FIRST_FRAME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Seconds from a stream's start at the bridge to its end, whatever ended it.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Note:
    """What one HTTP request (or WebSocket query) did, for its access line and its span: set where known."""

    __slots__ = ("outcome", "request_id", "response")

    def __init__(self) -> None:
        self.request_id: str | None = None
        self.outcome: str | None = None
        #: The response, once its head is on its way (`bridges/observe.py`).
        self.response: web.StreamResponse | None = None


#: The note of the request (or WebSocket query) the running task serves; None outside one.
NOTE: ContextVar[Note | None] = ContextVar("streamgate_bridge_note", default=None)


#: Set (by `streamgate serve` with several bridges, before prometheus_client is imported): the folder
#: where every bridge process keeps its figures, so that `/metrics`, whichever bridge answers it on the
#: shared port, is the sum over all of them (prometheus_client's multiprocess mode).
SHARED_ENV = "PROMETHEUS_MULTIPROC_DIR"


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.open_streams = Gauge(
            "streamgate_bridge_open_streams",
            "Streams open now, by transport.",
            ["transport"],
            registry=r,
            multiprocess_mode="livesum",  # with several bridges: the live ones' sum
        )
        self.frames = Counter("streamgate_bridge_frames", "Frames sent, by transport.", ["transport"], registry=r)
        self.disconnects = Counter(
            "streamgate_bridge_disconnects",
            "Clients that left mid-stream, by transport.",
            ["transport"],
            registry=r,
        )
        self.outcomes = Counter(
            "streamgate_bridge_streams",
            "Streams ended or refused, by transport and outcome: completed, an error code in lower case"
            " (as the core's outcomes), disconnected, reconnect, body_timeout or body_too_large.",
            ["transport", "outcome"],
            registry=r,
        )
        self.first_frame = Histogram(
            "streamgate_bridge_time_to_first_frame_seconds",
            "Seconds from a stream's start at the bridge to its first frame sent to the client, by transport.",
            ["transport"],
            buckets=FIRST_FRAME_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "streamgate_bridge_stream_duration_seconds",
            "Seconds from a stream's start at the bridge to its end, however it ended, by transport.",
            ["transport"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text `/metrics` answers: this bridge's figures, or every bridge's summed (`SHARED_ENV`)."""
        if os.environ.get(SHARED_ENV):
            shared = CollectorRegistry()
            multiprocess.MultiProcessCollector(shared)  # type: ignore[no-untyped-call]  # untyped in prometheus_client
            return generate_latest(shared)
        return generate_latest(self.registry)

    def ended(self, transport: str, outcome: str, request_id: str | None = None) -> None:
        """Count a stream that ended or was refused, and note it for its access line and span."""
        self.outcomes.labels(transport, outcome).inc()
        note = NOTE.get()
        if note is not None:
            note.outcome = outcome
            note.request_id = request_id or note.request_id
