"""Spare upstream connections: a stream that starts finds one already open (core/preconnect.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import grpc
import pytest

from streamgate.core.preconnect import Preconnect
from streamgate.testing.upstream import FakeUpstream, Scenario
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import CoreFactory, eventually


class _Connections:
    """How the session's requests got their connection: a new one, or one waiting in the pool."""

    def __init__(self) -> None:
        self.created = 0
        self.reused = 0
        self.trace = aiohttp.TraceConfig()
        self.trace.on_connection_create_end.append(self._created)
        self.trace.on_connection_reuseconn.append(self._reused)

    async def _created(self, session: Any, context: SimpleNamespace, params: Any) -> None:
        self.created += 1

    async def _reused(self, session: Any, context: SimpleNamespace, params: Any) -> None:
        self.reused += 1


@pytest.fixture
async def preconnected() -> AsyncIterator[tuple[aiohttp.ClientSession, Preconnect, _Connections]]:
    connections, preconnect = _Connections(), Preconnect()
    async with aiohttp.ClientSession(trace_configs=[connections.trace, preconnect.trace]) as session:
        preconnect.attach(session)
        yield session, preconnect, connections
        await preconnect.close()


async def _post(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    return await session.post(url, json={"model": "fake", "messages": [], "stream": True})


async def test_the_next_request_takes_the_spare_instead_of_connecting(
    upstream: FakeUpstream, preconnected: tuple[aiohttp.ClientSession, Preconnect, _Connections]
) -> None:
    upstream.default = Scenario(tokens=200, delay=0.05)
    session, preconnect, connections = preconnected
    url = f"{upstream.api_base}/chat/completions"

    first = await _post(session, url)  # the pool was empty: this one connects itself
    await preconnect.settle()  # ... and a spare is opened for the next
    await eventually(lambda: upstream.open_connections == 2)
    second = await _post(session, url)

    assert connections.created == 1  # the first request's own: the second took the spare
    assert connections.reused == 1
    await preconnect.settle()  # it took the last idle one: another spare for the one after
    await eventually(lambda: upstream.open_connections == 3)
    assert upstream.counters.started == 2
    first.close()
    second.close()


async def test_no_spare_while_one_waits(
    upstream: FakeUpstream, preconnected: tuple[aiohttp.ClientSession, Preconnect, _Connections]
) -> None:
    session, preconnect, connections = preconnected
    url = f"{upstream.api_base}/chat/completions"
    for _ in range(3):  # one after another: each ends before the next, and leaves its connection idle
        async with await _post(session, url) as response:
            await response.read()
        await preconnect.settle()

    # The first request opened one, and a spare was opened beside it; the others found two idle.
    assert connections.created == 1
    assert connections.reused == 2
    await eventually(lambda: upstream.open_connections == 2)


async def test_the_core_keeps_a_spare_ahead_of_its_streams(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.05)
    core = await make_core()
    async with grpc.aio.insecure_channel(core.address) as channel:
        call = pb_grpc.StreamGateServiceStub(channel).Generate(pb.GenerateRequest(query="hi"))
        first = await call.read()
        assert first.WhichOneof("event") == "chunk"
        # One connection carries the stream, and one waits for the next stream.
        await eventually(lambda: upstream.open_connections == 2)
        assert upstream.counters.started == 1
        call.cancel()


async def test_preconnect_off_opens_no_spare(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.05)
    core = await make_core(preconnect=False)
    async with grpc.aio.insecure_channel(core.address) as channel:
        call = pb_grpc.StreamGateServiceStub(channel).Generate(pb.GenerateRequest(query="hi"))
        await call.read()
        await eventually(lambda: upstream.open_connections == 1)
        with pytest.raises(AssertionError):
            await eventually(lambda: upstream.open_connections > 1, within=0.3)
        call.cancel()


async def test_a_fault_in_preconnect_never_fails_the_stream(
    upstream: FakeUpstream,
    preconnected: tuple[aiohttp.ClientSession, Preconnect, _Connections],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(session: aiohttp.ClientSession, key: object) -> int:
        raise RuntimeError("a bug in the spare's bookkeeping")

    monkeypatch.setattr(Preconnect, "_idle", staticmethod(broken))
    session, _, _ = preconnected

    async with await _post(session, f"{upstream.api_base}/chat/completions") as response:
        assert response.status == 200
        assert b"data: [DONE]" in await response.read()
    assert "cannot tell whether a spare connection is needed" in caplog.text
