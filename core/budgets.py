"""Spend limits per API key: a key at or over its budget for the day (or month) gets no new stream.

The operator writes them in the config file (`--config`), by the key's holder (its name in the keys file):

    budgets:
      alice: {per_day: 5.00}       # US dollars a UTC day
      ci-bot: {per_month: 200}     # US dollars a UTC calendar month

Admission must not wait on a database, so the book keeps each holder's spend of the current period in
memory: read from the usage ledger at start-up (the ledger is the truth, so a restart forgets nothing),
then added to as each stream ends (its cost, whatever the outcome). A new period starts from zero. At or
over the limit, a new stream is refused at once with RESOURCE_EXHAUSTED, reason `budget_exceeded`, the
limit and the time it resets; a stream already running finishes (what it costs is added when it ends).
A stream of an unpriced model adds nothing (its cost is unknown), so an operator who budgets a key
should offer it priced models. This is one process's book; with `--redis-url`, the cores share each
holder's spend through Redis (`streamgate.core.shared`, `SharedBudgetBook`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from streamgate.contract import ErrorCode, Reason, StreamError

if TYPE_CHECKING:
    from .ledger import Ledger

logger = logging.getLogger("streamgate.core")

Period = Literal["day", "month"]


@dataclass(frozen=True, slots=True)
class Budget:
    """What one key's holder may spend in a period, in US dollars."""

    holder: str
    limit_usd: float
    period: Period

    def __post_init__(self) -> None:
        if not (self.limit_usd >= 0 and math.isfinite(self.limit_usd)):
            raise ValueError(f"budget of {self.holder!r}: the limit must be a number of dollars, 0 or more")
        if self.period not in ("day", "month"):
            raise ValueError(f"budget of {self.holder!r}: per_day or per_month")


def period_start(period: Period, now: datetime) -> datetime:
    """The start (UTC) of the period that holds `now`."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def period_end(period: Period, now: datetime) -> datetime:
    """When the period that holds `now` ends: the next one's start."""
    start = period_start(period, now)
    if period == "day":
        return datetime.fromordinal(start.toordinal() + 1).replace(tzinfo=UTC)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def _dollars(amount: float) -> str:
    return f"${amount:.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.8f}".rstrip("0")


class BudgetBook:
    """The spend of each budgeted holder in its current period; `check` at admission, `add` at each end."""

    def __init__(self, budgets: Iterable[Budget] = ()) -> None:
        self._budgets = {budget.holder: budget for budget in budgets}
        #: holder -> (the period's start, dollars spent in it)
        self._spent: dict[str, tuple[datetime, float]] = {}

    def __bool__(self) -> bool:
        return bool(self._budgets)

    @property
    def holders(self) -> tuple[str, ...]:
        return tuple(self._budgets)

    async def load(self, ledger: Ledger, now: datetime | None = None) -> None:
        """Each holder's spend so far in its period, from the ledger. A ledger that cannot be read is
        logged and counted as nothing spent (admission goes on; the ledger's rows still count later)."""
        from .ledger import LedgerError

        now = now or datetime.now(UTC)
        for holder, budget in self._budgets.items():
            start = period_start(budget.period, now)
            try:
                spent = await ledger.spent(holder, since=start)
            except LedgerError as exc:
                logger.warning("budgets: cannot read %s's spend from the ledger (%s): counting from 0", holder, exc)
                spent = 0.0
            self._spent[holder] = (start, spent)

    def _current(self, budget: Budget, now: datetime) -> float:
        start = period_start(budget.period, now)
        begun, spent = self._spent.get(budget.holder, (start, 0.0))
        if begun != start:  # a new day or month: nothing spent in it yet
            self._spent[budget.holder] = (start, 0.0)
            return 0.0
        return spent

    def check(self, holder: str | None, now: datetime | None = None) -> None:
        """Raise `StreamError(RESOURCE_EXHAUSTED, reason BUDGET_EXCEEDED)` when `holder` is at or over its budget."""
        budget = self._budgets.get(holder) if holder is not None else None
        if budget is None:
            return
        now = now or datetime.now(UTC)
        spent = self._current(budget, now)
        if spent >= budget.limit_usd:
            resets = period_end(budget.period, now).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise StreamError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"this API key's budget of {_dollars(budget.limit_usd)} a {budget.period} is spent"
                f" ({_dollars(spent)}); it resets at {resets}",
                reason=Reason.BUDGET_EXCEEDED,
            )

    def add(self, holder: str | None, cost: float | None, now: datetime | None = None) -> None:
        """Count a finished stream's cost (None: unknown, adds nothing)."""
        budget = self._budgets.get(holder) if holder is not None else None
        if budget is None or not cost:
            return
        now = now or datetime.now(UTC)
        spent = self._current(budget, now)
        self._spent[budget.holder] = (period_start(budget.period, now), spent + cost)
