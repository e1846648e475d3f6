"""Budgets per key: at or over its spend limit, a key gets no new stream (429 `budget_exceeded`,
RESOURCE_EXHAUSTED with its reason), running streams finish, and a restart forgets nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import grpc
import pytest

from streamgate.core.auth import Keyring
from streamgate.core.budgets import Budget, BudgetBook, period_end, period_start
from streamgate.core.models import parse_model_list
from streamgate.rpc.server import CoreServer
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import BridgeFactory, CoreFactory, collect

KEYS = Keyring.from_list("alice: key-alice-0123456789,bob: key-bob-0123456789")
PRICED = "openai/gpt-4o-mini"
#: Less than one test stream costs (about $6e-06 at gpt-4o-mini's prices): the first stream spends it.
TINY = 0.000003


def as_(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer key-{name}-0123456789"),)


async def generate(core: CoreServer, who: str) -> grpc.aio.AioRpcError | pb.Completion:
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        call = stub.Generate(pb.GenerateRequest(query="hi"), metadata=as_(who))
        try:
            async for response in call:
                if response.HasField("completion"):
                    return response.completion
        except grpc.aio.AioRpcError as exc:
            return exc
    raise AssertionError("no final message")


def test_periods_are_utc_days_and_calendar_months() -> None:
    now = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert period_start("day", now) == datetime(2026, 12, 31, tzinfo=UTC)
    assert period_end("day", now) == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_start("month", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert period_end("month", now) == datetime(2027, 1, 1, tzinfo=UTC)


def test_a_new_period_starts_from_nothing() -> None:
    book = BudgetBook([Budget("alice", 1.0, "day")])
    book.add("alice", 1.5, now=datetime(2026, 11, 29, 12, tzinfo=UTC))
    with pytest.raises(Exception, match="resets at 2026-11-30T00:00:00Z"):
        book.check("alice", now=datetime(2026, 11, 29, 23, tzinfo=UTC))
    book.check("alice", now=datetime(2026, 11, 30, 0, 1, tzinfo=UTC))  # the next day: allowed again
    book.check("bob")  # no budget: never refused


def test_budgets_are_read_from_the_config_file() -> None:
    parsed = parse_model_list({"budgets": {"alice": {"per_day": 5}, "ci": {"per_month": 200.5}}}, {})
    assert parsed.budgets == (Budget("alice", 5.0, "day"), Budget("ci", 200.5, "month"))
    assert parsed.routes == ()
    with pytest.raises(ValueError, match="per_day or per_month"):
        parse_model_list({"budgets": {"alice": {"per_week": 5}}}, {})


async def test_a_key_over_its_budget_is_refused_and_a_restart_remembers(
    make_core: CoreFactory, make_bridge: BridgeFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fields = {
        "model": PRICED,
        "keyring": KEYS,
        "ledger": "sqlite",
        "data_dir": str(tmp_path),
        "budgets": (Budget("alice", TINY, "day"),),
    }
    core = await make_core(**fields)
    first = await generate(core, "alice")
    assert isinstance(first, pb.Completion) and first.cost_usd > TINY  # admitted under budget; it spent it all

    refused = await generate(core, "alice")
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget of $0.000003 a day is spent" in (refused.details() or "")
    assert "resets at " in (refused.details() or "")
    assert ("streamgate-reason", "budget_exceeded") in tuple(refused.trailing_metadata() or ())
    assert isinstance(await generate(core, "bob"), pb.Completion)  # another key is not held back

    bridge = await make_bridge(core=core.address)
    chat = {"model": PRICED, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": "Bearer key-alice-0123456789"}
    async with http.post(f"{bridge.url}/v1/chat/completions", json=chat, headers=headers) as response:
        body = await response.json()
    assert response.status == 429 and body["error"]["code"] == "budget_exceeded", body
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi"}, headers=headers) as response:
        assert response.status == 429

    await core.stop(grace=1)
    again = await make_core(**fields)  # the ledger is the truth
    still = await generate(again, "alice")
    assert isinstance(still, grpc.aio.AioRpcError) and still.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_streams_admitted_under_budget_finish(make_core: CoreFactory) -> None:
    import asyncio

    core = await make_core(model=PRICED, keyring=KEYS, budgets=(Budget("alice", TINY, "day"),))
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        both = await asyncio.gather(
            *(collect(stub, pb.GenerateRequest(query="hi"), metadata=as_("alice")) for _ in range(2))
        )
    assert [r.code for r in both] == [grpc.StatusCode.OK] * 2  # together over the budget: both finish
    assert isinstance(await generate(core, "alice"), grpc.aio.AioRpcError)
