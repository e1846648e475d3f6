"""The usage ledger in the running server: every stream leaves a row, whatever door it came in by and
however it ended; `GET /v1/usage` and `GetUsage` read them back (a key its own, an admin all), and
they are still there after a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from streamgate.core.auth import Keyring
from streamgate.testing.upstream import FakeUpstream, Scenario
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import BridgeFactory, CoreFactory, collect

KEYS = Keyring.from_list("alice: key-alice-0123456789,bob: key-bob-0123456789,ops: key-ops-0123456789")
PRICED = "openai/gpt-4o-mini"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{name}-0123456789"}


async def usage(http: aiohttp.ClientSession, url: str, who: str, **query: str) -> dict[str, Any]:
    async with http.get(f"{url}/v1/usage", params=query, headers=bearer(who)) as response:
        body = await response.json()
        assert response.status == 200, body
        return body  # type: ignore[no-any-return]


async def streams_in(http: aiohttp.ClientSession, url: str, who: str, want: int) -> dict[str, Any]:
    """The usage once `want` streams are written (rows reach the database in batches, soon after)."""
    seen: dict[str, Any] = {}

    async def written() -> bool:
        nonlocal seen
        seen = await usage(http, url, who, group_by="key")
        return sum(g["streams"] for g in seen["data"]) >= want

    for _ in range(60):
        if await written():
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {want} streams in the ledger: {seen}")


async def test_every_stream_has_its_row_and_each_key_reads_its_own(
    make_core: CoreFactory,
    make_bridge: BridgeFactory,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    upstream.default = Scenario(tokens=6)
    core = await make_core(model=PRICED, keyring=KEYS, ledger="sqlite", data_dir=str(tmp_path), admins=("ops",))
    bridge = await make_bridge(core=core.address)
    url = bridge.url
    # alice: one stream through each of the bridge's doors; bob: one over gRPC.
    async with http.post(f"{url}/query/stream", json={"query": "hi"}, headers=bearer("alice")) as response:
        assert b"final_response" in await response.read()
    async with http.ws_connect(f"{url}/query/ws", headers=bearer("alice")) as ws:
        await ws.send_json({"query": "hi"})
        while (await ws.receive_json(timeout=10))["type"] == "chunk":
            pass
    chat = {"model": PRICED, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(f"{url}/v1/chat/completions", json=chat, headers=bearer("alice")) as response:
        assert response.status == 200
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        metadata = (("authorization", bearer("bob")["Authorization"]),)
        assert (await collect(stub, pb.GenerateRequest(query="hi"), metadata=metadata)).code == grpc.StatusCode.OK

        everyone = await streams_in(http, url, "ops", 4)
        by_key = {g["group"]: g for g in everyone["data"]}
        assert set(by_key) == {"alice", "bob"} and by_key["alice"]["streams"] == 3
        assert by_key["alice"]["completion_tokens"] == 18 and by_key["alice"]["cost_usd"] > 0
        assert by_key["alice"]["total_tokens"] == by_key["alice"]["prompt_tokens"] + 18

        # A key reads its own usage only, whatever it groups by; so does gRPC's GetUsage.
        own = await usage(http, url, "alice", group_by="key")
        assert [g["group"] for g in own["data"]] == ["alice"]
        bobs = await stub.GetUsage(pb.GetUsageRequest(group_by="model"), metadata=metadata)
        assert [(g.group, g.streams) for g in bobs.groups] == [(PRICED, 1)]
        assert bobs.groups[0].cost_usd > 0
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetUsage(pb.GetUsageRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    days = await usage(http, url, "ops", group_by="day")
    assert len(days["data"]) == 1 and days["data"][0]["streams"] == 4
    future = await usage(http, url, "ops", group_by="model", since="2999-01-01")
    assert future["data"] == []


async def test_usage_survives_a_restart_of_the_core(
    make_core: CoreFactory, upstream: FakeUpstream, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    core = await make_core(model=PRICED, ledger="sqlite", data_dir=str(tmp_path))
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        for _ in range(3):
            assert (await collect(stub, pb.GenerateRequest(query="hi"))).code == grpc.StatusCode.OK
    await core.stop(grace=1)  # SIGTERM's path: drain, then the ledger writes what is pending

    again = await make_core(model=PRICED, ledger="sqlite", data_dir=str(tmp_path))
    async with grpc.aio.insecure_channel(again.address) as channel:
        kept = await pb_grpc.StreamGateServiceStub(channel).GetUsage(pb.GetUsageRequest(group_by="model"))
    assert [(g.group, g.streams) for g in kept.groups] == [(PRICED, 3)]
    assert kept.groups[0].completion_tokens == 24 and kept.groups[0].cost_usd > 0


async def test_cancelled_and_failed_streams_are_kept_with_what_they_cost(
    make_bridge: BridgeFactory, upstream: FakeUpstream, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    upstream.default = Scenario(tokens=500, delay=0.01)
    bridge = await make_bridge(core_model=PRICED, core_ledger="sqlite", core_data_dir=str(tmp_path))
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await ws.send_json({"query": "hi"})
        for _ in range(5):
            await ws.receive_json(timeout=10)
        await ws.send_json({"type": "cancel"})
        while (await ws.receive_json(timeout=10))["type"] == "chunk":
            pass
    upstream.default = Scenario(status=503)
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi"}) as response:
        await response.read()

    seen: dict[str, Any] = {}

    async def both_written() -> bool:
        nonlocal seen
        async with http.get(f"{bridge.url}/v1/usage", params={"group_by": "model"}) as response:
            seen = await response.json()
        return bool(seen["data"]) and seen["data"][0]["streams"] == 2

    for _ in range(60):
        if await both_written():
            break
        await asyncio.sleep(0.1)
    (group,) = seen["data"]
    assert group["streams"] == 2
    assert group["completion_tokens"] >= 5 and group["cost_usd"] > 0  # the cancelled one's; the refused one's 0


async def test_bad_usage_queries_are_answered_clearly(bridge: Any, http: aiohttp.ClientSession) -> None:
    for query, says in (
        ({"group_by": "month"}, "group_by must be model, key or day"),
        ({"since": "yesterday"}, "since must be an RFC 3339 time"),
        ({"sinec": "2026-01-01"}, "unknown parameter(s): sinec"),
    ):
        async with http.get(f"{bridge.url}/v1/usage", params=query) as response:
            body = await response.json()
        assert response.status == 400, body
        assert says in body["error"]["message"], body
        assert set(body["error"]) == {"message", "type", "param", "code"}  # OpenAI's envelope, as on every /v1 path


async def test_a_shared_postgresql_ledger_serves_two_cores(
    make_core: CoreFactory, upstream: FakeUpstream, postgres_dsn: str, tmp_path: Path
) -> None:
    """Two cores (two instances of the gateway) on one PostgreSQL: each writes its rows, either reads all."""
    cores = [await make_core(model=PRICED, ledger=postgres_dsn, data_dir=str(tmp_path / f"core{i}")) for i in range(2)]
    for core in cores:
        async with grpc.aio.insecure_channel(core.address) as channel:
            stub = pb_grpc.StreamGateServiceStub(channel)
            assert (await collect(stub, pb.GenerateRequest(query="hi"))).code == grpc.StatusCode.OK
    for core in cores:
        await core.stop(grace=1)  # flushed on the way out
    reader = await make_core(model=PRICED, ledger=postgres_dsn, data_dir=str(tmp_path / "reader"))
    async with grpc.aio.insecure_channel(reader.address) as channel:
        kept = await pb_grpc.StreamGateServiceStub(channel).GetUsage(pb.GetUsageRequest(group_by="model"))
    assert [(g.group, g.streams) for g in kept.groups] == [(PRICED, 2)]
    assert kept.groups[0].cost_usd > 0
