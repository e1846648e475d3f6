"""grpcurl against a live core, by server reflection alone: no proto files, no generated code.

grpcurl is pinned and installed into clients/go/.bin by clients/go/setup.sh.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from streamgate.rpc.server import CoreServer
from streamgate.testing.upstream import token

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = ROOT / "clients" / "go" / ".bin" / "grpcurl"
SERVICE = "streamgate.v1.StreamGateService"


async def grpcurl(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run grpcurl; return its exit status, stdout and stderr."""
    if not GRPCURL.is_file():
        pytest.fail(f"grpcurl is missing at {GRPCURL}: run clients/go/setup.sh (needs Go) to install the pinned one")
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def json_stream(text: str) -> list[dict[str, Any]]:
    """The JSON messages grpcurl prints one after another."""
    decoder = json.JSONDecoder()
    messages, at, text = [], 0, text.strip()
    while at < len(text):
        message, at = decoder.raw_decode(text, at)
        messages.append(message)
        while at < len(text) and text[at].isspace():
            at += 1
    return messages


async def test_reflection_lists_the_service(core: CoreServer) -> None:
    code, out, err = await grpcurl("-plaintext", core.address, "list")
    assert code == 0, err
    services = out.split()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    assert "streamgate.link.v1.LinkService" not in services  # the bridge's link is internal

    code, out, err = await grpcurl("-plaintext", core.address, "list", SERVICE)
    assert code == 0, err
    methods = ("Attach", "Generate", "GetMetrics", "GetUsage", "ListModels")
    assert sorted(out.split()) == [f"{SERVICE}.{m}" for m in methods]


async def test_generate_streams_chunks_then_one_completion(core: CoreServer) -> None:
    code, out, err = await grpcurl(
        "-plaintext", "-emit-defaults", "-d", '{"query": "hi"}', core.address, f"{SERVICE}/Generate"
    )
    assert code == 0, err
    messages = json_stream(out)
    chunks = [m["chunk"] for m in messages[:-1]]
    assert all(set(m) == {"chunk"} for m in messages[:-1]), messages
    assert [c["index"] for c in chunks] == list(range(8))
    text = "".join(c["content"] for c in chunks)
    assert text == "".join(token(i) for i in range(8))

    completion = messages[-1]["completion"]
    assert completion["text"] == text
    assert completion["finishReason"] == "stop"
    assert completion["usage"] == {"promptTokens": 1, "completionTokens": 8, "totalTokens": 9}
    assert completion["metrics"]["chunks"] == 8
    assert completion["metrics"]["ttftMs"] > 0
    assert completion["requestId"]


async def test_a_refused_call_exits_with_its_status(core: CoreServer) -> None:
    request = json.dumps({"query": "hi", "model": "no-such-provider/x"})
    code, out, err = await grpcurl("-plaintext", "-d", request, core.address, f"{SERVICE}/Generate")
    assert code == 64 + 3, (code, out, err)  # grpcurl exits 64 + the status code: INVALID_ARGUMENT is 3
    assert "Code: InvalidArgument" in err
    assert out.strip() == ""


async def test_get_metrics(core: CoreServer) -> None:
    assert (await grpcurl("-plaintext", "-d", '{"query": "hi"}', core.address, f"{SERVICE}/Generate"))[0] == 0
    code, out, err = await grpcurl("-plaintext", core.address, f"{SERVICE}/GetMetrics")
    assert code == 0, err
    (metrics,) = json_stream(out)
    assert metrics["streamsStarted"] == "1"  # uint64 is a JSON string
    assert metrics["completionTokens"] == "8"
