"""The scale benchmark's Go load generator (benchmarks/loadgen) against a real core and bridge: its
upstream answers the core as streamgate.testing.upstream does, and its clients record what the
Python clients of benchmarks.load record (every stream's tokens checked, errors counted, not hidden)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from benchmarks import device_scale, sgload, shapes
from benchmarks.load import Job, Result, Target, percentile
from benchmarks.systems import Deployment, Pace, Upstream, deploy_streamgate

PACE = Pace(tokens=12, delay=0.02, first_token_delay=0.05)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Upstream, Deployment, Path]]:
    binary = sgload.find_sgload()
    assert binary is not None, "sgload needs Go to build (scripts/setup installs it)"
    plan = device_scale.Plan(
        workers=((1, 1),), steps_one=(), steps_many=(), upstreams=1, clients=1, settings=shapes.FULL, sgload=binary
    )
    async with aiohttp.ClientSession() as session:
        upstream = await device_scale.start_upstream(PACE, session, plan)
        try:
            deployment = await deploy_streamgate(PACE, upstream, tmp_path)
            try:
                yield upstream, deployment, binary
            finally:
                await deployment.stop()
        finally:
            await upstream.server.stop()


def closed_loop(target: Target, streams: int) -> Job:
    start = time.time() + 0.3
    return Job(
        target, streams, start_at=start, ramp_s=0.5, loop_s=2.5, lengths=(3, 12), window=(0.5, 2.5), timeout_s=10
    )


async def run(binary: Path, job: Job) -> Result:
    return await sgload.GoClients(binary).run(job)


async def test_streams_through_the_gateway_are_counted_as_the_python_clients_count_them(
    gateway: tuple[Upstream, Deployment, Path],
) -> None:
    upstream, deployment, binary = gateway
    result = await run(binary, closed_loop(deployment.target, 20))

    assert result.errors == 0, result.error_samples
    assert result.completed >= 20  # every slot finished at least one stream of 3-12 tokens
    assert result.window_tokens > 0 and result.window_cpu_s > 0
    # The upstream paces tokens 20 ms apart after a 50 ms first token: the client sees that pace.
    assert 0.015 < percentile(result.gaps, 50) < 0.1
    assert percentile(result.ttfts, 50) >= PACE.first_token_delay
    counters = await upstream.counters()
    assert counters["started"] >= result.completed
    # The core keeps its connections to the upstream open between streams.
    assert counters["connections"] < counters["started"]


async def test_failures_are_counted_as_errors_with_their_reason(gateway: tuple[Upstream, Deployment, Path]) -> None:
    _, deployment, binary = gateway
    wrong = replace(deployment.target, address=deployment.target.address.replace("/query/stream", "/nowhere"))
    result = await run(binary, closed_loop(wrong, 2))
    assert result.completed == 0
    assert result.errors > 0
    assert result.error_samples[0].startswith("HTTP 404")
    # A model the gateway does not serve: refused before the stream, with the gateway's reason.
    unknown = replace(deployment.target, body={**deployment.target.body, "model": "openai/nope"})
    result = await run(binary, closed_loop(unknown, 2))
    assert result.completed == 0 and result.errors > 0
    assert result.error_samples[0].startswith("HTTP 400") and "openai/nope" in result.error_samples[0]
    # Streams that end with fewer tokens than asked for (the upstream has 12): complete, yet errors.
    short = replace(closed_loop(deployment.target, 2), lengths=(20, 20))
    result = await run(binary, short)
    assert result.completed > 0 and result.errors == result.completed
    assert result.error_samples[0] == "12 tokens, expected 20"
