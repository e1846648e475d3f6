"""streamgate: stream LLM output from any provider to any client.

The in-process API (`StreamingHandler`, `StreamFormat`, `LiteLLMProvider`,
`LiteLLMConfig`) is imported lazily, so that `streamgate.v1` stubs and the
command line start without paying for litellm's import.
"""

from typing import TYPE_CHECKING, Any

from . import _offline

_offline.apply()

if TYPE_CHECKING:
    from .core import LiteLLMConfig, LiteLLMProvider
    from .library import StreamFormat, StreamingHandler

__all__ = ["LiteLLMConfig", "LiteLLMProvider", "StreamFormat", "StreamingHandler"]

_LAZY = {
    "LiteLLMConfig": "streamgate.core",
    "LiteLLMProvider": "streamgate.core",
    "StreamFormat": "streamgate.library",
    "StreamingHandler": "streamgate.library",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'streamgate' has no attribute {name!r}")
