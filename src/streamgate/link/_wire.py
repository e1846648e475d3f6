"""What both ends of the link agree on besides the messages: the batch limit, the merge rule, the token's
metadata key and the pings."""

from __future__ import annotations

#: A batch (of commands one way, of frames the other) stops growing past this many bytes: well
#: under the 16 MiB a gRPC message may have.
BATCH_BYTES = 4 * 1024 * 1024


def merged_text(parts: list[str]) -> str:
    """The one merge rule of the link, on both ends (the core's outbox, the bridge's queue): chunks of
    one stream that waited together become one chunk, their text in order, carrying the index of the
    last one (the sequence it reaches: SSE ids and resumes count from it). Never across a final event."""
    return "".join(parts)


#: Metadata key of the link token a `Relay` call must carry.
TOKEN_HEADER = "x-streamgate-link-token"
#: The variable that holds the link token on both sides (the `--link-token` flag's).
TOKEN_ENV = "STREAMGATE_LINK_TOKEN"
#: The bridge pings the core this often (milliseconds) on the link, to notice a dead core quickly.
KEEPALIVE_MS = 10_000
#: Seconds the bridge waits for a ping's answer before it counts the link as broken.
KEEPALIVE_TIMEOUT_MS = 2_000


def client_keepalive() -> list[tuple[str, int]]:
    """The bridge's channel options for pings; `server_ping_policy()` must accept them.

    gRPC's server, by default, takes a ping that comes less than 5 minutes after the last data as
    a strike and ends the connection (GOAWAY `too_many_pings`) after two: a link idle for a couple of
    minutes died that way, and with it every silent stream on it. The two sides are set together here.
    """
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging however long the link is quiet
    ]


def server_ping_policy() -> list[tuple[str, int]]:
    """The core's server options that accept the bridge's pings (`client_keepalive()`), with a margin.

    In grpcio 1.85 the server judges received pings by `min_ping_interval_without_data_ms`;
    `min_recv_ping_interval_without_data_ms` alone changed nothing (tests/link/test_idle.py).
    """
    return [
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
