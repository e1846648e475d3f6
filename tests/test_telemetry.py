"""Traces leave `streamgate serve` by OTLP/HTTP, from both of its processes, when an endpoint is set.

The receiver is a real OTLP/HTTP endpoint on loopback (POST /v1/traces, protobuf), as a collector
would be; `streamgate serve` runs as a user runs it, with OTEL_EXPORTER_OTLP_ENDPOINT pointing at it
and its logs as JSON lines.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from streamgate import _telemetry
from streamgate.testing.sse import read_events
from tests.conftest import eventually

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@dataclass(frozen=True)
class Received:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Receiver:
    """An OTLP/HTTP trace endpoint: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Received(
                            attributes.get("service.name", ""),
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                        )
                    )
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


async def _lines(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode())


@pytest.mark.timeout(90)
async def test_serve_sends_the_spans_of_both_processes_to_the_otlp_endpoint(receiver: Receiver) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        STREAMGATE_GRPC_PORT="0",
        STREAMGATE_HTTP_PORT="0",
        STREAMGATE_METRICS_PORT="off",
        STREAMGATE_LEDGER="off",
        STREAMGATE_TOKENS_PER_SECOND="0",
        STREAMGATE_DRAIN_GRACE="0.5",
        STREAMGATE_LOG_FORMAT="json",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="100",  # milliseconds: the batches leave at once, not after 5 s
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamgate.cli", "serve", env=env, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    lines: list[str] = []
    reader = asyncio.ensure_future(_lines(process.stderr, lines))
    try:
        await eventually(lambda: any("bridge listening on" in line for line in lines), within=60)
        (listening,) = [json.loads(line) for line in lines if "bridge listening on" in line]
        url = listening["message"].split()[3]
        async with aiohttp.ClientSession() as http:
            body = {"query": "Hello", "max_tokens": 3}
            async with http.post(f"{url}/query/stream", json=body, headers={"traceparent": TRACEPARENT}) as response:
                frames = [frame async for frame in read_events(response)]
        assert frames[-1]["is_final"] is True and "error" not in frames[-1]

        def traced() -> set[tuple[str, str]]:
            return {(span.service, span.name) for span in receiver.spans if span.trace_id == TRACE_ID}

        await eventually(lambda: len(traced()) >= 3, within=10)
        assert traced() == {
            ("streamgate-bridge", "POST /query/stream"),
            ("streamgate-core", "stream streamgate/default"),
            ("streamgate-core", "chat streamgate/default"),
        }
        by_name = {span.name: span for span in receiver.spans if span.trace_id == TRACE_ID}
        assert by_name["POST /query/stream"].parent_id == "b7ad6b7169203331"
        assert by_name["stream streamgate/default"].parent_id == by_name["POST /query/stream"].span_id
        assert by_name["chat streamgate/default"].parent_id == by_name["stream streamgate/default"].span_id

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await process.wait() == 0
        await reader
        records = [json.loads(line) for line in lines]  # every line of both processes is one JSON object
        request_id = frames[-1]["metadata"]["request_id"]
        assert any(r["logger"] == "streamgate.core" and r.get("request_id") == request_id for r in records)
        assert any(r["logger"] == "streamgate.access" and r.get("request_id") == request_id for r in records)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        reader.cancel()


def test_traces_are_off_unless_an_endpoint_is_set_and_the_sdk_is_not_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    assert _telemetry.from_environment("x") is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:1/v1/traces")
    assert _telemetry.enabled()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not _telemetry.enabled()
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not _telemetry.enabled()
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-gateway")
    provider = _telemetry.from_environment(_telemetry.CORE_SERVICE)
    try:
        assert provider is not None
        assert provider.resource.attributes["service.name"] == "my-gateway"  # type: ignore[attr-defined]
    finally:
        _telemetry.shutdown(provider)
