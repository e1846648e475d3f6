"""A query from a browser (JSON body, query string or WebSocket message) as a `GenerateRequest`.

Only the shape is checked here, with an error a person can read; what the
values mean (roles, ranges, models) is the core's to judge.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration

from streamgate.contract import NO_QUERY, StreamError, check_timeout, invalid
from streamgate.v1 import streamgate_pb2 as pb

PARAMETERS = frozenset(pb.GenerationParameters.DESCRIPTOR.fields_by_name)
FIELDS = (
    frozenset({"query", "messages", "model", "parameters", "request_id", "timeout", "type", "resumable"}) | PARAMETERS
)
#: A longer timeout is taken as this many seconds (about 31 years, within a protobuf Duration);
#: the core caps every stream by its own timeout anyway.
MAX_TIMEOUT = 1e9
#: Deepest JSON nesting accepted: a query is shallow, a deep one is an attack on the parser.
MAX_DEPTH = 32


def loads(data: bytes | str) -> Any:
    """JSON from the wire, with a clear error for bad UTF-8, bad JSON or absurd nesting."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise invalid(f"the body is not valid UTF-8 (byte {exc.start})") from None
    depth = 0
    for char in data[:65536]:
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise invalid(f"the JSON is nested more than {MAX_DEPTH} levels deep")
        elif char in "]}":
            depth -= 1
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise invalid(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4300)
        raise invalid(f"the JSON holds a number out of range: {exc}") from None
    except RecursionError:
        raise invalid(f"the JSON is nested more than {MAX_DEPTH} levels deep") from None


def _parse(value: Any, message: Any, where: str) -> None:
    try:
        json_format.ParseDict(value, message)
    except json_format.ParseError as exc:
        detail = str(exc).replace("Message type ", "").replace('"streamgate.v1.', '"')
        raise invalid(f"{where}: {detail}") from None


def from_json(data: Any) -> pb.GenerateRequest:
    """A request from a decoded JSON object; raises `StreamError(INVALID_ARGUMENT)`."""
    try:
        return _from_json(data)
    except UnicodeEncodeError as exc:  # JSON may spell a lone surrogate ("\\ud800"); protobuf strings cannot hold it
        bad = exc.object[exc.start : exc.end]
        raise invalid(f"the request holds {bad!r}, a lone surrogate: text must be valid Unicode") from None


def _from_json(data: Any) -> pb.GenerateRequest:
    if not isinstance(data, Mapping):
        raise invalid(f"the query must be a JSON object, got {type(data).__name__}")
    unknown = set(data) - FIELDS
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
    query = data.get("query")
    messages = data.get("messages")
    if query is not None and not isinstance(query, str):
        raise invalid(f"query must be a string, got {type(query).__name__}")
    if messages is not None and not isinstance(messages, list):
        raise invalid(f"messages must be a list, got {type(messages).__name__}")
    if not (query and query.strip()) and not messages:
        raise invalid(NO_QUERY)
    request = pb.GenerateRequest(query=query or "")
    if messages:
        _parse({"messages": messages}, request, "messages")
    for name in ("model", "request_id"):
        value = data.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise invalid(f"{name} must be a string, got {type(value).__name__}")
            setattr(request, name, value)
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise invalid("parameters must be a JSON object")
    flat = {name: data[name] for name in PARAMETERS if name in data}
    merged = {**parameters, **flat}
    if isinstance(merged.get("stop"), str):
        merged["stop"] = [merged["stop"]]
    if merged:
        _parse(merged, request.parameters, "parameters")
    resumable = data.get("resumable")
    if resumable is not None:
        if not isinstance(resumable, bool):
            raise invalid(f"resumable must be true or false, got {type(resumable).__name__}")
        request.resumable = resumable
    timeout = data.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout):
            raise invalid("timeout must be a number of seconds")
        timeout = min(check_timeout(timeout), MAX_TIMEOUT)  # longer means "no limit of mine": the core's own applies
        request.timeout.CopyFrom(Duration(seconds=int(timeout), nanos=int((timeout % 1) * 1e9)))
    return request


_NUMBERS = {
    name: field.type
    for name, field in pb.GenerationParameters.DESCRIPTOR.fields_by_name.items()
    if field.type != field.TYPE_STRING
}


def from_query_string(params: Mapping[str, str]) -> pb.GenerateRequest:
    """A request from `GET /query/stream?query=...&model=...&max_tokens=...` (for EventSource)."""
    data: dict[str, Any] = {}
    for name, value in params.items():
        if name in _NUMBERS:
            try:
                data[name] = float(value) if "." in value or "e" in value.lower() else int(value)
            except ValueError:
                raise invalid(f"{name} must be a number, got {value!r}") from None
        elif name == "resumable":
            if value.lower() not in ("1", "true", "0", "false"):
                raise invalid(f"resumable must be 1 or 0, got {value!r}")
            data[name] = value.lower() in ("1", "true")
        elif name == "timeout":
            try:
                data[name] = float(value)
            except ValueError:
                raise invalid(f"timeout must be a number of seconds, got {value!r}") from None
        else:
            data[name] = value
    return from_json(data)


def is_cancel(data: Any) -> bool:
    return isinstance(data, Mapping) and data.get("type") == "cancel"


def resume_of(data: Any) -> tuple[str, int] | None:
    """`{"type": "resume", "stream_id": "...", "after": N}`: the stream and the last sequence received."""
    if not (isinstance(data, Mapping) and data.get("type") == "resume"):
        return None
    stream_id, after = data.get("stream_id"), data.get("after", -1)
    if (
        not isinstance(stream_id, str)
        or not stream_id
        or not isinstance(after, int)
        or isinstance(after, bool)
        or not -1 <= after < 2**62
        or set(data) - {"type", "stream_id", "after"}
    ):
        raise invalid('a resume message is {"type": "resume", "stream_id": "<id>", "after": <last seq received>}')
    return stream_id, after


def is_auth(data: Any) -> bool:
    """`{"type": "auth", "api_key": "..."}`: credentials for a WebSocket whose browser cannot set headers."""
    if not (isinstance(data, Mapping) and data.get("type") == "auth"):
        return False
    key = data.get("api_key")
    if not isinstance(key, str) or not key.strip() or not key.isascii() or set(data) - {"type", "api_key"}:
        raise invalid('an auth message is {"type": "auth", "api_key": "<key>"}')
    return True


__all__ = ["NO_QUERY", "StreamError", "from_json", "from_query_string", "is_auth", "is_cancel", "loads", "resume_of"]
