"""`open_ledger(spec, data_dir)`: the ledger a `--ledger` value names, started."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Literal

from ._base import Ledger, LedgerConfig, NullLedger
from ._buffered import BufferedLedger, Store, _describe
from ._rows import LedgerError

logger = logging.getLogger("streamgate.ledger")

LedgerKind = Literal["off", "sqlite", "postgresql"]
#: The SQLite file, in the data directory.
SQLITE_NAME = "ledger.sqlite3"


def ledger_kind(spec: str) -> LedgerKind:
    """What a `--ledger` value names; ValueError when it names nothing (for a config's check)."""
    value = spec.strip()
    if value in ("off", "sqlite"):
        return value  # type: ignore[return-value]  # one of the two, just checked
    if value.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    raise ValueError(f"--ledger must be 'sqlite', 'off' or a postgresql:// URL, not {spec[:40]!r}")


async def open_ledger(spec: str, data_dir: Path | str, config: LedgerConfig | None = None) -> Ledger:
    """The ledger `spec` names ("sqlite", "off", "postgresql://user:password@host:port/db"),
    with its writer started; the spill file (and the SQLite file) go in `data_dir`, made if missing.

    A PostgreSQL that cannot be reached at start is not an error (rows wait and spill until it
    comes); a URL the server refuses (a wrong password, no such database) is: `LedgerError`.
    """
    kind = ledger_kind(spec)
    if kind == "off":
        return NullLedger()
    config = config or LedgerConfig()
    directory = Path(data_dir)
    await asyncio.to_thread(directory.mkdir, mode=0o700, parents=True, exist_ok=True)
    store: Store
    if kind == "sqlite":
        from ._sqlite import SqliteStore

        sqlite = SqliteStore(directory / SQLITE_NAME)
        try:
            await sqlite.connect()
        except Exception as error:
            await sqlite.close()
            raise LedgerError(f"the ledger {sqlite.location} cannot be opened: {_describe(error)}") from error
        store = sqlite
    else:
        from ._postgres import PostgresStore

        postgres = PostgresStore(spec.strip(), config.statement_timeout)
        try:
            await postgres.connect()
        except Exception as error:
            if postgres.misconfigured(error) or isinstance(error, ValueError):
                await postgres.close()
                raise LedgerError(f"the ledger {postgres.location} refuses us: {_describe(error)}") from error
            logger.warning(
                "ledger: %s cannot be reached yet (%s); rows wait for it", postgres.location, _describe(error)
            )
        store = postgres
    ledger = BufferedLedger(store, directory, config)
    ledger.start()
    logger.info("ledger: usage goes to %s", store.location)
    return ledger
