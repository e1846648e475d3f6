"""`Relay`: many streams over one call, each with its own frames and exactly one final event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest

from streamgate.core.auth import Keyring
from streamgate.link import _outbox as outbox
from streamgate.link import client as core_client
from streamgate.link import server as relay
from streamgate.link._wire import TOKEN_HEADER as LINK_TOKEN_HEADER
from streamgate.link.v1 import link_pb2 as link_pb
from streamgate.link.v1 import link_pb2_grpc as link_grpc
from streamgate.rpc.server import CoreServer
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import LINK_TOKEN, BridgeFactory, Client, CoreFactory, collect, eventually


def open_(stream_id: int, query: str = "hi", model: str = "", authorization: str = "") -> link_pb.RelayCommand:
    request = pb.GenerateRequest(query=query, model=model)
    return link_pb.RelayCommand(
        stream_id=stream_id, open=link_pb.RelayOpen(request=request, authorization=authorization)
    )


def cancel(stream_id: int) -> link_pb.RelayCommand:
    return link_pb.RelayCommand(stream_id=stream_id, cancel=link_pb.RelayCancel())


@dataclass
class Streams:
    """What a Relay call sent, by stream id, in order."""

    frames: dict[int, list[link_pb.RelayFrame]] = field(default_factory=lambda: defaultdict(list))

    def add(self, response: link_pb.RelayResponse) -> None:
        for frame in response.frames:
            assert not self.ended(frame.stream_id), f"a frame after the final one: {frame}"
            self.frames[frame.stream_id].append(frame)

    def kinds(self, stream_id: int) -> list[str]:
        out = []
        for frame in self.frames[stream_id]:
            kind = frame.WhichOneof("frame")
            out.append(frame.event.WhichOneof("event") if kind == "event" else kind)
        return out

    def text(self, stream_id: int) -> str:
        return "".join(f.event.chunk.content for f in self.frames[stream_id] if f.event.HasField("chunk"))

    def final(self, stream_id: int) -> pb.GenerateResponse:
        last = self.frames[stream_id][-1]
        assert last.HasField("event") and not last.event.HasField("chunk"), last
        return last.event

    def ended(self, stream_id: int) -> bool:
        frames = self.frames.get(stream_id)
        if not frames:
            return False
        last = frames[-1]
        return last.HasField("refused") or (last.HasField("event") and not last.event.HasField("chunk"))


class Link:
    """A Relay call read in the background."""

    def __init__(self, stub: link_grpc.LinkServiceStub, token: str | None = LINK_TOKEN) -> None:
        self.call = stub.Relay(metadata=((LINK_TOKEN_HEADER, token),) if token is not None else None)
        self.streams = Streams()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            self.streams.add(response)

    async def send(self, *commands: link_pb.RelayCommand) -> None:
        await self.call.write(link_pb.RelayRequest(commands=commands))

    async def ended(self, *stream_ids: int, within: float = 5.0) -> None:
        await eventually(lambda: all(self.streams.ended(s) for s in stream_ids), within=within)


@pytest.fixture
async def link(client: Client) -> AsyncIterator[Link]:
    link = Link(link_grpc.LinkServiceStub(client.channel))
    yield link
    link.call.cancel()
    await asyncio.gather(link.reader, return_exceptions=True)


async def test_streams_on_one_call_each_get_admitted_chunks_and_one_completion(
    link: Link, client: Client, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=6, delay=0.01)
    await link.send(open_(1, "first"), open_(2, "second"))
    await link.send(open_(3, "third"))
    await link.ended(1, 2, 3)

    alone = await collect(client.stub, pb.GenerateRequest(query="first"))
    for stream_id in (1, 2, 3):
        kinds = link.streams.kinds(stream_id)
        assert kinds == ["admitted"] + ["chunk"] * 6 + ["completion"], kinds
        completion = link.streams.final(stream_id).completion
        assert link.streams.text(stream_id) == completion.text == "".join(token(i) for i in range(6))
        assert completion.text == alone.completion.text, "the same stream as Generate gives"
        assert completion.usage.completion_tokens == 6
        assert link.streams.frames[stream_id][0].admitted.request_id == completion.request_id
    assert len({link.streams.final(s).completion.request_id for s in (1, 2, 3)}) == 3
    assert upstream.counters.finished == 4


async def test_a_refused_stream_gets_one_refused_frame_and_the_others_go_on(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    core = await make_core(allowed_models=("openai/fake",))
    async with grpc.aio.insecure_channel(core.address) as channel:
        link = Link(link_grpc.LinkServiceStub(channel))
        await link.send(open_(1), open_(2, model="openai/other"), open_(3, query=""))
        await link.ended(1, 2, 3)
        assert link.streams.kinds(1)[-1] == "completion"
        for stream_id in (2, 3):
            assert link.streams.kinds(stream_id) == ["refused"]
            assert link.streams.frames[stream_id][0].refused.code == pb.ERROR_CODE_INVALID_ARGUMENT
        assert "openai/other" in link.streams.frames[2][0].refused.message
        link.call.cancel()
    assert upstream.counters.started == 1, "refused streams never reach the upstream"


async def test_a_stream_id_already_open_ends_the_call_with_invalid_argument(
    link: Link, core: CoreServer, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=200, delay=0.02)
    await link.send(open_(7))
    await eventually(lambda: link.streams.kinds(7)[:1] == ["admitted"])

    await link.send(open_(7))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await asyncio.wait_for(link.reader, 3.0)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "already open" in (raised.value.details() or "")
    await eventually(lambda: upstream.counters.disconnects == 1 and core.gateway.active_streams == 0)


async def test_cancel_closes_that_stream_upstream_request_only(link: Link, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=200, delay=0.02)
    await link.send(open_(1), open_(2))
    await eventually(lambda: all(link.streams.kinds(s).count("chunk") >= 2 for s in (1, 2)))

    await link.send(cancel(1))
    await eventually(lambda: upstream.counters.disconnects == 1)
    await asyncio.sleep(0.1)
    sent = len(link.streams.frames[1])
    await asyncio.sleep(0.2)
    assert len(link.streams.frames[1]) == sent, "nothing more for a cancelled stream"
    assert not link.streams.ended(1), "a cancelled stream gets no final frame: its reader left"
    assert upstream.counters.active == 1
    assert link.streams.kinds(2).count("chunk") > 2, "the other stream goes on"


async def test_ending_the_call_cancels_every_stream_it_carries(
    link: Link, core: CoreServer, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=200, delay=0.02)
    await link.send(*(open_(i) for i in range(1, 11)))
    await eventually(lambda: upstream.counters.active == 10 and core.gateway.active_streams == 10)

    link.call.cancel()

    await eventually(lambda: upstream.counters.disconnects == 10)
    await eventually(lambda: core.gateway.active_streams == 0 and upstream.counters.active == 0)


async def test_after_the_client_stops_writing_the_open_streams_still_finish(link: Link, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=4, delay=0.02)
    await link.send(open_(1), open_(2))
    await link.call.done_writing()
    await asyncio.wait_for(link.reader, 5.0)
    assert await link.call.code() == grpc.StatusCode.OK
    assert [link.streams.kinds(s)[-1] for s in (1, 2)] == ["completion", "completion"]


async def test_each_stream_is_authenticated_with_its_own_key(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    core = await make_core(keyring=Keyring.from_lines(["alice: alice-secret-key-1"]))
    async with grpc.aio.insecure_channel(core.address) as channel:
        link = Link(link_grpc.LinkServiceStub(channel))
        await link.send(
            open_(1, authorization="Bearer alice-secret-key-1"),
            open_(2),
            open_(3, authorization="Bearer wrong-key-wrong-key"),
        )
        await link.ended(1, 2, 3)
        link.call.cancel()
    assert link.streams.kinds(1)[-1] == "completion"
    assert [link.streams.frames[s][0].refused.code for s in (2, 3)] == [pb.ERROR_CODE_UNAUTHENTICATED] * 2


async def test_a_stream_that_fails_mid_way_ends_with_its_error_frame(link: Link, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=10, drop_after=3)
    await link.send(open_(1))
    await link.ended(1)
    error = link.streams.final(1).error
    assert error.code == pb.ERROR_CODE_UNAVAILABLE
    assert error.partial_text == link.streams.text(1) == "".join(token(i) for i in range(3))


async def test_with_coalescing_chunks_that_waited_together_come_as_one(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=400)
    core = await make_core(coalesce=True)
    async with grpc.aio.insecure_channel(core.address) as channel:
        link = Link(link_grpc.LinkServiceStub(channel))
        await link.send(*(open_(i) for i in range(1, 5)))
        await link.ended(1, 2, 3, 4)
        link.call.cancel()
    expected = "".join(token(i) for i in range(400))
    for stream_id in range(1, 5):
        assert link.streams.text(stream_id) == link.streams.final(stream_id).completion.text == expected
        assert link.streams.kinds(stream_id).count("chunk") < 400


async def test_drain_ends_the_relay_call_after_the_final_frames_of_its_streams(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=200, delay=0.02)
    core = await make_core()
    async with grpc.aio.insecure_channel(core.address) as channel:
        link = Link(link_grpc.LinkServiceStub(channel))
        await link.send(open_(1), open_(2))
        await eventually(lambda: all(link.streams.kinds(s).count("chunk") >= 2 for s in (1, 2)))

        started = time.monotonic()
        stopping = asyncio.create_task(core.stop(grace=0.3))
        await eventually(lambda: core.gateway.draining)
        await link.send(open_(3))
        await asyncio.wait_for(link.reader, 3.0)
        await stopping
        took = time.monotonic() - started

        assert await link.call.code() == grpc.StatusCode.OK
    for stream_id in (1, 2):
        error = link.streams.final(stream_id).error
        assert error.code == pb.ERROR_CODE_UNAVAILABLE and "shutting down" in error.message
        assert error.partial_text == link.streams.text(stream_id)
    assert link.streams.kinds(3) == ["refused"]
    assert "shutting down" in link.streams.frames[3][0].refused.message
    assert took < 1.0, f"stop() took {took:.2f} s: the Relay call should end with its streams, not at stop()'s grace"


# -- the link token: Relay is the bridge's, not anyone's ---------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong-link-token-0123456789"], ids=["no token", "a wrong token"])
async def test_a_relay_call_without_the_link_token_is_refused_and_starts_nothing(
    core: CoreServer, upstream: FakeUpstream, token: str | None
) -> None:
    async with grpc.aio.insecure_channel(core.address) as channel:
        link = Link(link_grpc.LinkServiceStub(channel), token=token)
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await link.send(open_(1), open_(2))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(link.reader, 3.0)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert LINK_TOKEN_HEADER in (raised.value.details() or "")
    assert LINK_TOKEN not in (raised.value.details() or "")
    metrics = core.gateway.metrics.snapshot(draining=False)
    assert (metrics.streams_started, metrics.streams_rejected) == (0, 0), "no stream was even considered"
    assert not core.link.sessions and not link.streams.frames
    assert upstream.counters.started == 0


async def test_a_core_without_a_link_token_refuses_every_relay_call_and_says_how_to_enable_it(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    core = await make_core(link_token=None)
    async with grpc.aio.insecure_channel(core.address) as channel:
        link = Link(link_grpc.LinkServiceStub(channel))  # with the token the others have
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await link.send(open_(1))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(link.reader, 3.0)
        assert (await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query="hi"))).completion
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "STREAMGATE_LINK_TOKEN" in (raised.value.details() or "")
    assert upstream.counters.started == 1, "only the Generate call's stream"


async def test_a_bridge_with_another_link_token_answers_503_and_logs_why(
    make_core: CoreFactory, make_bridge: BridgeFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    core = await make_core()
    bridge = await make_bridge(core=core.address, link_token="another-link-token-0123456789")
    async with http.post(f"{bridge.url}/query/stream", json={"query": "hi"}) as response:
        answer = await response.json()
    assert response.status == 503, answer
    assert "link token" not in answer["error"]["message"], "the operator's business, not the browser's"
    assert any("refused the link" in r.getMessage() and r.levelno >= logging.ERROR for r in caplog.records)
    assert core.gateway.metrics.snapshot(draining=False).streams_started == 0
    assert "another-link-token" not in repr(bridge.config)


# -- flow control: every buffer has a bound ----------------------------------------------------------


def only_session(core: CoreServer) -> relay.RelaySession:
    (session,) = core.link.sessions
    return session


async def test_a_client_that_does_not_read_cannot_make_the_core_buffer_more(
    make_core: CoreFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of opens, most refused, and a few long answers, on a call whose client never reads."""
    bound, stream_bound = 256 * 1024, 32 * 1024
    monkeypatch.setattr(outbox, "OUTBOX_BYTES", bound)
    monkeypatch.setattr(outbox, "STREAM_BYTES", stream_bound)
    upstream.default = Scenario(tokens=50_000, words=("x" * 999,))  # 50 MB an answer, unpaced
    # Chunk by chunk: an event is one token, so what may pass the bound (an event a stream) is small.
    core = await make_core(max_concurrent_streams=3, coalesce=False)
    async with grpc.aio.insecure_channel(core.address) as channel:
        call = link_grpc.LinkServiceStub(channel).Relay(metadata=((LINK_TOKEN_HEADER, LINK_TOKEN),))
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for batch in range(2000):
                await call.write(link_pb.RelayRequest(commands=[open_(batch * 100 + i + 1) for i in range(100)]))
                sent += 100

        flooding = asyncio.create_task(flood())
        await eventually(lambda: len(core.link.sessions) == 1)
        session = only_session(core)
        # Watch the outbox for 2 s, or until half a second after it first filled if that takes longer
        # (a loaded machine fills it later); the flood is still held back then.
        start = time.monotonic()
        peak, until, deadline = 0, start + 2.0, start + 20.0
        while time.monotonic() < until:
            peak = max(peak, session.outbox.size)
            if peak <= bound / 2 and time.monotonic() + 0.5 > until:
                until = min(time.monotonic() + 0.5, deadline)  # not full yet: keep watching
            await asyncio.sleep(0.002)
        handled = core.gateway.metrics.snapshot(draining=False)
        assert peak > bound / 2, "the outbox filled (the test tests something)"
        # Over the bound by at most what came since the look before: an event of each open stream,
        # the refusals of a few opens.
        assert peak <= bound + 16 * 1024, f"the outbox held {peak} bytes"
        assert upstream.counters.finished == 0, "the upstream is read no faster than the link drains"
        assert handled.streams_started + handled.streams_rejected < sent, "the core stopped reading commands"
        assert not flooding.done(), "gRPC's flow control holds the client's commands back"
        call.cancel()
        flooding.cancel()
        await asyncio.gather(flooding, return_exceptions=True)
    await eventually(lambda: core.gateway.active_streams == 0 and not core.link.sessions, within=3.0)
    await eventually(lambda: upstream.counters.active == 0, within=3.0)


@pytest.mark.parametrize(
    ("coalesce", "event"),
    # What a stream may have waiting past its bound is one event: a token chunk by chunk; coalesced,
    # whatever one read of the upstream connection held (aiohttp's buffer: under half a MiB).
    [(True, 512 * 1024), (False, 50)],
    ids=["coalesced", "chunk by chunk"],
)
async def test_a_stream_over_its_bound_waits_for_the_reader_then_its_text_arrives_whole(
    make_core: CoreFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, coalesce: bool, event: int
) -> None:
    stream_bound = 16 * 1024
    monkeypatch.setattr(outbox, "STREAM_BYTES", stream_bound)
    words = tuple(f"{i:03d}" + "é" * 46 + "\n" for i in range(10))
    tokens = 30_000
    upstream.default = Scenario(tokens=tokens, words=words)  # 1.5 million characters (3 MB), unpaced
    core = await make_core(coalesce=coalesce)
    options = [
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),  # the final frame holds the whole text
        ("grpc.http2.bdp_probe", 0),  # a small receive window: the core's writer waits for this client soon
    ]
    async with grpc.aio.insecure_channel(core.address, options=options) as channel:
        call = link_grpc.LinkServiceStub(channel).Relay(metadata=((LINK_TOKEN_HEADER, LINK_TOKEN),))
        await call.write(link_pb.RelayRequest(commands=[open_(1)]))
        await eventually(lambda: len(core.link.sessions) == 1)
        session = only_session(core)
        peak, until = 0, time.monotonic() + 1.0
        while time.monotonic() < until:  # nobody reads
            peak = max(peak, session.outbox.pending(1))
            await asyncio.sleep(0.002)
        assert peak > stream_bound / 2, "the stream filled its share (the test tests something)"
        assert peak <= stream_bound + event, f"the stream had {peak} characters waiting"
        assert core.gateway.active_streams == 1 and upstream.counters.finished == 0, "it waits"

        streams = Streams()
        while not streams.ended(1):
            response = await asyncio.wait_for(call.read(), 5.0)
            assert isinstance(response, link_pb.RelayResponse)
            streams.add(response)
        call.cancel()
    expected = "".join(words[i % len(words)] for i in range(tokens))
    assert streams.text(1) == streams.final(1).completion.text == expected
    indexes = [f.event.chunk.index for f in streams.frames[1] if f.event.HasField("chunk")]
    assert indexes == sorted(set(indexes)), "chunks in order, none twice"


class DeafCore(link_grpc.LinkServiceServicer):
    """A core that takes the link and reads no command (as one whose outbox stays full)."""

    async def Relay(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        await asyncio.Event().wait()


async def test_the_bridge_holds_back_opens_for_a_core_that_reads_no_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    bound = 256 * 1024
    monkeypatch.setattr(core_client, "COMMAND_BYTES", bound)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    link_grpc.add_LinkServiceServicer_to_server(DeafCore(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = core_client.CoreClient(f"127.0.0.1:{port}", link_token=LINK_TOKEN)
    request = pb.GenerateRequest(query="q" * 100_000)
    opens = [asyncio.create_task(client.open(request)) for _ in range(200)]  # 20 MB of commands
    try:
        await asyncio.sleep(1.0)
        link = client._link
        assert link is not None
        assert link.pending <= bound + request.ByteSize() + 64, f"{link.pending} bytes of commands waiting"
        assert len(link._streams) < 150, "the other opens wait for room, their requests not queued"
        assert not any(task.done() for task in opens)
    finally:
        for task in opens:
            task.cancel()
        await asyncio.gather(*opens, return_exceptions=True)
        await client.close()
        await server.stop(0)
