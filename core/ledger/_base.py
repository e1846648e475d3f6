"""The `Ledger` interface, its configuration and figures, and the ledger that keeps nothing."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

from ._rows import GROUP_BYS, GroupBy, UsageGroup, UsageRow, utc


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """How a ledger batches, waits and bounds what it holds. The defaults suit a server."""

    #: Rows written in one statement at most.
    batch_size: int = 500
    #: Seconds a row may wait for its batch to fill before it is written anyway.
    flush_interval: float = 0.5
    #: Rows held in memory waiting for the database; past it, rows go to the spill file (through
    #: a buffer of as many rows, which a thread writes): memory holds at most twice this many.
    max_pending: int = 20_000
    #: Bytes the spill file(s) may hold; past it rows are dropped, logged and counted.
    max_spill_bytes: int = 64 * 1024 * 1024
    #: Seconds before retrying a failed batch, doubled each try (with jitter) up to `max_backoff`.
    retry_backoff: float = 0.1
    max_backoff: float = 5.0
    #: Seconds `aclose()` tries to write what is pending before it spills the rest.
    close_timeout: float = 5.0
    #: Seconds one write or query may take (a database that hangs counts as down).
    statement_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_pending", "max_spill_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
        for name in ("flush_interval", "retry_backoff", "max_backoff", "close_timeout", "statement_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, not {value!r}")
        if self.max_backoff < self.retry_backoff:
            raise ValueError("max_backoff must be at least retry_backoff")


@dataclass(frozen=True, slots=True)
class LedgerStats:
    """A ledger's counters (monotonic since it opened) and gauges, for metrics."""

    #: Rows the database now holds that this ledger wrote (a row written twice counts once).
    written_rows: int
    #: Rows appended to the spill file (the in-memory queue was full, or `aclose()` ran out of time).
    spilled_rows: int
    #: Rows read back from the spill file and written.
    replayed_rows: int
    #: Rows lost: the spill file was at its bound, or the database refused the row for good.
    dropped_rows: int
    #: Batch writes that failed and were retried.
    failed_writes: int
    #: Rows waiting in memory (gauge).
    pending_rows: int
    #: Bytes in the spill file(s) (gauge).
    spill_bytes: int
    #: False while the database is failing (gauge).
    healthy: bool


def check_window(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    """`since` and `until` in UTC (naive ones refused)."""
    return (
        utc(since, "since") if since is not None else None,
        utc(until, "until") if until is not None else None,
    )


def check_group_by(group_by: str) -> GroupBy:
    if group_by not in GROUP_BYS:
        raise ValueError(f"group_by must be one of {sorted(GROUP_BYS)}, not {group_by!r}")
    return group_by  # type: ignore[return-value]  # checked just above


class Ledger(ABC):
    """Where each stream's usage goes once it ended, and where usage is read back.

    `record()` is for the event loop's thread: it never waits and never raises. Rows reach the
    database in batches, soon after (`LedgerConfig.flush_interval`); `usage()` and `spent()` read
    what is written (a row recorded a moment ago may not be counted yet). A row counts in the
    window and the day in which its stream *started*: `since <= started_at < until`, UTC.
    """

    #: Where the rows go, for logs (a PostgreSQL URL without its password).
    location: str = ""

    @abstractmethod
    def record(self, row: UsageRow) -> None:
        """Queue one row to be written; returns at once, never raises."""

    @abstractmethod
    async def usage(
        self,
        group_by: GroupBy,
        since: datetime | None = None,
        until: datetime | None = None,
        key: str | None = None,
    ) -> list[UsageGroup]:
        """Streams, tokens and cost by model, key holder or UTC day ("YYYY-MM-DD"), in the window,
        of one key holder or (`key` None) of all. Sorted by group, streams without a key last.
        Raises `LedgerError` when the database cannot be read, ValueError on a bad argument."""

    @abstractmethod
    async def spent(self, key: str, since: datetime, until: datetime | None = None) -> float:
        """The known cost of `key`'s streams in the window, in USD (unpriced streams add nothing).
        Raises `LedgerError` when the database cannot be read."""

    @abstractmethod
    def stats(self) -> LedgerStats:
        """The counters, for metrics."""

    @abstractmethod
    async def aclose(self, timeout: float | None = None) -> None:
        """Write what is pending within `timeout` seconds (default `LedgerConfig.close_timeout`),
        spill what could not be written (replayed at the next start), and let go of the database.
        Safe twice; `record()` after it spills."""

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()


class NullLedger(Ledger):
    """`--ledger off`: records nothing, reads nothing."""

    location = "off"

    def record(self, row: UsageRow) -> None:
        return None

    async def usage(
        self,
        group_by: GroupBy,
        since: datetime | None = None,
        until: datetime | None = None,
        key: str | None = None,
    ) -> list[UsageGroup]:
        check_group_by(group_by)
        check_window(since, until)
        return []

    async def spent(self, key: str, since: datetime, until: datetime | None = None) -> float:
        check_window(since, until)
        return 0.0

    def stats(self) -> LedgerStats:
        return LedgerStats(0, 0, 0, 0, 0, 0, 0, True)

    async def aclose(self, timeout: float | None = None) -> None:
        return None
