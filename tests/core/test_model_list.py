"""The model list of `--config FILE`: names clients may ask for, each with its own upstream, and nothing else.

The done-when of issue 15: a config file with two models (the embedded one and an OpenAI-compatible
upstream on loopback) serves both by name and refuses a third, with one answer per transport:
404 `model_not_found` on /v1/*, 400 on /query/*, INVALID_ARGUMENT (trailer `streamgate-reason`) on gRPC.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest

from streamgate.core.models import ModelRoute, load_model_list, parse_model_list
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import BridgeFactory, CoreFactory, collect

YAML = """
# two models: the embedded one, and an OpenAI-compatible server
default: assistant
models:
  assistant:
    model: streamgate/default
  fast:
    model: openai/fake
    api_base: {base}
    api_key_env: FAST_KEY
    max_concurrent_streams: 1
    fallbacks: [assistant]
"""

TOML = """
default = "assistant"
[models.assistant]
model = "streamgate/default"
[models.fast]
model = "openai/fake"
api_base = "{base}"
api_key_env = "FAST_KEY"
max_concurrent_streams = 1
fallbacks = ["assistant"]
"""

ENV = {"FAST_KEY": "sk-fast-0123456789"}


def routes(base: str) -> tuple[ModelRoute, ...]:
    return parse_model_list(
        {
            "models": {
                "assistant": "streamgate/default",
                "fast": {
                    "model": "openai/fake",
                    "api_base": base,
                    "api_key_env": "FAST_KEY",
                    "max_concurrent_streams": 1,
                    "fallbacks": ["assistant"],
                },
            }
        },
        ENV,
    ).routes


def test_yaml_and_toml_files_give_the_same_list(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(YAML.format(base="http://127.0.0.1:9/v1"))
    (tmp_path / "models.toml").write_text(TOML.format(base="http://127.0.0.1:9/v1"))
    from_yaml = load_model_list(tmp_path / "models.yaml", ENV)
    assert from_yaml == load_model_list(tmp_path / "models.toml", ENV)
    assert from_yaml.default == "assistant"
    fast = from_yaml.routes[1]
    assert (fast.name, fast.model, fast.api_key, fast.max_concurrent_streams) == (
        "fast",
        "openai/fake",
        "sk-fast-0123456789",
        1,
    )
    assert "sk-fast" not in repr(from_yaml)  # a key never shows in a repr (and so in a log line)


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"models": {"a": {"model": "openai/x", "api_key": "sk-secret"}}}, "a key is never written in the file"),
        ({"models": {"a": {"model": "openai/x", "api_key_env": "UNSET_VAR"}}}, "UNSET_VAR is not set"),
        ({"models": {"a": {"model": "openai/x", "temprature": 1}}}, "unknown setting(s) temprature"),
        ({"models": {"a": {"model": "openai/x", "fallbacks": ["b"]}}}, "falls back to 'b'"),
        ({"default": "b", "models": {"a": "openai/x"}}, "the default model 'b' is not in 'models'"),
        ({"models": {"a": {"model": "openai/x", "api_base": "file:///etc"}}}, "api_base must be an http://"),
        ({"models": {}}, "name at least one"),
        ({"modles": {"a": "openai/x"}}, "unknown setting(s) modles"),
        ({"models": {"a b": "openai/x"}}, "without spaces"),
    ],
)
def test_a_wrong_file_is_refused_with_the_entry_named(document: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as caught:
        parse_model_list(document, {})
    assert "sk-secret" not in str(caught.value)


def test_the_command_line_names_what_is_wrong_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(YAML.format(base="http://127.0.0.1:9/v1"))
    env = {"PATH": "/usr/bin:/bin", "STREAMGATE_LINK_TOKEN": "x" * 16}
    done = subprocess.run(
        [sys.executable, "-m", "streamgate.cli", "core", "--config", str(config), "--grpc-port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert "FAST_KEY is not set" in done.stderr
    assert "Traceback" not in done.stderr


async def _sse_answer(http: aiohttp.ClientSession, url: str, body: dict[str, object]) -> tuple[int, str, dict]:
    """Status, text and the final data of a /v1/chat/completions stream (or the error body)."""
    async with http.post(url, json=body) as response:
        if response.status != 200:
            return response.status, "", await response.json()
        text, last = "", {}
        async for line in response.content:
            if line.startswith(b"data: {"):
                data = json.loads(line[6:])
                for choice in data.get("choices", []):
                    text += choice["delta"].get("content") or ""
                last = data
        return 200, text, last


async def test_a_config_with_two_models_serves_both_by_name_and_refuses_a_third(
    make_bridge: BridgeFactory, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    bridge = await make_bridge(
        core_model="assistant",
        core_routes=routes(upstream.api_base),
        core_api_base=None,
        core_api_key=None,
        core_embedded_tokens_per_second=0,
    )
    base = f"http://127.0.0.1:{bridge.port}"
    async with http.get(f"{base}/v1/models") as response:
        listed = [m["id"] for m in (await response.json())["data"]]
    assert listed == ["assistant", "fast"]  # the names, never the model strings behind them

    chat = f"{base}/v1/chat/completions"
    ask = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": {"include_usage": True}}
    status, text, last = await _sse_answer(http, chat, {**ask, "model": "fast"})
    assert status == 200 and text == "".join(token(i) for i in range(8)), text  # the upstream's words
    assert last["model"] == "fast"
    assert upstream.counters.started == 1
    assert upstream.counters.authorizations[-1] == "Bearer sk-fast-0123456789"  # this entry's key, to its upstream
    assert upstream.counters.bodies[-1]["model"] == "fake"  # the model string behind the name

    status, text, last = await _sse_answer(http, chat, {**ask, "model": "assistant"})
    assert status == 200 and text and last["model"] == "assistant"
    assert upstream.counters.started == 1  # the embedded model: no upstream
    status, text, last = await _sse_answer(http, chat, ask)  # no model named: the default answers, and says so
    assert status == 200 and text and last["model"] == "assistant"

    for third in ("openai/fake", "gpt-4o", "FAST"):
        status, _, body = await _sse_answer(http, chat, {**ask, "model": third})
        assert status == 404, (third, body)
        assert body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
        assert "assistant, fast" in body["error"]["message"]
    async with http.get(f"{base}/v1/models/openai%2Ffake") as response:
        assert response.status == 404 and (await response.json())["error"]["code"] == "model_not_found"
    async with http.post(f"{base}/query/stream", json={"query": "hi", "model": "gpt-4o"}) as response:
        assert response.status == 400
        assert "not offered here" in (await response.json())["error"]["message"]
    assert upstream.counters.started == 1  # nothing reached any upstream for the third


async def test_grpc_refuses_a_model_not_in_the_list_with_its_reason(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    core = await make_core(
        model="assistant", routes=routes(upstream.api_base), api_base=None, api_key=None, embedded_tokens_per_second=0
    )
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        call = stub.Generate(pb.GenerateRequest(query="hi", model="openai/fake"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("streamgate-reason", "model_not_found") in tuple(caught.value.trailing_metadata() or ())
        models = await stub.ListModels(pb.ListModelsRequest())
        assert list(models.models) == ["assistant", "fast"]
        served = await collect(stub, pb.GenerateRequest(query="hi", model="fast"))
        assert served.code == grpc.StatusCode.OK and served.completion.model == "fast"


async def test_a_models_own_limit_refuses_only_that_model(
    make_bridge: BridgeFactory, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.scenarios["fake"] = Scenario(tokens=50, delay=0.02)
    bridge = await make_bridge(
        core_model="assistant",
        core_routes=routes(upstream.api_base),
        core_api_base=None,
        core_api_key=None,
        core_embedded_tokens_per_second=0,
    )
    chat = f"http://127.0.0.1:{bridge.port}/v1/chat/completions"
    ask = {"messages": [{"role": "user", "content": "hello"}], "stream": True}
    async with http.post(chat, json={**ask, "model": "fast"}) as first:
        assert first.status == 200
        await first.content.readline()  # streaming: it holds fast's one slot
        status, _, body = await _sse_answer(http, chat, {**ask, "model": "fast"})
        assert status == 429 and "model 'fast' (limit 1)" in body["error"]["message"]
        status, text, _ = await _sse_answer(http, chat, {**ask, "model": "assistant"})
        assert status == 200 and text  # the other model is not held back by fast's limit
    await asyncio.sleep(0.1)
    status, _, _ = await _sse_answer(http, chat, {**ask, "model": "fast"})
    assert status == 200  # the slot came back when the first stream ended


async def test_a_model_falls_back_to_the_models_it_names(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.scenarios["fake"] = Scenario(status=503)
    core = await make_core(
        model="assistant",
        routes=routes(upstream.api_base),
        api_base=None,
        api_key=None,
        embedded_tokens_per_second=0,
        retries=0,
    )
    async with grpc.aio.insecure_channel(core.address) as channel:
        result = await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query="hi", model="fast"))
    assert result.code == grpc.StatusCode.OK
    assert result.completion.model == "assistant"  # served by its fallback, and says so
    assert upstream.counters.started == 1
