"""The embedded ledger: SQLite, with the standard library's driver, in worker threads.

One thread writes (its own connection, WAL mode, so reads never wait for it), another reads.
Times are stored as fixed-width ISO 8601 text in UTC ("2026-11-29T18:38:20.292000Z"), which sorts
as time does and whose first ten characters are the UTC day.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ._rows import COLUMNS, TABLE, GroupBy, LedgerError, UsageGroup, UsageRow, sort_groups

T = TypeVar("T")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    row_id            TEXT PRIMARY KEY,
    request_id        TEXT NOT NULL,
    started_at        TEXT NOT NULL,
    ended_at          TEXT NOT NULL,
    key_holder        TEXT,
    model             TEXT NOT NULL,
    transport         TEXT NOT NULL,
    outcome           TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd          REAL,
    ttft_ms           REAL,
    duration_ms       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS {TABLE}_started_at ON {TABLE} (started_at);
CREATE INDEX IF NOT EXISTS {TABLE}_key_holder_started_at ON {TABLE} (key_holder, started_at);
CREATE INDEX IF NOT EXISTS {TABLE}_request_id ON {TABLE} (request_id);
"""
INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (row_id) DO NOTHING"
)
GROUPS = {"model": "model", "key": "key_holder", "day": "substr(started_at, 1, 10)"}
#: Seconds a write waits for another process's lock on the file before it fails (and is retried).
BUSY_TIMEOUT = 1.0


def timestamp(moment: datetime) -> str:
    """A UTC datetime as the table keeps it: fixed width, so text order is time order."""
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z"
    )


def _values(row: UsageRow) -> tuple[Any, ...]:
    return (
        row.row_id,
        row.request_id,
        timestamp(row.started_at),
        timestamp(row.ended_at),
        row.key_holder,
        row.model,
        row.transport,
        row.outcome,
        row.prompt_tokens,
        row.completion_tokens,
        row.cost_usd,
        row.ttft_ms,
        row.duration_ms,
    )


def _window(since: datetime | None, until: datetime | None, key: str | None) -> tuple[str, list[Any]]:
    conditions, params = [], []
    if since is not None:
        conditions.append("started_at >= ?")
        params.append(timestamp(since))
    if until is not None:
        conditions.append("started_at < ?")
        params.append(timestamp(until))
    if key is not None:
        conditions.append("key_holder = ?")
        params.append(key)
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), params


class SqliteStore:
    """A ledger's `Store` in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="streamgate-ledger-write")
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="streamgate-ledger-read")
        self._local = threading.local()
        self._ready = False

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (each worker thread has its own)."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            self._local.connection = connection
        return connection

    def _setup(self) -> None:
        connection = self._connection()
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(f"{self.path} cannot be put in WAL mode (it is in {mode} mode)")
        connection.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across a crash of the process
        connection.executescript(SCHEMA)
        self._ready = True

    async def _in(self, thread: ThreadPoolExecutor, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(thread, work)

    async def connect(self) -> None:
        await self._in(self._write_thread, self._setup)

    def rejects(self, error: Exception) -> bool:
        return isinstance(error, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.InterfaceError)

    def _write(self, rows: Sequence[UsageRow]) -> int:
        if not self._ready:
            self._setup()
        connection = self._connection()
        before = connection.total_changes
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(INSERT, [_values(row) for row in rows])
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return connection.total_changes - before

    async def write(self, rows: Sequence[UsageRow]) -> int:
        return await self._in(self._write_thread, lambda: self._write(rows))

    async def _query(self, sql: str, params: list[Any]) -> list[Any]:
        def run() -> list[Any]:
            return self._connection().execute(sql, params).fetchall()

        try:
            return await self._in(self._read_thread, run)
        except sqlite3.Error as error:
            raise LedgerError(f"the ledger {self.location} cannot be read: {error}") from error

    async def usage(
        self, group_by: GroupBy, since: datetime | None, until: datetime | None, key: str | None
    ) -> list[UsageGroup]:
        where, params = _window(since, until, key)
        rows = await self._query(
            f"SELECT {GROUPS[group_by]} AS grp, COUNT(*), COALESCE(SUM(prompt_tokens), 0), "
            f"COALESCE(SUM(completion_tokens), 0), SUM(cost_usd), COUNT(*) - COUNT(cost_usd) "
            f"FROM {TABLE}{where} GROUP BY grp",
            params,
        )
        return sort_groups([UsageGroup(*row) for row in rows])

    async def spent(self, key: str, since: datetime, until: datetime | None) -> float:
        where, params = _window(since, until, key)
        rows = await self._query(f"SELECT COALESCE(SUM(cost_usd), 0.0) FROM {TABLE}{where}", params)
        return float(rows[0][0])

    async def close(self) -> None:
        def close_connection() -> None:
            connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
            if connection is not None:
                connection.close()
                self._local.connection = None

        for thread in (self._write_thread, self._read_thread):
            try:
                await self._in(thread, close_connection)
            finally:
                thread.shutdown(wait=False)
