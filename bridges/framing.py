"""SSE frames and WebSocket messages, exactly as shared/spec/wire-formats.md shows them.

Pure: each function returns bytes or str and does no I/O. The bridge and the
in-process `StreamingHandler` frame through these functions and nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from streamgate.contract import Completion, Failure, Metrics, Usage

#: An SSE comment line, sent while a stream is idle; EventSource ignores it.
PING = b": ping\n\n"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _metrics(metrics: Metrics) -> dict[str, float | int]:
    return {
        "ttft_ms": metrics.ttft_ms,
        "duration_ms": metrics.duration_ms,
        "tokens_per_second": metrics.tokens_per_second,
        "chunks": metrics.chunks,
    }


def final_metadata(event: Completion | Failure) -> dict[str, Any]:
    """The final frame's metadata: `final_response`, then what is known of the stream."""
    if isinstance(event, Completion):
        return {
            "final_response": event.text,
            "finish_reason": event.finish_reason,
            "model": event.model,
            "usage": _usage(event.usage),
            "cost_usd": event.cost_usd,
            "metrics": _metrics(event.metrics),
            "request_id": event.request_id,
        }
    metadata: dict[str, Any] = {
        "final_response": event.partial_text,
        "code": event.error.code.value,
        "retryable": event.error.retryable,
    }
    if event.model:
        metadata["model"] = event.model
    metadata["usage"] = _usage(event.usage)
    metadata["cost_usd"] = event.cost_usd
    metadata["metrics"] = _metrics(event.metrics)
    if event.request_id:
        metadata["request_id"] = event.request_id
    return metadata


def cancelled_final(event: Failure) -> tuple[str, dict[str, Any]]:
    """Text and metadata of the `complete` message of a stream the client cancelled, from the core's
    account of it: what was produced, what it cost, and `finish_reason` "cancelled"."""
    metadata = final_metadata(event)
    del metadata["code"], metadata["retryable"]
    metadata["finish_reason"] = "cancelled"
    return event.partial_text, metadata


def cancelled_metadata(text: str, model: str, metrics: Metrics, request_id: str) -> dict[str, Any]:
    """Metadata of a stream the client cancelled: what it received, and the measured timing."""
    return {
        "final_response": text,
        "finish_reason": "cancelled",
        "model": model,
        "metrics": _metrics(metrics),
        "request_id": request_id,
    }


# --- SSE -------------------------------------------------------------------


def sse_event(payload: dict[str, Any]) -> bytes:
    """One `data:` line holding one JSON object, then a blank line."""
    return b"data: " + _dumps(payload).encode() + b"\n\n"


def sse_retry(milliseconds: int) -> bytes:
    """A `retry:` line, how long an `EventSource` waits before it reconnects: sent in the first event."""
    return b"retry: %d\n" % milliseconds


#: The largest sequence a client may name (past any stream's end; within the link's int64).
MAX_SEQUENCE = 2**62


def event_id(stream_id: str, sequence: int) -> bytes:
    """An SSE `id:` line, `<stream id>:<sequence>`: what `EventSource` sends back as `Last-Event-ID`."""
    return b"id: %s:%d\n" % (stream_id.encode(), sequence)


def parse_event_id(value: str) -> tuple[str, int] | None:
    """`<stream id>:<sequence>` from a `Last-Event-ID`; None when it is not one of ours."""
    stream_id, sep, sequence = value.strip().rpartition(":")
    if not (sep and stream_id and sequence.isascii() and sequence.isdigit() and len(value) <= 256):
        return None
    number = int(sequence)
    return (stream_id, number) if number <= MAX_SEQUENCE else None


def sse_chunk(content: str, event_id: bytes = b"") -> bytes:
    """`sse_event({"content": content, "metadata": {}, "is_final": False})` after an optional `id:`
    line, without building the dict (the hot path: one call a token)."""
    return event_id + b'data: {"content": ' + _dumps(content).encode() + b', "metadata": {}, "is_final": false}\n\n'


def sse_final(event: Completion | Failure, event_id: bytes = b"") -> bytes:
    payload: dict[str, Any] = {"content": "", "metadata": final_metadata(event), "is_final": True}
    if isinstance(event, Failure):
        payload["error"] = event.error.message
    return event_id + sse_event(payload)


# --- WebSocket -------------------------------------------------------------


def ws_chunk(content: str, ids: str = "") -> str:
    """`{"type": "chunk", "content": content}` as JSON, without building the dict (one call a token);
    `ids` (from `ws_ids`) adds the stream id and the sequence as extra fields."""
    return '{"type": "chunk", "content": ' + _dumps(content) + ids + "}"


def ws_ids(stream_id: str, sequence: int) -> str:
    """The extra fields `, "stream_id": ..., "seq": N` of a message that belongs to a stream."""
    return ', "stream_id": ' + _dumps(stream_id) + ', "seq": ' + str(sequence)


def ws_complete(text: str, metadata: dict[str, Any], ids: str = "") -> str:
    return _dumps({"type": "complete", "content": text, "metadata": metadata})[:-1] + ids + "}"


def ws_error(message: str, metadata: dict[str, Any] | None = None, ids: str = "") -> str:
    """`{"type": "error", "content": message}`; a failed stream adds its metadata (and its ids)."""
    payload: dict[str, Any] = {"type": "error", "content": message}
    if metadata is not None:
        payload["metadata"] = metadata
    return _dumps(payload)[:-1] + ids + "}"


def ws_final(event: Completion | Failure, ids: str = "") -> str:
    if isinstance(event, Completion):
        return ws_complete(event.text, final_metadata(event), ids)
    return ws_error(event.error.message, final_metadata(event), ids)
