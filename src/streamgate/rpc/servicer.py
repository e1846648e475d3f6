"""The gRPC transport of the core: adapts `Gateway` to `streamgate.v1.StreamGateService`.

Admission and release: `Gateway.open()` takes the slot and `async with stream`,
entered with no await in between, gives it back; everything that can fail or be
cancelled after admission (the initial metadata included) runs inside it.

Cancellation: when the client cancels or its deadline passes, grpc.aio cancels
this handler's task; the CancelledError runs through `async with stream`,
which closes the upstream request, and is re-raised (a handler that swallows
it leaks the call: grpc/grpc#43360).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc

import streamgate._telemetry as _telemetry
from streamgate.contract import GRPC_STATUS, ErrorCode, event_to_proto, invalid, request_from_proto
from streamgate.core import Event, Failure, Gateway, StreamError
from streamgate.core.auth import Keyring
from streamgate.core.ledger import LedgerError
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

REQUEST_ID_HEADER = "x-request-id"
#: Metadata key of the credentials: `authorization: Bearer <API key>`, as in HTTP.
AUTHORIZATION = "authorization"
#: Trailing metadata of a refusal or failure with a reason (`streamgate.contract.Reason`), e.g. model_not_found.
REASON_TRAILER = "streamgate-reason"
#: Seconds before the client's deadline at which the core ends the stream itself.
DEADLINE_MARGIN = 0.05


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: StreamError) -> None:
    """End the call with the error's status; its reason, if any, in the trailing metadata."""
    trailers = ((REASON_TRAILER, error.reason.value),) if error.reason else ()
    await context.abort(GRPC_STATUS[error.code], error.message, trailing_metadata=trailers)


def _when(text: str, name: str) -> datetime | None:
    """An RFC 3339 time or a UTC date ("2026-11-29"), as UTC; raises `StreamError(INVALID_ARGUMENT)`."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise invalid(f"{name} must be an RFC 3339 time or a date (YYYY-MM-DD), got {text[:40]!r}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class StreamGateServicer(pb_grpc.StreamGateServiceServicer):
    def __init__(self, gateway: Gateway, keyring: Keyring | None = None, admins: tuple[str, ...] = ()) -> None:
        self.gateway = gateway
        self.keyring = keyring or Keyring()
        #: Key holders who may read everyone's usage.
        self.admins = frozenset(admins)

    def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
        """The API key's holder from the `authorization` metadata; raises UNAUTHENTICATED."""
        if not self.keyring.enabled:
            return None
        metadata = dict(context.invocation_metadata() or ())
        value = metadata.get(AUTHORIZATION)
        return self.keyring.authenticate(value if isinstance(value, str) else None)

    async def Generate(
        self,
        request: pb.GenerateRequest,
        context: grpc.aio.ServicerContext[pb.GenerateRequest, pb.GenerateResponse],
    ) -> AsyncIterator[pb.GenerateResponse]:
        if self.gateway.tracer is not None:  # a caller's `traceparent` metadata: the parent of the stream's span
            metadata = dict(context.invocation_metadata() or ())
            traceparent, tracestate = metadata.get(_telemetry.TRACEPARENT), metadata.get(_telemetry.TRACESTATE)
            if isinstance(traceparent, str):
                _telemetry.adopt(traceparent, tracestate if isinstance(tracestate, str) else "")
        try:
            stream_request = request_from_proto(request, self._authenticate(context))
            remaining = context.time_remaining()
            if remaining is not None:
                # End the stream a little before the client's deadline, so that its final
                # message (with the partial text) still reaches the client.
                remaining = max(remaining - DEADLINE_MARGIN, 0.001)
                if stream_request.timeout is None or remaining < stream_request.timeout:
                    stream_request = dataclasses.replace(stream_request, timeout=remaining)
            # With limits shared across cores (--redis-url), the lease is taken first (one round trip);
            # without, nothing is awaited here.
            shared = self.gateway.shared
            lease = None if shared is None else await shared.admit(stream_request)
            stream: AsyncIterator[Event] = (
                self.gateway.open_resumable(stream_request, lease).read()
                if stream_request.resumable
                else self.gateway.open(stream_request, lease)
            )
        except StreamError as error:
            await _abort(context, error)
        # Admitted: from here to the release, nothing may come between (no await, no code that can
        # raise), or a failure or a cancel there would hold the slot for good. (A resumable stream's
        # slot is its runner's: leaving its replay only stops reading it.)
        async with contextlib.aclosing(stream):  # type: ignore[type-var]  # both kinds have aclose()
            # Headers now: the client knows at once that the stream was admitted.
            await context.send_initial_metadata(((REQUEST_ID_HEADER, stream_request.request_id),))
            async for event in stream:
                yield event_to_proto(event)
                if isinstance(event, Failure):
                    await _abort(context, event.error)

    async def GetUsage(
        self,
        request: pb.GetUsageRequest,
        context: grpc.aio.ServicerContext[pb.GetUsageRequest, pb.GetUsageResponse],
    ) -> pb.GetUsageResponse:
        """The ledger's usage, grouped; with auth on, the caller's own unless it is an admin."""
        try:
            holder = self._authenticate(context)
            group_by = request.group_by or "model"
            if group_by not in ("model", "key", "day"):
                raise invalid(f"group_by must be model, key or day, got {group_by[:20]!r}")
            since, until = _when(request.since, "since"), _when(request.until, "until")
            own = holder if self.keyring.enabled and holder not in self.admins else None
            try:
                groups = await self.gateway.ledger.usage(group_by, since, until, key=own)  # type: ignore[arg-type]
            except LedgerError:
                unreadable = "the usage ledger cannot be read now"
                raise StreamError(ErrorCode.UNAVAILABLE, unreadable, retryable=True) from None
        except StreamError as error:
            await _abort(context, error)
        return pb.GetUsageResponse(
            groups=[
                pb.UsageGroup(
                    group=group.group or "",
                    streams=group.streams,
                    prompt_tokens=group.prompt_tokens,
                    completion_tokens=group.completion_tokens,
                    cost_usd=group.cost_usd,
                    unpriced_streams=group.unpriced_streams,
                )
                for group in groups
            ]
        )

    async def Attach(
        self,
        request: pb.AttachRequest,
        context: grpc.aio.ServicerContext[pb.AttachRequest, pb.AttachResponse],
    ) -> AsyncIterator[pb.AttachResponse]:
        """A resumable stream read again from `after`: its replay, then its live tail; never a generation."""
        try:
            replay = await self.gateway.find_replay(request.request_id, self._authenticate(context))
        except StreamError as error:
            await context.abort(GRPC_STATUS[error.code], error.message)
        async with contextlib.aclosing(replay.read(request.after)) as events:
            async for event in events:
                yield pb.AttachResponse(event=event_to_proto(event))
                if isinstance(event, Failure):
                    await context.abort(GRPC_STATUS[event.error.code], event.error.message)

    async def ListModels(
        self,
        request: pb.ListModelsRequest,
        context: grpc.aio.ServicerContext[pb.ListModelsRequest, pb.ListModelsResponse],
    ) -> pb.ListModelsResponse:
        try:
            self._authenticate(context)
        except StreamError as error:
            await context.abort(GRPC_STATUS[error.code], error.message)
        provider = self.gateway.provider
        return pb.ListModelsResponse(models=provider.allowed_models, any_model=provider.config.allow_any_model)

    async def GetMetrics(
        self,
        request: pb.GetMetricsRequest,
        context: grpc.aio.ServicerContext[pb.GetMetricsRequest, pb.GetMetricsResponse],
    ) -> pb.GetMetricsResponse:
        try:
            self._authenticate(context)
        except StreamError as error:
            await context.abort(GRPC_STATUS[error.code], error.message)
        s = self.gateway.metrics.snapshot(draining=self.gateway.draining)
        return pb.GetMetricsResponse(
            active_streams=s.active_streams,
            streams_started=s.streams_started,
            streams_rejected=s.streams_rejected,
            outcomes=[
                pb.OutcomeCount(model=model, outcome=outcome, count=count)
                for (model, outcome), count in sorted(s.outcomes.items())
            ],
            prompt_tokens=s.prompt_tokens,
            completion_tokens=s.completion_tokens,
            cost_usd=s.cost_usd,
            ttft_ms_p50=s.ttft_ms_p50,
            ttft_ms_p99=s.ttft_ms_p99,
            tokens_per_second_p50=s.tokens_per_second_p50,
            draining=s.draining,
        )
