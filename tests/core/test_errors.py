"""Upstream failures and bad input: a clear error in the right form, and the server keeps serving."""

from __future__ import annotations

import grpc
import pytest

from streamgate.testing.upstream import FakeUpstream, Scenario, token
from streamgate.v1 import streamgate_pb2 as pb
from tests.conftest import Client, CoreFactory, collect, eventually


async def _still_serves(client: Client, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=3)
    assert (await collect(client.stub, pb.GenerateRequest(query="still there?"))).code == grpc.StatusCode.OK


async def test_a_connection_dropped_mid_stream_ends_with_one_final_error(
    client: Client, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=10, drop_after=3)

    result = await collect(client.stub, pb.GenerateRequest(query="hi"))

    assert result.code == grpc.StatusCode.UNAVAILABLE
    assert result.error.code == pb.ERROR_CODE_UNAVAILABLE
    assert result.error.retryable
    assert result.error.partial_text == "".join(token(i) for i in range(3))
    assert result.error.usage.completion_tokens > 0
    assert result.error.message
    await _still_serves(client, upstream)


async def test_a_malformed_chunk_ends_the_stream_with_an_error(client: Client, upstream: FakeUpstream) -> None:
    upstream.default = Scenario(tokens=10, malformed_after=2)

    result = await collect(client.stub, pb.GenerateRequest(query="hi"))

    assert result.code == grpc.StatusCode.UNAVAILABLE
    assert result.error.partial_text == "".join(token(i) for i in range(2))
    await _still_serves(client, upstream)


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (500, grpc.StatusCode.UNAVAILABLE, True),
        (503, grpc.StatusCode.UNAVAILABLE, True),
        (400, grpc.StatusCode.INVALID_ARGUMENT, False),
        (401, grpc.StatusCode.INTERNAL, False),
        (404, grpc.StatusCode.INVALID_ARGUMENT, False),
    ],
)
async def test_upstream_http_errors_map_through_one_table(
    client: Client, upstream: FakeUpstream, status: int, code: grpc.StatusCode, retryable: bool
) -> None:
    upstream.default = Scenario(status=status)

    result = await collect(client.stub, pb.GenerateRequest(query="hi"))

    assert result.code == code
    assert result.error.retryable == retryable
    assert f"fake upstream answers {status}" in result.error.message
    assert result.chunks == []
    await _still_serves(client, upstream)


async def test_an_unreachable_upstream_is_unavailable(make_core: CoreFactory) -> None:
    core = await make_core(api_base="http://127.0.0.1:9/v1")
    async with grpc.aio.insecure_channel(core.address) as channel:
        from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

        result = await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query="hi"))

    assert result.code == grpc.StatusCode.UNAVAILABLE
    assert result.error.retryable
    assert "upstream" in result.error.message


BAD_REQUESTS = {
    "empty": (pb.GenerateRequest(), "No query provided"),
    "blank query": (pb.GenerateRequest(query="   "), "No query provided"),
    "empty messages": (
        pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="")]),
        "every message is empty",
    ),
    "unknown role": (
        pb.GenerateRequest(messages=[pb.ChatMessage(role="wizard", content="hi")]),
        "role must be one of",
    ),
    "both": (
        pb.GenerateRequest(query="hi", messages=[pb.ChatMessage(role="user", content="hi")]),
        "either messages or query",
    ),
    "model not offered": (pb.GenerateRequest(query="hi", model="no-such-model"), "'no-such-model' is not offered"),
    "request_id with a newline": (
        pb.GenerateRequest(query="hi", request_id="a\nERROR forged"),
        "request_id must be 1 to 128 printable ASCII",
    ),
    "request_id not ASCII": (pb.GenerateRequest(query="hi", request_id="idé"), "printable ASCII"),
    "request_id with an escape": (pb.GenerateRequest(query="hi", request_id="\x1b[2J"), "printable ASCII"),
    "request_id too long": (pb.GenerateRequest(query="hi", request_id="x" * 129), "printable ASCII"),
    "model with a control character": (pb.GenerateRequest(query="hi", model="openai/fake\r\n"), "printable ASCII"),
    "temperature": (
        pb.GenerateRequest(query="hi", parameters=pb.GenerationParameters(temperature=7)),
        "temperature must be between 0 and 2",
    ),
    "max_tokens": (
        pb.GenerateRequest(query="hi", parameters=pb.GenerationParameters(max_tokens=0)),
        "max_tokens must be between",
    ),
    "top_p": (pb.GenerateRequest(query="hi", parameters=pb.GenerationParameters(top_p=1.5)), "top_p must be"),
    "stop": (
        pb.GenerateRequest(query="hi", parameters=pb.GenerationParameters(stop=["a", "b", "c", "d", "e"])),
        "at most 4 stop",
    ),
    "timeout": (pb.GenerateRequest(query="hi", timeout={"seconds": -1}), "timeout must be positive"),
    "huge": (pb.GenerateRequest(query="x" * (5 * 1024 * 1024)), "more than the limit"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_input_is_invalid_argument_and_loses_nothing(
    client: Client, upstream: FakeUpstream, case: str
) -> None:
    request, expected = BAD_REQUESTS[case]

    result = await collect(client.stub, request)

    assert result.code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (result.details or ""), result.details
    assert result.final is None
    assert upstream.counters.started == 0
    await _still_serves(client, upstream)


async def test_a_request_over_the_message_size_limit_is_refused(client: Client, upstream: FakeUpstream) -> None:
    result = await collect(client.stub, pb.GenerateRequest(query="x" * (17 * 1024 * 1024)))

    assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    await _still_serves(client, upstream)


async def test_allowed_models_refuse_other_models(make_core: CoreFactory, upstream: FakeUpstream) -> None:
    core = await make_core(allowed_models=("openai/fake",))
    async with grpc.aio.insecure_channel(core.address) as channel:
        from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

        result = await collect(pb_grpc.StreamGateServiceStub(channel), pb.GenerateRequest(query="hi", model="openai/x"))

    assert result.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'openai/x' is not offered here; ask for one of: openai/fake" in (result.details or "")
    await eventually(lambda: upstream.counters.started == 0)


_QUERY_TAG = (pb.GenerateRequest.DESCRIPTOR.fields_by_name["query"].number << 3) | 2  # a length-delimited field


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # `query` holding three bytes that are a UTF-8-encoded surrogate, which protobuf refuses
        (bytes([_QUERY_TAG, 3]) + b"\xed\xa0\x80", "UTF-8"),
        (b"\xff\xff\xff", "corrupt"),
    ],
)
async def test_a_request_message_that_does_not_parse_is_invalid_argument(
    client: Client, upstream: FakeUpstream, raw: bytes, reason: str
) -> None:
    generate = client.channel.unary_stream(
        "/streamgate.v1.StreamGateService/Generate",
        request_serializer=lambda data: data,
        response_deserializer=pb.GenerateResponse.FromString,
    )
    call = generate(raw)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # was UNKNOWN, with protobuf's exception class
    assert "the request message does not parse" in (refused.value.details() or "")
    assert reason in (refused.value.details() or "")
    await _still_serves(client, upstream)
