"""The usage ledger (streamgate.core.ledger) on real databases: SQLite files and a PostgreSQL server.

What a user of the ledger would notice: rows that survive a restart, usage that adds up by model,
key and day within a window, unknown costs that stay unknown, and no row lost or doubled while
the database goes away and comes back, without a stream ever waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import statistics
import time
import zoneinfo
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg  # type: ignore[import-untyped]
import pytest

from streamgate.core.ledger import (
    GroupBy,
    Ledger,
    LedgerConfig,
    LedgerError,
    NullLedger,
    UsageGroup,
    UsageRow,
    ledger_kind,
    open_ledger,
)
from tests._postgres import PostgresServer

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
#: Quick batches and retries, so that the tests take seconds.
FAST = LedgerConfig(flush_interval=0.05, retry_backoff=0.02, max_backoff=0.3, close_timeout=5.0)

_ids = iter(range(10**9))


def make_row(**fields: Any) -> UsageRow:
    started = fields.pop("started_at", T0)
    values: dict[str, Any] = {
        "request_id": f"req-{next(_ids)}",
        "started_at": started,
        "ended_at": started + timedelta(seconds=2),
        "key_holder": "alice",
        "model": "openai/gpt-4o",
        "transport": "sse",
        "outcome": "completed",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "cost_usd": 0.001,
        "ttft_ms": 120.5,
        "duration_ms": 2000.0,
    }
    values.update(fields)
    return UsageRow(**values)


async def settled(ledger: Ledger, within: float = 10.0) -> None:
    """Wait until the ledger holds nothing in memory or in its spill file."""
    deadline = time.monotonic() + within
    while (stats := ledger.stats()).pending_rows or stats.spill_bytes:
        assert time.monotonic() < deadline, f"the ledger did not settle within {within} s: {stats}"
        await asyncio.sleep(0.02)


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"not true within {within} s"
        await asyncio.sleep(0.01)


def sqlite_request_ids(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / "ledger.sqlite3") as db:
        return [r[0] for r in db.execute("SELECT request_id FROM streamgate_usage")]


async def postgres_request_ids(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await connection.fetch("SELECT request_id FROM streamgate_usage")]
    finally:
        await connection.close()


class Backend:
    """One database, opened as a ledger as often as a test likes (a reopen is a restart)."""

    def __init__(self, kind: str, data_dir: Path, dsn: str | None) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.spec = dsn if dsn is not None else "sqlite"

    async def open(self, config: LedgerConfig = FAST) -> Ledger:
        return await open_ledger(self.spec, self.data_dir, config)

    async def request_ids(self) -> list[str]:
        if self.kind == "sqlite":
            return sqlite_request_ids(self.data_dir)
        return await postgres_request_ids(self.spec)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgresql" else None
    return Backend(request.param, tmp_path, dsn)


@pytest.fixture
async def private_postgres() -> AsyncIterator[PostgresServer]:
    """A server of the test's own, which it may stop and start."""
    server = PostgresServer()
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.close)


# -- rows


def test_a_row_refuses_what_would_corrupt_the_ledger() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_row(started_at=datetime(2026, 11, 27, 9, 0))
    with pytest.raises(ValueError, match="cost_usd"):
        make_row(cost_usd=float("nan"))
    with pytest.raises(ValueError, match="transport"):
        make_row(transport="carrier-pigeon")
    with pytest.raises(ValueError, match="prompt_tokens"):
        make_row(prompt_tokens=-1)
    with pytest.raises(ValueError, match="outcome"):
        make_row(outcome="Completed OK")
    paris = datetime(2026, 11, 27, 10, 0, tzinfo=UTC).astimezone(zoneinfo.ZoneInfo("Europe/Paris"))
    row = make_row(started_at=paris, cost_usd=None, ttft_ms=None)
    assert row.started_at == datetime(2026, 11, 27, 10, 0, tzinfo=UTC) and row.started_at.tzinfo is UTC
    assert UsageRow.from_json(row.to_json()) == row
    assert make_row().row_id != make_row().row_id


def test_the_ledger_spec_names_one_of_three() -> None:
    assert ledger_kind("sqlite") == "sqlite"
    assert ledger_kind("off") == "off"
    assert ledger_kind("postgresql://u:p@db:5432/usage") == "postgresql"
    assert ledger_kind("postgres://db/usage") == "postgresql"
    with pytest.raises(ValueError, match="'sqlite', 'off' or a postgresql:// URL"):
        ledger_kind("mysql://db")


async def test_off_records_nothing_and_touches_no_file(tmp_path: Path) -> None:
    ledger = await open_ledger("off", tmp_path / "data")
    assert isinstance(ledger, NullLedger)
    ledger.record(make_row())
    assert await ledger.usage("model") == []
    assert await ledger.spent("alice", since=T0) == 0.0
    await ledger.aclose()
    assert not (tmp_path / "data").exists()


# -- SQLite: the embedded default


async def test_sqlite_rows_survive_a_restart(tmp_path: Path) -> None:
    ledger = await open_ledger("sqlite", tmp_path, FAST)
    for tokens in (1, 2, 3):
        ledger.record(make_row(prompt_tokens=tokens, completion_tokens=10 * tokens))
    await ledger.aclose()

    assert (tmp_path / "ledger.sqlite3").exists()
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    ledger = await open_ledger("sqlite", tmp_path, FAST)  # the restart
    assert await ledger.usage("model") == [UsageGroup("openai/gpt-4o", 3, 6, 60, pytest.approx(0.003), 0)]
    ledger.record(make_row(model="local/llama", cost_usd=None))
    await ledger.aclose()

    ledger = await open_ledger("sqlite", tmp_path, FAST)
    assert [(g.group, g.streams) for g in await ledger.usage("model")] == [("local/llama", 1), ("openai/gpt-4o", 3)]
    await ledger.aclose()


# -- reading, on both databases


DAY1, DAY2 = T0, T0 + timedelta(days=1)
DATASET = [
    make_row(key_holder="alice", model="openai/gpt-4o", started_at=DAY1, cost_usd=0.01, prompt_tokens=10),
    make_row(key_holder="alice", model="openai/gpt-4o", started_at=DAY1 + timedelta(hours=1), cost_usd=0.02),
    make_row(key_holder="bob", model="local/llama", started_at=DAY1 + timedelta(hours=2), cost_usd=None),
    make_row(key_holder=None, model="streamgate/default", started_at=DAY1, cost_usd=0.0, completion_tokens=5),
    make_row(key_holder="bob", model="openai/gpt-4o", started_at=DAY2, cost_usd=0.03),
    make_row(key_holder="alice", model="local/llama", started_at=DAY2 + timedelta(hours=3), cost_usd=None),
    # the last microsecond of a UTC day, and the first of the next one
    make_row(key_holder="carol", model="openai/gpt-4o", started_at=datetime(2026, 11, 28, 23, 59, 59, 999999, UTC)),
    make_row(key_holder="carol", model="openai/gpt-4o", started_at=datetime(2026, 11, 29, tzinfo=UTC)),
]


async def test_usage_by_model_key_and_day_within_a_window(backend: Backend) -> None:
    ledger = await backend.open()
    for row in DATASET:
        ledger.record(row)
    await settled(ledger)
    try:
        by_model = await ledger.usage("model")
        assert by_model == [
            UsageGroup("local/llama", 2, 20, 40, None, 2),
            UsageGroup("openai/gpt-4o", 5, 50, 100, pytest.approx(0.062), 0),
            UsageGroup("streamgate/default", 1, 10, 5, 0.0, 0),
        ]
        by_key = await ledger.usage("key")
        assert [(g.group, g.streams, g.cost_usd, g.unpriced_streams) for g in by_key] == [
            ("alice", 3, pytest.approx(0.03), 1),
            ("bob", 2, pytest.approx(0.03), 1),
            ("carol", 2, pytest.approx(0.002), 0),
            (None, 1, 0.0, 0),  # streams without a key, last
        ]
        by_day = await ledger.usage("day")
        assert [(g.group, g.streams) for g in by_day] == [("2026-11-27", 4), ("2026-11-28", 3), ("2026-11-29", 1)]

        # since is inclusive, until exclusive, to the microsecond
        day2 = await ledger.usage("day", since=DAY2, until=datetime(2026, 11, 29, tzinfo=UTC))
        assert [(g.group, g.streams) for g in day2] == [("2026-11-28", 3)]
        last_microsecond = datetime(2026, 11, 28, 23, 59, 59, 999999, UTC)
        assert [g.streams for g in await ledger.usage("model", since=last_microsecond)] == [2]
        assert await ledger.usage("model", until=DAY1) == []

        # one key's own usage; its spend for a budget
        alice = await ledger.usage("model", key="alice")
        assert [(g.group, g.streams) for g in alice] == [("local/llama", 1), ("openai/gpt-4o", 2)]
        assert await ledger.spent("alice", since=DAY1) == pytest.approx(0.03)
        assert await ledger.spent("alice", since=DAY2) == 0.0  # only an unpriced stream that day
        assert await ledger.spent("bob", since=DAY1, until=DAY2) == 0.0
        assert await ledger.spent("nobody", since=DAY1) == 0.0

        with pytest.raises(ValueError, match="group_by"):
            await ledger.usage(cast(Any, "transport"))
        with pytest.raises(ValueError, match="timezone-aware"):
            await ledger.usage("model", since=datetime(2026, 11, 27))
    finally:
        await ledger.aclose()


async def test_unknown_cost_stays_unknown(backend: Backend) -> None:
    ledger = await backend.open()
    ledger.record(make_row(model="mystery/model", cost_usd=None, key_holder="dave"))
    ledger.record(make_row(model="mystery/model", cost_usd=None, key_holder="dave"))
    ledger.record(make_row(model="openai/gpt-4o", cost_usd=0.5, key_holder="dave"))
    ledger.record(make_row(model="free/model", cost_usd=0.0, key_holder="erin"))
    await settled(ledger)
    try:
        groups = {g.group: g for g in await ledger.usage("model")}
        assert groups["mystery/model"].cost_usd is None  # not 0: nobody knows what it cost
        assert groups["mystery/model"].unpriced_streams == 2
        assert groups["free/model"].cost_usd == 0.0  # known to be free
        assert groups["free/model"].unpriced_streams == 0
        dave = await ledger.usage("key", key="dave")
        assert dave == [UsageGroup("dave", 3, 30, 60, 0.5, 2)]  # the known sum, and how many it leaves out
        assert await ledger.spent("dave", since=T0) == 0.5
    finally:
        await ledger.aclose()
    if backend.kind == "sqlite":
        with sqlite3.connect(backend.data_dir / "ledger.sqlite3") as db:
            nulls = db.execute("SELECT count(*) FROM streamgate_usage WHERE cost_usd IS NULL").fetchone()[0]
    else:
        connection = await asyncpg.connect(backend.spec)
        nulls = await connection.fetchval("SELECT count(*) FROM streamgate_usage WHERE cost_usd IS NULL")
        await connection.close()
    assert nulls == 2


async def test_sqlite_and_postgresql_answer_alike(tmp_path: Path, postgres_dsn: str) -> None:
    rng = random.Random(16)
    rows = [
        make_row(
            started_at=T0 + timedelta(seconds=rng.randrange(0, 5 * 86400), microseconds=rng.randrange(10**6)),
            key_holder=rng.choice(["alice", "bob", "carol", None]),
            model=rng.choice(["openai/gpt-4o", "anthropic/claude", "local/llama"]),
            transport=rng.choice(["grpc", "sse", "ws", "openai", "library"]),
            prompt_tokens=rng.randrange(0, 5000),
            completion_tokens=rng.randrange(0, 5000),
            cost_usd=rng.choice([None, round(rng.random() / 100, 6)]),
        )
        for _ in range(500)
    ]
    sqlite = await open_ledger("sqlite", tmp_path / "sqlite", FAST)
    postgres = await open_ledger(postgres_dsn, tmp_path / "postgres", FAST)
    for row in rows:
        sqlite.record(row)
        postgres.record(row)
    await settled(sqlite)
    await settled(postgres)
    try:
        windows = [(None, None), (T0 + timedelta(days=1), T0 + timedelta(days=3)), (T0 + timedelta(hours=30), None)]
        group_bys: tuple[GroupBy, ...] = ("model", "key", "day")
        for group_by in group_bys:
            for since, until in windows:
                for key in (None, "bob"):
                    mine = await sqlite.usage(group_by, since, until, key)
                    theirs = await postgres.usage(group_by, since, until, key)
                    assert [
                        (g.group, g.streams, g.prompt_tokens, g.completion_tokens, g.unpriced_streams) for g in mine
                    ] == [
                        (g.group, g.streams, g.prompt_tokens, g.completion_tokens, g.unpriced_streams) for g in theirs
                    ]
                    assert [g.cost_usd for g in mine] == [pytest.approx(g.cost_usd) for g in theirs]
                    assert sum(g.streams for g in mine) > 0
        for key in ("alice", "bob", "carol"):
            assert await sqlite.spent(key, T0 + timedelta(days=2)) == pytest.approx(
                await postgres.spent(key, T0 + timedelta(days=2))
            )
    finally:
        await sqlite.aclose()
        await postgres.aclose()


# -- exactly once


async def test_a_row_written_twice_is_kept_once(backend: Backend) -> None:
    """A batch retried after a lost acknowledgement, or a spill replayed twice, never doubles a row;
    two streams that share a client's request id stay two rows."""
    twice = make_row()
    ledger = await backend.open()
    ledger.record(twice)
    await settled(ledger)
    ledger.record(twice)
    ledger.record(make_row(request_id=twice.request_id))  # another stream, the same request id
    await settled(ledger)
    await ledger.aclose()
    # the same rows in a spill file left by a previous run, with a new one
    new = make_row()
    (backend.data_dir / "ledger.spill.jsonl").write_text(f"{twice.to_json()}\n{new.to_json()}\n")
    ledger = await backend.open()
    await settled(ledger)
    assert ledger.stats().replayed_rows == 2
    assert ledger.stats().written_rows == 1
    await ledger.aclose()
    assert sorted(await backend.request_ids()) == sorted([twice.request_id, twice.request_id, new.request_id])


# -- closing


async def test_close_writes_the_pending_rows(backend: Backend) -> None:
    lazy = LedgerConfig(flush_interval=60.0, batch_size=10_000)  # rows would wait a minute
    ledger = await backend.open(lazy)
    rows = [make_row() for _ in range(300)]
    for row in rows:
        ledger.record(row)
    await asyncio.sleep(0.1)
    assert await backend.request_ids() == []
    assert ledger.stats().pending_rows == 300
    started = time.monotonic()
    await ledger.aclose()
    assert time.monotonic() - started < 2.0
    assert sorted(await backend.request_ids()) == sorted(r.request_id for r in rows)
    assert not (backend.data_dir / "ledger.spill.jsonl").exists()
    await ledger.aclose()  # twice is fine


async def test_close_spills_what_it_cannot_write_and_the_next_start_writes_it(tmp_path: Path) -> None:
    ledger = await open_ledger("sqlite", tmp_path, FAST)
    blocker = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the file: every write fails
    rows = [make_row() for _ in range(50)]
    for row in rows:
        ledger.record(row)
    started = time.monotonic()
    await ledger.aclose(timeout=0.5)
    assert time.monotonic() - started < 3.0  # the deadline, plus the write in flight (1 s busy timeout)
    spilled = (tmp_path / "ledger.spill.jsonl").read_text().splitlines()
    assert sorted(UsageRow.from_json(line).request_id for line in spilled) == sorted(r.request_id for r in rows)
    late = make_row()
    ledger.record(late)  # after close: spilled too, never lost
    blocker.execute("ROLLBACK")
    blocker.close()

    ledger = await open_ledger("sqlite", tmp_path, FAST)
    await settled(ledger)
    await ledger.aclose()
    assert sorted(sqlite_request_ids(tmp_path)) == sorted([*(r.request_id for r in rows), late.request_id])
    assert not (tmp_path / "ledger.spill.jsonl").exists()
    assert not (tmp_path / "ledger.spill.replay.jsonl").exists()


# -- the database away: queue, spill, replay


async def test_a_full_queue_spills_to_the_file_and_the_spill_is_replayed(tmp_path: Path) -> None:
    config = LedgerConfig(batch_size=50, max_pending=100, flush_interval=0.02, retry_backoff=0.02, max_backoff=0.1)
    ledger = await open_ledger("sqlite", tmp_path, config)
    blocker = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    rows = [make_row() for _ in range(1000)]
    slowest = 0.0
    for n, row in enumerate(rows):  # streams end one after another
        started = time.perf_counter()
        ledger.record(row)
        slowest = max(slowest, time.perf_counter() - started)
        if n % 5 == 0:
            await asyncio.sleep(0.001)
    await until(lambda: ledger.stats().pending_rows <= 100 + 50)  # the bound, and the batch in hand
    stats = ledger.stats()
    assert stats.spilled_rows >= 850
    assert stats.dropped_rows == 0
    assert slowest < 0.05, f"record() took {slowest * 1000:.2f} ms"
    lines = (tmp_path / "ledger.spill.jsonl").read_text().splitlines()
    assert len(lines) == stats.spilled_rows
    assert blocker.execute("SELECT count(*) FROM streamgate_usage").fetchone()[0] == 0
    await until(lambda: ledger.stats().failed_writes >= 1)  # after SQLite's busy timeout (1 s)
    assert not ledger.stats().healthy

    blocker.execute("ROLLBACK")  # the database is back
    blocker.close()
    await settled(ledger)
    stats = ledger.stats()
    await ledger.aclose()
    ids = sqlite_request_ids(tmp_path)
    assert len(ids) == len(set(ids)) == 1000
    assert set(ids) == {r.request_id for r in rows}
    assert stats.replayed_rows == stats.spilled_rows and stats.healthy
    assert not (tmp_path / "ledger.spill.jsonl").exists()
    assert not (tmp_path / "ledger.spill.replay.jsonl").exists()


async def test_the_spill_file_is_bounded_and_what_it_drops_is_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    row_bytes = len(make_row().to_json()) + 1
    config = LedgerConfig(max_pending=10, batch_size=10, max_spill_bytes=20 * row_bytes + 10, flush_interval=0.02)
    ledger = await open_ledger("sqlite", tmp_path, config)
    blocker = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="streamgate.ledger"):
        rows = [make_row() for _ in range(200)]
        for n, row in enumerate(rows):
            ledger.record(row)
            if n % 5 == 0:
                await asyncio.sleep(0.001)
        await until(lambda: ledger.stats().pending_rows <= 10 + 10)
    stats = ledger.stats()
    assert stats.spilled_rows == 20
    assert stats.dropped_rows == 200 - 20 - stats.pending_rows > 150
    assert (tmp_path / "ledger.spill.jsonl").stat().st_size <= config.max_spill_bytes
    drops = [r for r in caplog.records if "at its bound" in r.getMessage()]
    assert len(drops) == 1 and drops[0].levelno == logging.ERROR  # one clear line, not one a row
    assert "rows are dropped" in drops[0].getMessage()

    blocker.execute("ROLLBACK")
    blocker.close()
    await settled(ledger)
    await ledger.aclose()
    assert len(sqlite_request_ids(tmp_path)) == 200 - stats.dropped_rows


async def test_a_spill_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    good = [make_row(), make_row()]
    (tmp_path / "ledger.spill.jsonl").write_text(f"{good[0].to_json()}\nnot json\n{good[1].to_json()}\n" + '{"row_id')
    ledger = await open_ledger("sqlite", tmp_path, FAST)
    late = make_row()
    await settled(ledger)
    ledger.record(late)
    await settled(ledger)
    await ledger.aclose()
    assert sorted(sqlite_request_ids(tmp_path)) == sorted([good[0].request_id, good[1].request_id, late.request_id])


async def test_two_processes_on_one_data_directory_keep_their_own_spill_files(tmp_path: Path) -> None:
    first = await open_ledger("sqlite", tmp_path, FAST)
    second = await open_ledger("sqlite", tmp_path, FAST)  # another core on the same --data-dir
    assert first._spill.path != second._spill.path  # type: ignore[attr-defined]
    rows = [make_row() for _ in range(10)]
    for n, row in enumerate(rows):
        (first if n % 2 else second).record(row)
    await settled(first)
    await settled(second)
    await first.aclose()
    await second.aclose()
    assert sorted(sqlite_request_ids(tmp_path)) == sorted(r.request_id for r in rows)
    third = await open_ledger("sqlite", tmp_path, FAST)  # the first slot is free again
    assert third._spill.path == tmp_path / "ledger.spill.jsonl"  # type: ignore[attr-defined]
    await third.aclose()


async def test_record_never_raises(tmp_path: Path) -> None:
    ledger = await open_ledger("sqlite", tmp_path, FAST)
    ledger.record(cast(Any, None))
    ledger.record(cast(Any, {"request_id": "x"}))
    assert ledger.stats().dropped_rows == 2
    ledger.record(make_row())
    await settled(ledger)
    await ledger.aclose()
    assert len(sqlite_request_ids(tmp_path)) == 1


# -- PostgreSQL away


async def test_postgresql_down_at_start_gets_its_rows_when_it_comes(tmp_path: Path) -> None:
    server = PostgresServer()  # initialised below, after the ledger opened
    try:
        ledger = await open_ledger(server.dsn, tmp_path, FAST)  # nothing listens: rows wait
        rows = [make_row() for _ in range(20)]
        for row in rows:
            ledger.record(row)
        await asyncio.sleep(0.2)
        assert not ledger.stats().healthy
        with pytest.raises(LedgerError, match="cannot be read"):
            await ledger.usage("model")
        await asyncio.to_thread(server.start)
        await settled(ledger, within=15)
        assert (await ledger.usage("model"))[0].streams == 20
        await ledger.aclose()
        assert sorted(await postgres_request_ids(server.dsn)) == sorted(r.request_id for r in rows)
    finally:
        await asyncio.to_thread(server.close)


async def test_a_postgresql_url_the_server_refuses_fails_at_start(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    with pytest.raises(LedgerError, match="refuses"):
        await open_ledger(postgres_server.dsn_of("no_such_database"), tmp_path, FAST)


@pytest.mark.timeout(120)
async def test_postgresql_stopped_and_started_under_load_loses_nothing_and_doubles_nothing(
    tmp_path: Path, private_postgres: PostgresServer
) -> None:
    """Issue 16's test: rows recorded steadily by many tasks while PostgreSQL is stopped
    (pg_ctl stop -m fast) and started again a few seconds later. Every row is in the table once,
    and no record() call waited."""
    config = LedgerConfig(batch_size=500, flush_interval=0.1, max_pending=1000, retry_backoff=0.05, max_backoff=0.5)
    ledger = await open_ledger(private_postgres.dsn, tmp_path, config)
    recorded: list[str] = []
    latencies: list[float] = []
    gaps: list[float] = []
    stop = asyncio.Event()

    async def stream_ends(task: int) -> None:
        while not stop.is_set():
            row = make_row(key_holder=f"key-{task % 5}", transport="grpc")
            started = time.perf_counter()
            ledger.record(row)
            latencies.append(time.perf_counter() - started)
            recorded.append(row.request_id)
            await asyncio.sleep(random.uniform(0.005, 0.015))

    async def heartbeat() -> None:  # how long the event loop was ever held
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tasks = [asyncio.create_task(stream_ends(n)) for n in range(50)]
    beat = asyncio.create_task(heartbeat())
    began = time.monotonic()
    await asyncio.sleep(2.0)
    await asyncio.to_thread(private_postgres.stop, "fast")
    down_at = len(recorded)
    await asyncio.sleep(3.0)
    during_outage = len(recorded) - down_at
    unhealthy = not ledger.stats().healthy
    await asyncio.to_thread(private_postgres.start)
    await asyncio.sleep(3.0)
    stop.set()
    await asyncio.gather(*tasks, beat)
    produced = time.monotonic() - began

    await settled(ledger, within=30)
    stats = ledger.stats()
    await ledger.aclose()

    ids = await postgres_request_ids(private_postgres.dsn)
    assert unhealthy, "the ledger did not notice the outage"
    assert stats.failed_writes >= 1
    assert stats.spilled_rows > 0, f"the outage ({during_outage} rows) did not fill the queue"
    assert stats.dropped_rows == 0
    assert stats.replayed_rows == stats.spilled_rows
    assert len(ids) == len(recorded), f"{len(recorded) - len(ids)} rows missing"
    assert len(set(ids)) == len(ids), "a row was written twice"
    assert set(ids) == set(recorded)
    slowest = max(latencies)
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(
        f"\nledger outage: {len(recorded)} rows in {produced:.1f} s ({len(recorded) / produced:.0f}/s), "
        f"{during_outage} during the 3 s outage, {stats.spilled_rows} spilled and replayed, "
        f"{stats.failed_writes} failed writes; record() max {slowest * 1e6:.0f} µs, p99 {p99 * 1e6:.1f} µs; "
        f"event loop held at most {max(gaps) * 1000:.1f} ms"
    )
    assert slowest < 0.05, f"record() took {slowest * 1000:.1f} ms"
    assert max(gaps) < 0.5, f"the event loop was held {max(gaps) * 1000:.0f} ms"


async def test_written_rows_per_second(tmp_path: Path, postgres_dsn: str) -> None:
    """How fast each database takes rows (printed; a floor asserted): 20,000 rows recorded at once."""
    for spec, directory in (("sqlite", tmp_path / "sqlite"), (postgres_dsn, tmp_path / "postgres")):
        ledger = await open_ledger(spec, directory, LedgerConfig(max_pending=50_000, flush_interval=0.05))
        rows = [make_row() for _ in range(20_000)]
        started = time.perf_counter()
        for row in rows:
            ledger.record(row)
        await settled(ledger, within=40)
        took = time.perf_counter() - started
        assert ledger.stats().written_rows == 20_000
        await ledger.aclose()
        print(f"\nledger {spec.split(':')[0]}: {20_000 / took:,.0f} rows/s written")
        assert 20_000 / took > 2_000
