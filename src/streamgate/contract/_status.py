"""The one table that maps the error model to gRPC, both ways."""

from __future__ import annotations

import grpc

from streamgate.v1 import streamgate_pb2 as pb

from ._errors import ErrorCode, StreamError

GRPC_STATUS: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}

PROTO_CODE: dict[ErrorCode, pb.ErrorCode.ValueType] = {
    code: pb.ErrorCode.Value(f"ERROR_CODE_{code.value}") for code in ErrorCode
}

ERROR_CODE: dict[pb.ErrorCode.ValueType, ErrorCode] = {value: code for code, value in PROTO_CODE.items()}

FROM_GRPC_STATUS: dict[grpc.StatusCode, ErrorCode] = {status: code for code, status in GRPC_STATUS.items()}

#: Codes for which the same request may succeed later.
RETRYABLE = frozenset({ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED})


def error_from_status(status: grpc.StatusCode, details: str | None) -> StreamError:
    """The error model for a gRPC status a client received (the way back through the table)."""
    code = FROM_GRPC_STATUS.get(status, ErrorCode.INTERNAL)
    return StreamError(code, details or code.value, retryable=code in RETRYABLE)
