"""The shared state's configuration: where Redis is and what to do without it."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

FailRule = Literal["open", "closed"]
#: URL schemes redis-py opens: plain TCP, TLS, a Unix socket.
SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> None:
    """Raise `ValueError` for a URL that is not a Redis URL; the message never repeats it (it may hold a password)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("the Redis URL does not parse (redis://[:PASSWORD@]HOST[:PORT][/DB])") from None
    if parts.scheme not in SCHEMES:
        raise ValueError("the Redis URL must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("the Redis URL names no host (redis://[:PASSWORD@]HOST[:PORT][/DB])")
    try:
        parts.port  # noqa: B018  # raises on a port that is not a number
    except ValueError:
        raise ValueError("the Redis URL's port is not a number") from None


def redis_location(url: str) -> str:
    """Where the URL points, for logs: scheme, host, port and database; never the user or the password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def digest(name: str | None) -> str:
    """A key holder's name as it appears in Redis key names: short, printable, free of separators."""
    return hashlib.sha256((name or "").encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SharedConfig:
    """State shared by the cores through Redis (`--redis-url`): per-key limits, budgets, replays."""

    #: redis://[:PASSWORD@]HOST[:PORT][/DB] (or rediss://, unix://). May hold a password: never logged.
    url: str = field(repr=False)
    #: Admissions that need Redis while it cannot be reached: "open" admits them under this core's own
    #: limits, "closed" refuses them with UNAVAILABLE.
    fail: FailRule = "open"
    #: Prefix of every key and channel (several deployments may share one Redis).
    prefix: str = "streamgate"
    #: Seconds a stream's lease (and a running replay) lives in Redis unless its core refreshes it
    #: (a third of this apart): how long a crashed core's streams still count against their key.
    lease_seconds: float = 15.0
    #: Seconds between two tries to reach Redis while it is away.
    probe_seconds: float = 1.0

    def __post_init__(self) -> None:
        check_redis_url(self.url)
        if self.fail not in ("open", "closed"):
            raise ValueError(f"redis_fail must be open or closed, got {str(self.fail)[:20]!r}")
        if not (self.prefix and self.prefix.isascii() and self.prefix.isprintable() and " " not in self.prefix):
            raise ValueError("the Redis key prefix must be printable ASCII without spaces")
        for name in ("lease_seconds", "probe_seconds"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")

    @property
    def location(self) -> str:
        return redis_location(self.url)
