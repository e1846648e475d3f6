"""The shared ledger: PostgreSQL, through an asyncpg pool.

The pool and its queries run in an event loop of their own, in a thread (`LoopThread`). A batch
is one statement (`INSERT ... SELECT FROM unnest($1::text[], ...) ON CONFLICT (row_id) DO
NOTHING`): one round trip whatever its size. The pool opens connections when they are needed, so
a database that is down at start or goes down later is only a write that fails and is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from ._rows import COLUMNS, TABLE, GroupBy, LedgerError, UsageGroup, UsageRow, sort_groups

T = TypeVar("T")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    row_id            text PRIMARY KEY,
    request_id        text NOT NULL,
    started_at        timestamptz NOT NULL,
    ended_at          timestamptz NOT NULL,
    key_holder        text,
    model             text NOT NULL,
    transport         text NOT NULL,
    outcome           text NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cost_usd          double precision,
    ttft_ms           double precision,
    duration_ms       double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS {TABLE}_started_at ON {TABLE} (started_at);
CREATE INDEX IF NOT EXISTS {TABLE}_key_holder_started_at ON {TABLE} (key_holder, started_at);
CREATE INDEX IF NOT EXISTS {TABLE}_request_id ON {TABLE} (request_id);
"""
TYPES = (
    "text",
    "text",
    "timestamptz",
    "timestamptz",
    "text",
    "text",
    "text",
    "text",
    "bigint",
    "bigint",
    "float8",
    "float8",
    "float8",
)
INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) "
    f"SELECT * FROM unnest({', '.join(f'${n}::{kind}[]' for n, kind in enumerate(TYPES, 1))}) "
    "ON CONFLICT (row_id) DO NOTHING"
)
GROUPS = {
    "model": "model",
    "key": "key_holder",
    "day": "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
#: Connections the pool may hold: one writes, the others answer usage and budget queries.
POOL_SIZE = 4
#: Seconds to open a connection.
CONNECT_TIMEOUT = 5.0
#: Errors that say the URL or its credentials are wrong: no point in retrying at start.
MISCONFIGURED = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidParameterValueError,
)


def redact(url: str) -> str:
    """`url` without its password, for logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))
    except ValueError:
        return "postgresql://(unparsable URL)"


def _window(since: datetime | None, until: datetime | None, key: str | None) -> tuple[str, list[Any]]:
    conditions, params = [], []
    for condition, value in (("started_at >= ", since), ("started_at < ", until), ("key_holder = ", key)):
        if value is not None:
            params.append(value)
            conditions.append(f"{condition}${len(params)}")
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), params


class LoopThread:
    """An event loop in a thread of its own, for a driver's work (encoding a 500-row batch takes
    asyncpg some milliseconds of CPU): the streams' loop only hands coroutines over and awaits them,
    and the interpreter's switch interval bounds how long the thread holds it up."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """`work`'s result, run in the thread's loop; cancelling the caller cancels it there."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    async def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 5.0)
        if not self._thread.is_alive():
            self._loop.close()


class PostgresStore:
    """A ledger's `Store` in a PostgreSQL table (created if missing). Its pool and every query
    live in a `LoopThread`; the public methods are for the caller's loop."""

    def __init__(self, url: str, statement_timeout: float) -> None:
        self.location = redact(url)
        self._url = url
        self._statement_timeout = statement_timeout
        self._pool: Any = None
        self._ready = False
        self._thread = LoopThread("streamgate-ledger-postgresql")

    async def _acquire_pool(self) -> Any:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=0,
                max_size=POOL_SIZE,
                timeout=CONNECT_TIMEOUT,
                command_timeout=self._statement_timeout,
            )
        return self._pool

    async def connect(self) -> None:
        await self._thread.run(self._connect())

    async def _connect(self) -> None:
        pool = await self._acquire_pool()
        async with pool.acquire() as connection:
            # Another process may create it at the same moment: its error says the table is there.
            with contextlib.suppress(
                asyncpg.UniqueViolationError, asyncpg.DuplicateTableError, asyncpg.DuplicateObjectError
            ):
                await connection.execute(SCHEMA)
        self._ready = True

    def misconfigured(self, error: Exception) -> bool:
        return isinstance(error, MISCONFIGURED)

    def rejects(self, error: Exception) -> bool:
        return isinstance(error, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError)

    async def write(self, rows: Sequence[UsageRow]) -> int:
        return await self._thread.run(self._write(rows))

    async def _write(self, rows: Sequence[UsageRow]) -> int:
        if not self._ready:
            await self._connect()
        columns: list[list[Any]] = [[] for _ in COLUMNS]
        for row in rows:
            for column, name in zip(columns, COLUMNS, strict=True):
                column.append(getattr(row, name))
        pool = await self._acquire_pool()
        try:
            async with pool.acquire() as connection:
                status: str = await connection.execute(INSERT, *columns)
        except asyncpg.UndefinedTableError:
            self._ready = False  # dropped behind our back: made again on the retry
            raise
        return int(status.rsplit(" ", 1)[-1])

    async def _query(self, sql: str, params: list[Any]) -> list[Any]:
        async def fetch() -> list[Any]:
            pool = await self._acquire_pool()
            async with pool.acquire() as connection:
                return list(await connection.fetch(sql, *params))

        try:
            return await self._thread.run(fetch())
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise LedgerError(f"the ledger {self.location} cannot be read: {error}") from error

    async def usage(
        self, group_by: GroupBy, since: datetime | None, until: datetime | None, key: str | None
    ) -> list[UsageGroup]:
        where, params = _window(since, until, key)
        rows = await self._query(
            f"SELECT {GROUPS[group_by]} AS grp, count(*), coalesce(sum(prompt_tokens), 0)::bigint, "
            f"coalesce(sum(completion_tokens), 0)::bigint, sum(cost_usd), count(*) - count(cost_usd) "
            f"FROM {TABLE}{where} GROUP BY grp",
            params,
        )
        return sort_groups([UsageGroup(*row) for row in rows])

    async def spent(self, key: str, since: datetime, until: datetime | None) -> float:
        where, params = _window(since, until, key)
        rows = await self._query(f"SELECT coalesce(sum(cost_usd), 0.0) FROM {TABLE}{where}", params)
        return float(rows[0][0])

    async def close(self) -> None:
        async def close_pool() -> None:
            if self._pool is not None:
                pool, self._pool = self._pool, None
                try:
                    await pool.close()
                except BaseException:
                    pool.terminate()
                    raise

        try:
            await self._thread.run(close_pool())
        finally:
            await self._thread.stop()
