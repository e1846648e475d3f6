"""The official `openai` npm package under Node against the bridge: the scripts in tests/node/ (ESM)
run with `node`, pointed at the live bridge by `STREAMGATE_BASE_URL` and `STREAMGATE_API_KEY` (auth is
on), and print one JSON line per thing checked here.

The package is pinned in the root package.json and installed by scripts/setup (`npm ci`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamgate.bridges.app import BridgeServer
from streamgate.core.auth import Keyring
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.conftest import BridgeFactory, eventually

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "node"
KEY = "node-secret-key-0123"


def _node() -> str:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "openai" / "package.json").is_file():
        pytest.fail("node and the openai npm package are needed: run scripts/setup (npm ci at the repository root)")
    return node


def _env(bridge: BridgeServer) -> dict[str, str]:
    return {
        **os.environ,
        "STREAMGATE_BASE_URL": f"{bridge.url}/v1",
        "STREAMGATE_API_KEY": KEY,
        "STREAMGATE_MODEL": "openai/fake",
    }


async def node(bridge: BridgeServer, script: str, *args: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Run a script to its end; its JSON lines."""
    process = await asyncio.create_subprocess_exec(
        _node(),
        str(SCRIPTS / script),
        *args,
        env=_env(bridge),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode()
    return [json.loads(line) for line in stdout.decode().splitlines()]


@pytest.fixture
async def bridge(make_bridge: BridgeFactory) -> BridgeServer:
    return await make_bridge(core_keyring=Keyring.from_lines([f"node: {KEY}"]))


async def test_node_streams_with_usage_and_the_extension(bridge: BridgeServer, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=5)

    lines = await node(bridge, "openai_stream.mjs")

    request_id = lines[0]["request_id"]
    chunks = [line["chunk"] for line in lines if "chunk" in line]
    assert lines[-1] == {"done": True}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "".join(
        token(i) for i in range(5)
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}
    assert usage["streamgate"]["request_id"] == request_id
    assert usage["streamgate"]["ttft_ms"] > 0 and "cost_usd" in usage["streamgate"]
    assert {c["id"] for c in chunks} == {f"chatcmpl-{request_id}"}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "openai/fake" for c in chunks)


async def test_node_gets_a_whole_completion_the_models_and_api_errors(
    bridge: BridgeServer, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=5)

    lines = await node(bridge, "openai_calls.mjs")

    answer = {key: value for line in lines for key, value in line.items()}
    completion = answer["completion"]
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "".join(token(i) for i in range(3))}
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 3
    assert answer["request_id"] == completion["streamgate"]["request_id"]
    assert answer["models"] == ["openai/fake"]
    assert answer["bad_request"] == {
        "name": "BadRequestError",
        "api_error": True,
        "status": 400,
        "type": "invalid_request_error",
        "code": None,
        "param": "temperature",
        "message": "400 Invalid type for 'temperature': expected a number, but got a string instead.",
        "request_id": None,
    }
    wrong_key = answer["wrong_key"]
    assert (wrong_key["name"], wrong_key["status"]) == ("AuthenticationError", 401)
    assert wrong_key["code"] == "invalid_api_key"
    assert "node-wrong-key" not in wrong_key["message"] and KEY not in wrong_key["message"]
    assert upstream.counters.started == 1


async def test_node_gets_an_api_error_when_the_upstream_fails_mid_stream(
    bridge: BridgeServer, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=10, drop_after=3)

    lines = await node(bridge, "openai_stream.mjs")

    text = "".join(line["chunk"]["choices"][0]["delta"].get("content") or "" for line in lines if "chunk" in line)
    assert text == "".join(token(i) for i in range(3))
    error = lines[-1]["error"]
    # The last data: line is the error object; the SDK throws a plain APIError (no status: it was 200).
    assert (error["name"], error["api_error"], error["status"]) == ("APIError", True, None)
    assert (error["type"], error["code"]) == ("api_error", "service_unavailable")
    assert error["request_id"] == lines[0]["request_id"]


@pytest.fixture
async def leaving(bridge: BridgeServer) -> AsyncIterator[Any]:
    """Start `openai_leave.mjs HOW`; the process is ended (its stdin closed) after the test."""
    processes: list[asyncio.subprocess.Process] = []

    async def start(how: str) -> dict[str, Any]:
        process = await asyncio.create_subprocess_exec(
            _node(),
            str(SCRIPTS / "openai_leave.mjs"),
            how,
            env=_env(bridge),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        processes.append(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line, "the script ended before it left the stream"
        left: dict[str, Any] = json.loads(line)
        assert process.returncode is None, "still running: its connection is not closed by an exit"
        return left

    yield start
    for process in processes:
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("how", ["abort", "break"])
async def test_node_leaving_a_stream_closes_the_upstream_within_a_second(
    bridge: BridgeServer, upstream: FakeUpstream, leaving: Any, how: str
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.01)

    left = await leaving(how)

    assert left == {"left": "aborted" if how == "abort" else "break", "text": token(0)}
    await eventually(lambda: upstream.counters.disconnects == 1 and upstream.counters.active == 0, within=1.0)
    await eventually(lambda: not bridge.state.streams)
    assert upstream.counters.finished == 0
