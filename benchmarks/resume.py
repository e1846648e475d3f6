"""Resumable streams: what a replay costs in memory, and how long a resume takes.

    .venv/bin/python -m benchmarks.resume [--streams 200] [--tokens 100]

One core and one bridge in this process (with the upstream and the clients: one event loop does
it all, so load shows as queueing), in front of the test upstream (a first token after 200 ms,
tokens 5 ms apart, 20-180 of them). Streams keep arriving (one every --every s), each is
dropped after a random number of frames and resumed with `Last-Event-ID` until its end, as a
client on a flaky network would. Prints:
- the resume latency: from sending the reconnect to receiving its first replayed frame (p50, p99);
- the replay's memory: the store's count of bytes per finished stream, and the process's resident
  memory per kept replay (measured against the same run with --resume-window 0 would be the control:
  here it is the growth of RSS over the run divided by the replays kept, an upper bound).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import time

import aiohttp

from streamgate.bridges.app import BridgeServer
from streamgate.bridges.config import BridgeConfig
from streamgate.core import LiteLLMConfig
from streamgate.rpc.server import CoreServer, CoreServerConfig
from streamgate.testing.upstream import FakeUpstream, Scenario

TOKEN = "bench-link-token-0123456789"


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


async def _one(http: aiohttp.ClientSession, url: str, rng: random.Random, latencies: list[float]) -> None:
    tokens = rng.randint(20, 180)
    body = {"query": "tell me", "max_tokens": tokens, "resumable": True}
    async with http.post(f"{url}/query/stream", json=body) as response:
        last, final = await _read(response, rng.randint(1, 40))
    while not final:
        sent = time.perf_counter()
        async with http.get(f"{url}/query/stream", headers={"Last-Event-ID": last}) as response:
            block = await response.content.readuntil(b"\n\n")
            latencies.append((time.perf_counter() - sent) * 1000)
            last, final = _parse(block, last)
            if not final:
                last, final = await _read(response, rng.randint(1, 40), last)


def _parse(block: bytes, last: str) -> tuple[str, bool]:
    text = block.decode()
    for line in text.splitlines():
        if line.startswith("id: "):
            last = line[4:]
    return last, '"is_final": true' in text


async def _read(response: aiohttp.ClientResponse, frames: int, last: str = "") -> tuple[str, bool]:
    for _ in range(frames):
        block = await response.content.readuntil(b"\n\n")
        last, final = _parse(block, last)
        if final:
            return last, True
    return last, False


def _pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100)[p - 1]


async def main(streams: int, every: float) -> None:
    upstream = FakeUpstream(Scenario(tokens=200, delay=0.005, first_token_delay=0.2))
    await upstream.start()
    core = CoreServer(
        LiteLLMConfig(model="openai/bench", api_base=upstream.api_base, api_key="k", resume_window=600),
        CoreServerConfig(grpc_port=0, metrics_port=None, link_token=TOKEN),
    )
    await core.start()
    bridge = BridgeServer(BridgeConfig(core=core.address, http_port=0, link_token=TOKEN))
    await bridge.start()
    rng = random.Random(17)
    latencies: list[float] = []
    try:
        async with aiohttp.ClientSession() as http:
            await _one(http, bridge.url, rng, [])  # warm up
            rss = _rss()
            tasks = []
            for _ in range(streams):  # arrivals: one every `every` seconds, while the others run
                tasks.append(asyncio.create_task(_one(http, bridge.url, rng, latencies)))
                await asyncio.sleep(every)
            await asyncio.gather(*tasks)
            grown = _rss() - rss
        store = core.gateway.replays
        kept = len(store)
        q = statistics.quantiles(latencies, n=100)
        print(f"streams {streams}, resumes {len(latencies)}, upstream requests {upstream.counters.started}")
        print(f"resume latency (reconnect to first replayed frame): p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms")
        print(
            f"replays kept {kept}: store {store.size / kept / 1024:.1f} KiB each (counted), "
            f"process RSS growth {grown / kept / 1024:.1f} KiB each (upper bound)"
        )
    finally:
        await bridge.stop(0)
        await core.stop(0)
        await upstream.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--every", type=float, default=0.02, help="seconds between two arrivals")
    args = parser.parse_args()
    asyncio.run(main(args.streams, args.every))
