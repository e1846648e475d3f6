"""Upstream failures before the first token: retries with backoff, then fallback models; never after it."""

from __future__ import annotations

from typing import Any

import grpc

from streamgate.testing.upstream import FakeUpstream, Scenario, token
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import CoreFactory, Result, collect


async def _generate(core_address: str, **request: Any) -> Result:
    async with grpc.aio.insecure_channel(core_address) as channel:
        return await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query="hi", **request))


async def test_a_failure_before_the_first_token_is_retried(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=4, status=503, fail_times=2)
    core = await make_core(retries=2)

    result = await _generate(core.address)

    assert result.code == grpc.StatusCode.OK
    assert result.completion.text == "".join(token(i) for i in range(4))
    assert upstream.counters.started == 3
    registry = core.gateway.metrics.registry
    assert registry.get_sample_value("streamgate_upstream_retries_total", {"kind": "retry"}) == 2


async def test_after_the_retries_the_fallback_model_answers(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(status=503)
    upstream.scenarios["backup"] = Scenario(tokens=3)
    core = await make_core(retries=1, fallback_models=("openai/backup",))

    result = await _generate(core.address)

    assert result.code == grpc.StatusCode.OK
    assert result.completion.model == "openai/backup"
    assert [b["model"] for b in upstream.counters.bodies] == ["fake", "fake", "backup"]


async def test_a_non_retryable_error_goes_straight_to_the_fallback(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(status=404)
    upstream.scenarios["backup"] = Scenario(tokens=2)
    core = await make_core(retries=3, fallback_models=("openai/backup",))

    result = await _generate(core.address)

    assert result.completion.model == "openai/backup"
    assert [b["model"] for b in upstream.counters.bodies] == ["fake", "backup"]


async def test_when_every_try_fails_the_stream_ends_with_the_last_error(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(status=429)
    core = await make_core(retries=2)

    result = await _generate(core.address)

    assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert result.error.retryable
    assert upstream.counters.started == 3


async def test_no_silent_retry_after_the_first_token(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=10, drop_after=2)
    upstream.scenarios["backup"] = Scenario(tokens=5)
    core = await make_core(retries=3, fallback_models=("openai/backup",))

    result = await _generate(core.address)

    assert result.code == grpc.StatusCode.UNAVAILABLE
    assert result.chunks == [token(0), token(1)]
    assert result.error.partial_text == token(0) + token(1)
    assert upstream.counters.started == 1


async def test_retries_stay_within_the_first_token_timeout(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(status=503)
    core = await make_core(retries=50, retry_backoff=0.1, first_token_timeout=0.5)

    result = await _generate(core.address)

    assert result.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 2 <= upstream.counters.started < 10
