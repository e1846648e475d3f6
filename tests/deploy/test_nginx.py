"""The shipped nginx configuration (deploy/nginx/streamgate.conf) in front of two bridges and two cores,
each its own process, on loopback: streams start as fast and flow as freely as straight to a bridge, every
transport passes (SSE, WebSocket, OpenAI's SDK, gRPC), and an instance killed mid-stream ends its own
streams only, while new ones go to the instances left."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import openai
import pytest

from streamgate.client import Chunk, Completion, StreamError, StreamgateClient
from streamgate.contract import ErrorCode
from streamgate.link.v1 import link_pb2_grpc as link_grpc
from streamgate.testing.sse import SSEParser, read_events
from streamgate.testing.upstream import Scenario, token
from tests.conftest import LINK_TOKEN, eventually
from tests.deploy.conftest import (
    NGINX,
    PLACEHOLDERS,
    TEMPLATE,
    LoadBalancedSet,
    bridge_completed_sse,
    bridge_open_streams,
    children,
    cpu_seconds,
    main_conf,
    render,
)


def _text(n: int) -> str:
    return "".join(token(i) for i in range(n))


def test_the_shipped_config_passes_nginx_t(tmp_path: Path) -> None:
    conf = render(TEMPLATE.read_text(), {name: "127.0.0.1:1" for name in PLACEHOLDERS})
    (tmp_path / "streamgate.conf").write_text(conf)
    (tmp_path / "nginx.conf").write_text(main_conf(tmp_path, tmp_path / "streamgate.conf"))
    result = subprocess.run(
        [NGINX, "-t", "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


@dataclass
class Timed:
    """One SSE stream as the client saw it: each frame with the seconds since the request was sent."""

    frames: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    #: How the response ended when it was cut before its final frame (the exception's name), else None.
    cut: str | None = None
    #: The `id:` of the last whole event received (`Last-Event-ID` on a reconnect).
    last_id: str = ""

    @property
    def final(self) -> dict[str, Any] | None:
        finals = [f for _, f in self.frames if f["is_final"]]
        assert len(finals) <= 1, finals
        return finals[0] if finals else None

    @property
    def text(self) -> str:
        return "".join(f["content"] for _, f in self.frames if not f["is_final"])


async def _timed_sse(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Timed:
    start = time.perf_counter()
    timed = Timed()
    async with http.post(f"{url}/query/stream", json=body) as response:
        assert response.status == 200, await response.text()
        async for frame in read_events(response):
            timed.frames.append((time.perf_counter() - start, frame))
    return timed


@pytest.mark.timeout(240)
async def test_a_stream_through_nginx_starts_as_fast_as_one_straight_to_a_bridge(shared_set: LoadBalancedSet) -> None:
    lb = shared_set
    lb.upstream.default = Scenario(tokens=2)
    warmup, rounds = 5, 40
    direct: list[float] = []
    through: list[float] = []
    async with aiohttp.ClientSession() as http:  # kept-alive connections, as a browser or an SDK has them
        for i in range(warmup + rounds):
            targets = [(lb.bridges[i % 2].address, direct), (lb.url, through)]
            for url, sink in targets if i % 2 else reversed(targets):  # neither goes first every time
                timed = await _timed_sse(http, url, {"query": "hi"})
                assert timed.text == _text(2)
                if i >= warmup:
                    sink.append(timed.frames[0][0] * 1000)

    direct_ms, through_ms = statistics.median(direct), statistics.median(through)
    q = statistics.quantiles
    print(
        f"\nfirst frame, ms, over {rounds} streams each: straight to a bridge p50 {direct_ms:.2f} "
        f"p90 {q(direct, n=10)[-1]:.2f}; through nginx p50 {through_ms:.2f} p90 {q(through, n=10)[-1]:.2f}; "
        f"nginx adds {through_ms - direct_ms:.2f} ms at the median"
    )
    assert through_ms - direct_ms < 5.0, (direct, through)


@pytest.mark.timeout(240)
async def test_frames_through_nginx_arrive_as_the_tokens_come_not_held_back(shared_set: LoadBalancedSet) -> None:
    lb = shared_set
    tokens, pace = 8, 0.1
    lb.upstream.default = Scenario(tokens=tokens, delay=pace)
    async with aiohttp.ClientSession() as http:
        direct, through = await asyncio.gather(
            _timed_sse(http, lb.bridges[0].address, {"query": "hi"}), _timed_sse(http, lb.url, {"query": "hi"})
        )

    def gaps(timed: Timed) -> list[float]:
        times = [t for t, f in timed.frames if not f["is_final"]]
        return [b - a for a, b in itertools.pairwise(times)]

    print(
        "\ngaps between chunks, ms: straight to a bridge "
        + ", ".join(f"{g * 1000:.0f}" for g in gaps(direct))
        + "; through nginx "
        + ", ".join(f"{g * 1000:.0f}" for g in gaps(through))
    )
    for timed in (direct, through):
        assert timed.text == _text(tokens)
        assert len(timed.frames) == tokens + 1, "one frame a token: nothing merged while held back"
        assert statistics.median(gaps(timed)) > pace * 0.7, gaps(timed)
        # In a burst at the end, the first chunk would come a moment before the last; here, the whole pace.
        first, last = timed.frames[0][0], timed.frames[-2][0]
        assert last - first > (tokens - 1) * pace * 0.7
    assert abs(statistics.median(gaps(through)) - statistics.median(gaps(direct))) < pace * 0.3


@pytest.mark.timeout(240)
async def test_nginx_spends_less_cpu_on_a_frame_than_the_bridge_that_made_it(shared_set: LoadBalancedSet) -> None:
    lb = shared_set
    streams, tokens = 40, 50
    lb.upstream.default = Scenario(tokens=tokens, delay=0.02)  # paced: one frame a token, as models send them
    workers = children(lb.nginx.pid)
    assert workers, "nginx's worker"
    bridges_before = sum(b.cpu_seconds() for b in lb.bridges)
    nginx_before = sum(cpu_seconds(w) for w in workers)
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(_timed_sse(http, lb.url, {"query": "hi"}) for _ in range(streams)))
    nginx_cpu = sum(cpu_seconds(w) for w in workers) - nginx_before
    bridges_cpu = sum(b.cpu_seconds() for b in lb.bridges) - bridges_before

    frames = sum(len(r.frames) for r in results)
    assert all(r.text == _text(tokens) for r in results)
    print(
        f"\nCPU per frame over {streams} paced streams ({frames} frames): nginx {nginx_cpu / frames * 1e6:.1f} µs, "
        f"the bridges {bridges_cpu / frames * 1e6:.1f} µs (clock ticks of 10 ms: a rough figure)"
    )
    assert nginx_cpu < bridges_cpu


@pytest.mark.timeout(240)
async def test_websocket_the_openai_sdk_and_the_page_pass_through_nginx(shared_set: LoadBalancedSet) -> None:
    lb = shared_set
    lb.upstream.default = Scenario(tokens=4)
    async with aiohttp.ClientSession() as http:
        # The page of nginx's origin opens the WebSocket: nginx passes the Host the bridge checks Origin against.
        async with http.get(f"{lb.url}/") as page:
            assert page.status == 200 and "streamgate" in await page.text()
        async with http.ws_connect(f"{lb.url}/query/ws", headers={"Origin": lb.url}) as ws:
            await ws.send_json({"query": "hi"})
            messages: list[dict[str, Any]] = []
            while not messages or messages[-1]["type"] == "chunk":
                messages.append(await ws.receive_json(timeout=10))
        async with http.get(f"{lb.url}/readyz") as ready:
            assert ready.status == 200
        async with http.get(f"{lb.url}/metrics") as metrics:
            assert metrics.status == 404, "each bridge's metrics are read from it, not from a random one"

    assert "".join(m["content"] for m in messages[:-1]) == _text(4)  # the core merges tokens that came together
    assert messages[-1]["type"] == "complete" and messages[-1]["metadata"]["final_response"] == _text(4)

    async with openai.AsyncOpenAI(base_url=f"{lb.url}/v1", api_key="unused", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="openai/fake", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
        models = [m.id async for m in client.models.list()]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == _text(4)
    assert "openai/fake" in models


@pytest.mark.timeout(240)
async def test_grpc_clients_stream_through_nginx_and_cannot_reach_the_bridges_link(shared_set: LoadBalancedSet) -> None:
    lb = shared_set
    lb.upstream.default = Scenario(tokens=5)
    async with StreamgateClient(lb.grpc_address) as client:
        results = await asyncio.gather(*(_collect(client) for _ in range(4)))
    for chunks, final in results:
        assert "".join(chunks) == _text(5)
        assert isinstance(final, Completion) and final.finish_reason == "stop"

    # The bridges' Relay is refused on the clients' listener, even with the right token.
    async with grpc.aio.insecure_channel(lb.grpc_address) as channel:
        relay = link_grpc.LinkServiceStub(channel).Relay(metadata=(("x-streamgate-link-token", LINK_TOKEN),))
        code = await relay.code()
    assert code is grpc.StatusCode.PERMISSION_DENIED, await relay.details()


async def _collect(client: StreamgateClient) -> tuple[list[str], Any]:
    chunks: list[str] = []
    async for event in client.generate("hi", timeout=30):
        if isinstance(event, Chunk):
            chunks.append(event.content)
        else:
            return chunks, event
    raise AssertionError("no final event")


_EVENT_ID = re.compile(rb"^id: (\S+)$", re.MULTILINE)


async def _follow_sse(response: aiohttp.ClientResponse, first: tuple[dict[str, Any], bytes]) -> Timed:
    """Read an SSE stream whose first frame was read, to its end or to where it was cut."""
    frame, raw = first
    timed = Timed(frames=[(0.0, frame)])
    parser = SSEParser()
    try:
        async with response:
            async for data in response.content.iter_any():
                raw += data
                timed.frames += [(0.0, json.loads(event)) for event in parser.feed(data)]
    except aiohttp.ClientPayloadError as exc:  # the connection ended before the body's end
        timed.cut = f"{type(exc).__name__}: {exc}"
    if timed.final is None and timed.cut is None:
        timed.cut = "the body ended cleanly without a final frame"
    complete = raw[: raw.rfind(b"\n\n")]  # the last id of a whole event: what an EventSource would send back
    timed.last_id = _EVENT_ID.findall(complete)[-1].decode()
    return timed


async def _open_sse(
    http: aiohttp.ClientSession, url: str, **body: Any
) -> tuple[aiohttp.ClientResponse, tuple[dict[str, Any], bytes]]:
    response = await http.post(f"{url}/query/stream", json={"query": "a long answer", **body})
    assert response.status == 200, await response.text()
    parser, raw = SSEParser(), b""
    while not (events := parser.feed(block := await response.content.readuntil(b"\n\n"))):
        raw += block
    return response, (json.loads(events[0]), raw + block)


async def _ws_until_end(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[dict[str, Any]], str]:
    """A WebSocket's messages of one stream, and how it ended: "complete", "error", or the close."""
    messages: list[dict[str, Any]] = []
    while True:
        message = await ws.receive(timeout=30)
        if message.type is aiohttp.WSMsgType.TEXT:
            messages.append(json.loads(message.data))
            if messages[-1]["type"] != "chunk":
                return messages, messages[-1]["type"]
        else:
            return messages, f"{message.type.name} (close code {ws.close_code})"


@pytest.mark.timeout(240)
async def test_a_bridge_killed_mid_stream_ends_only_its_own_streams_and_new_streams_go_to_the_other(
    own_set: LoadBalancedSet,
) -> None:
    lb = own_set
    tokens = 150
    lb.upstream.default = Scenario(tokens=tokens, delay=0.02)  # 3 s
    async with aiohttp.ClientSession() as http:
        opened = [await _open_sse(http, lb.url, resumable=True) for _ in range(6)]
        sockets = [await http.ws_connect(f"{lb.url}/query/ws") for _ in range(2)]
        for ws in sockets:
            await ws.send_json({"query": "a long answer"})
            assert (await ws.receive_json(timeout=10))["type"] == "chunk"
        sse_on = [await bridge_open_streams(http, bridge, "sse") for bridge in lb.bridges]
        ws_on = [await bridge_open_streams(http, bridge, "websocket") for bridge in lb.bridges]
        assert all(sse_on) and sum(sse_on) == 6, f"least_conn spread the streams over both bridges: {sse_on}"
        victim, survivor = lb.bridges
        readers = [asyncio.create_task(_follow_sse(r, first)) for r, first in opened]
        ws_readers = [asyncio.create_task(_ws_until_end(ws)) for ws in sockets]

        victim.kill()
        sse = await asyncio.gather(*readers)
        ws_ends = await asyncio.gather(*ws_readers)
        for ws in sockets:
            await ws.close()

        cut = [t for t in sse if t.cut]
        whole = [t for t in sse if not t.cut]
        how = sorted({t.cut or "" for t in cut})
        print(f"\nbridge killed: {len(cut)} SSE streams cut ({how}), {len(whole)} completed")
        print(f"WebSocket ends: {[end for _, end in ws_ends]}")
        assert (len(cut), len(whole)) == (sse_on[0], sse_on[1])
        for t in whole:  # the other bridge's streams never noticed
            assert t.final is not None and t.final["metadata"]["finish_reason"] == "stop"
            assert t.text == _text(tokens)
        for t in cut:  # a client behind nginx sees the connection end, with no final frame; what came is intact
            assert t.final is None and _text(tokens).startswith(t.text) and t.text
        ws_cut = [end for _, end in ws_ends if end != "complete"]
        assert len(ws_cut) == ws_on[0]
        assert ws_cut == ["CLOSED (close code 1006)"] * len(ws_cut)  # dropped: no close frame, no stream frame
        # The killed bridge's link closed, so the core cancelled its streams that are not resumable: their
        # upstream requests end at once, long before their answers would have.
        await eventually(lambda: lb.upstream.counters.disconnects >= len(ws_cut), within=2.0)
        assert lb.upstream.counters.disconnects == len(ws_cut)  # the resumable SSE ones go on, for a reconnect

        # What an EventSource does next: reconnect with Last-Event-ID, through nginx, to the bridge left.
        # The stream's replay is in the memory of the core that runs it; the bridge left reaches it only if
        # its link is on that core (here it is not: one link on each core). It never runs the prompt again.
        started = lb.upstream.counters.started
        reconnects = []
        for t in cut:
            headers = {"Last-Event-ID": t.last_id}
            async with http.get(f"{lb.url}/query/stream?query=a+long+answer", headers=headers) as response:
                if response.status == 200:
                    rest = [frame async for frame in read_events(response)]
                    assert t.text + "".join(f["content"] for f in rest[:-1]) == _text(tokens)
                    reconnects.append("resumed")
                else:
                    assert response.status == 410, response.status
                    assert (await response.json())["error"]["code"] == "NOT_FOUND"
                    reconnects.append("410 NOT_FOUND")
        print(f"reconnects with Last-Event-ID through nginx: {reconnects}")
        assert lb.upstream.counters.started == started, "a reconnect never starts a generation"

        # New streams: every one succeeds, on the bridge left (nginx retries a refused connect, POST included).
        lb.upstream.default = Scenario(tokens=3)
        completed = await bridge_completed_sse(http, survivor)
        after = await asyncio.gather(*(_timed_sse(http, lb.url, {"query": "again"}) for _ in range(6)))
        assert all(t.final is not None and t.text == _text(3) for t in after)
        assert await bridge_completed_sse(http, survivor) == completed + 6

        # With no bridge left, nginx answers in the bridge's JSON shape, not an HTML page.
        survivor.kill()
        await survivor.process.wait()
        async with http.post(f"{lb.url}/query/stream", json={"query": "anyone?"}) as response:
            assert response.status == 503 and response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]["code"] == "UNAVAILABLE"
        async with http.post(f"{lb.url}/v1/chat/completions", json={"model": "x", "messages": []}) as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "service_unavailable"


@pytest.mark.timeout(240)
async def test_a_core_killed_mid_stream_ends_its_streams_with_a_final_frame_and_new_streams_succeed(
    own_set: LoadBalancedSet,
) -> None:
    lb = own_set
    tokens = 150
    lb.upstream.default = Scenario(tokens=tokens, delay=0.02)  # 3 s
    async with aiohttp.ClientSession() as http, StreamgateClient(lb.grpc_address) as client:
        opened = [await _open_sse(http, lb.url) for _ in range(6)]
        grpc_streams = [asyncio.create_task(_collect(client)) for _ in range(4)]
        await asyncio.sleep(0.2)
        active = [(await lb.core_metrics(core)).active_streams for core in lb.cores]
        assert all(active), f"each bridge's link, and the gRPC calls, on both cores: {active}"
        victim, survivor = lb.cores
        readers = [asyncio.create_task(_follow_sse(r, first)) for r, first in opened]

        victim.kill()
        killed = time.monotonic()
        sse = await asyncio.gather(*readers)
        grpc_ends = await asyncio.gather(*grpc_streams, return_exceptions=True)
        ended_within = time.monotonic() - killed

        lost = [t for t in sse if t.final is not None and "error" in t.final]
        whole = [t for t in sse if t.final is not None and "error" not in t.final]
        grpc_lost = [e for e in grpc_ends if isinstance(e, StreamError)]
        print(f"\ncore killed (streams on the two cores: {active}); an SSE stream of it ends with:")
        print(json.dumps(lost[0].final) if lost else "-")
        print(f"a gRPC call through nginx on it ends with: {grpc_lost[0] if grpc_lost else '-'}")
        assert not [t for t in sse if t.cut], "every SSE stream ends with its final frame, none is cut"
        assert len(lost) + sum(1 for e in grpc_lost) == active[0], (active, len(lost), grpc_lost)
        assert len(whole) + sum(1 for e in grpc_ends if isinstance(e, tuple)) == active[1]
        for t in lost:  # the bridge ends each with one final frame, and the partial text in it
            assert t.final is not None and t.final["error"] and t.text
            assert t.final["metadata"]["final_response"] == t.text and _text(tokens).startswith(t.text)
        for t in whole:  # the other core's streams never noticed
            assert t.text == _text(tokens)
        assert ended_within < 5

        # New streams succeed: each bridge's next link goes to the core left, and so do gRPC calls.
        lb.upstream.default = Scenario(tokens=3)
        after = await asyncio.gather(*(_timed_sse(http, lb.url, {"query": "again"}) for _ in range(6)))
        assert all(t.final is not None and t.text == _text(3) for t in after), [t.final for t in after]
        again = await asyncio.gather(*(_collect(client) for _ in range(4)))
        assert all("".join(chunks) == _text(3) for chunks, _ in again)

        # With no core left: gRPC clients get UNAVAILABLE from nginx, and the bridge refuses with its JSON.
        survivor.kill()
        await survivor.process.wait()
        with pytest.raises(StreamError) as refused:
            await _collect(client)
        assert refused.value.code is ErrorCode.UNAVAILABLE and refused.value.retryable
        async with http.post(f"{lb.url}/query/stream", json={"query": "anyone?"}) as response:
            refusal = response.status, (await response.json())["error"]
        assert refusal == (503, refusal[1]) and refusal[1]["code"] == "UNAVAILABLE", refusal

    # Through nginx, the Relay call of a core that died is reset (HTTP/2 RST_STREAM, which gRPC reads as
    # INTERNAL): the bridge's link client still ends each of its streams as it does straight to a core,
    # UNAVAILABLE "lost the connection to the core", retryable (tests/reliability/test_core_faults.py).
    codes = {t.final["metadata"]["code"] for t in lost if t.final is not None}
    assert codes == {"UNAVAILABLE"}, codes
    assert all(t.final and t.final["metadata"]["retryable"] for t in lost)
