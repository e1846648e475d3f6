"""A real Redis for the tests of state shared between cores (see tests/_redis.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._redis import RedisServer

#: The test Redis's password: a deployment's URL carries one, and no log line may.
REDIS_PASSWORD = "redis-secret-4f8a1c"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis of the test's own (it may stop and start it), with a password."""
    server = RedisServer(password=REDIS_PASSWORD)
    try:
        server.start()
        yield server
    finally:
        server.close()
