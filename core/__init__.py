"""streamgate's core: generation, limits, timeouts and metrics. No transport code."""

from .config import DEFAULT_MODEL, LiteLLMConfig
from .errors import ErrorCode, StreamError
from .gateway import Gateway, GatewayStream
from .metrics import GatewayMetrics, Snapshot
from .model import (
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
from .provider import Delta, LiteLLMProvider, Provider

__all__ = [
    "DEFAULT_MODEL",
    "ChatMessage",
    "Chunk",
    "Completion",
    "Delta",
    "ErrorCode",
    "Event",
    "Failure",
    "Gateway",
    "GatewayMetrics",
    "GatewayStream",
    "GenerationParameters",
    "LiteLLMConfig",
    "LiteLLMProvider",
    "Metrics",
    "Provider",
    "Snapshot",
    "StreamError",
    "StreamRequest",
    "Usage",
]
