"""Budgets shared by the cores: each key holder's spend of the current period is a number in Redis.

The key is `{prefix}:spend:{holder digest}:{day|month}:{period start}`, with an expiry a day past the
period's end. A finished stream's cost is added to it (INCRBYFLOAT, queued and sent by the courier,
a few milliseconds later); an admission of a budgeted key reads it in the same round trip as its lease
(`SharedState.admit`), so a core checks the spend of every core as of that moment: what it does not
see yet is the cost of streams that ended in the last few milliseconds elsewhere (and, as on one core,
of streams still running: they are counted when they end). A key absent from Redis (a new period, a
Redis that restarted empty) starts from this core's figure: read from the ledger at start-up, then
kept up to date with what Redis answers.

While Redis is away, a core counts from its own figure (what it last read, plus its own streams'
costs), and adds its costs to Redis once it is back.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ..budgets import Budget, BudgetBook, period_end, period_start
from ._config import digest
from ._state import Spend

if TYPE_CHECKING:
    from ._state import SharedState

#: How long a period's spend stays in Redis after the period's end.
KEEP_AFTER_PERIOD = timedelta(days=1)


class SharedBudgetBook(BudgetBook):
    """The budget book of one core, its figures read from and added to Redis."""

    def __init__(self, budgets: Iterable[Budget], state: SharedState) -> None:
        super().__init__(budgets)
        self._state = state

    def shared_spend(self, holder: str, now: datetime | None = None) -> tuple[str, Spend] | None:
        """The Redis key of `holder`'s spend in the current period and what to start it from when
        absent (this core's figure, less what waits to be added); None without a budget."""
        budget = self._budgets.get(holder)
        if budget is None:
            return None
        now = now or datetime.now(UTC)
        start = period_start(budget.period, now)
        key = f"{self._state.config.prefix}:spend:{digest(holder)}:{budget.period}:{start:%Y-%m-%d}"
        seed = self._current(budget, now) - self._state.pending_spend(key)
        expires_at = int((period_end(budget.period, now) + KEEP_AFTER_PERIOD).timestamp())
        return key, Spend(holder, start, max(seed, 0.0), expires_at)

    def shared_figure(self, holder: str, start: datetime, spent: float) -> None:
        """What Redis says `holder` spent in the period that began at `start` (plus this core's
        costs not yet added there)."""
        if holder not in self._budgets:
            return
        begun = self._spent.get(holder, (start, 0.0))[0]
        if begun <= start:  # not an answer about a period that has ended since
            self._spent[holder] = (start, spent)

    def add(self, holder: str | None, cost: float | None, now: datetime | None = None) -> None:
        if holder is None or not cost or holder not in self._budgets:
            return
        now = now or datetime.now(UTC)
        shared = self.shared_spend(holder, now)
        super().add(holder, cost, now)
        if shared is not None:
            self._state.spend(shared[0], shared[1], cost)
