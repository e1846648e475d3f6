"""The lean OpenAI-compatible path gives what litellm's stream wrapper gives, frame for frame."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from streamgate.testing.upstream import FakeUpstream, Scenario
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import CoreFactory, Result, collect

SCENARIOS = {
    "plain": Scenario(tokens=12),
    "paced": Scenario(tokens=5, delay=0.02),
    "length": Scenario(tokens=30),
    "no usage": Scenario(tokens=6, send_usage=False),
    "429": Scenario(status=429),
    "500": Scenario(status=500),
    "400": Scenario(status=400),
    "dropped": Scenario(tokens=10, drop_after=4),
    "malformed": Scenario(tokens=10, malformed_after=3),
}


def _shape(result: Result) -> dict[str, Any]:
    final = result.final
    assert final is not None
    shape: dict[str, Any] = {"chunks": result.chunks, "code": result.code}
    if final.HasField("completion"):
        c = final.completion
        shape.update(text=c.text, finish=c.finish_reason, model=c.model, completion_tokens=c.usage.completion_tokens)
        shape["prompt_tokens"] = c.usage.prompt_tokens if not c.usage_estimated else "estimated"
    else:
        e = final.error
        shape.update(error=e.code, retryable=e.retryable, partial=e.partial_text)
    return shape


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_fast_and_slow_paths_give_the_same_frames(
    make_core: CoreFactory, upstream: FakeUpstream, name: str
) -> None:
    upstream.default = SCENARIOS[name]
    request = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content="one two three")],
        parameters=pb.GenerationParameters(max_tokens=20, temperature=0.3),
    )
    shapes = []
    for fast_path in (True, False):
        core = await make_core(fast_path=fast_path, retries=0)
        async with grpc.aio.insecure_channel(core.address) as channel:
            shapes.append(_shape(await collect(pb_grpc.StreamGateServiceStub(channel), request)))

    fast, slow = shapes
    if name == "no usage":  # litellm counts usage itself; the lean path counts it in the gateway
        fast.pop("prompt_tokens"), slow.pop("prompt_tokens")
    assert fast == slow
    bodies = list(upstream.counters.bodies)
    assert bodies[0] == bodies[1], "the same request reaches the upstream"
