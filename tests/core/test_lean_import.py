"""A core that serves only the embedded model or OpenAI-compatible upstreams never imports litellm
(issue 17: about 220 MiB and 4 s of start-up); a model that needs litellm still gets it.

Each core is a real `streamgate core` process run with `PYTHONPROFILEIMPORTTIME=1`: Python then logs
every module the process imports, at start-up or later, so a `import litellm` added anywhere on the
core's path (at a module's top, or lazily on a stream's way) shows in its log.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from streamgate.testing.upstream import FakeUpstream, Scenario
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import collect, process_env

STREAMGATE = [sys.executable, "-m", "streamgate.cli"]
#: `import time:  self [us] |  cumulative | imported package`, one line a module.
_IMPORTED = re.compile(r"^import time:\s+\d+\s+\|\s+\d+\s+\|\s+(\S+)\s*$", re.MULTILINE)
#: The core without litellm is about 65 MiB (with it, about 275).
MAX_LEAN_CORE_RSS_MIB = 150


class CoreProcess:
    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.address = ""

    async def listening(self, within: float = 60.0) -> None:
        async with asyncio.timeout(within):
            while not (found := re.search(r"core listening on (\S+)", self.log.read_text(errors="replace"))):
                assert self.process.returncode is None, self.log.read_text(errors="replace")[-2000:]
                await asyncio.sleep(0.05)
        self.address = found.group(1)

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert found, status
        return int(found.group(1)) / 1024

    async def stop(self) -> set[str]:
        """Stop the core; the top-level packages it imported in its whole life."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await self.process.wait()
        return {name.split(".")[0] for name in _IMPORTED.findall(self.log.read_text(errors="replace"))}


StartCore = Callable[..., Awaitable[CoreProcess]]


@pytest.fixture
async def start_core(tmp_path: Path) -> AsyncIterator[StartCore]:
    processes: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> CoreProcess:
        env = process_env(
            STREAMGATE_TOKENS_PER_SECOND="1000", STREAMGATE_DRAIN_GRACE="0.5", PYTHONPROFILEIMPORTTIME="1"
        )
        log = tmp_path / f"core-{len(processes)}.log"
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(*STREAMGATE, "core", *args, env=env, stderr=sink)
        processes.append(process)
        core = CoreProcess(process, log)
        await core.listening()
        return core

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _stream(address: str, request: pb.GenerateRequest) -> pb.Completion:
    async with grpc.aio.insecure_channel(address) as channel:
        result = await collect(pb_grpc.StreamGateServiceStub(channel), request)
    return result.completion


async def test_a_core_serving_the_embedded_model_never_imports_litellm(start_core: StartCore) -> None:
    core = await start_core()  # the default model: streamgate/default

    completion = await _stream(core.address, pb.GenerateRequest(query="Hello", parameters=pb.GenerationParameters()))
    rss = core.rss_mib()
    imported = await core.stop()

    assert completion.text.startswith("Hello!")
    assert completion.HasField("cost_usd") and completion.cost_usd == 0.0
    assert "grpc" in imported, "the import log works"
    assert "litellm" not in imported
    assert rss < MAX_LEAN_CORE_RSS_MIB, rss


async def test_a_core_serving_an_openai_compatible_upstream_never_imports_litellm(
    start_core: StartCore, upstream: FakeUpstream
) -> None:
    core = await start_core(
        "--model", "openai/gpt-4o-mini", "--api-base", upstream.api_base, "--upstream-api-key", "test-key"
    )

    priced = await _stream(core.address, pb.GenerateRequest(query="Hello"))
    rss = core.rss_mib()  # before the tokenizer loads (o200k_base: about 70 MiB, on the first count)
    upstream.default = Scenario(tokens=8, send_usage=False)  # the core counts the tokens itself
    estimated = await _stream(core.address, pb.GenerateRequest(query="Hello"))
    imported = await core.stop()

    assert priced.usage.completion_tokens == 8
    assert priced.cost_usd == pytest.approx(
        1.5e-07 * priced.usage.prompt_tokens + 6e-07 * priced.usage.completion_tokens
    )  # litellm's price of gpt-4o-mini
    assert estimated.usage_estimated and estimated.usage.completion_tokens > 0
    assert "grpc" in imported and "tiktoken" in imported
    assert "litellm" not in imported
    assert rss < MAX_LEAN_CORE_RSS_MIB, rss


async def test_a_core_serving_a_model_that_needs_litellm_imports_it(start_core: StartCore) -> None:
    # Anthropic is no lean provider: litellm resolves it (offline: no request is made to start).
    core = await start_core("--model", "anthropic/claude-3-5-sonnet-20240620", "--upstream-api-key", "test-key")

    imported = await core.stop()

    assert "litellm" in imported
