"""Limits of the whole server when it runs as several core processes (`streamgate serve --workers N`).

Each core worker counts its own streams in memory, as one core does; these counts are also kept in a
small table in a file every worker of one server maps (under /dev/shm when there is one): one row per
worker, one column per counter. The columns are named when `streamgate serve` makes the file:

    open             every stream (the limit: --max-concurrent-streams)
    model:NAME       streams admitted for a model-list entry that has a limit of its own
    key:HOLDER       streams of an API key's holder (when --max-streams-per-key is set)

An admission takes the file's lock (`flock`), sums the columns it needs over the rows, compares each
with its limit, adds one to its own row and lets go: a few microseconds (`tests/core/test_slots.py`
measures it), against about 3 ms of CPU that a stream costs. A stream's end takes one off its own row.
A worker writes only its own row, so a worker that dies leaves nothing behind for long: its row is
cleared by `streamgate serve` when it notices the exit (and by the worker that takes its place).

Budgets: each budgeted holder's spend of the period is one cell of the same file (not a row each),
read at admission and added to under the lock as streams end, so every worker sees every worker's
spend. The first worker that finds a cell empty (or of an earlier period) fills it from the ledger.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import struct
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from streamgate.contract import ErrorCode, StreamError

from .budgets import Budget, BudgetBook, period_start

if TYPE_CHECKING:
    from .ledger import Ledger

MAGIC = b"SGSLOTS1"
#: magic, rows, columns, budgets, bytes of the names (JSON)
_HEADER = struct.Struct("<8sqqqq")
TOTAL = "open"


def _padded(size: int) -> int:
    return (size + 7) // 8 * 8


def slot_names(model_limits: Iterable[tuple[str, int]], holders: Iterable[str], per_key: int) -> list[str]:
    """The table's columns for a server's configuration: every model with a limit, every key holder
    when a per-key limit is set."""
    names = [TOTAL]
    names += [f"model:{name}" for name, limit in model_limits if limit > 0]
    if per_key > 0:
        names += [f"key:{holder}" for holder in dict.fromkeys(holders)]
    return names


def create_table(path: str, rows: int, columns: list[str], budgets: list[str]) -> None:
    """Make the file of a table of `rows` workers, all counts zero (mode 0600)."""
    names = json.dumps({"columns": columns, "budgets": budgets}).encode()
    size = _HEADER.size + _padded(len(names)) + 8 * (rows * len(columns) + 2 * len(budgets))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, _HEADER.pack(MAGIC, rows, len(columns), len(budgets), len(names)) + names, 0)
    finally:
        os.close(fd)


class SlotTable:
    """One worker's view of the table (`row`: its own; None for `streamgate serve`, which only clears rows)."""

    def __init__(self, path: str, row: int | None = None) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR)
        try:
            head = os.pread(self._fd, _HEADER.size, 0)
            magic, rows, columns, budgets, names_size = _HEADER.unpack(head)
            if magic != MAGIC:
                raise ValueError(f"{path} is not a streamgate slot table")
            names = json.loads(os.pread(self._fd, names_size, _HEADER.size))
            self._map = mmap.mmap(self._fd, 0)
        except BaseException:
            os.close(self._fd)
            raise
        self.rows: int = rows
        self.width: int = columns
        start = _HEADER.size + _padded(names_size)
        counts_end = start + 8 * rows * columns
        self._counts = memoryview(self._map)[start:counts_end].cast("q")
        cells = memoryview(self._map)[counts_end : counts_end + 16 * budgets]
        #: Per budgeted holder, cell i: [2i] the period's start (a UTC timestamp, whole seconds), [2i+1] dollars.
        self._periods = cells.cast("q")
        self._spent = cells.cast("d")
        self.columns: dict[str, int] = {name: i for i, name in enumerate(names["columns"])}
        self.budget_cells: dict[str, int] = {name: i for i, name in enumerate(names["budgets"])}
        if row is not None and not 0 <= row < rows:
            raise ValueError(f"worker {row} has no row in a table of {rows}")
        self.row = row
        self._base = -1 if row is None else row * columns
        self._admit: dict[tuple[str, str | None], tuple[int | None, int | None]] = {}
        if row is not None:
            self.clear(row)

    def close(self) -> None:
        for view in (self._counts, self._periods, self._spent):
            view.release()
        self._map.close()
        os.close(self._fd)

    def _lock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def count(self, name: str = TOTAL) -> int:
        """The column's sum over every worker (a read without the lock: for metrics and tests)."""
        column = self.columns[name]
        return sum(self._counts[column :: self.width])

    def clear(self, row: int) -> None:
        """Forget a worker's streams: it exited (or this is the worker taking its place)."""
        self._lock()
        try:
            base = row * self.width
            for column in range(self.width):
                self._counts[base + column] = 0
        finally:
            self._unlock()

    def _columns_of(self, model: str, principal: str | None) -> tuple[int | None, int | None]:
        key = (model, principal)
        found = self._admit.get(key)
        if found is None:
            found = self._admit[key] = (
                self.columns.get(f"model:{model}"),
                None if principal is None else self.columns.get(f"key:{principal}"),
            )
            if len(self._admit) > 4096:  # names come from the config: this bounds `--allow-any-model`'s
                self._admit.clear()
        return found

    def take(self, model: str, principal: str | None, limit: int, model_limit: int, per_key: int) -> None:
        """Count a stream of this worker's under every limit of the server, or raise the refusal
        (`StreamError`, RESOURCE_EXHAUSTED) that one core gives for the same limit."""
        model_column, key_column = self._columns_of(model, principal)
        counts, width, base = self._counts, self.width, self._base
        self._lock()
        try:
            if sum(counts[0::width]) >= limit:
                raise StreamError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"too many concurrent streams (limit {limit}); retry shortly",
                    retryable=True,
                )
            if model_column is not None and model_limit and sum(counts[model_column::width]) >= model_limit:
                raise StreamError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"too many concurrent streams of model {model!r} (limit {model_limit}); retry shortly",
                    retryable=True,
                )
            if key_column is not None and per_key and sum(counts[key_column::width]) >= per_key:
                raise StreamError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"too many concurrent streams for this API key (limit {per_key}); retry shortly",
                    retryable=True,
                )
            counts[base] += 1
            if model_column is not None:
                counts[base + model_column] += 1
            if key_column is not None:
                counts[base + key_column] += 1
        finally:
            self._unlock()

    def give(self, model: str, principal: str | None) -> None:
        """A stream that `take` counted has ended."""
        model_column, key_column = self._columns_of(model, principal)
        counts, base = self._counts, self._base
        self._lock()
        try:
            counts[base] -= 1
            if model_column is not None:
                counts[base + model_column] -= 1
            if key_column is not None:
                counts[base + key_column] -= 1
        finally:
            self._unlock()

    # -- budgets -----------------------------------------------------------------------------------

    def spent(self, holder: str, start: datetime) -> float | None:
        """The holder's spend in the period from `start`; None when the cell holds another period."""
        cell = self.budget_cells[holder]
        if self._periods[2 * cell] != int(start.timestamp()):
            return None
        return float(self._spent[2 * cell + 1])

    def spend(self, holder: str, start: datetime, amount: float, initial: bool = False) -> None:
        """Add `amount` to the holder's spend of the period from `start` (a new period starts from it).

        `initial`: the figure read from the ledger at start-up; it fills only an empty cell (or one of
        an earlier period), so the second worker to start does not count it twice.
        """
        cell = self.budget_cells[holder]
        stamp = int(start.timestamp())
        self._lock()
        try:
            if self._periods[2 * cell] != stamp:
                self._periods[2 * cell] = stamp
                self._spent[2 * cell + 1] = amount
            elif not initial:
                self._spent[2 * cell + 1] += amount
        finally:
            self._unlock()


class SlotBudgetBook(BudgetBook):
    """Budgets whose spend every core worker shares through the table (`SlotTable.spend`)."""

    def __init__(self, budgets: Iterable[Budget], table: SlotTable) -> None:
        super().__init__(budgets)
        self._table = table
        missing = [holder for holder in self._budgets if holder not in table.budget_cells]
        if missing:
            raise ValueError(f"the slot table has no budget cell for {', '.join(missing)}")

    async def load(self, ledger: Ledger, now: datetime | None = None) -> None:
        await super().load(ledger, now)
        for holder, (start, spent) in self._spent.items():
            self._table.spend(holder, start, spent, initial=True)

    def _current(self, budget: Budget, now: datetime) -> float:
        start = period_start(budget.period, now)
        spent = self._table.spent(budget.holder, start)
        return 0.0 if spent is None else spent

    def add(self, holder: str | None, cost: float | None, now: datetime | None = None) -> None:
        budget = self._budgets.get(holder) if holder is not None else None
        if budget is None or not cost:
            return
        self._table.spend(budget.holder, period_start(budget.period, now or datetime.now(UTC)), cost)
