"""Logs a machine can read: `--log-format json` (one object a line, a stream's figures as fields), and an
access line per HTTP request on the bridge, in both formats; keys never appear."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from streamgate._logs import FORMAT, JsonFormatter, OneLineFormatter
from streamgate.core.auth import Keyring
from streamgate.testing.sse import read_events
from streamgate.testing.upstream import FakeUpstream, Scenario
from tests.conftest import LINK_TOKEN, BridgeFactory, eventually

KEY = "sk-alice-0123456789-secret"
WRONG_KEY = "sk-mallory-9876543210-guess"


class Captured:
    def __init__(self, formatter: logging.Formatter) -> None:
        self.out = io.StringIO()
        self.handler = logging.StreamHandler(self.out)
        self.handler.setFormatter(formatter)

    @property
    def text(self) -> str:
        return self.out.getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]


def _capture(formatter: logging.Formatter) -> Iterator[Captured]:
    captured = Captured(formatter)
    logger = logging.getLogger("streamgate")
    level = logger.level
    logger.addHandler(captured.handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        logger.removeHandler(captured.handler)
        logger.setLevel(level)


@pytest.fixture
def json_logs() -> Iterator[Captured]:
    yield from _capture(JsonFormatter())


@pytest.fixture
def text_logs() -> Iterator[Captured]:
    yield from _capture(OneLineFormatter(FORMAT))


async def test_json_lines_carry_the_streams_figures_and_the_access_line_and_never_a_key(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream, json_logs: Captured
) -> None:
    upstream.default = Scenario(tokens=5)
    bridge = await make_bridge(core_keyring=Keyring.from_lines([f"alice: {KEY}"]))
    async with http.post(
        f"{bridge.url}/query/stream", json={"query": "Hello"}, headers={"Authorization": f"Bearer {KEY}"}
    ) as response:
        frames = [frame async for frame in read_events(response)]
    async with http.post(
        f"{bridge.url}/query/stream", json={"query": "Hello"}, headers={"Authorization": f"Bearer {WRONG_KEY}"}
    ) as refused:
        assert refused.status == 401
    final = frames[-1]["metadata"]
    await eventually(lambda: json_logs.text.count('"logger": "streamgate.access"') >= 2)

    records = json_logs.records()  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
    (stream,) = [r for r in records if r["logger"] == "streamgate.core" and r.get("outcome") == "completed"]
    assert stream["level"] == "INFO" and stream["time"].endswith("Z")
    assert stream["request_id"] == final["request_id"]
    assert (stream["key_holder"], stream["model"], stream["transport"]) == ("alice", "openai/fake", "sse")
    assert (stream["prompt_tokens"], stream["completion_tokens"]) == (1, 5)
    assert stream["ttft_ms"] == final["metrics"]["ttft_ms"] and stream["duration_ms"] == final["metrics"]["duration_ms"]
    assert stream["finish_reason"] == "stop" and stream["chunks"] == 5 and stream["cost_usd"] is None
    assert stream["message"].startswith(f"stream {final['request_id']} completed")

    served, denied = [r for r in records if r["logger"] == "streamgate.access"]
    assert (served["method"], served["path"], served["status"]) == ("POST", "/query/stream", 200)
    assert (served["request_id"], served["outcome"]) == (final["request_id"], "completed")
    assert served["bytes"] > sum(len(json.dumps(f)) for f in frames) and served["duration_ms"] > 0
    assert (denied["status"], denied["outcome"], denied["request_id"]) == (401, "unauthenticated", None)

    for secret in (KEY, WRONG_KEY, LINK_TOKEN):
        assert secret not in json_logs.text


async def test_the_access_line_in_text_names_no_query_string_and_a_client_that_left_is_499(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream, text_logs: Captured
) -> None:
    bridge = await make_bridge()
    async with http.get(f"{bridge.url}/query/stream", params={"query": "my secret prompt", "max_tokens": "2"}) as r:
        frames = [frame async for frame in read_events(r)]
    request_id = frames[-1]["metadata"]["request_id"]
    async with http.get(f"{bridge.url}/healthz") as health:
        assert health.status == 200

    # An OpenAI stream's head waits for its first token: a client that leaves before it got no status.
    upstream.default = Scenario(tokens=3, first_token_delay=30)
    body = {"messages": [{"role": "user", "content": "Hello"}], "stream": True}
    call = asyncio.ensure_future(http.post(f"{bridge.url}/v1/chat/completions", json=body))
    await eventually(lambda: upstream.counters.active == 1, within=5.0)
    call.cancel()
    await eventually(lambda: "/v1/chat/completions" in text_logs.text, within=5.0)

    lines = [line for line in text_logs.text.splitlines() if " streamgate.access: " in line]
    assert any(
        "GET /query/stream 200 " in line and f"request_id={request_id} outcome=completed" in line for line in lines
    )
    assert any(
        " INFO streamgate.access: GET /healthz 200 " in line and "request_id=- outcome=-" in line for line in lines
    )
    assert any("POST /v1/chat/completions 499 0B " in line and "outcome=disconnected" in line for line in lines), lines
    assert "secret prompt" not in text_logs.text and "my+secret" not in text_logs.text
