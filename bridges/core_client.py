"""The bridge's view of the core: one gRPC channel, and streams that always end with one final event.

`CoreClient.open()` returns once the core has admitted the stream (its initial
metadata arrived) or raises the core's refusal as a `StreamError`, so the
bridge can still answer with a plain HTTP error. `CoreStream` then yields the
core's events; if the call breaks without a final message (the core died),
it makes the final `Failure` itself, with the text received so far.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamgate.core import Chunk, ErrorCode, Event, Failure, Metrics, StreamError, Usage
from streamgate.rpc.convert import event_from_proto
from streamgate.rpc.servicer import AUTHORIZATION, REQUEST_ID_HEADER
from streamgate.rpc.status import error_from_status
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

CORE_UNAVAILABLE = "the core is unavailable"


def _refusal(code: grpc.StatusCode, details: str | None) -> StreamError:
    error = error_from_status(code, details)
    if error.code is ErrorCode.UNAVAILABLE and not (details and "shutting down" in details):
        # grpc's own words about a connection that failed mean nothing to a browser
        return StreamError(ErrorCode.UNAVAILABLE, CORE_UNAVAILABLE, retryable=True)
    return error


class CoreStream:
    """One admitted stream. Iterate `events()`; `cancel()` stops it (the core closes the upstream)."""

    def __init__(self, call: grpc.aio.UnaryStreamCall[pb.GenerateRequest, pb.GenerateResponse], request_id: str):
        self._call = call
        self.request_id = request_id
        self.text: list[str] = []
        self.started = time.perf_counter()
        self.first_chunk: float | None = None

    def cancel(self) -> None:
        self._call.cancel()

    def metrics(self) -> Metrics:
        """What the bridge measured itself (for a stream that has no final event from the core)."""
        now = time.perf_counter()
        ttft = (self.first_chunk - self.started) * 1000 if self.first_chunk is not None else 0.0
        return Metrics(ttft_ms=round(ttft, 3), duration_ms=round((now - self.started) * 1000, 3), chunks=len(self.text))

    async def events(self) -> AsyncGenerator[Event, None]:
        """The core's events, ending with exactly one `Completion` or `Failure`."""
        call = self._call
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                assert isinstance(response, pb.GenerateResponse)
                event = event_from_proto(response)
                if isinstance(event, Chunk):
                    if self.first_chunk is None:
                        self.first_chunk = time.perf_counter()
                    self.text.append(event.content)
                    yield event
                    continue
                yield event
                return
            error = StreamError(ErrorCode.INTERNAL, "the core ended the stream without a final message")
        except grpc.aio.AioRpcError as exc:
            error = _refusal(exc.code(), exc.details())
            if error.code is ErrorCode.UNAVAILABLE:
                error = StreamError(ErrorCode.UNAVAILABLE, "lost the connection to the core", retryable=True)
        yield self.failure(error)

    def failure(self, error: StreamError) -> Failure:
        """A final event made by the bridge, with what it received so far."""
        return Failure(
            error=error,
            partial_text="".join(self.text),
            model="",
            usage=Usage(0, len(self.text)),
            cost_usd=None,
            metrics=self.metrics(),
            request_id=self.request_id,
        )


class CoreClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", 16 * 1024 * 1024),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                # Notice a dead core quickly, and reconnect quickly when it is back.
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 2_000),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1_000),
            ],
        )
        self._stub = pb_grpc.StreamGateServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def open(self, request: pb.GenerateRequest, authorization: str | None = None) -> CoreStream:
        """Start a stream; raises `StreamError` when the core refuses it or cannot be reached.

        `authorization` (the client's `Authorization` header) is passed on for the core to check.
        """
        credentials = ((AUTHORIZATION, authorization),) if authorization else None
        call = self._stub.Generate(request, metadata=credentials)
        try:
            headers = await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            raise _refusal(exc.code(), exc.details()) from None
        request_id = dict(headers or ()).get(REQUEST_ID_HEADER)
        if request_id is None:  # refused: the status came without headers
            raise _refusal(await call.code(), await call.details())
        return CoreStream(call, str(request_id))

    async def ready(self, timeout: float = 1.0) -> bool:
        """Whether the core answers its health check with SERVING."""
        try:
            answer = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await self._channel.close()
