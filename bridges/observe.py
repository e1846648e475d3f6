"""What the bridge tells the operator of each HTTP request: an access line, and with traces on, a span.

- The access line (logger `streamgate.access`, INFO): method, path (never the query string, which may
  hold a prompt), status, bytes sent, duration, and where known the stream's request id and outcome
  (the metrics' label). A streaming request's line comes when its stream ends; a client that left
  before a response head went out is logged with status 499, as nginx does.
- A span per stream (when the bridge has a tracer, `streamgate._telemetry`): `POST /query/stream`,
  `GET /query/stream`, `POST /v1/chat/completions`, and each query of a WebSocket (`WS /query/ws`),
  a child of the request's `traceparent` header when it has one (the WebSocket's upgrade request's,
  for its queries). The span is the current one while the stream runs, so the link carries its
  context to the core (`RelayOpen.traceparent`), whose span of the stream becomes its child. Its
  status is ERROR when the stream failed after admission, or the answer is a 5xx.

Both read the request's `Note` (`bridges/metrics.py`), which the handlers fill as they count the
stream (`BridgeMetrics.ended`). Nothing here runs per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

import streamgate._telemetry as _telemetry

from .metrics import NOTE, Note
from .state import STATE

access_logger = logging.getLogger("streamgate.access")

#: Routes (method, pattern) whose request is one stream, and the transport it is counted under.
STREAM_ROUTES = {
    ("POST", "/query/stream"): "sse",
    ("GET", "/query/stream"): "sse",
    ("POST", "/v1/chat/completions"): "openai",
}
WS_ROUTE = "/query/ws"
#: Outcomes that are no failure of the server's.
NOT_FAILURES = frozenset({"completed", "cancelled", "disconnected", "reconnect"})
#: Failures that are the server's (or its upstream's) even when no stream was admitted.
SERVER_FAILURES = frozenset({"unavailable", "internal"})
#: Status of a request whose client left before a response head went out (nginx's).
CLIENT_LEFT = 499


def _route(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def _enter(tracer: trace.Tracer, request: web.Request) -> tuple[trace.Span | None, object | None]:
    """The request's span (a stream's route), current from now; or for a WebSocket, its parent made current."""
    route = _route(request)
    transport = STREAM_ROUTES.get((request.method, route or ""))
    if transport is None and route != WS_ROUTE:
        return None, None
    parent = _telemetry.extract(request.headers)
    if transport is None:  # a WebSocket: each query is a span of its own (`query_span`), under this parent
        return None, otel_context.attach(parent)
    attributes: dict[str, Any] = {
        "http.request.method": request.method,
        "http.route": route,
        "url.path": request.path,
        "url.scheme": request.scheme,
        "streamgate.transport": transport,
    }
    span = tracer.start_span(f"{request.method} {route}", context=parent, kind=SpanKind.SERVER, attributes=attributes)
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def _end(span: trace.Span, note: Note, status: int | None) -> None:
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if note.request_id is not None:
        span.set_attribute("streamgate.request_id", note.request_id)
    outcome = note.outcome
    if outcome is not None:
        span.set_attribute("streamgate.outcome", outcome)
    admitted = note.request_id is not None
    failed = outcome is not None and outcome not in NOT_FAILURES and (admitted or outcome in SERVER_FAILURES)
    if failed or (status is not None and status >= 500):
        code = outcome.upper() if outcome is not None and outcome not in NOT_FAILURES else f"HTTP {status}"
        span.set_status(Status(StatusCode.ERROR, code))
        span.set_attribute("error.type", code)
    span.end()


def _sent(response: web.StreamResponse | None) -> int:
    """Bytes of the response sent (its head included; for a WebSocket, its handshake)."""
    if response is None:
        return 0
    if response.body_length:
        return response.body_length
    writer = getattr(response, "_payload_writer", None)  # not ended (the client left): what went so far
    return int(getattr(writer, "output_size", 0) or 0)


def _log(request: web.Request, note: Note, status: int, seconds: float) -> None:
    sent = _sent(note.response)
    duration_ms = round(seconds * 1000, 3)
    fields = {
        "method": request.method,
        "path": request.path,
        "status": status,
        "bytes": sent,
        "duration_ms": duration_ms,
        "request_id": note.request_id,
        "outcome": note.outcome,
        "client": request.remote,
    }
    access_logger.info(
        "%s %s %d %dB %.1fms request_id=%s outcome=%s",
        request.method,
        request.path,
        status,
        sent,
        duration_ms,
        note.request_id or "-",
        note.outcome or "-",
        extra=fields,
    )


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The access line of every request, and the span of a stream's (see the module's docstring)."""
    start = time.perf_counter()
    note = Note()
    note_token = NOTE.set(note)
    tracer = request.app[STATE].tracer
    span, context_token = (None, None) if tracer is None else _enter(tracer, request)
    status = 500  # an exception that escapes: aiohttp answers 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:  # the client left
        status = note.response.status if note.response is not None else CLIENT_LEFT
        raise
    finally:
        NOTE.reset(note_token)
        if context_token is not None:
            otel_context.detach(context_token)  # type: ignore[arg-type]
        if span is not None:
            _end(span, note, status)
        if access_logger.isEnabledFor(logging.INFO):
            _log(request, note, status, time.perf_counter() - start)


async def remember_response(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the request's note keeps its response (its status and bytes, for its access line)."""
    note = NOTE.get()
    if note is not None:
        note.response = response


@contextlib.contextmanager
def query_span(tracer: trace.Tracer) -> Iterator[None]:
    """A WebSocket query's span, current (with a note of its own) while it streams: a child of the
    upgrade request's `traceparent`, which `observe` made the connection's current context."""
    note = Note()
    attributes = {"http.route": WS_ROUTE, "streamgate.transport": "websocket"}
    span = tracer.start_span(f"WS {WS_ROUTE}", kind=SpanKind.SERVER, attributes=attributes)
    context_token = otel_context.attach(trace.set_span_in_context(span))
    note_token = NOTE.set(note)
    try:
        yield
    finally:
        NOTE.reset(note_token)
        otel_context.detach(context_token)
        _end(span, note, None)
