"""Many streams through core and bridge, a third cancelled by the client, a third timing out: nothing stays.

The default run is short; `STREAMGATE_SOAK_STREAMS=10000` makes it the full soak.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import resource

import aiohttp
import pytest

from streamgate.testing.sse import read_events
from streamgate.testing.upstream import FakeUpstream, Scenario
from tests.conftest import BridgeFactory, eventually

STREAMS = int(os.environ.get("STREAMGATE_SOAK_STREAMS", "600"))
CONCURRENCY = 50
#: RSS growth allowed over the run, after a warm-up: far less than a leak of 2 KB a stream would give.
RSS_BOUND_BYTES = 24 * 1024 * 1024


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _one(http: aiohttp.ClientSession, url: str, i: int, rng: random.Random) -> str:
    kind = ("complete", "cancel", "timeout")[i % 3]
    model = {"complete": "openai/fast", "cancel": "openai/slow", "timeout": "openai/stall"}[kind]
    async with http.post(f"{url}/query/stream", json={"query": "hi", "model": model}) as response:
        assert response.status == 200
        if kind == "cancel":
            for _ in range(rng.randint(1, 5)):
                await response.content.readuntil(b"\n\n")
            response.close()
            return kind
        frames = [frame async for frame in read_events(response)]
    assert sum(f["is_final"] for f in frames) == 1
    if kind == "timeout":
        assert frames[-1]["metadata"]["code"] == "DEADLINE_EXCEEDED"
    else:
        assert frames[-1]["metadata"]["finish_reason"] == "stop"
    return kind


async def _run(url: str, count: int, seed: int) -> None:
    """`count` streams, `CONCURRENCY` at a time (workers, so the test itself holds no task per stream)."""
    rng = random.Random(seed)
    numbers = iter(range(count))
    done: list[str] = []

    async def worker(http: aiohttp.ClientSession) -> None:
        for i in numbers:
            done.append(await _one(http, url, i, rng))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
    assert len(done) == count


async def test_no_stream_task_fd_or_memory_is_left_behind(
    make_bridge: BridgeFactory, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    # A third of the streams time out on purpose: keep pytest from holding a log record for each.
    caplog.set_level(logging.ERROR, logger="streamgate")
    upstream.scenarios.update(
        fast=Scenario(tokens=5),
        slow=Scenario(tokens=500, delay=0.01),
        stall=Scenario(tokens=10, stall_after=2),
    )
    bridge = await make_bridge(
        core_idle_timeout=0.3,
        core_max_concurrent_streams=CONCURRENCY * 2,
        core_allowed_models=("openai/fast", "openai/slow", "openai/stall"),
    )
    await _run(bridge.url, 60, seed=1)  # warm up: pools, caches, first-use allocations
    await eventually(lambda: upstream.counters.active == 0, within=3.0)
    tasks, fds, rss = len(asyncio.all_tasks()), _fds(), _rss()

    async with asyncio.timeout(600):
        await _run(bridge.url, STREAMS, seed=2)

    await eventually(lambda: not bridge.state.streams, within=3.0)
    await eventually(lambda: upstream.counters.active == 0, within=3.0)
    registry = bridge.state.metrics.registry  # the bridge's own gauge agrees
    assert registry.get_sample_value("streamgate_bridge_open_streams", {"transport": "sse"}) == 0
    await eventually(lambda: len(asyncio.all_tasks()) <= tasks, within=3.0)
    await eventually(lambda: _fds() <= fds + 2, within=3.0)
    grown = _rss() - rss
    print(f"\nsoak: {STREAMS} streams; RSS grew {grown / 1e6:.1f} MB; tasks {tasks}; fds {fds} -> {_fds()}")
    assert grown < RSS_BOUND_BYTES, f"RSS grew by {grown / 1e6:.1f} MB over {STREAMS} streams"
    cancels = STREAMS // 3 + (1 if STREAMS % 3 > 1 else 0)
    assert upstream.counters.disconnects >= cancels
