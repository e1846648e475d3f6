"""A real PostgreSQL for the core's tests (see tests/_postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One server for the session; a test that stops it starts its own `PostgresServer`."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database of the session's server."""
    return postgres_server.create_database()
