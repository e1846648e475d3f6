"""streamgate's core: generation, limits, timeouts and metrics. No transport code.

`LiteLLMProvider` loads on first use, so the bridge and the generated clients
can use the core's values alone; litellm itself (about 4 s and 220 MiB to
import) loads only when a model needs it (`provider`, `lean`).
"""

from typing import TYPE_CHECKING, Any

from streamgate.contract import (
    ChatMessage,
    Chunk,
    Completion,
    ErrorCode,
    Event,
    Failure,
    GenerationParameters,
    Metrics,
    StreamError,
    StreamRequest,
    Usage,
)

from .config import DEFAULT_MODEL, LiteLLMConfig
from .gateway import Gateway, GatewayStream
from .metrics import GatewayMetrics, Snapshot
from .upstream import Delta, Provider

if TYPE_CHECKING:
    from .provider import LiteLLMProvider

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


def __getattr__(name: str) -> Any:
    if name == "LiteLLMProvider":
        from .provider import LiteLLMProvider

        return LiteLLMProvider
    raise AttributeError(f"module 'streamgate.core' has no attribute {name!r}")
