"""Traces with OpenTelemetry: off unless an OTLP endpoint is set, in the usual `OTEL_*` variables.

- `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the whole URL) or `OTEL_EXPORTER_OTLP_ENDPOINT` (the base:
  `/v1/traces` is added) turns traces on; spans go there by OTLP/HTTP (protobuf), in batches, from a
  thread of the SDK's (`OTEL_BSP_*` tune it), never from the streams' loop.
- `OTEL_SERVICE_NAME` names the process (default `streamgate-bridge` or `streamgate-core`);
  `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER` and the rest are
  the SDK's own. `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns traces off.

Off, nothing of the SDK is imported and a stream pays one branch. On, each stream is one span in the
bridge, one in the core and one per upstream try, joined by W3C trace context: the HTTP request's
`traceparent` header is the bridge span's parent, the link carries the bridge span's context to the
core (`RelayOpen.traceparent`), and the upstream request carries the upstream span's `traceparent`.

Only the W3C trace context is propagated (`traceparent`, `tracestate`), whatever `OTEL_PROPAGATORS`
says: baggage is a client's data, and it would travel to the upstream.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

#: The instrumentation scope of every span streamgate makes.
SCOPE = "streamgate"
BRIDGE_SERVICE = "streamgate-bridge"
CORE_SERVICE = "streamgate-core"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_W3C = TraceContextTextMapPropagator()


def _true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def enabled() -> bool:
    """Whether the environment asks for traces (an OTLP endpoint, and the SDK not disabled)."""
    if _true("OTEL_SDK_DISABLED"):
        return False
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporters == "none":
        return False
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return bool(endpoint and endpoint.strip())


def from_environment(default_service: str) -> TracerProvider | None:
    """A tracer provider exporting to the OTLP endpoint of the environment, or None (traces off).

    Its batches are flushed when the process exits (the SDK's atexit hook) or at `shutdown()`.
    """
    if not enabled():
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME", "").strip() or default_service
    provider = SdkTracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def tracer(provider: TracerProvider | None) -> trace.Tracer | None:
    """streamgate's tracer of `provider`; None when traces are off."""
    return None if provider is None else provider.get_tracer(SCOPE)


def shutdown(provider: TracerProvider | None) -> None:
    """Send the spans still waiting and stop the exporter (an SDK provider; others have nothing to flush)."""
    stop = getattr(provider, "shutdown", None)
    if stop is not None:
        stop()


def headers(ctx: otel_context.Context | None = None) -> dict[str, str]:
    """`traceparent` (and `tracestate`) of `ctx`'s span (the current one by default); empty when none."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=ctx)
    return carrier


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    """The context whose parent is the remote span a carrier's `traceparent` names (none if it names none).

    A malformed `traceparent` is ignored, as W3C trace context says: the span starts a trace of its own.
    """
    return _W3C.extract(carrier)


def adopt(traceparent: str, tracestate: str = "") -> None:
    """Make the remote span `traceparent` names the current parent, for the rest of this task.

    For a task that serves one stream (the link's): the spans it starts are that span's children.
    """
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    otel_context.attach(_W3C.extract(carrier))
