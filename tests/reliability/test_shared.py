"""Several cores, one Redis (`--redis-url`): a key's concurrency limit and its budget hold across the
cores, a resumable stream resumes through another bridge and core with no second upstream request,
and when Redis goes away running streams finish while new ones follow `--redis-fail`, until it is
back and the limits are shared again. Each test runs its own real redis-server (tests/_redis.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from typing import Any

import aiohttp
import grpc
import pytest

from streamgate.cli import _core_configs, build_parser
from streamgate.core.auth import Keyring
from streamgate.core.budgets import Budget
from streamgate.rpc.server import CoreServer
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests._redis import RedisServer
from tests.conftest import BridgeFactory, CoreFactory, Result, collect, eventually
from tests.reliability.conftest import REDIS_PASSWORD

KEYS = Keyring.from_list("alice: key-alice-0123456789,bob: key-bob-0123456789")
PRICED = "openai/gpt-4o-mini"
#: Less than one test stream costs at gpt-4o-mini's prices: the first stream spends it.
TINY = 0.000003


def as_(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer key-{name}-0123456789"),)


def header(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{name}-0123456789"}


def stub(core: CoreServer, channels: list[grpc.aio.Channel]) -> pb_grpc.StreamGateServiceStub:
    channel = grpc.aio.insecure_channel(core.address)
    channels.append(channel)
    return pb_grpc.StreamGateServiceStub(channel)


def text(n: int) -> str:
    return "".join(token(i) for i in range(n))


async def sse(response: aiohttp.ClientResponse, stop_after: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(id, data) of each SSE event, stopping (and dropping the connection) after `stop_after` events."""
    events: list[tuple[str, dict[str, Any]]] = []
    while block := await response.content.readuntil(b"\n\n"):
        fields = dict(line.split(": ", 1) for line in block.decode().strip().splitlines() if ": " in line)
        if "data" not in fields:
            continue  # the first block's `retry:` alone, or a ping
        data = json.loads(fields["data"])
        events.append((fields["id"], data))
        if data["is_final"] or (stop_after is not None and len(events) == stop_after):
            break
    return events


async def test_a_per_key_limit_of_4_holds_across_two_cores(
    redis_server: RedisServer, make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=20, delay=0.05)  # a second: all six are open at once
    cores = [await make_core(keyring=KEYS, max_streams_per_key=4, redis_url=redis_server.url) for _ in range(2)]
    channels: list[grpc.aio.Channel] = []
    try:
        stubs = [stub(core, channels) for core in cores]
        request = pb.GenerateRequest(query="hi")
        six = await asyncio.gather(*(collect(stubs[i % 2], request, metadata=as_("alice")) for i in range(6)))
        codes = [result.code for result in six]
        assert codes.count(grpc.StatusCode.OK) == 4, [(r.code, r.details) for r in six]
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2, [(r.code, r.details) for r in six]
        for refused in (r for r in six if r.code is grpc.StatusCode.RESOURCE_EXHAUSTED):
            assert "limit 4" in (refused.details or "") and not refused.chunks
        for done in (r for r in six if r.code is grpc.StatusCode.OK):
            assert done.completion.text == text(20)
        # Each core held at most 3 of them: alone, each would have admitted all of its own.
        assert max(core.gateway.metrics.snapshot().streams_started for core in cores) <= 4

        # The places were given back when the streams ended: 4 at once again, all on core B, and
        # another key was never held back by alice's.
        again = await asyncio.gather(*(collect(stubs[1], request, metadata=as_("alice")) for _ in range(4)))
        assert [r.code for r in again] == [grpc.StatusCode.OK] * 4, [(r.code, r.details) for r in again]
        assert (await collect(stubs[0], request, metadata=as_("bob"))).code is grpc.StatusCode.OK
    finally:
        for channel in channels:
            await channel.close()


async def test_a_budget_spent_on_one_core_refuses_on_the_other(
    redis_server: RedisServer, make_core: CoreFactory
) -> None:
    fields: dict[str, Any] = {"model": PRICED, "keyring": KEYS, "budgets": (Budget("alice", TINY, "day"),)}
    core_a = await make_core(redis_url=redis_server.url, **fields)
    core_b = await make_core(redis_url=redis_server.url, **fields)
    channels: list[grpc.aio.Channel] = []
    try:
        a, b = stub(core_a, channels), stub(core_b, channels)
        spent = await collect(a, pb.GenerateRequest(query="hi"), metadata=as_("alice"))
        assert spent.code is grpc.StatusCode.OK and spent.completion.cost_usd > TINY  # admitted under it; spent it

        refused = await collect(b, pb.GenerateRequest(query="hi"), metadata=as_("alice"))
        assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED, (refused.code, refused.details)
        assert "budget of $0.000003 a day is spent" in (refused.details or "")
        assert (await collect(b, pb.GenerateRequest(query="hi"), metadata=as_("bob"))).code is grpc.StatusCode.OK

        # A core that starts later reads it too (from Redis: its own ledger is off and empty).
        core_c = await make_core(redis_url=redis_server.url, **fields)
        late = await collect(stub(core_c, channels), pb.GenerateRequest(query="hi"), metadata=as_("alice"))
        assert late.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for channel in channels:
            await channel.close()


async def _two_bridges(
    make_core: CoreFactory, make_bridge: BridgeFactory, redis: RedisServer, **fields: Any
) -> tuple[list[CoreServer], list[Any]]:
    cores = [await make_core(keyring=KEYS, redis_url=redis.url, **fields) for _ in range(2)]
    bridges = [await make_bridge(core=core.address) for core in cores]
    return cores, bridges


async def test_a_resumable_stream_resumes_through_another_bridge_and_core(
    redis_server: RedisServer,
    make_core: CoreFactory,
    make_bridge: BridgeFactory,
    http: aiohttp.ClientSession,
    upstream: FakeUpstream,
) -> None:
    tokens = 30
    upstream.default = Scenario(tokens=tokens, delay=0.05)  # 1.5 s, three times the grace
    (core_a, core_b), (bridge_a, bridge_b) = await _two_bridges(make_core, make_bridge, redis_server, resume_grace=0.5)
    body = {"query": "hi", "resumable": True}
    async with http.post(f"{bridge_a.url}/query/stream", json=body, headers=header("alice")) as response:
        first = await sse(response, stop_after=7)  # then bridge A's client is gone
    last_id = first[-1][0]
    stream_id, _, after = last_id.rpartition(":")

    # Another key finds nothing there, on any core.
    url = f"{bridge_b.url}/query/stream/{stream_id}"
    async with http.get(url, headers={"Last-Event-ID": last_id, **header("bob")}) as response:
        assert response.status == 410
    async with http.get(url, headers={"Last-Event-ID": last_id, **header("alice")}) as response:
        assert response.status == 200
        rest = await sse(response)

    frames = [data for _, data in first + rest]
    assert sum(f["is_final"] for f in frames) == 1 and frames[-1]["is_final"]
    final = frames[-1]["metadata"]
    # Read through core B, the stream outlived core A's grace for unread streams: it completed.
    assert final.get("finish_reason") == "stop", frames[-1]
    assert "".join(f["content"] for f in frames[:-1]) == final["final_response"] == text(tokens)
    assert rest[0][0] == f"{stream_id}:{int(after) + 1}"
    assert upstream.counters.started == 1, "no second upstream request"
    assert core_b.gateway.metrics.snapshot().streams_started == 0  # core B only read it
    assert core_a.gateway.metrics.snapshot().streams_started == 1

    # After its end, a reconnect through bridge B with the final frame's id: nothing more to send, and
    # again no generation.
    async with http.get(url, headers={"Last-Event-ID": rest[-1][0], **header("alice")}) as response:
        assert response.status == 204
    assert upstream.counters.started == 1


async def test_grpc_attach_on_another_core_reads_the_stream(
    redis_server: RedisServer, make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    tokens = 30
    upstream.default = Scenario(tokens=tokens, delay=0.02)
    core_a, core_b = [await make_core(keyring=KEYS, redis_url=redis_server.url) for _ in range(2)]
    channels: list[grpc.aio.Channel] = []
    try:
        a, b = stub(core_a, channels), stub(core_b, channels)
        call = a.Generate(pb.GenerateRequest(query="hi", resumable=True), metadata=as_("alice"))
        request_id = dict(await call.initial_metadata())["x-request-id"]
        first = [await call.read() for _ in range(4)]
        call.cancel()  # the client leaves; the stream goes on for the grace
        attach = pb.AttachRequest(request_id=request_id, after=3)
        rest = [r.event async for r in b.Attach(attach, metadata=as_("alice"))]
        with pytest.raises(grpc.aio.AioRpcError) as other_key:
            async for _ in b.Attach(attach, metadata=as_("bob")):
                pass
    finally:
        for channel in channels:
            await channel.close()
    chunks = [r.chunk for r in first] + [e.chunk for e in rest[:-1]]
    assert [c.index for c in chunks] == list(range(tokens))
    assert "".join(c.content for c in chunks) == rest[-1].completion.text == text(tokens)
    assert other_key.value.code() == grpc.StatusCode.NOT_FOUND
    assert upstream.counters.started == 1


async def test_a_core_that_stops_mid_stream_ends_it_for_a_reader_on_another_core(
    redis_server: RedisServer, make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=400, delay=0.02)  # 8 s unless ended
    core_a, core_b = [await make_core(keyring=KEYS, redis_url=redis_server.url) for _ in range(2)]
    channels: list[grpc.aio.Channel] = []
    try:
        a, b = stub(core_a, channels), stub(core_b, channels)
        call = a.Generate(pb.GenerateRequest(query="hi", resumable=True), metadata=as_("alice"))
        request_id = dict(await call.initial_metadata())["x-request-id"]
        await call.read()
        call.cancel()
        reading = b.Attach(pb.AttachRequest(request_id=request_id, after=0), metadata=as_("alice"))
        assert (await reading.read()).event.HasField("chunk")  # core B reads it from Redis, live
        start = time.monotonic()
        await core_a.stop(grace=0)  # a drain: its stream ends with UNAVAILABLE, written before it exits
        rest: list[pb.GenerateResponse] = []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await _read(reading, rest)
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        for channel in channels:
            await channel.close()
    assert rest and rest[-1].HasField("error"), rest[-1:]
    assert rest[-1].error.retryable and "shutting down" in rest[-1].error.message
    assert time.monotonic() - start < 3.0


async def _read(call: Any, into: list[pb.GenerateResponse]) -> None:
    """The rest of a call read with `call.read()` (the two reading styles cannot mix)."""
    while (message := await call.read()) is not grpc.aio.EOF:
        into.append(message.event)


async def test_a_stop_through_another_core_ends_the_stream_where_it_runs(
    redis_server: RedisServer,
    make_core: CoreFactory,
    make_bridge: BridgeFactory,
    http: aiohttp.ClientSession,
    upstream: FakeUpstream,
) -> None:
    upstream.default = Scenario(tokens=400, delay=0.05)  # 20 s unless stopped
    (core_a, _), (bridge_a, bridge_b) = await _two_bridges(make_core, make_bridge, redis_server)
    body = {"query": "hi", "resumable": True}
    async with http.post(f"{bridge_a.url}/query/stream", json=body, headers=header("alice")) as response:
        first = await sse(response, stop_after=2)
    stream_id = first[-1][0].rpartition(":")[0]
    start = time.monotonic()
    async with http.delete(f"{bridge_b.url}/query/stream/{stream_id}", headers=header("alice")) as response:
        assert response.status == 204
    await eventually(lambda: core_a.gateway.active_streams == 0, within=3.0)
    assert time.monotonic() - start < 3.0
    await eventually(lambda: upstream.counters.disconnects == 1, within=2.0)  # its upstream request closed


async def test_a_replay_written_while_redis_was_away_reaches_another_core(
    redis_server: RedisServer,
    make_core: CoreFactory,
    make_bridge: BridgeFactory,
    http: aiohttp.ClientSession,
    upstream: FakeUpstream,
) -> None:
    tokens = 40
    upstream.default = Scenario(tokens=tokens, delay=0.05)  # 2 s
    (core_a, core_b), (bridge_a, bridge_b) = await _two_bridges(make_core, make_bridge, redis_server)
    body = {"query": "hi", "resumable": True}
    async with http.post(f"{bridge_a.url}/query/stream", json=body, headers=header("alice")) as response:
        first = await sse(response, stop_after=5)
    last_id = first[-1][0]
    stream_id = last_id.rpartition(":")[0]

    redis_server.stop()  # it comes back empty: the replay is written again, all of it
    await asyncio.sleep(0.5)  # the stream goes on meanwhile
    redis_server.start()
    shared = [core.gateway.shared for core in (core_a, core_b)]
    await eventually(lambda: all(s is not None and s.up for s in shared), within=5.0)

    deadline = time.monotonic() + 3.0
    while True:  # 410 until core A has written it again (milliseconds after it sees Redis back)
        headers = {"Last-Event-ID": last_id, **header("alice")}
        async with http.get(f"{bridge_b.url}/query/stream/{stream_id}", headers=headers) as response:
            if response.status == 200:
                rest = await sse(response)
                break
        assert response.status == 410 and time.monotonic() < deadline, response.status
        await asyncio.sleep(0.05)
    frames = [data for _, data in first + rest]
    assert frames[-1]["is_final"] and frames[-1]["metadata"].get("finish_reason") == "stop", frames[-1]
    assert "".join(f["content"] for f in frames[:-1]) == text(tokens)
    assert upstream.counters.started == 1


async def _leases(redis: RedisServer, count: int) -> None:
    """Wait until Redis holds `count` open leases (after a restart, the cores add theirs again)."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis.url)
    try:
        deadline = time.monotonic() + 3.0
        while True:
            keys = [key async for key in client.scan_iter(match="streamgate:leases:*")]
            held = sum([await client.zcard(key) for key in keys])
            if held == count:
                return
            assert time.monotonic() < deadline, f"{held} leases in Redis, not {count}"
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()


@pytest.mark.parametrize("fail", ["open", "closed"])
async def test_redis_away_then_back(
    redis_server: RedisServer,
    make_core: CoreFactory,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    fail: str,
) -> None:
    caplog.set_level(logging.INFO)
    upstream.default = Scenario(tokens=80, delay=0.05)  # 4 s
    cores = [
        await make_core(keyring=KEYS, max_streams_per_key=1, redis_url=redis_server.url, redis_fail=fail)
        for _ in range(3)
    ]
    channels: list[grpc.aio.Channel] = []
    try:
        a, b, c = (stub(core, channels) for core in cores)
        long, short = pb.GenerateRequest(query="hi"), pb.GenerateRequest(query="hi")
        short.parameters.max_tokens = 2
        running = asyncio.create_task(collect(a, long, metadata=as_("alice")))
        await eventually(lambda: cores[0].gateway.active_streams == 1)
        refused = await collect(b, short, metadata=as_("alice"))
        assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED  # shared: alice's one place is on core A

        redis_server.stop()
        during = pb.GenerateRequest(query="hi")
        during.parameters.max_tokens = 50  # 2.5 s: still running when Redis is back
        admitted: asyncio.Task[Result] | None = None
        if fail == "open":  # core B admits it under its own limit (it holds none of alice's)
            admitted = asyncio.create_task(collect(b, during, metadata=as_("alice")))
            await eventually(lambda: cores[1].gateway.active_streams == 1)
        else:
            closed = await collect(b, short, metadata=as_("alice"))
            assert closed.code is grpc.StatusCode.UNAVAILABLE, (closed.code, closed.details)
            assert "Redis" in (closed.details or "")
            assert (await collect(b, short)).code is grpc.StatusCode.UNAUTHENTICATED  # (no key: not Redis's)

        redis_server.start()  # empty: the cores add their open streams' leases again
        await eventually(lambda: all(core.gateway.shared is not None and core.gateway.shared.up for core in cores), 5)
        await _leases(redis_server, 2 if fail == "open" else 1)
        again = await collect(c, short, metadata=as_("alice"))  # core C holds none: only Redis refuses it
        assert again.code is grpc.StatusCode.RESOURCE_EXHAUSTED, (again.code, again.details)

        done = await running  # the stream that ran through it all finished
        assert done.code is grpc.StatusCode.OK and done.completion.text == text(80)
        if admitted is not None:
            during_done = await admitted
            assert during_done.code is grpc.StatusCode.OK and during_done.completion.text == text(50)
        await _leases(redis_server, 0)  # given back: alice streams again, anywhere
        assert (await collect(c, short, metadata=as_("alice"))).code is grpc.StatusCode.OK
    finally:
        for channel in channels:
            await channel.close()

    lost = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    back = [r for r in caplog.records if "limits are shared again" in r.getMessage()]
    assert len(lost) == len(back) == 3, [r.getMessage() for r in lost + back]  # once per core, each way
    assert REDIS_PASSWORD not in caplog.text


def test_the_redis_flags_never_repeat_a_password(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["core", "--redis-url", "http://user:hunter2@redis.internal:6379"])
    err = capsys.readouterr().err
    assert "redis://" in err and "hunter2" not in err
    with pytest.raises(SystemExit):
        parser.parse_args(["core", "--redis-fail", "sometimes"])

    url = "redis://:hunter2@redis.internal:6379/0"
    _, server = _core_configs(parser.parse_args(["core", "--redis-url", url, "--redis-fail", "closed"]))
    assert server.redis_url == url and server.redis_fail == "closed"
    assert "hunter2" not in repr(server)


def test_a_core_without_redis_never_loads_its_client() -> None:
    code = (
        "import sys, streamgate.cli, streamgate.rpc.server, streamgate.link.server, streamgate.core.shared;"
        "print(','.join(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""


async def test_without_redis_each_core_counts_alone(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=10, delay=0.05)
    cores = [await make_core(keyring=KEYS, max_streams_per_key=1) for _ in range(2)]
    assert all(core.gateway.shared is None for core in cores)
    channels: list[grpc.aio.Channel] = []
    try:
        stubs = [stub(core, channels) for core in cores]
        both = await asyncio.gather(*(collect(s, pb.GenerateRequest(query="hi"), metadata=as_("alice")) for s in stubs))
        assert [r.code for r in both] == [grpc.StatusCode.OK] * 2  # a limit of 1 on each, as before
    finally:
        for channel in channels:
            await channel.close()
