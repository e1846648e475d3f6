"""What a stream tells the operator: its trace spans and the fields of its last log line.

A traced stream (the gateway has a tracer, `streamgate._telemetry`) has one span from admission to its
end, a child of the bridge's span when the link carried one (`RelayOpen.traceparent`), and one client
span per upstream try under it (a retry or a fallback is a try of its own). The upstream request
carries its try's W3C `traceparent`: the gateway puts the headers in `UPSTREAM_HEADERS` while it calls
`Provider.stream()`, which reads them there (`LiteLLMProvider` sends them on both paths).

Attributes follow OpenTelemetry's GenAI conventions (`gen_ai.*`), plus streamgate's own figures:
`streamgate.ttft_ms`, `streamgate.cost_usd` (absent when the model has no price), `streamgate.outcome`
(the metrics' label: completed, cancelled, deadline_exceeded, ...). A stream that failed has status
ERROR, its error code as the description and as `error.type`. Nothing is recorded per token: the spans
are started and ended once, their attributes set at the ends. Key holders are named; keys never are.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

import streamgate._telemetry as _telemetry
from streamgate.contract import Completion, ErrorCode, Failure, Metrics, StreamError, StreamRequest, Usage

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Mapping

    from .upstream import Delta, Provider

#: The trace headers (`traceparent`, `tracestate`) of the upstream try being started, for `Provider.stream()`
#: to send with its request; None when the stream is not traced. Set only around that call.
UPSTREAM_HEADERS: ContextVar[Mapping[str, str] | None] = ContextVar("streamgate_upstream_headers", default=None)


def _request_attributes(request: StreamRequest, model: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model}
    parameters = request.parameters
    if parameters.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = parameters.max_tokens
    if parameters.temperature is not None:
        attributes["gen_ai.request.temperature"] = parameters.temperature
    if parameters.top_p is not None:
        attributes["gen_ai.request.top_p"] = parameters.top_p
    return attributes


def _fail(span: trace.Span, error: StreamError) -> None:
    span.set_status(Status(StatusCode.ERROR, error.code.value))
    span.set_attribute("error.type", error.code.value)
    span.set_attribute("streamgate.error_message", error.message[:300])


class StreamSpan:
    """The spans of one stream: the core's, and the upstream try's under it."""

    __slots__ = ("_call", "_span", "_tracer")

    def __init__(self, tracer: trace.Tracer, request: StreamRequest, model: str) -> None:
        """Start the stream's span, a child of the current context's span (the bridge's, when it sent one)."""
        self._tracer = tracer
        attributes = _request_attributes(request, model)
        attributes["streamgate.request_id"] = request.request_id
        attributes["streamgate.transport"] = request.transport
        if request.principal is not None:
            attributes["streamgate.key_holder"] = request.principal
        self._span = tracer.start_span(f"stream {model}", kind=SpanKind.SERVER, attributes=attributes)
        self._call: trace.Span | None = None

    @property
    def span(self) -> trace.Span:
        return self._span

    def upstream(self, provider: Provider, request: StreamRequest, model: str) -> AsyncGenerator[Delta, None]:
        """`provider.stream(request, model)` as a try of its own: a client span, its `traceparent` sent upstream."""
        parent = trace.set_span_in_context(self._span)
        call = self._call = self._tracer.start_span(
            f"chat {model}", context=parent, kind=SpanKind.CLIENT, attributes=_request_attributes(request, model)
        )
        token = UPSTREAM_HEADERS.set(_telemetry.headers(trace.set_span_in_context(call)))
        try:
            return provider.stream(request, model)
        finally:
            UPSTREAM_HEADERS.reset(token)

    def retried(self, error: StreamError) -> None:
        """The upstream try failed before its first token; another try follows."""
        call, self._call = self._call, None
        if call is not None:
            _fail(call, error)
            call.end()

    def end(
        self,
        outcome: str,
        usage: Usage,
        cost: float | None,
        metrics: Metrics,
        final: Completion | Failure | None,
        response_model: str | None,
    ) -> None:
        """End the upstream try's span and the stream's, with the stream's figures."""
        figures: dict[str, Any] = {
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "streamgate.outcome": outcome,
            "streamgate.chunks": metrics.chunks,
            "streamgate.duration_ms": metrics.duration_ms,
        }
        if metrics.chunks:
            figures["streamgate.ttft_ms"] = metrics.ttft_ms
        if response_model:
            figures["gen_ai.response.model"] = response_model
        if isinstance(final, Completion):
            figures["gen_ai.response.finish_reasons"] = (final.finish_reason,)
        error = final.error if isinstance(final, Failure) else None
        for span in (self._call, self._span):
            if span is None:
                continue
            span.set_attributes(figures)
            if error is not None and error.code is not ErrorCode.CANCELLED:  # a client's cancel is no failure
                _fail(span, error)
        if cost is not None:  # unknown (a model without a price) is not free: left out
            self._span.set_attribute("streamgate.cost_usd", cost)
        if self._call is not None:
            self._call.end()
            self._call = None
        self._span.end()


def stream_fields(
    request: StreamRequest,
    model: str,
    outcome: str,
    usage: Usage,
    cost: float | None,
    metrics: Metrics,
    final: Completion | Failure | None,
) -> dict[str, Any]:
    """The fields of a stream's last log line (`extra=`): what `--log-format json` writes as keys."""
    fields: dict[str, Any] = {
        "request_id": request.request_id,
        "key_holder": request.principal,
        "model": model,
        "transport": request.transport,
        "outcome": outcome,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost_usd": cost,
        "ttft_ms": metrics.ttft_ms if metrics.chunks else None,
        "duration_ms": metrics.duration_ms,
        "tokens_per_second": metrics.tokens_per_second,
        "chunks": metrics.chunks,
    }
    if isinstance(final, Completion):
        fields["finish_reason"] = final.finish_reason
    elif isinstance(final, Failure):
        fields["error_code"] = final.error.code.value
    return fields
