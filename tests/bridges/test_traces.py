"""Traces: one span per stream in the bridge, one in the core, one per upstream try, in one trace.

The core and the bridge run here with tracer providers of their own (as two processes would), both
writing to one in-memory exporter; the upstream is the real one on loopback, which records the
`traceparent` header each request carried.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from streamgate.core.auth import Keyring
from streamgate.testing.sse import read_events
from streamgate.testing.upstream import FakeUpstream, Scenario
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import LINK_TOKEN, BridgeFactory, CoreFactory, collect, eventually

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


class Spans:
    """The spans the core and the bridge ended, by service."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.providers: list[TracerProvider] = []

    def provider(self, service: str) -> TracerProvider:
        provider = TracerProvider(resource=Resource.create({"service.name": service}), shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.providers.append(provider)
        return provider

    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def of(self, service: str, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return [
            span
            for span in self.all()
            if span.resource.attributes["service.name"] == service and (kind is None or span.kind is kind)
        ]

    async def wait(self, count: int) -> list[ReadableSpan]:
        await eventually(lambda: len(self.all()) >= count, within=5.0)
        return self.all()


@pytest.fixture
def spans() -> Iterator[Spans]:
    found = Spans()
    yield found
    for provider in found.providers:
        provider.shutdown()


@pytest.fixture
async def traced(make_core: CoreFactory, make_bridge: BridgeFactory, spans: Spans) -> Callable[..., Any]:
    """A traced core (core_* keyword arguments for its `LiteLLMConfig`) and a traced bridge in front of it."""

    async def start(**core_fields: Any) -> Any:
        core = await make_core(tracer_provider=spans.provider("streamgate-core"), **core_fields)
        return await make_bridge(core=core.address, tracer_provider=spans.provider("streamgate-bridge"))

    return start


def _hex(value: int, digits: int) -> str:
    return f"{value:0{digits}x}"


def _parent(span: ReadableSpan) -> str | None:
    return _hex(span.parent.span_id, 16) if span.parent is not None else None


def _id(span: ReadableSpan) -> str:
    return _hex(span.context.span_id, 16)


def _trace(span: ReadableSpan) -> str:
    return _hex(span.context.trace_id, 32)


async def test_one_sse_stream_is_one_trace_from_the_callers_traceparent_to_the_upstream(
    traced: Callable[..., Any], spans: Spans, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=4)
    bridge = await traced()
    headers = {"traceparent": TRACEPARENT}
    async with http.post(f"{bridge.url}/query/stream", json={"query": "Hello"}, headers=headers) as response:
        frames = [frame async for frame in read_events(response)]
    final = frames[-1]["metadata"]

    await spans.wait(3)
    (edge,) = spans.of("streamgate-bridge")
    (stream,) = spans.of("streamgate-core", SpanKind.SERVER)
    (call,) = spans.of("streamgate-core", SpanKind.CLIENT)

    # One trace, the caller's; each span the child of the one before it.
    assert {_trace(edge), _trace(stream), _trace(call)} == {TRACE_ID}
    assert (_parent(edge), edge.parent and edge.parent.is_remote) == (CALLER_SPAN, True)
    assert _parent(stream) == _id(edge), "the link carried the bridge span's context to the core"
    assert _parent(call) == _id(stream)
    # The upstream got the upstream span's own traceparent.
    assert upstream.counters.traceparents[-1] == f"00-{TRACE_ID}-{_id(call)}-01"

    assert edge.name == "POST /query/stream" and edge.kind is SpanKind.SERVER
    assert edge.attributes is not None and stream.attributes is not None and call.attributes is not None
    assert edge.attributes["http.response.status_code"] == 200
    assert edge.attributes["streamgate.request_id"] == final["request_id"]
    assert edge.attributes["streamgate.outcome"] == "completed"
    assert edge.status.status_code is StatusCode.UNSET

    assert stream.name == "stream openai/fake"
    assert stream.attributes["gen_ai.operation.name"] == "chat"
    assert stream.attributes["gen_ai.request.model"] == "openai/fake"
    assert stream.attributes["gen_ai.response.model"] == "fake", "the model the upstream said it answered with"
    assert stream.attributes["gen_ai.usage.input_tokens"] == final["usage"]["prompt_tokens"]
    assert stream.attributes["gen_ai.usage.output_tokens"] == final["usage"]["completion_tokens"] == 4
    assert stream.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert stream.attributes["streamgate.ttft_ms"] == final["metrics"]["ttft_ms"]
    assert stream.attributes["streamgate.outcome"] == "completed"
    assert stream.attributes["streamgate.request_id"] == final["request_id"]
    assert stream.attributes["streamgate.transport"] == "sse"
    assert "streamgate.cost_usd" not in stream.attributes, "the fake model has no price: unknown, not 0"
    assert stream.status.status_code is StatusCode.UNSET

    assert call.name == "chat openai/fake"
    assert call.attributes["gen_ai.request.model"] == "openai/fake"
    assert call.attributes["gen_ai.usage.output_tokens"] == 4
    assert call.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    # Nested in time too: the bridge's span holds the core's, which holds the upstream call's.
    assert edge.start_time is not None and stream.start_time is not None and call.start_time is not None
    assert edge.start_time <= stream.start_time <= call.start_time
    assert call.end_time is not None and stream.end_time is not None and edge.end_time is not None
    assert call.end_time <= stream.end_time <= edge.end_time


async def test_a_priced_stream_has_its_cost_and_a_request_without_traceparent_starts_a_trace(
    traced: Callable[..., Any], spans: Spans, http: aiohttp.ClientSession
) -> None:
    bridge = await traced(model="openai/gpt-4o-mini")  # priced in litellm's table (served by the fake upstream)
    async with http.post(f"{bridge.url}/query/stream", json={"query": "Hello"}) as response:
        frames = [frame async for frame in read_events(response)]

    await spans.wait(3)
    (edge,) = spans.of("streamgate-bridge")
    (stream,) = spans.of("streamgate-core", SpanKind.SERVER)
    assert edge.parent is None, "no traceparent came: the bridge's span is the root"
    assert _trace(stream) == _trace(edge)
    assert stream.attributes is not None
    assert stream.attributes["streamgate.cost_usd"] == pytest.approx(frames[-1]["metadata"]["cost_usd"])
    assert stream.attributes["streamgate.cost_usd"] > 0


async def test_a_failed_stream_is_an_error_on_every_span_and_each_try_is_a_span(
    traced: Callable[..., Any], spans: Spans, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.scenarios["down"] = Scenario(status=503)
    bridge = await traced(allowed_models=("openai/down",), retries=1)
    body = {"query": "Hello", "model": "openai/down"}
    async with http.post(f"{bridge.url}/query/stream", json=body, headers={"traceparent": TRACEPARENT}) as response:
        frames = [frame async for frame in read_events(response)]
    assert frames[-1]["metadata"]["code"] == "UNAVAILABLE"

    await spans.wait(4)
    (edge,) = spans.of("streamgate-bridge")
    (stream,) = spans.of("streamgate-core", SpanKind.SERVER)
    calls = spans.of("streamgate-core", SpanKind.CLIENT)
    assert len(calls) == 2 == upstream.counters.started, "the try and its retry"
    assert all(_parent(call) == _id(stream) for call in calls)
    assert [tp.split("-")[2] for tp in upstream.counters.traceparents] == [_id(call) for call in calls]
    for span in (edge, stream, *calls):
        assert _trace(span) == TRACE_ID
        assert span.status.status_code is StatusCode.ERROR, span.name
        assert span.status.description == "UNAVAILABLE"
        assert span.attributes is not None and span.attributes["error.type"] == "UNAVAILABLE"
    assert stream.attributes is not None and stream.attributes["streamgate.outcome"] == "unavailable"
    assert edge.attributes is not None and edge.attributes["streamgate.outcome"] == "unavailable"


async def test_each_websocket_query_is_a_span_under_the_upgrade_requests_traceparent(
    traced: Callable[..., Any], spans: Spans, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=2)
    bridge = await traced()
    ids = []
    async with http.ws_connect(f"{bridge.url}/query/ws", headers={"traceparent": TRACEPARENT}) as ws:
        for query in ("one", "two"):
            await ws.send_json({"query": query})
            while (message := json.loads(await ws.receive_str()))["type"] == "chunk":
                pass
            assert message["type"] == "complete"
            ids.append(message["metadata"]["request_id"])

    await spans.wait(6)
    edges = sorted(spans.of("streamgate-bridge"), key=lambda span: span.start_time or 0)
    streams = spans.of("streamgate-core", SpanKind.SERVER)
    assert [edge.name for edge in edges] == ["WS /query/ws", "WS /query/ws"]
    assert [edge.attributes and edge.attributes["streamgate.request_id"] for edge in edges] == ids
    assert all(_parent(edge) == CALLER_SPAN and _trace(edge) == TRACE_ID for edge in edges)
    by_parent = {_parent(stream): stream for stream in streams}
    assert set(by_parent) == {_id(edge) for edge in edges}, "each query's core span under its own bridge span"
    for edge in edges:
        stream = by_parent[_id(edge)]
        assert stream.attributes is not None and edge.attributes is not None
        assert stream.attributes["streamgate.request_id"] == edge.attributes["streamgate.request_id"]
        assert stream.attributes["streamgate.transport"] == "ws"


async def test_the_openai_api_and_the_litellm_path_are_traced_too(
    traced: Callable[..., Any], spans: Spans, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=3)
    bridge = await traced(fast_path=False)  # litellm streams the upstream: the traceparent goes as extra_headers
    body = {"messages": [{"role": "user", "content": "Hello"}], "stream": True}
    headers = {"traceparent": TRACEPARENT}
    async with http.post(f"{bridge.url}/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status == 200
        text = await response.text()
    assert text.endswith("data: [DONE]\n\n")

    await spans.wait(3)
    (edge,) = spans.of("streamgate-bridge")
    (stream,) = spans.of("streamgate-core", SpanKind.SERVER)
    (call,) = spans.of("streamgate-core", SpanKind.CLIENT)
    assert edge.name == "POST /v1/chat/completions"
    assert edge.attributes is not None and edge.attributes["streamgate.transport"] == "openai"
    assert (_parent(edge), _parent(stream), _parent(call)) == (CALLER_SPAN, _id(edge), _id(stream))
    assert stream.attributes is not None and stream.attributes["streamgate.transport"] == "openai"
    assert upstream.counters.traceparents[-1] == f"00-{TRACE_ID}-{_id(call)}-01"


async def test_without_a_tracer_nothing_is_traced_and_the_upstream_gets_no_traceparent(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    bridge = await make_bridge()
    headers = {"traceparent": TRACEPARENT}
    async with http.post(f"{bridge.url}/query/stream", json={"query": "Hello"}, headers=headers) as response:
        frames = [frame async for frame in read_events(response)]
    assert frames[-1]["is_final"] is True
    assert list(upstream.counters.traceparents) == [""]


async def test_a_generate_calls_traceparent_metadata_is_the_parent_of_its_stream_span_and_of_no_other(
    make_core: CoreFactory, spans: Spans
) -> None:
    core = await make_core(tracer_provider=spans.provider("streamgate-core"))
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        first = await collect(stub, pb.GenerateRequest(query="Hello"), metadata=(("traceparent", TRACEPARENT),))
        second = await collect(stub, pb.GenerateRequest(query="Hello"))

    await spans.wait(4)
    by_id = {
        s.attributes and s.attributes["streamgate.request_id"]: s for s in spans.of("streamgate-core", SpanKind.SERVER)
    }
    traced, untraced = by_id[first.completion.request_id], by_id[second.completion.request_id]
    assert (_trace(traced), _parent(traced)) == (TRACE_ID, CALLER_SPAN)
    assert untraced.parent is None and _trace(untraced) != TRACE_ID
    assert untraced.attributes is not None and untraced.attributes["streamgate.transport"] == "grpc"


async def test_no_span_holds_a_key_and_the_core_names_the_keys_holder(
    make_core: CoreFactory, make_bridge: BridgeFactory, spans: Spans, http: aiohttp.ClientSession
) -> None:
    key = "sk-traced-0123456789-secret"
    core = await make_core(
        tracer_provider=spans.provider("streamgate-core"), keyring=Keyring.from_lines([f"alice: {key}"])
    )
    bridge = await make_bridge(core=core.address, tracer_provider=spans.provider("streamgate-bridge"))
    headers = {"Authorization": f"Bearer {key}", "traceparent": TRACEPARENT}
    async with http.post(f"{bridge.url}/query/stream", json={"query": "Hello"}, headers=headers) as response:
        frames = [frame async for frame in read_events(response)]
    assert frames[-1]["is_final"] is True

    found = await spans.wait(3)
    (stream,) = spans.of("streamgate-core", SpanKind.SERVER)
    assert stream.attributes is not None and stream.attributes["streamgate.key_holder"] == "alice"
    values = [str(value) for span in found for value in (span.attributes or {}).values()]
    for secret in (key, "test-key", LINK_TOKEN):  # the client's key, the upstream's, the link's
        assert not any(secret in value for value in values)
