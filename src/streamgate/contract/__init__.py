"""The contract: what the core, the bridge and the clients agree on, and nothing else.

- the error model (`StreamError`, `ErrorCode`) and its gRPC table (`GRPC_STATUS`, `error_from_status`);
- the values that cross the core's seam: a validated `StreamRequest` in, `Chunk` events and one
  final `Completion` or `Failure` out;
- their protobuf conversions, both ways.

It imports no engine (gateway, providers, litellm) and no transport library besides grpc's status
codes: the core implements it, the bridge and the Python client speak it. `tests/test_layers.py`
holds the rule.
"""

from ._convert import (
    error_from_proto,
    error_to_proto,
    event_from_proto,
    event_to_proto,
    failure_to_proto,
    request_from_proto,
)
from ._errors import ErrorCode, Reason, StreamError, invalid, model_not_found
from ._model import (
    MAX_REQUEST_ID,
    NO_QUERY,
    ChatMessage,
    Chunk,
    Completion,
    Event,
    Failure,
    GenerationParameters,
    Metrics,
    StreamRequest,
    Usage,
    check_timeout,
)
from ._status import ERROR_CODE, GRPC_STATUS, PROTO_CODE, RETRYABLE, error_from_status

__all__ = [
    "ERROR_CODE",
    "GRPC_STATUS",
    "MAX_REQUEST_ID",
    "NO_QUERY",
    "PROTO_CODE",
    "RETRYABLE",
    "ChatMessage",
    "Chunk",
    "Completion",
    "ErrorCode",
    "Event",
    "Failure",
    "GenerationParameters",
    "Metrics",
    "Reason",
    "StreamError",
    "StreamRequest",
    "Usage",
    "check_timeout",
    "error_from_proto",
    "error_from_status",
    "error_to_proto",
    "event_from_proto",
    "event_to_proto",
    "failure_to_proto",
    "invalid",
    "model_not_found",
    "request_from_proto",
]
