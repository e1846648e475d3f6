"""The bridge's /metrics: latency histograms by transport, and outcome labels spelled as the core's."""

from __future__ import annotations

import aiohttp
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamgate.rpc.server import CoreServer
from streamgate.testing.sse import read_events
from streamgate.testing.upstream import FakeUpstream, Scenario
from tests.conftest import BridgeFactory, CoreFactory


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def _bridge_metrics(
    http: aiohttp.ClientSession, url: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with http.get(f"{url}/metrics") as response:
        return _samples(await response.text())


def _core_metrics(core: CoreServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return _samples(generate_latest(core.gateway.metrics.registry).decode())


async def _sse(http: aiohttp.ClientSession, url: str, body: dict[str, object]) -> list[dict[str, object]]:
    async with http.post(f"{url}/query/stream", json=body) as response:
        if response.status != 200:
            return [await response.json()]
        return [frame async for frame in read_events(response)]


async def test_time_to_first_frame_and_duration_are_histograms_by_transport(
    make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=3, first_token_delay=0.2, delay=0.1)
    bridge = await make_bridge()
    await _sse(http, bridge.url, {"query": "Hello"})
    async with http.ws_connect(f"{bridge.url}/query/ws") as ws:
        await ws.send_json({"query": "Hello"})
        while (await ws.receive_json())["type"] == "chunk":
            pass

    samples = await _bridge_metrics(http, bridge.url)
    for transport in ("sse", "websocket"):
        first = _value(samples, "streamgate_bridge_time_to_first_frame_seconds_sum", transport=transport)
        whole = _value(samples, "streamgate_bridge_stream_duration_seconds_sum", transport=transport)
        assert _value(samples, "streamgate_bridge_time_to_first_frame_seconds_count", transport=transport) == 1
        assert _value(samples, "streamgate_bridge_stream_duration_seconds_count", transport=transport) == 1
        assert 0.2 <= first < 1.0, "the upstream's first token came after 0.2 s"
        assert first + 0.15 <= whole < 2.0, "two more tokens, 0.1 s apart (timers may fire a little early)"
        buckets = "streamgate_bridge_time_to_first_frame_seconds_bucket"
        assert _value(samples, buckets, transport=transport, le="0.1") == 0
        assert _value(samples, buckets, transport=transport, le="1.0") == 1


async def test_outcome_labels_of_the_bridge_and_the_core_agree(
    make_core: CoreFactory, make_bridge: BridgeFactory, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    upstream.scenarios["down"] = Scenario(status=503)
    core = await make_core(allowed_models=("openai/down",), retries=0)
    bridge = await make_bridge(core=core.address)

    completed = await _sse(http, bridge.url, {"query": "Hello"})
    failed = await _sse(http, bridge.url, {"query": "Hello", "model": "openai/down"})
    refused = await _sse(http, bridge.url, {"query": "Hello", "model": "openai/unknown"})
    assert completed[-1]["is_final"] and failed[-1]["error"] and "error" in refused[0]

    edge, engine = await _bridge_metrics(http, bridge.url), _core_metrics(core)
    assert _value(edge, "streamgate_bridge_streams_total", transport="sse", outcome="completed") == 1
    assert _value(engine, "streamgate_streams_finished_total", model="openai/fake", outcome="completed") == 1
    assert _value(edge, "streamgate_bridge_streams_total", transport="sse", outcome="unavailable") == 1
    assert _value(engine, "streamgate_streams_finished_total", model="openai/down", outcome="unavailable") == 1
    assert _value(edge, "streamgate_bridge_streams_total", transport="sse", outcome="invalid_argument") == 1
    assert _value(engine, "streamgate_streams_rejected_total", code="invalid_argument") == 1
    labels = {dict(key[1]).get("outcome") for key in edge} | {dict(key[1]).get("code") for key in engine}
    assert all(label == label.lower() for label in labels if label), labels
