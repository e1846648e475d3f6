"""The whole set of issue 18 on loopback: nginx, Redis, two bridges and two cores (`--redis-url`).

With the cores on one Redis, a client whose bridge died resumes its stream through the other bridge
and the other core (the replay is read from Redis), and a per-key limit holds across the instances.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from streamgate.testing.sse import SSEParser, read_events
from streamgate.testing.upstream import Scenario
from tests._redis import RedisServer
from tests.deploy.conftest import LoadBalancedSet, bridge_open_streams, load_balanced_set
from tests.deploy.test_nginx import _follow_sse, _text

KEY = "shared-set-key-0123456789"


@pytest.fixture
async def redis_set(tmp_path: Path) -> AsyncIterator[LoadBalancedSet]:
    redis = RedisServer()
    redis.start()
    try:
        flags = ["--redis-url", redis.url, "--api-keys", KEY, "--max-streams-per-key", "4"]
        async with load_balanced_set(tmp_path / "set", core_extra=flags, key=KEY) as lb:
            yield lb
    finally:
        redis.close()


@pytest.mark.timeout(240)
async def test_a_client_whose_bridge_died_resumes_through_the_other_and_a_key_limit_holds_across_cores(
    redis_set: LoadBalancedSet,
) -> None:
    lb = redis_set
    tokens = 150
    lb.upstream.default = Scenario(tokens=tokens, delay=0.02)  # 3 s an answer
    auth = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        # The per-key limit of 4 holds across both cores: 6 streams of one key through nginx, 4 admitted.
        answers = await asyncio.gather(
            *(http.post(f"{lb.url}/query/stream", json={"query": "a long answer", "resumable": True}) for _ in range(6))
        )
        admitted = [r for r in answers if r.status == 200]
        refused = [r for r in answers if r.status != 200]
        assert (len(admitted), [r.status for r in refused]) == (4, [429, 429])
        assert "too many concurrent streams for this API key" in (await refused[0].json())["error"]["message"]
        on = [await bridge_open_streams(http, bridge, "sse") for bridge in lb.bridges]
        assert sum(on) == 4, on

        # Kill a bridge that serves some of them; their clients reconnect with Last-Event-ID through nginx.
        firsts = []
        for response in admitted:
            parser, raw = SSEParser(), b""
            while not (events := parser.feed(block := await response.content.readuntil(b"\n\n"))):
                raw += block
            firsts.append((response, (json.loads(events[0]), raw + block)))
        victim = lb.bridges[0] if on[0] else lb.bridges[1]
        readers = [asyncio.create_task(_follow_sse(response, first)) for response, first in firsts]
        victim.kill()
        followed = await asyncio.gather(*readers)
        cut = [t for t in followed if t.cut]
        assert cut, "the killed bridge served some of the streams"
        started = lb.upstream.counters.started
        for t in cut:
            async with http.get(f"{lb.url}/query/stream", headers={"Last-Event-ID": t.last_id}) as response:
                assert response.status == 200, await response.text()
                rest = [frame async for frame in read_events(response)]
            assert rest[-1]["is_final"] and rest[-1]["metadata"]["finish_reason"] == "stop"
            assert t.text + "".join(f["content"] for f in rest[:-1]) == _text(tokens)  # nothing lost, nothing twice
        assert lb.upstream.counters.started == started, "a reconnect never starts a generation"
        for t in followed:
            if not t.cut:
                assert t.final is not None and t.text == _text(tokens)
