"""A client names only what the operator opened: no model string makes the core connect anywhere else.

Regression tests for the probe's SSRF finding: `oobabooga/http://127.0.0.1:PORT/...` made the core
POST to that port (the answer, or a closed port's error, came back: a port scanner), and `ollama/x`
made it connect to localhost:11434; the same against a port that never answers used up litellm's
thread pool, and every other stream then failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from streamgate.core import LiteLLMConfig, StreamError, StreamRequest
from streamgate.core import provider as provider_module
from streamgate.core.policy import carries_address
from streamgate.core.provider import LiteLLMProvider
from streamgate.testing.upstream import FakeUpstream
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import CoreFactory, collect


class Canary:
    """A TCP listener that counts every connection made to it."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 21\r\n\r\n{"secret": "canary"}\n')
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    listener = Canary()
    await listener.start()
    yield listener
    await listener.close()


def _addressed(port: int) -> list[str]:
    """Model strings that carry a URL or a host, for each litellm provider that takes one from the model."""
    return [
        f"oobabooga/http://127.0.0.1:{port}/internal-admin",
        f"oobabooga/HTTP://localhost:{port}/x",
        f"huggingface/http://127.0.0.1:{port}/x",
        f"openai/http://127.0.0.1:{port}/v1",
        f"hosted_vllm/http://127.0.0.1:{port}",
        f"triton/http://127.0.0.1:{port}/v2/models/x",
        f"ollama/127.0.0.1:{port}",
        f"openai_like/[::1]:{port}/x",
        f"http://127.0.0.1:{port}/v1",
        f"//127.0.0.1:{port}/x",
        f"openai/user@127.0.0.1:{port}",
    ]


#: Providers that reach a server the operator did not name: this machine (Ollama, LM Studio, Langflow,
#: LangGraph, ...) or the cloud's metadata address (SageMaker's credentials).
UNVETTED = [
    "ollama/x",
    "ollama_chat/x",
    "lm_studio/x",
    "llamafile/x",
    "hosted_vllm/x",
    "xinference/x",
    "vllm/x",
    "langflow/x",
    "langgraph/x",
    "sagemaker/x",
    "huggingface/x",
]


async def _refused(address: str, model: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        result = await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query="hi", model=model))
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT, (model, result.code, result.details)
    assert result.final is None
    return result.details or ""


async def test_by_default_only_the_operators_models_are_offered(
    make_core: CoreFactory, upstream: FakeUpstream, canary: Canary
) -> None:
    core = await make_core()

    for model in [*_addressed(canary.port), *UNVETTED, "openai/gpt-4o", "anthropic/claude-3-5-sonnet-20240620"]:
        details = await _refused(core.address, model)
        assert "is not offered here; ask for one of: openai/fake" in details

    await asyncio.sleep(0.2)
    assert canary.connections == 0
    assert upstream.counters.connections == 0


async def test_allow_any_model_still_refuses_a_url_or_a_host_in_the_model(
    make_core: CoreFactory, upstream: FakeUpstream, canary: Canary
) -> None:
    core = await make_core(allow_any_model=True)

    for model in _addressed(canary.port):
        details = await _refused(core.address, model)
        assert "names a URL or a host: only the operator chooses where the server connects" in details
    # Other models are open, and go to the operator's api_base.
    async with grpc.aio.insecure_channel(core.address) as channel:
        ok = await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query="hi", model="openai/other"))
    assert ok.code == grpc.StatusCode.OK
    assert ok.completion.model == "openai/other"

    await asyncio.sleep(0.2)
    assert canary.connections == 0


@pytest.mark.parametrize("api_base", [None, "operator's"])
async def test_allow_any_model_refuses_every_provider_not_vetted(
    make_core: CoreFactory, upstream: FakeUpstream, api_base: str | None
) -> None:
    # Their default addresses on this machine: listen there (when free) to see that nothing connects.
    locals_ = [Canary() for _ in (11434, 7860, 2024, 1234)]
    for canary, port in zip(locals_, (11434, 7860, 2024, 1234), strict=True):
        with contextlib.suppress(OSError):
            await canary.start(port)
    try:
        core = await make_core(allow_any_model=True, api_base=upstream.api_base if api_base else None)
        for model in UNVETTED:
            details = await _refused(core.address, model)
            assert "which is not a hosted API this server may reach for a client" in details
        await asyncio.sleep(0.2)
        assert [c.connections for c in locals_] == [0, 0, 0, 0]
        assert upstream.counters.connections == 0
    finally:
        for canary in locals_:
            await canary.close()


async def test_the_operator_may_write_a_model_with_its_address(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    # The operator chose this address: allowed as written, and the stream goes there.
    written = f"hosted_vllm/{upstream.api_base}"
    core = await make_core(allowed_models=(written,))

    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        result = await collect(stub, pb.GenerateRequest(query="hi", model=written))

    assert result.code != grpc.StatusCode.INVALID_ARGUMENT, result.details


async def test_refused_models_do_not_use_up_the_thread_pool(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    # The probe's third attack: URL models aimed at a port that accepts and never answers.
    silent = await asyncio.start_server(lambda r, w: asyncio.sleep(3600), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        core = await make_core(allow_any_model=True)
        async with grpc.aio.insecure_channel(core.address) as channel:
            stub = pb_grpc.StreamGateServiceStub(channel)
            attacks = [collect(stub, pb.GenerateRequest(query="hi", model=f"oobabooga/http://127.0.0.1:{port}/x"))]
            results = await asyncio.gather(*(attacks * 30))
            assert {r.code for r in results} == {grpc.StatusCode.INVALID_ARGUMENT}
            after = await collect(stub, pb.GenerateRequest(query="still served?"))
        assert after.code == grpc.StatusCode.OK
    finally:
        silent.close()


@pytest.mark.parametrize(
    ("model", "addressed"),
    [
        ("openai/gpt-4o-mini", False),
        ("anthropic/claude-3-5-sonnet-20240620", False),
        ("bedrock/anthropic.claude-3-sonnet-20240229-v1:0", False),
        ("ollama/llama3:8b", False),
        ("openai/llama-3.1-8b", False),
        ("oobabooga/http://10.0.0.5/x", True),
        ("huggingface/https://abc.endpoints.huggingface.cloud", True),
        ("ollama/10.0.0.5", True),
        ("openai/internal.example:8080", True),
        ("x/localhost", True),
        ("openai_like/[fd00::1]/x", True),
        ("openai/me@evil.example.com", True),
    ],
)
def test_which_model_strings_carry_an_address(model: str, addressed: bool) -> None:
    assert carries_address(model) is addressed


def test_the_lean_path_survives_a_flood_of_model_names(upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provider_module, "MAX_KNOWN_MODELS", 50)
    provider = LiteLLMProvider(
        LiteLLMConfig(model="openai/fake", api_base=upstream.api_base, api_key="k", allow_any_model=True)
    )
    for i in range(500):
        provider.resolve_model(f"openai/flood-{i}")
    provider.resolve_model("openai/fresh")

    # Still the lean OpenAI-compatible path for a new name (the probe: 53 ms a stream once 10,000
    # names were cached), and the cache holds no more than its bound.
    assert "openai/fresh" in provider._lean
    assert len(provider._known) <= 50
    with pytest.raises(StreamError):
        provider.resolve_model("oobabooga/http://127.0.0.1:1/x")


def test_the_operators_upstream_key_goes_to_its_own_provider_only(upstream: FakeUpstream) -> None:
    # The probe: with allow-any, `langflow/x` got the operator's --upstream-api-key in x-api-key.
    provider = LiteLLMProvider(
        LiteLLMConfig(model="openai/fake", api_base=upstream.api_base, api_key="operator-key", allow_any_model=True)
    )
    request = StreamRequest.create(query="hi")
    home = provider._kwargs(request, provider.resolve_model("openai/other"))
    away = provider._kwargs(request, provider.resolve_model("anthropic/claude-3-5-sonnet-20240620"))

    assert (home["api_base"], home["api_key"]) == (upstream.api_base, "operator-key")
    assert "api_key" not in away and "api_base" not in away  # Anthropic's own settings (ANTHROPIC_API_KEY)


def test_another_providers_model_does_not_go_to_the_operators_api_base(upstream: FakeUpstream) -> None:
    # The second rerun: with --model lm_studio/... and --api-base, `openai/x` went to that api_base
    # (with OPENAI_API_KEY): litellm handed the api_base back as every model's base URL.
    provider = LiteLLMProvider(
        LiteLLMConfig(model="hosted_vllm/evil", api_base=upstream.api_base, api_key="k", allow_any_model=True)
    )
    provider.resolve_model("openai/x")
    _, _, base = provider._lean["openai/x"]
    assert base != upstream.api_base
    provider.resolve_model("hosted_vllm/other")  # the operator's provider: its api_base, in _stream_lean
