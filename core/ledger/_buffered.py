"""The writer every database-backed ledger shares: a bounded queue, batches, retries, the spill.

    record(row) ──► queue (≤ max_pending) ──► writer task ──► Store.write(batch) ──► database
                      │ full                        ▲   failed: the same batch again, backoff
                      ▼                             │
                    overflow (≤ max_pending)        │   replayed in turns with the queue
                      │ spill thread                │
                      ▼                             │
                    spill file (≤ max_spill_bytes) ─┘
                      │ full: dropped, counted, logged

`record()` only appends to a deque: no I/O, no lock, nothing that could wait. The writer takes a
batch when `batch_size` rows wait or the oldest has waited `flush_interval`. While the database
fails, the batch in hand is retried until it is written, so an outage never drops a row; only a
full spill file (or a full overflow, when the disk cannot keep up) does. A write that timed out
may still have committed: writing it again is harmless, every store inserts with ON CONFLICT
(row_id) DO NOTHING. The spill file is written and read by a thread of its own, never the loop's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeVar

from ._base import Ledger, LedgerConfig, LedgerStats, check_group_by, check_window
from ._rows import GroupBy, UsageGroup, UsageRow
from ._spill import SpillFile

logger = logging.getLogger("streamgate.ledger")

T = TypeVar("T")

#: Seconds between two log lines about the same trouble (spilling, dropping).
LOG_EVERY = 10.0


class Store(Protocol):
    """One database: a place to write batches of rows and to read usage back."""

    #: For logs; never a password.
    location: str

    async def connect(self) -> None:
        """Reach the database and create the table if missing; raises what the driver raises."""

    async def write(self, rows: Sequence[UsageRow]) -> int:
        """Insert the rows in one transaction, skipping those already there; the number inserted."""

    def rejects(self, error: Exception) -> bool:
        """Whether `error` is about the rows themselves (retrying cannot help), not the database."""

    async def usage(
        self, group_by: GroupBy, since: datetime | None, until: datetime | None, key: str | None
    ) -> list[UsageGroup]: ...

    async def spent(self, key: str, since: datetime, until: datetime | None) -> float: ...

    async def close(self) -> None: ...


class BufferedLedger(Ledger):
    """A `Ledger` over a `Store`: see the module's docstring."""

    def __init__(self, store: Store, data_dir: Path, config: LedgerConfig) -> None:
        self.location = store.location
        self._store = store
        self._config = config
        self._spill = SpillFile(data_dir, config.max_spill_bytes)
        self._spill_thread = ThreadPoolExecutor(1, thread_name_prefix="streamgate-ledger-spill")
        self._queue: deque[UsageRow] = deque()
        self._overflow: deque[UsageRow] = deque()
        self._max_overflow = config.max_pending
        self._first_at = 0.0  # when the oldest queued row came
        self._wakeup = asyncio.Event()
        self._overflowed = asyncio.Event()
        self._inflight: list[UsageRow] = []  # a batch taken from the queue, not yet written
        self._spilling: list[UsageRow] = []  # rows the spill thread is writing
        self._spill_turn = False  # the next batch comes from the spill file, if it holds rows
        self._closing = False  # aclose() began: rows go to the spill file
        self._closed = False  # the tasks are done: record() writes the spill file itself
        self._tasks: list[asyncio.Task[None]] = []
        self._close_task: asyncio.Task[None] | None = None
        self._spill_logged = self._drop_logged = -LOG_EVERY
        self.written_rows = 0
        self.spilled_rows = 0
        self.replayed_rows = 0
        self.dropped_rows = 0
        self.failed_writes = 0
        self.healthy = True

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name="streamgate-ledger-writer"),
            loop.create_task(self._run_spill(), name="streamgate-ledger-spill"),
        ]

    # -- the stream's side: never waits, never raises

    def record(self, row: UsageRow) -> None:
        try:
            if not isinstance(row, UsageRow):
                raise TypeError(f"a UsageRow was expected, not {type(row).__name__}")
            queue = self._queue
            if len(queue) < self._config.max_pending and not self._closing:
                queue.append(row)
                size = len(queue)
                if size == 1:
                    self._first_at = time.monotonic()
                    self._wakeup.set()
                elif size == self._config.batch_size:
                    self._wakeup.set()
            elif self._closed:  # shutting down: nothing else will write it
                self._count_spilled([row], self._spill.append([row]))
            elif len(self._overflow) < self._max_overflow:
                self._overflow.append(row)
                self._overflowed.set()
            else:
                self._count_spilled([row], 0)
        except Exception:  # a bug here must not reach the stream; the row is counted as lost
            self.dropped_rows += 1
            logger.exception("ledger: a row could not be queued")

    def _count_spilled(self, rows: Sequence[UsageRow], kept: int) -> None:
        now = time.monotonic()
        self.spilled_rows += kept
        if kept and not self._closing and now - self._spill_logged >= LOG_EVERY:
            self._spill_logged = now
            logger.warning(
                "ledger: %d rows wait for %s, the queue is full: spilling rows to %s (%d spilled so far)",
                len(self._queue),
                self.location,
                self._spill.path,
                self.spilled_rows,
            )
        if kept < len(rows):
            self.dropped_rows += len(rows) - kept
            if now - self._drop_logged >= LOG_EVERY:
                self._drop_logged = now
                logger.error(
                    "ledger: the spill file %s is at its bound (%d bytes) or cannot keep up, and %s "
                    "still fails: rows are dropped, %d so far",
                    self._spill.path,
                    self._spill.max_bytes,
                    self.location,
                    self.dropped_rows,
                )

    async def _in_spill_thread(self, work: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._spill_thread, work, *args)

    async def _run_spill(self) -> None:
        """Move the overflow to the spill file, in the spill thread."""
        while not (self._closing and not self._overflow):
            await self._overflowed.wait()
            self._overflowed.clear()
            self._spilling = rows = list(self._overflow)
            self._overflow.clear()
            if rows:
                kept = await self._in_spill_thread(self._spill.append, rows)
                self._count_spilled(rows, kept)
            self._spilling = []

    # -- the writer task

    async def _run(self) -> None:
        while True:
            try:
                batch, from_spill = await self._next_batch()
                if not batch:
                    return
                if await self._write(batch, from_spill) and from_spill:
                    await self._in_spill_thread(self._spill.advance)
                    self.replayed_rows += len(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: the rows in hand stay in `_inflight` or in the spill file
                logger.exception("ledger: the writer failed; it goes on")
                await asyncio.sleep(self._config.max_backoff)

    async def _next_batch(self) -> tuple[list[UsageRow], bool]:
        """The next batch and whether it comes from the spill file; an empty one once closing."""
        config = self._config
        while True:
            if self._inflight:  # left by a failure of the writer itself
                return self._inflight, False
            queued = len(self._queue)
            due = queued >= config.batch_size or (
                queued > 0 and (self._closing or time.monotonic() - self._first_at >= config.flush_interval)
            )
            spill = self._spill.has_rows and not self._closing
            if due and not (spill and self._spill_turn):
                self._spill_turn = True
                self._inflight = [self._queue.popleft() for _ in range(min(queued, config.batch_size))]
                return self._inflight, False
            if spill:
                self._spill_turn = False
                rows = await self._in_spill_thread(self._spill.read_batch, config.batch_size)
                if rows:
                    return rows, True
                continue
            if self._closing and not queued:
                return [], False
            self._wakeup.clear()
            wait = self._first_at + config.flush_interval - time.monotonic() if queued else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()

    async def _write(self, batch: list[UsageRow], from_spill: bool) -> bool:
        """Write `batch`, retrying while the database fails; False if given up on (closing)."""
        config = self._config
        backoff = config.retry_backoff
        while True:
            try:
                async with asyncio.timeout(config.statement_timeout):
                    inserted = await self._store.write(batch)
            except Exception as error:
                if self._store.rejects(error):
                    await self._write_each(batch)
                    break
                self.failed_writes += 1
                if self.healthy:
                    self.healthy = False
                    logger.warning(
                        "ledger: cannot write to %s (%s); %d rows wait, retrying",
                        self.location,
                        _describe(error),
                        len(batch) + len(self._queue),
                    )
                if from_spill and self._closing:
                    return False  # the rows are still in the spill file
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, config.max_backoff)
                continue
            self.written_rows += inserted
            if not self.healthy:
                self.healthy = True
                logger.warning("ledger: %s is back; writing the rows that waited", self.location)
            break
        if not from_spill:
            self._inflight = []
        return True

    async def _write_each(self, batch: list[UsageRow]) -> None:
        """A batch the database refused: each row alone, so that one bad row loses only itself."""
        for row in batch:
            try:
                async with asyncio.timeout(self._config.statement_timeout):
                    inserted = await self._store.write([row])
                self.written_rows += inserted
            except Exception as error:
                if not self._store.rejects(error):
                    raise  # the database went away meanwhile: the writer retries the batch
                self.dropped_rows += 1
                logger.error("ledger: %s refused the row of stream %s: %s", self.location, row.request_id, error)

    # -- reading

    async def usage(
        self,
        group_by: GroupBy,
        since: datetime | None = None,
        until: datetime | None = None,
        key: str | None = None,
    ) -> list[UsageGroup]:
        since, until = check_window(since, until)
        return await self._store.usage(check_group_by(group_by), since, until, key)

    async def spent(self, key: str, since: datetime, until: datetime | None = None) -> float:
        start, until = check_window(since, until)
        assert start is not None
        return await self._store.spent(key, start, until)

    def stats(self) -> LedgerStats:
        return LedgerStats(
            written_rows=self.written_rows,
            spilled_rows=self.spilled_rows,
            replayed_rows=self.replayed_rows,
            dropped_rows=self.dropped_rows,
            failed_writes=self.failed_writes,
            pending_rows=len(self._queue) + len(self._inflight) + len(self._overflow) + len(self._spilling),
            spill_bytes=self._spill.bytes,
            healthy=self.healthy,
        )

    # -- closing

    async def aclose(self, timeout: float | None = None) -> None:
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(
                self._aclose(self._config.close_timeout if timeout is None else timeout)
            )
        await asyncio.shield(self._close_task)

    async def _aclose(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        self._closing = True
        self._wakeup.set()
        self._overflowed.set()
        for task in self._tasks:
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._closed = True  # from here, record() appends to the spill file itself
        left = [*self._inflight, *self._queue, *self._spilling, *self._overflow]
        self._inflight, self._spilling = [], []
        self._queue.clear()
        self._overflow.clear()
        if left:
            self._count_spilled(left, await self._in_spill_thread(self._spill.append, left))
            logger.warning(
                "ledger: %d rows were not written to %s within %.1f s: kept in %s for the next start",
                len(left),
                self.location,
                timeout,
                self._spill.path,
            )
        await self._in_spill_thread(self._spill.release)
        self._spill_thread.shutdown(wait=False)
        try:
            async with asyncio.timeout(max(0.1, deadline - asyncio.get_running_loop().time())):
                await self._store.close()
        except Exception as error:
            logger.warning("ledger: closing %s: %s", self.location, _describe(error))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
