"""What the usage ledger costs a stream: core CPU and stream latency with `--ledger off`, `sqlite` and
`postgresql://...`, in one run (ratios, not absolutes: this machine is shared and noisy).

    .venv/bin/python -m benchmarks.ledger_cost [--streams 3000] [--concurrency 50]

Each configuration starts its own `streamgate core` process (a priced model on the lean path, streamed
unpaced from the test upstream in this process: a cheap stream, so the ledger's share is as large as it
gets), runs the same streams through gRPC from
this process with `--concurrency` in flight, and reads the core's CPU time from /proc before and after.
PostgreSQL is Debian's, started in a temporary directory (tests/_postgres.py). Rows are checked: every
stream must have its row once the core has stopped (SIGTERM flushes the ledger).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from benchmarks import procs
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
#: A priced model (each row has a cost), streamed from the test upstream on the lean path.
MODEL = "openai/gpt-4o-mini"


async def start_core(ledger: str, data_dir: str, api_base: str) -> procs.Server:
    argv = [sys.executable, "-m", "streamgate.cli", "--log-level", "info", "core", "--grpc-port", "0"]
    argv += ["--metrics-port", "off", "--model", MODEL, "--api-base", api_base, "--upstream-api-key", "bench"]
    argv += ["--data-dir", data_dir]
    env = {"STREAMGATE_LINK_TOKEN": "ledger-bench-token-0123456789", "STREAMGATE_LEDGER": ledger}
    return await procs.start("core", argv, r"core listening on (\S+)", env)


async def run(address: str, streams: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    todo = iter(range(streams))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)

        async def worker() -> None:
            for _ in todo:
                start = time.perf_counter()
                async for response in stub.Generate(pb.GenerateRequest(query="hi")):
                    if not response.HasField("chunk"):
                        break
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def rows(ledger: str, data_dir: str) -> int:
    from streamgate.core.ledger import open_ledger

    opened = await open_ledger(ledger, data_dir)
    try:
        return sum(group.streams for group in await opened.usage("model"))
    finally:
        await opened.aclose()


async def measure(name: str, ledger: str, streams: int, concurrency: int, api_base: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data_dir:
        core = await start_core(ledger, data_dir, api_base)
        try:
            await run(core.address, 200, concurrency)  # warm: first calls, tokenizer, connections
            before = core.cpu()
            latencies = await run(core.address, streams, concurrency)
            cpu = core.cpu() - before
        finally:
            await core.stop(grace=30.0)  # SIGTERM: the ledger writes what is pending
        kept = await rows(ledger, data_dir) if ledger != "off" else streams + 200
    latencies.sort()
    return {
        "cpu_us": cpu / streams * 1e6,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * len(latencies))] * 1000,
        "rows_missing": streams + 200 - kept,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="each configuration this many times, in turn; medians")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from streamgate.testing.upstream import FakeUpstream, Scenario
    from tests._postgres import PostgresServer

    upstream = FakeUpstream(Scenario(tokens=20))
    await upstream.start()
    postgres = PostgresServer()
    postgres.start()
    try:
        configs = [("off", "off"), ("sqlite", "sqlite"), ("postgresql", postgres.create_database())]
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
        for turn in range(args.rounds):  # in turn, each round starting one further: drift hits all alike
            for name, ledger in configs[turn % 3 :] + configs[: turn % 3]:
                rounds[name].append(await measure(name, ledger, args.streams, args.concurrency, upstream.api_base))
        results = {
            name: {field: statistics.median(r[field] for r in runs) for field in runs[0]}
            | {
                "rows_missing": max(r["rows_missing"] for r in runs),
                "cpu_spread": max(r["cpu_us"] for r in runs) - min(r["cpu_us"] for r in runs),
            }
            for name, runs in rounds.items()
        }
    finally:
        postgres.close()
        await upstream.close()
    load = os.getloadavg()[0]
    base = results["off"]
    print(
        f"\n{args.streams} streams of 20 tokens, {args.concurrency} in flight, medians of {args.rounds} rounds;"
        f" load average {load:.1f}"
    )
    print("| ledger | core CPU µs a stream (spread) | added | p50 ms | p99 ms | rows missing |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        added = r["cpu_us"] - base["cpu_us"]
        print(
            f"| {name} | {r['cpu_us']:.0f} ({r['cpu_spread']:.0f}) | {added:+.0f} | {r['p50_ms']:.2f} |"
            f" {r['p99_ms']:.2f} | {r['rows_missing']:.0f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
