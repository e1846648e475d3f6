"""Between protobuf messages and the core's values. Pure functions, no I/O."""

from __future__ import annotations

from streamgate.v1 import streamgate_pb2 as pb

from ._errors import ErrorCode, Reason, StreamError
from ._model import (
    ChatMessage,
    Chunk,
    Completion,
    Event,
    Failure,
    GenerationParameters,
    Metrics,
    StreamRequest,
    Usage,
)
from ._status import ERROR_CODE, PROTO_CODE


def _opt(message: pb.GenerationParameters, field: str) -> float | None:
    return getattr(message, field) if message.HasField(field) else None  # type: ignore[arg-type]


def request_from_proto(message: pb.GenerateRequest, principal: str | None = None) -> StreamRequest:
    """A validated `StreamRequest`; raises `StreamError(INVALID_ARGUMENT)`."""
    p = message.parameters
    parameters = GenerationParameters(
        temperature=_opt(p, "temperature"),
        max_tokens=p.max_tokens if p.HasField("max_tokens") else None,
        top_p=_opt(p, "top_p"),
        stop=tuple(p.stop),
        presence_penalty=_opt(p, "presence_penalty"),
        frequency_penalty=_opt(p, "frequency_penalty"),
        seed=p.seed if p.HasField("seed") else None,
        user=p.user or None,
    )
    timeout = None
    if message.HasField("timeout"):
        timeout = message.timeout.seconds + message.timeout.nanos / 1e9  # (ToTimedelta overflows past 1e13 s)
    return StreamRequest.create(
        messages=[ChatMessage(m.role, m.content, m.name or None) for m in message.messages],
        query=message.query or None,
        model=message.model or None,
        parameters=parameters,
        request_id=message.request_id or None,
        timeout=timeout,
        principal=principal,
        resumable=message.resumable,
    )


def _usage(usage: Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _metrics(metrics: Metrics) -> pb.StreamMetrics:
    return pb.StreamMetrics(
        ttft_ms=metrics.ttft_ms,
        duration_ms=metrics.duration_ms,
        tokens_per_second=metrics.tokens_per_second,
        chunks=metrics.chunks,
    )


def event_to_proto(event: Event) -> pb.GenerateResponse:
    if isinstance(event, Chunk):
        return pb.GenerateResponse(chunk=pb.Chunk(content=event.content, index=event.index))
    if isinstance(event, Completion):
        return pb.GenerateResponse(
            completion=pb.Completion(
                text=event.text,
                finish_reason=event.finish_reason,
                model=event.model,
                usage=_usage(event.usage),
                cost_usd=event.cost_usd,
                metrics=_metrics(event.metrics),
                request_id=event.request_id,
                usage_estimated=event.usage_estimated,
            )
        )
    return pb.GenerateResponse(error=failure_to_proto(event))


def error_to_proto(error: StreamError) -> pb.Error:
    """The error alone (a refusal): code, message, retryable, reason."""
    return pb.Error(
        code=PROTO_CODE[error.code],
        message=error.message,
        retryable=error.retryable,
        reason=error.reason.value if error.reason else "",
    )


def _reason(text: str) -> Reason | None:
    """A reason this side knows; a newer peer's unknown one is dropped (the code still says enough)."""
    try:
        return Reason(text) if text else None
    except ValueError:
        return None


def error_from_proto(error: pb.Error) -> StreamError:
    code = ERROR_CODE.get(error.code, ErrorCode.INTERNAL)
    return StreamError(code, error.message, retryable=error.retryable, reason=_reason(error.reason))


def failure_to_proto(event: Failure) -> pb.Error:
    return pb.Error(
        code=PROTO_CODE[event.error.code],
        message=event.error.message,
        retryable=event.error.retryable,
        reason=event.error.reason.value if event.error.reason else "",
        partial_text=event.partial_text,
        usage=_usage(event.usage),
        metrics=_metrics(event.metrics),
        model=event.model,
        cost_usd=event.cost_usd,
        request_id=event.request_id,
    )


def _usage_from(usage: pb.Usage) -> Usage:
    return Usage(usage.prompt_tokens, usage.completion_tokens)


def _metrics_from(metrics: pb.StreamMetrics) -> Metrics:
    return Metrics(metrics.ttft_ms, metrics.duration_ms, metrics.tokens_per_second, metrics.chunks)


def event_from_proto(response: pb.GenerateResponse) -> Event:
    """The core's event for a response read from the gRPC stream (the bridge's side)."""
    kind = response.WhichOneof("event")
    if kind == "chunk":
        return Chunk(response.chunk.content, response.chunk.index)
    if kind == "completion":
        c = response.completion
        return Completion(
            text=c.text,
            finish_reason=c.finish_reason,
            model=c.model,
            usage=_usage_from(c.usage),
            cost_usd=c.cost_usd if c.HasField("cost_usd") else None,
            metrics=_metrics_from(c.metrics),
            request_id=c.request_id,
            usage_estimated=c.usage_estimated,
        )
    if kind == "error":
        e = response.error
        return Failure(
            error=error_from_proto(e),
            partial_text=e.partial_text,
            model=e.model,
            usage=_usage_from(e.usage),
            cost_usd=e.cost_usd if e.HasField("cost_usd") else None,
            metrics=_metrics_from(e.metrics),
            request_id=e.request_id,
        )
    raise ValueError(f"a GenerateResponse with no event: {response!r}")
