"""Nothing a client does holds a stream slot it does not use (the probe's denial of service).

Before the fix, `Generate` admitted a stream, then awaited its initial metadata outside
`async with stream`: a `request_id` that was not a valid metadata value, or a client that cancelled
during that await, left the slot held for good; five such calls on a core with a limit of 5 made it
refuse everything, the bridge included.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from streamgate.testing.upstream import FakeUpstream, Scenario
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import CoreFactory, collect, eventually

LIMIT = 5
BAD_IDS = ["idé", "a\r\nb", "\x1b[2J", "tab\there", "x" * 129, "sp ace", "\x00", "\u2028"]


async def _all_slots_free(core: object, stub: pb_grpc.StreamGateServiceStub) -> None:
    await eventually(lambda: core.gateway.active_streams == 0, within=5.0)  # type: ignore[attr-defined]
    # The whole limit is usable again: LIMIT streams at once are all admitted.
    results = await asyncio.gather(*(collect(stub, pb.GenerateRequest(query="hi")) for _ in range(LIMIT)))
    assert [r.code for r in results] == [grpc.StatusCode.OK] * LIMIT


async def test_invalid_request_ids_are_refused_and_hold_no_slot(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    core = await make_core(max_concurrent_streams=LIMIT)
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        for _ in range(3):
            for bad in BAD_IDS:
                result = await collect(stub, pb.GenerateRequest(query="hi", request_id=bad))
                assert result.code == grpc.StatusCode.INVALID_ARGUMENT, (bad, result.details)
                assert "request_id" in (result.details or "")
        assert upstream.counters.started == 0
        await _all_slots_free(core, stub)


async def test_cancelling_at_every_point_of_a_call_gives_every_slot_back(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=20, first_token_delay=0.005, delay=0.002)
    core = await make_core(max_concurrent_streams=LIMIT)
    # From before the request is sent to mid-stream: every await of the handler is hit by some call.
    delays = [0.0, 0.0001, 0.0003, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02]
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)

        async def cancelled_after(delay: float) -> None:
            call = stub.Generate(pb.GenerateRequest(query="hi"))
            await asyncio.sleep(delay)
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                async for _ in call:
                    pass

        for _ in range(25):
            await asyncio.gather(*(cancelled_after(d) for d in delays[:LIMIT]))
            await asyncio.gather(*(cancelled_after(d) for d in delays[LIMIT:]))
        await _all_slots_free(core, stub)
