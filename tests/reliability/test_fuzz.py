"""Property-based fuzzing of the HTTP and WebSocket entries with generated input: every input gets a
well-formed answer, and the bridge keeps serving."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamgate.bridges.app import BridgeServer
from streamgate.testing.sse import SSEParser

#: Any code point, lone surrogates and control characters included (JSON escapes them all).
TEXT = st.text(st.characters(exclude_categories=()), max_size=20)
#: Huge and tiny floats beside the usual ones, and integers past int64.
NUMBERS = (
    st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**80)
    | st.floats(allow_nan=False)
    | st.sampled_from([1e20, 1.7e308, -1e20, 5e-324, 1e-300, 0.0, -0.0])
)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    ["query", "messages", "model", "temperature", "max_tokens", "stop", "parameters", "timeout", "seed", "top_p"]
)
QUERIES = st.dictionaries(FIELDS | st.text(max_size=8), JSON, max_size=5) | st.fixed_dictionaries(
    {"query": st.text(st.characters(exclude_categories=()), max_size=50)},
    optional={
        "max_tokens": st.integers(-5, 5),
        "temperature": JSON,
        "timeout": NUMBERS,
        "request_id": TEXT,
        "model": TEXT | st.just("openai/fake"),
    },
)
BODIES = QUERIES.map(lambda q: json.dumps(q).encode()) | st.binary(max_size=200)
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def _check_sse(body: bytes) -> None:
    parser = SSEParser()
    frames = [json.loads(event) for event in parser.feed(body)]
    assert parser.pending == b""
    assert sum(f["is_final"] for f in frames) == 1
    assert frames[-1]["is_final"] is True


@FUZZ
@given(body=BODIES)
async def test_http_entry_answers_every_body_well(
    bridge: BridgeServer, http: aiohttp.ClientSession, body: bytes
) -> None:
    url = f"{bridge.url}/query/stream"
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        answer = await response.read()
    if response.status == 200:
        _check_sse(answer)
    else:
        assert response.status == 400, (response.status, answer)
        error = json.loads(answer)["error"]
        assert error["code"] == "INVALID_ARGUMENT" and error["message"]
    async with http.post(url, json={"query": "still serving"}) as response:
        _check_sse(await response.read())


@FUZZ
@given(
    params=st.dictionaries(
        FIELDS | st.sampled_from(["request_id", "model"]) | st.text(max_size=6),
        st.text(st.characters(exclude_categories=("Cs",)), max_size=12) | NUMBERS.map(str),
        max_size=4,
    )
)
async def test_query_string_entry_answers_every_query_well(
    bridge: BridgeServer, http: aiohttp.ClientSession, params: dict[str, str]
) -> None:
    async with http.get(f"{bridge.url}/query/stream", params=params) as response:
        answer = await response.read()
    assert response.status in (200, 400), (response.status, answer)
    if response.status == 200:
        _check_sse(answer)


@FUZZ
@given(messages=st.lists(QUERIES.map(json.dumps) | st.text(max_size=100), min_size=1, max_size=5))
async def test_websocket_entry_answers_every_message_and_stays_open(
    bridge: BridgeServer, http: aiohttp.ClientSession, messages: list[str]
) -> None:
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        for message in [*messages, json.dumps({"query": "still open"})]:
            await ws.send_str(message)
            while True:
                reply: dict[str, Any] = await ws.receive_json(timeout=10)
                assert reply["type"] in ("chunk", "complete", "error")
                if reply["type"] != "chunk":
                    assert isinstance(reply["content"], str)
                    break
        assert reply["type"] == "complete"
