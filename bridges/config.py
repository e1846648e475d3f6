"""Configuration of the bridge: one frozen dataclass, validated on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    #: The core's gRPC address, HOST:PORT; or several cores' (comma-separated): the streams are spread over them.
    core: str = "127.0.0.1:50051"
    host: str = "127.0.0.1"
    #: 0 picks a free port.
    http_port: int = 8000
    #: Share the HTTP port with other bridge processes (SO_REUSEPORT: the kernel spreads the connections).
    reuse_port: bool = False
    #: With several cores: new streams go to each in turn; False: to the first, the next ones only when
    #: it refuses (unreachable, draining).
    spread: bool = True
    #: Where the cores serve the link over a plain socket (their `--link-listen`; one per core, comma-separated,
    #: in the order of `core`): streams go there instead of over gRPC. None: the gRPC `Relay` call.
    core_link: str | None = None
    #: Seconds of silence after which an SSE stream gets a `: ping` comment line.
    keepalive_interval: float = 15.0
    #: Largest request body (and WebSocket message) accepted, in bytes.
    max_body_bytes: int = 1024 * 1024
    #: Origins allowed to call the bridge from a browser on another origin; empty allows none.
    cors_origins: tuple[str, ...] = ()
    #: Queries a WebSocket may send ahead of the one streaming.
    max_queued_queries: int = 8
    #: Seconds open streams may go on after SIGTERM before the bridge ends them.
    drain_grace: float = 10.0
    #: Chunks that waited together for a slow client go out as one frame (one write instead of many).
    coalesce: bool = True
    #: Seconds a connection may take to send a whole request head (request line and headers), counted from
    #: when it opens or its previous response ended; an idle kept-alive connection is closed after it too.
    header_timeout: float = 10.0
    #: Seconds a POST body may take to arrive once its head has; a slower one is answered 408 and closed.
    body_timeout: float = 30.0
    #: Seconds one write to an SSE or WebSocket client may wait on it (it stopped reading) before the
    #: connection is dropped; what a finished response left unsent must also go within it.
    write_stall_timeout: float = 30.0
    #: The core's link token (STREAMGATE_LINK_TOKEN), sent with the `Relay` call; a secret, never shown.
    link_token: str | None = field(default=None, repr=False)
    #: Where each stream's spans go (`streamgate._telemetry`); None: traces off.
    tracer_provider: TracerProvider | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for core in self.cores:
            host, sep, port = core.rpartition(":")
            if not (sep and host and port.isdigit()):
                raise ValueError(f"core must be HOST:PORT (or several, comma-separated), got {self.core!r}")
        links = self.core_links
        if links is not None and len(links) != len(self.cores):
            raise ValueError(f"core_link names {len(links)} link(s) for {len(self.cores)} core(s): one per core")
        if not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be 0-65535, got {self.http_port}")
        if not (self.keepalive_interval > 0 and math.isfinite(self.keepalive_interval)):
            raise ValueError(f"keepalive_interval must be a positive number of seconds, got {self.keepalive_interval}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if self.max_queued_queries < 0:
            raise ValueError("max_queued_queries must not be negative")
        if not (self.drain_grace >= 0 and math.isfinite(self.drain_grace)):
            raise ValueError(f"drain_grace must be a non-negative number of seconds, got {self.drain_grace}")
        for name in ("header_timeout", "body_timeout", "write_stall_timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")

    @property
    def core_links(self) -> tuple[str, ...] | None:
        """The cores' link sockets (`core_link`, split at its commas), in the order of `cores`."""
        if self.core_link is None:
            return None
        return tuple(part.strip() for part in self.core_link.split(",") if part.strip())

    @property
    def cores(self) -> tuple[str, ...]:
        """The cores' addresses (`core`, split at its commas)."""
        return tuple(part.strip() for part in self.core.split(",") if part.strip()) or (self.core,)
