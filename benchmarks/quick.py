"""Quick figures: one unpaced stream through the core alone, and through core + bridge.

    .venv/bin/python benchmarks/quick.py [--tokens 2000] [--streams 5]

Starts its own processes (fake upstream, `streamgate core`, `streamgate bridge`), runs
`--streams` sequential unpaced streams of `--tokens` tokens each over gRPC, then over SSE
through the bridge, and prints tokens/s and the server CPU per 1,000 tokens of each process
(read from /proc), so the two paths are compared in one run on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import grpc

from streamgate.testing.sse import read_events
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@asynccontextmanager
async def process(pattern: str, *argv: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Start a process and wait for the log line that says where it listens."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(os.environ, STREAMGATE_LOG_LEVEL="WARNING"),
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"{argv} exited")
                if found := re.search(pattern, line):
                    break
        drain = asyncio.create_task(proc.stdout.read())
        yield proc, found.group(1)
    finally:
        proc.terminate()
        await proc.wait()
        drain.cancel()


async def over_grpc(address: str, streams: int) -> tuple[int, float]:
    tokens = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        started = time.perf_counter()
        for _ in range(streams):
            async for response in stub.Generate(pb.GenerateRequest(query="go")):
                tokens += response.HasField("chunk")
        return tokens, time.perf_counter() - started


async def over_sse(url: str, streams: int) -> tuple[int, float]:
    tokens = 0
    async with aiohttp.ClientSession() as http:
        started = time.perf_counter()
        for _ in range(streams):
            async with http.post(f"{url}/query/stream", json={"query": "go"}) as response:
                async for frame in read_events(response):
                    tokens += not frame["is_final"]
        return tokens, time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=5)
    args = parser.parse_args()
    python = sys.executable
    async with (
        process(r"listening on (\S+)", python, "-m", "streamgate.testing.upstream", "--tokens", str(args.tokens)) as (
            _,
            api_base,
        ),
        process(
            r"core listening on (\S+)",
            python,
            "-m",
            "streamgate.cli",
            "--log-level",
            "INFO",
            "core",
            "--grpc-port",
            "0",
            "--metrics-port",
            "off",
            "--model",
            "openai/fake",
            "--api-base",
            api_base,
            "--upstream-api-key",
            "none",
        ) as (core, core_address),
        process(
            r"bridge listening on (\S+)",
            python,
            "-m",
            "streamgate.cli",
            "--log-level",
            "INFO",
            "bridge",
            "--core",
            core_address,
            "--http-port",
            "0",
        ) as (bridge, url),
    ):
        await over_grpc(core_address, 1)  # warm up both paths
        await over_sse(url, 1)
        rows = []
        for name, run in (
            ("core alone (gRPC)", over_grpc(core_address, args.streams)),
            ("core + bridge (SSE)", over_sse(url, args.streams)),
        ):
            core_cpu, bridge_cpu = cpu_seconds(core.pid), cpu_seconds(bridge.pid)
            tokens, elapsed = await run
            core_cpu, bridge_cpu = cpu_seconds(core.pid) - core_cpu, cpu_seconds(bridge.pid) - bridge_cpu
            rows.append((name, tokens, tokens / elapsed, core_cpu / tokens * 1e6, bridge_cpu / tokens * 1e6))
    print(f"{args.streams} sequential unpaced streams of {args.tokens} tokens, OpenAI-compatible upstream on loopback")
    print(f"{'path':<22}{'tokens':>8}{'tokens/s':>11}{'core µs/token':>15}{'bridge µs/token':>17}")
    for name, tokens, rate, core_us, bridge_us in rows:
        print(f"{name:<22}{tokens:>8}{rate:>11.0f}{core_us:>15.0f}{bridge_us:>17.0f}")
    base = rows[0][2]
    print(f"frames/s through the bridge / through the core alone: {rows[1][2] / base:.2f}")
    print(f"core CPU per 1,000 tokens: {rows[0][3]:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
