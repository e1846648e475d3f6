"""The usage ledger: one row per stream, kept in a database, read back by model, key or day.

    ledger = await open_ledger("sqlite", data_dir)  # or "off", or "postgresql://..."
    ledger.record(UsageRow(...))                    # at each stream's end: never waits, never raises
    await ledger.usage("model", since=..., until=...)
    await ledger.spent("alice", since=start_of_day) # for budgets
    await ledger.aclose()                           # on SIGTERM: writes what is pending, spills the rest

Writes are off the stream's path: `record()` queues the row, a writer task writes batches (see
`_buffered`), retries them while the database is down, spills rows to a local file when the queue
is full and replays them when the database is back. Every insert is idempotent on the row's
`row_id`, so a batch written twice never doubles a row.

The table, `streamgate_usage`, the same in SQLite (`<data_dir>/ledger.sqlite3`) and PostgreSQL
(created if missing; indexed on `started_at`, `(key_holder, started_at)` and `request_id`):

    row_id            text PRIMARY KEY     made by the server for each row (the idempotency key)
    request_id        text NOT NULL        the stream's request id (a client may choose it: not unique)
    started_at        timestamptz NOT NULL UTC (SQLite: text "YYYY-MM-DDTHH:MM:SS.ffffffZ")
    ended_at          timestamptz NOT NULL
    key_holder        text                 the API key's holder (never the key); NULL without auth
    model             text NOT NULL
    transport         text NOT NULL        grpc | sse | ws | openai | library
    outcome           text NOT NULL        completed | cancelled | deadline_exceeded | unavailable | ...
    prompt_tokens     bigint NOT NULL
    completion_tokens bigint NOT NULL
    cost_usd          double precision     NULL: unknown (the model has no price), never 0 for unknown
    ttft_ms           double precision     NULL: no token came
    duration_ms       double precision NOT NULL

Reading: a stream counts in the window and the UTC day in which it started. A group's `cost_usd`
is the sum of the known costs, `unpriced_streams` the number of streams left out of it, and
`cost_usd` is None when no stream of the group has a known cost; `spent()` is the sum of the known
costs (0.0 when none is known).
"""

from ._base import Ledger, LedgerConfig, LedgerStats, NullLedger
from ._open import LedgerKind, ledger_kind, open_ledger
from ._rows import GroupBy, LedgerError, Transport, UsageGroup, UsageRow

__all__ = [
    "GroupBy",
    "Ledger",
    "LedgerConfig",
    "LedgerError",
    "LedgerKind",
    "LedgerStats",
    "NullLedger",
    "Transport",
    "UsageGroup",
    "UsageRow",
    "ledger_kind",
    "open_ledger",
]
