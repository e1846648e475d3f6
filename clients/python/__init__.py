"""A small typed async client for the core, over the buf-generated stubs.

    async with StreamgateClient("127.0.0.1:50051") as client:
        async for event in client.generate("Tell me about streaming", max_tokens=100, timeout=30):
            if isinstance(event, Chunk):
                print(event.content, end="", flush=True)
            else:
                print(event)            # Completion, or Failure (with the partial text)

A refusal before the stream starts (bad input, over the limit, deadline,
core unreachable) raises `StreamError`; a stream that fails after it started
ends with a `Failure` event. Leaving the loop early (or `aclose()`) cancels the
call, and the core closes the upstream request. Imports no litellm.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import grpc

from streamgate.contract import Chunk, Completion, ErrorCode, Failure, StreamError, error_from_status, event_from_proto
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

__all__ = ["Chunk", "Completion", "Failure", "StreamError", "StreamgateClient"]


def _error(exc: grpc.aio.AioRpcError) -> StreamError:
    return error_from_status(exc.code(), exc.details())


class StreamgateClient:
    """One channel to a core; many concurrent `generate` calls over it."""

    def __init__(self, address: str = "127.0.0.1:50051", *, channel: grpc.aio.Channel | None = None) -> None:
        self._channel = channel or grpc.aio.insecure_channel(address)
        self._stub = pb_grpc.StreamGateServiceStub(self._channel)

    async def generate(
        self,
        query: str | None = None,
        *,
        messages: Iterable[Mapping[str, str]] = (),
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **parameters: Any,
    ) -> AsyncGenerator[Chunk | Completion | Failure, None]:
        """Chunks, then one `Completion` or `Failure`.

        `timeout` is the call's deadline in seconds: the core ends the stream just
        before it, with a `Failure` (DEADLINE_EXCEEDED) that carries the partial text.
        """
        request = pb.GenerateRequest(
            query=query or "",
            messages=[pb.ChatMessage(role=m["role"], content=m["content"], name=m.get("name", "")) for m in messages],
            model=model or "",
            request_id=request_id or "",
            parameters=pb.GenerationParameters(**parameters),
        )
        call = self._stub.Generate(request, timeout=timeout)
        try:
            async for response in call:
                event = event_from_proto(response)
                yield event
                if not isinstance(event, Chunk):
                    return
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        finally:
            call.cancel()  # no-op once the call is done; otherwise the core closes the upstream

    async def complete(self, query: str | None = None, **kwargs: Any) -> Completion:
        """The whole answer; raises `StreamError` if the stream fails."""
        async for event in self.generate(query, **kwargs):
            if isinstance(event, Completion):
                return event
            if isinstance(event, Failure):
                raise event.error
        raise StreamError(ErrorCode.INTERNAL, "the stream ended without a final message")

    async def metrics(self) -> pb.GetMetricsResponse:
        """The core's aggregate metrics."""
        try:
            return await self._stub.GetMetrics(pb.GetMetricsRequest())
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
