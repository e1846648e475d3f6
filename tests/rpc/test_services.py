"""Health, reflection, the metrics RPC and Prometheus exposition."""

from __future__ import annotations

import aiohttp
import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from streamgate.testing.upstream import FakeUpstream, Scenario
from streamgate.v1 import streamgate_pb2 as pb
from tests.conftest import Client, CoreFactory, collect


async def test_health_is_serving_until_drain(make_core: CoreFactory) -> None:
    core = await make_core()
    async with grpc.aio.insecure_channel(core.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "streamgate.v1.StreamGateService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

        await core.health.enter_graceful_shutdown()

        answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_reflection_lists_and_describes_the_service(client: Client) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="streamgate.v1.StreamGateService"),
    ]
    answers = [answer async for answer in stub.ServerReflectionInfo(iter(requests))]

    services = {s.name for s in answers[0].list_services_response.service}
    assert {"streamgate.v1.StreamGateService", "grpc.health.v1.Health"} <= services
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in answers[1].file_descriptor_response.file_descriptor_proto
    ]
    methods = {m.name for f in files for s in f.service for m in s.method}
    assert {"Generate", "GetMetrics"} <= methods


async def test_metrics_rpc_aggregates_streams_by_outcome(client: Client, upstream: FakeUpstream) -> None:
    await collect(client.stub, pb.GenerateRequest(query="one two"))
    await collect(client.stub, pb.GenerateRequest(query="one two"))
    upstream.default = Scenario(status=503)
    await collect(client.stub, pb.GenerateRequest(query="hi"))
    await collect(client.stub, pb.GenerateRequest(query="hi", model="nope"))

    metrics = await client.stub.GetMetrics(pb.GetMetricsRequest())

    outcomes = {(o.model, o.outcome): o.count for o in metrics.outcomes}
    assert outcomes == {("openai/fake", "completed"): 2, ("openai/fake", "unavailable"): 1}
    assert metrics.streams_started == 3
    assert metrics.streams_rejected == 1
    assert metrics.active_streams == 0
    assert metrics.completion_tokens == 16
    assert metrics.prompt_tokens >= 4
    assert metrics.ttft_ms_p50 > 0
    assert metrics.tokens_per_second_p50 > 0


async def test_prometheus_metrics_are_exposed_on_the_metrics_port(make_core: CoreFactory) -> None:
    core = await make_core(metrics_port=0)
    async with grpc.aio.insecure_channel(core.address) as channel:
        from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

        await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query="hi"))
    assert core.metrics_port
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{core.metrics_port}/metrics") as response:
            text = await response.text()

    assert response.status == 200
    assert 'streamgate_streams_finished_total{model="openai/fake",outcome="completed"} 1.0' in text
    assert "streamgate_active_streams 0.0" in text
    assert 'streamgate_tokens_total{kind="completion",model="openai/fake"} 8.0' in text
    assert "streamgate_time_to_first_token_seconds_bucket" in text
