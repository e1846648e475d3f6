"""API keys on the core: UNAUTHENTICATED without a valid key, a per-key limit, keys never logged."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from streamgate.core import StreamError
from streamgate.core.auth import Keyring
from streamgate.testing.upstream import FakeUpstream, Scenario
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import CoreFactory, collect

ALICE, BOB = "alice-secret-key-1", "bob-secret-key-22"
KEYS = Keyring.from_lines([f"alice: {ALICE}", f"bob: {BOB}"])


def _auth(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (None, "missing credentials"),
        ((("authorization", "Basic abc"),), "missing credentials"),
        ((("authorization", "Bearer not-a-key-at-all"),), "invalid API key"),
    ],
)
async def test_without_a_valid_key_the_core_says_unauthenticated(
    make_core: CoreFactory, upstream: FakeUpstream, metadata: tuple[tuple[str, str]] | None, message: str
) -> None:
    core = await make_core(keyring=KEYS)
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        result = await collect(stub, pb.GenerateRequest(query="hi"), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as metrics_refused:
            await stub.GetMetrics(pb.GetMetricsRequest(), metadata=metadata)

    assert result.code == grpc.StatusCode.UNAUTHENTICATED
    assert message in (result.details or "")
    assert metrics_refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert upstream.counters.started == 0


async def test_a_valid_key_streams_and_keys_never_reach_the_logs(
    make_core: CoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    core = await make_core(keyring=KEYS)
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        ok = await collect(stub, pb.GenerateRequest(query="hi"), metadata=_auth(BOB))
        await collect(stub, pb.GenerateRequest(query="hi"), metadata=_auth("wrong-key-123456"))

    assert ok.code == grpc.StatusCode.OK
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "key=bob" in logged
    assert BOB not in logged and "wrong-key-123456" not in logged


async def test_the_per_key_limit_holds_one_key_back_and_not_the_others(
    make_core: CoreFactory, upstream: FakeUpstream
) -> None:
    upstream.default = Scenario(tokens=20, delay=0.05)
    core = await make_core(keyring=KEYS, max_streams_per_key=1)
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        running = stub.Generate(pb.GenerateRequest(query="hi"), metadata=_auth(ALICE))
        await running.read()

        second = await collect(stub, pb.GenerateRequest(query="hi"), metadata=_auth(ALICE))
        other = await collect(stub, pb.GenerateRequest(query="hi"), metadata=_auth(BOB))
        running.cancel()

    assert second.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "for this API key (limit 1)" in (second.details or "")
    assert other.code == grpc.StatusCode.OK


def test_keys_from_a_file_and_from_a_list(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# team keys\nalice: alice-secret-key-1\n\nplain-key-9999\n")

    from_file = Keyring.from_file(path)

    assert from_file.authenticate("Bearer plain-key-9999") == "key-2"
    assert from_file.authenticate("bearer alice-secret-key-1") == "alice"
    assert Keyring.from_list("k-1234567,k-7654321").authenticate("Bearer k-7654321") == "key-2"
    assert Keyring().authenticate(None) is None, "no keys: authentication is off"
    with pytest.raises(StreamError, match="invalid API key"):
        from_file.authenticate("Bearer alice-secret-key-")
    with pytest.raises(ValueError, match="shorter than 8"):
        Keyring.from_lines(["short"])
