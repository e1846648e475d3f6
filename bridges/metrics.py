"""The bridge's Prometheus metrics (its own registry, exposed at `/metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.open_streams = Gauge(
            "streamgate_bridge_open_streams", "Streams open now, by transport.", ["transport"], registry=r
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
            "Streams ended or refused, by transport and outcome (OK, an error code, or an HTTP status).",
            ["transport", "outcome"],
            registry=r,
        )
