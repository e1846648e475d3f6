"""What `--redis-url` costs: core CPU a stream, Redis's CPU a stream, and time to first token, with and
without Redis, for streams of a key under a per-key limit (an admission's round trip) and for resumable
streams (their replay copied to Redis), in one run (ratios, not absolutes: this machine is shared and
noisy).

    .venv/bin/python -m benchmarks.shared_cost [--streams 2000] [--concurrency 50] [--tokens 20]

Each configuration has its own `streamgate core` process (API keys on, `--max-streams-per-key` high
enough never to refuse, the lean path, streamed unpaced from the test upstream in this process: a cheap
stream, so Redis's share is as large as it gets). Each round runs every configuration in turn: its
streams through gRPC from this process with `--concurrency` in flight (core CPU from /proc before and
after; Redis's too), then a tenth as many one at a time (time to first token: what a client waits
for, the admission included). The table has the medians of the rounds.
Redis is Debian's redis-server, on loopback, started in a temporary directory (tests/_redis.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import grpc

from benchmarks import procs
from benchmarks.procs import cpu_seconds
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
KEY = "key-bench-0123456789"
METADATA = (("authorization", f"Bearer {KEY}"),)


async def start_core(redis_url: str | None, api_base: str) -> procs.Server:
    argv = [sys.executable, "-m", "streamgate.cli", "--log-level", "info", "core", "--grpc-port", "0"]
    argv += ["--metrics-port", "off", "--model", "openai/fake", "--api-base", api_base, "--upstream-api-key", "b"]
    argv += ["--ledger", "off", "--max-streams-per-key", "100000"]
    env = {
        "STREAMGATE_LINK_TOKEN": "shared-bench-token-0123456789",
        "STREAMGATE_API_KEYS": f"bench: {KEY}",
        "STREAMGATE_REDIS_URL": redis_url,  # None: removed from the environment
    }
    return await procs.start("core", argv, r"core listening on (\S+)", env)


async def run(address: str, streams: int, concurrency: int, resumable: bool) -> tuple[list[float], list[float]]:
    """Each stream's time to first token and whole time."""
    firsts: list[float] = []
    wholes: list[float] = []
    todo = iter(range(streams))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)

        async def worker() -> None:
            for _ in todo:
                start = time.perf_counter()
                first = None
                request = pb.GenerateRequest(query="hi", resumable=resumable)
                async for response in stub.Generate(request, metadata=METADATA):
                    if first is None:
                        first = time.perf_counter() - start
                    if not response.HasField("chunk"):
                        break
                assert first is not None and response.HasField("completion"), response
                firsts.append(first)
                wholes.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return firsts, wholes


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="streams a configuration runs in each round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each running every configuration in turn")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from streamgate.testing.upstream import FakeUpstream, Scenario
    from tests._redis import RedisServer

    upstream = FakeUpstream(Scenario(tokens=args.tokens))
    await upstream.start()
    redis = RedisServer()
    redis.start()
    assert redis._process is not None
    redis_pid = redis._process.pid
    configs = [
        (f"{kind}, {where}", kind == "resumable", where == "redis")
        for kind in ("keyed", "resumable")
        for where in ("alone", "redis")
    ]
    cores: dict[str, procs.Server] = {}
    samples: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "redis": [], "ttft": []} for name, _, _ in configs}
    try:
        for name, resumable, shared in configs:
            cores[name] = await start_core(redis.url if shared else None, upstream.api_base)
            await run(cores[name].address, 200, args.concurrency, resumable)  # warm: first calls, connections
        for _ in range(args.rounds):  # interleaved: a burst of load elsewhere hits every configuration alike
            for name, resumable, _ in configs:
                core = cores[name]
                before, redis_before = core.cpu(), cpu_seconds(redis_pid)
                await run(core.address, args.streams, args.concurrency, resumable)
                samples[name]["cpu"].append((core.cpu() - before) / args.streams * 1e6)
                samples[name]["redis"].append((cpu_seconds(redis_pid) - redis_before) / args.streams * 1e6)
                firsts, _ = await run(core.address, max(args.streams // 10, 50), 1, resumable)
                samples[name]["ttft"] += firsts
    finally:
        for core in cores.values():
            await core.stop(grace=30.0)
        redis.close()
        await upstream.close()
    load = os.getloadavg()[0]
    print(
        f"\n{args.rounds} rounds of {args.streams} streams of {args.tokens} tokens per configuration,"
        f" {args.concurrency} in flight; load average {load:.1f}; medians of the rounds"
    )
    print(
        "| streams | core CPU µs a stream (rounds' range) | added | Redis CPU µs a stream"
        " | TTFT p50 ms (1 in flight) | added | p99 |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, _, _ in configs:
        r, base = samples[name], samples[name.split(",")[0] + ", alone"]
        cpu, base_cpu = statistics.median(r["cpu"]), statistics.median(base["cpu"])
        ttft, base_ttft = statistics.median(r["ttft"]) * 1000, statistics.median(base["ttft"]) * 1000
        print(
            f"| {name} | {cpu:.0f} ({min(r['cpu']):.0f}-{max(r['cpu']):.0f}) | {cpu - base_cpu:+.0f} |"
            f" {statistics.median(r['redis']):.0f} |"
            f" {ttft:.2f} | {ttft - base_ttft:+.2f} | {p(r['ttft'], 0.99):.2f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
