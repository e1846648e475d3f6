"""A resumable stream survives a dropped connection: the client reconnects with `Last-Event-ID` (or
`GET /query/stream/{id}?after=N`) and gets the rest, from the core's replay, with no second upstream
request; the joined text equals `final_response`."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp
import pytest

from streamgate.bridges.app import BridgeServer
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.conftest import BridgeFactory, eventually

TOKENS = 30


async def _events(response: aiohttp.ClientResponse, stop_after: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(id, data) of each event, stopping (and dropping the connection) after `stop_after` chunks."""
    events: list[tuple[str, dict[str, Any]]] = []
    while block := await response.content.readuntil(b"\n\n"):
        fields = dict(line.split(": ", 1) for line in block.decode().strip().splitlines() if ": " in line)
        data = json.loads(fields["data"])
        events.append((fields["id"], data))
        if data["is_final"] or (stop_after is not None and len(events) == stop_after):
            break
    return events


@pytest.mark.parametrize("how", ["Last-Event-ID on /query/stream", "Last-Event-ID on /query/stream/{id}", "?after=N"])
async def test_a_dropped_resumable_stream_is_finished_from_its_replay(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream, how: str
) -> None:
    upstream.default = Scenario(tokens=TOKENS, delay=0.01)
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi", "resumable": True}) as response:
        first = await _events(response, stop_after=7)
    last_id = first[-1][0]
    stream_id, _, after = last_id.rpartition(":")
    await asyncio.sleep(0.1)  # the stream goes on while nobody reads it

    url, headers = {
        "Last-Event-ID on /query/stream": (f"{bridge.url}/query/stream?query=hi", {"Last-Event-ID": last_id}),
        "Last-Event-ID on /query/stream/{id}": (f"{bridge.url}/query/stream/{stream_id}", {"Last-Event-ID": last_id}),
        "?after=N": (f"{bridge.url}/query/stream/{stream_id}?after={after}", {}),
    }[how]
    async with http.get(url, headers=headers) as response:
        assert response.status == 200
        rest = await _events(response)

    frames = [data for _, data in first + rest]
    assert sum(f["is_final"] for f in frames) == 1 and frames[-1]["is_final"]
    text = "".join(f["content"] for f in frames[:-1])
    assert text == frames[-1]["metadata"]["final_response"] == "".join(token(i) for i in range(TOKENS))
    assert rest[0][0] == f"{stream_id}:{int(after) + 1}"
    assert upstream.counters.started == 1, "no second upstream request"

    # After the final frame: 204, which stops an EventSource; still no generation.
    async with http.get(f"{bridge.url}/query/stream?query=hi", headers={"Last-Event-ID": rest[-1][0]}) as response:
        assert response.status == 204
    assert upstream.counters.started == 1


DROPS = 200


async def test_drop_and_resume_at_random_frames_200_times(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=TOKENS, delay=0.002)
    rng = random.Random(14)

    async def one() -> None:
        async with http.post(f"{bridge.url}/query/stream", json={"query": "hi", "resumable": True}) as response:
            frames = await _events(response, stop_after=rng.randint(1, TOKENS))
        while not frames[-1][1]["is_final"]:
            async with http.get(
                f"{bridge.url}/query/stream?query=hi", headers={"Last-Event-ID": frames[-1][0]}
            ) as response:
                assert response.status == 200
                frames += await _events(response, stop_after=rng.randint(1, TOKENS))
        data = [d for _, d in frames]
        assert sum(d["is_final"] for d in data) == 1
        assert "".join(d["content"] for d in data[:-1]) == data[-1]["metadata"]["final_response"]
        assert [i for i, _ in frames] == [f"{frames[0][0].rpartition(':')[0]}:{n}" for n in range(TOKENS + 1)]

    for _ in range(DROPS // 10):  # ten at a time, each dropped at least once at a random frame
        await asyncio.gather(*(one() for _ in range(10)))
    assert upstream.counters.started == DROPS, "exactly one upstream request per stream"


async def test_websocket_drop_and_resume_at_random_frames_200_times(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=TOKENS, delay=0.002)
    rng = random.Random(15)

    async def one() -> None:
        messages: list[dict[str, Any]] = []
        first: dict[str, Any] = {"query": "hi", "resumable": True}
        while not messages or messages[-1]["type"] == "chunk":
            async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
                last = messages[-1] if messages else None
                await ws.send_json(first if last is None else {"type": "resume", **_at(last)})
                for _ in range(rng.randint(1, TOKENS)):
                    messages.append(await ws.receive_json(timeout=10))
                    if messages[-1]["type"] != "chunk":
                        break
        assert [m["seq"] for m in messages] == list(range(TOKENS + 1))
        assert messages[-1]["type"] == "complete"
        assert "".join(m["content"] for m in messages[:-1]) == messages[-1]["metadata"]["final_response"]

    for _ in range(DROPS // 10):
        await asyncio.gather(*(one() for _ in range(10)))
    assert upstream.counters.started == DROPS


def _at(message: dict[str, Any]) -> dict[str, Any]:
    return {"stream_id": message["stream_id"], "after": message["seq"]}


async def test_a_resumable_stream_nobody_comes_back_to_ends_cancelled_after_the_grace(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    bridge = await make_bridge(core_resume_grace=0.5)
    upstream.default = Scenario(tokens=1000, delay=0.01)
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi", "resumable": True}) as response:
        first = await _events(response, stop_after=3)
    await eventually(lambda: upstream.counters.active == 0, within=3.0)  # closed after the grace
    assert upstream.counters.disconnects == 1

    async with http.get(f"{bridge.url}/query/stream?query=hi", headers={"Last-Event-ID": first[-1][0]}) as response:
        rest = await _events(response)
    final = rest[-1][1]
    assert final["is_final"] and final["metadata"]["code"] == "CANCELLED"
    assert final["metadata"]["usage"]["completion_tokens"] > 3  # what the provider produced is reported


async def test_a_stream_not_asked_for_as_resumable_is_closed_when_its_client_leaves(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.01)
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi"}) as response:
        first = await _events(response, stop_after=3)
    await eventually(lambda: upstream.counters.active == 0, within=1.0)
    async with http.get(f"{bridge.url}/query/stream?query=hi", headers={"Last-Event-ID": first[-1][0]}) as response:
        assert response.status == 410
    assert upstream.counters.started == 1


async def test_a_websocket_resumes_a_stream_its_last_connection_dropped(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=TOKENS, delay=0.01)
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await ws.send_json({"query": "hi", "resumable": True})
        first = [await ws.receive_json(timeout=10) for _ in range(5)]
    # The socket is gone mid-answer; a new one resumes after the last chunk it had.
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await ws.send_json({"type": "resume", "stream_id": first[-1]["stream_id"], "after": first[-1]["seq"]})
        rest = [await ws.receive_json(timeout=10)]
        while rest[-1]["type"] == "chunk":
            rest.append(await ws.receive_json(timeout=10))
        await ws.send_json({"type": "resume", "stream_id": "no-such-stream", "after": 3})
        unknown = await ws.receive_json(timeout=10)
    messages = first + rest
    assert [m["seq"] for m in messages] == list(range(TOKENS + 1))
    assert rest[-1]["type"] == "complete"
    assert "".join(m["content"] for m in messages[:-1]) == rest[-1]["metadata"]["final_response"]
    assert unknown["type"] == "error" and "cannot be resumed" in unknown["content"]
    assert upstream.counters.started == 1


async def test_grpc_attach_reads_a_resumable_stream_again(core: Any, upstream: FakeUpstream) -> None:
    import grpc

    from streamgate.v1 import streamgate_pb2 as pb
    from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

    upstream.default = Scenario(tokens=TOKENS, delay=0.005)
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        call = stub.Generate(pb.GenerateRequest(query="hi", resumable=True))
        request_id = dict(await call.initial_metadata())["x-request-id"]
        first = [await call.read() for _ in range(4)]
        call.cancel()  # the client leaves; the stream goes on for the grace
        rest = [r.event async for r in stub.Attach(pb.AttachRequest(request_id=request_id, after=3))]
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            async for _ in stub.Attach(pb.AttachRequest(request_id="nope", after=-1)):
                pass
    chunks = [r.chunk for r in first] + [e.chunk for e in rest[:-1]]
    assert [c.index for c in chunks] == list(range(TOKENS))
    assert "".join(c.content for c in chunks) == rest[-1].completion.text
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert upstream.counters.started == 1


async def test_a_resumable_stream_goes_on_through_a_new_link_when_the_link_breaks(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=TOKENS, delay=0.01)
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi", "resumable": True}) as response:
        first = await _events(response, stop_after=5)
        link = bridge.state.client._link
        assert link is not None
        link._call.cancel()  # the link to the core breaks; the core and the stream live on
        rest = await _events(response)
    frames = [data for _, data in first + rest]
    assert frames[-1]["is_final"] and "error" not in frames[-1], frames[-1]
    assert "".join(f["content"] for f in frames[:-1]) == frames[-1]["metadata"]["final_response"]
    assert bridge.state.client._link is not link, "a new link"
    assert upstream.counters.started == 1


async def test_grpc_drop_and_attach_at_random_chunks_200_times(core: Any, upstream: FakeUpstream) -> None:
    import grpc

    from streamgate.v1 import streamgate_pb2 as pb
    from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

    upstream.default = Scenario(tokens=TOKENS, delay=0.002)
    rng = random.Random(16)
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)

        async def one() -> None:
            call: Any = stub.Generate(pb.GenerateRequest(query="hi", resumable=True))
            request_id = dict(await call.initial_metadata())["x-request-id"]
            events: list[pb.GenerateResponse] = []
            while True:
                for _ in range(rng.randint(1, TOKENS)):
                    message = await call.read()
                    if message is grpc.aio.EOF:
                        break
                    events.append(message.event if isinstance(message, pb.AttachResponse) else message)
                    if not events[-1].HasField("chunk"):
                        break
                call.cancel()
                if events and not events[-1].HasField("chunk"):
                    break
                after = events[-1].chunk.index if events else -1
                call = stub.Attach(pb.AttachRequest(request_id=request_id, after=after))
            chunks = [e.chunk for e in events[:-1]]
            assert [c.index for c in chunks] == list(range(TOKENS))
            assert "".join(c.content for c in chunks) == events[-1].completion.text

        for _ in range(DROPS // 10):
            await asyncio.gather(*(one() for _ in range(10)))
    assert upstream.counters.started == DROPS


async def test_a_websocket_cancel_stops_a_resumable_stream_not_only_its_reading(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.01)
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await ws.send_json({"query": "hi", "resumable": True})
        await ws.receive_json(timeout=10)
        await ws.send_json({"type": "cancel"})
        while (reply := await ws.receive_json(timeout=10))["type"] == "chunk":
            pass
    assert reply["metadata"]["finish_reason"] == "cancelled"
    await eventually(lambda: upstream.counters.active == 0, within=1.0)  # not after the 10 s grace


async def test_delete_stops_a_resumable_stream_nobody_reads(
    bridge: BridgeServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=1000, delay=0.01)
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi", "resumable": True}) as response:
        first = await _events(response, stop_after=2)
    stream_id = first[-1][0].rpartition(":")[0]
    async with http.delete(f"{bridge.url}/query/stream/{stream_id}") as response:
        assert response.status == 204
    await eventually(lambda: upstream.counters.active == 0, within=1.0)  # not after the 10 s grace
    async with http.delete(f"{bridge.url}/query/stream/no-such-stream") as response:
        assert response.status == 404


@pytest.mark.parametrize("after", ["99999999999999999999", "-5", "--1", "1e3", "²"])
async def test_an_after_out_of_range_is_a_400(bridge: BridgeServer, http: aiohttp.ClientSession, after: str) -> None:
    async with http.get(f"{bridge.url}/query/stream/some-stream", params={"after": after}) as response:
        assert response.status == 400
        assert "after must be the sequence" in (await response.json())["error"]["message"]
