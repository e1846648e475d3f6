"""Real parts on loopback: an OpenAI-compatible upstream, the gRPC core, clients."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import pytest

from streamgate.bridges.app import BridgeServer
from streamgate.core import LiteLLMConfig
from streamgate.core.auth import Keyring
from streamgate.rpc.server import CoreServer, CoreServerConfig
from streamgate.testing.upstream import FakeUpstream, Scenario
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

#: The link token of the test cores and bridges. In the environment too: a core run as a process
#: (`streamgate core`) inherits it, and the bridges of `make_bridge` send it.
LINK_TOKEN = os.environ.setdefault("STREAMGATE_LINK_TOKEN", "test-link-token-0123456789")


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    server = FakeUpstream(Scenario(tokens=8))
    await server.start()
    yield server
    await server.close()


CoreFactory = Callable[..., Awaitable[CoreServer]]


@pytest.fixture
async def make_core(upstream: FakeUpstream) -> AsyncIterator[CoreFactory]:
    """Start a core on a free port; keyword arguments override `LiteLLMConfig` fields (`ledger`, `data_dir`,
    `admins`, `tracer_provider`, `redis_url` and `redis_fail` are `CoreServerConfig`'s).

    By default it talks to the test upstream as `openai/fake`.
    """
    servers: list[CoreServer] = []

    async def start(**overrides: Any) -> CoreServer:
        metrics_port = overrides.pop("metrics_port", None)
        drain_grace = overrides.pop("drain_grace", 0.5)
        keyring = overrides.pop("keyring", Keyring())
        link_token = overrides.pop("link_token", LINK_TOKEN)
        server_fields = {
            k: overrides.pop(k)
            for k in ("ledger", "data_dir", "admins", "tracer_provider", "redis_url", "redis_fail", "link_listen")
            if k in overrides
        }
        fields = {"model": "openai/fake", "api_base": upstream.api_base, "api_key": "test-key", "retry_backoff": 0.01}
        fields["coalesce"] = False  # chunk-level assertions: one chunk a token (tests/core/test_coalesce.py: on)
        fields.update(overrides)
        server = CoreServer(
            LiteLLMConfig(**fields),
            CoreServerConfig(
                grpc_port=0,
                metrics_port=metrics_port,
                drain_grace=drain_grace,
                keyring=keyring,
                link_token=link_token,
                **server_fields,
            ),
        )
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace=0)


@pytest.fixture
async def core(make_core: CoreFactory) -> CoreServer:
    return await make_core()


@dataclasses.dataclass
class Client:
    channel: grpc.aio.Channel
    stub: pb_grpc.StreamGateServiceStub


@pytest.fixture
async def client(core: CoreServer) -> AsyncIterator[Client]:
    async with grpc.aio.insecure_channel(core.address) as channel:
        yield Client(channel, pb_grpc.StreamGateServiceStub(channel))


@dataclasses.dataclass
class Result:
    chunks: list[str]
    final: pb.GenerateResponse | None
    code: grpc.StatusCode
    details: str | None

    @property
    def completion(self) -> pb.Completion:
        assert self.final is not None and self.final.HasField("completion"), self
        return self.final.completion

    @property
    def error(self) -> pb.Error:
        assert self.final is not None and self.final.HasField("error"), self
        return self.final.error


async def collect(stub: pb_grpc.StreamGateServiceStub, request: pb.GenerateRequest, **call: Any) -> Result:
    """Read a whole stream; check that nothing follows the final message."""
    chunks: list[str] = []
    final: pb.GenerateResponse | None = None
    responses = stub.Generate(request, **call)
    try:
        async for response in responses:
            assert final is None, f"a message after the final one: {response}"
            if response.HasField("chunk"):
                assert response.chunk.index == len(chunks)
                chunks.append(response.chunk.content)
            else:
                final = response
    except grpc.aio.AioRpcError as exc:
        return Result(chunks, final, exc.code(), exc.details())
    return Result(chunks, final, await responses.code(), await responses.details())


async def eventually(predicate: Callable[[], bool], within: float = 1.0) -> float:
    """Wait until `predicate()` holds; fail after `within` seconds. Returns the seconds it took."""
    import asyncio
    import time

    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def read_rest(call: Any) -> list[pb.GenerateResponse]:
    """The rest of a call that was read with `call.read()` (the two reading styles cannot mix)."""
    responses = []
    while (response := await call.read()) is not grpc.aio.EOF:
        responses.append(response)
    return responses


BridgeFactory = Callable[..., Awaitable[BridgeServer]]


@pytest.fixture
async def make_bridge(make_core: CoreFactory) -> AsyncIterator[BridgeFactory]:
    """Start a core (with `core_*` keyword arguments for `LiteLLMConfig`) and a bridge in front of it.

    Other keyword arguments override `BridgeConfig` fields; `core=` names another core address. The bridge
    reaches the core it starts as `streamgate serve`'s does, over a Unix socket; `link="grpc"`: over the
    gRPC `Relay` call.
    """
    import itertools
    import shutil
    import tempfile

    from streamgate.bridges.app import BridgeServer
    from streamgate.bridges.config import BridgeConfig

    bridges: list[BridgeServer] = []
    sockets = tempfile.mkdtemp(prefix="sg-link-")  # short: a Unix socket's path has at most 107 bytes
    numbers = itertools.count()

    async def start(**overrides: Any) -> BridgeServer:
        core_fields = {k.removeprefix("core_"): overrides.pop(k) for k in list(overrides) if k.startswith("core_")}
        link = overrides.pop("link", "socket")
        if "core" not in overrides:
            if link == "socket":
                core_fields.setdefault("link_listen", f"unix:{sockets}/core-{next(numbers)}.sock")
            core = await make_core(**core_fields)
            overrides["core"] = core.address
            overrides.setdefault("core_link", core.link_address)
        overrides.setdefault("coalesce", False)  # as the core's: one frame a token
        overrides.setdefault("link_token", LINK_TOKEN)
        server = BridgeServer(BridgeConfig(http_port=0, **overrides))
        await server.start()
        bridges.append(server)
        return server

    yield start
    for server in bridges:
        await server.stop(grace=0)
    shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture
async def bridge(make_bridge: BridgeFactory) -> BridgeServer:
    return await make_bridge()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session


def process_env(**settings: str) -> dict[str, str]:
    """The environment of a `streamgate` process a test starts: this one's, any free gRPC and HTTP port,
    no metrics port, and `settings` (`STREAMGATE_*` variables and others) over them."""
    return {
        **os.environ,
        "STREAMGATE_GRPC_PORT": "0",
        "STREAMGATE_HTTP_PORT": "0",
        "STREAMGATE_METRICS_PORT": "off",
        **settings,
    }


async def wait_for_line(stream: Any, pattern: str, within: float = 60.0) -> str:
    """Read a process's log until a line matches `pattern`; return the pattern's first group."""
    import asyncio
    import re

    async with asyncio.timeout(within):
        while line := (await stream.readline()).decode():
            if found := re.search(pattern, line):
                return found.group(1)
    raise AssertionError(f"the process ended before logging {pattern!r}")
