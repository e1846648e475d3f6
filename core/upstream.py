"""The seam between the gateway and a source of tokens: `Provider` yields `Delta`s.

Light on purpose (no litellm import), so the bridge and clients can use the
core's values without paying for litellm.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from streamgate.contract import StreamRequest, Usage

from .config import LiteLLMConfig


@dataclass(frozen=True, slots=True)
class Delta:
    """One step of an upstream stream: text, and on the last steps the finish reason and usage."""

    content: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None


def clean_text(text: str) -> str:
    """`text` as valid Unicode: a lone surrogate (JSON allows "\\ud800", UTF-8 and protobuf do not)
    becomes U+FFFD, so that no upstream text can fail a message on its way to the client."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class Provider(Protocol):
    """What the gateway needs from a source of tokens."""

    config: LiteLLMConfig

    def resolve_model(self, requested: str | None) -> str:
        """The model a request will use; raises `StreamError(INVALID_ARGUMENT, reason MODEL_NOT_FOUND)`
        for one it cannot."""
        ...

    def fallbacks(self, model: str) -> tuple[str, ...]:
        """The models to try, in order, when `model` fails before its first token."""
        ...

    def model_limit(self, model: str) -> int:
        """Streams of `model` that may be open at once (0: only the server's limit)."""
        ...

    def stream(self, request: StreamRequest, model: str) -> AsyncGenerator[Delta, None]:
        """Deltas of one generation. Raises `StreamError`. Closing the iterator closes the upstream."""
        ...

    def count_tokens(self, model: str, text: str) -> int: ...

    @property
    def allowed_models(self) -> tuple[str, ...]:
        """The models a client may name, the default first."""
        ...

    async def warm_up(self) -> None: ...

    async def close(self) -> None:
        """Release connections; the provider can still be used after (it reconnects)."""
        ...

    def cost(self, model: str, usage: Usage) -> float | None:
        """Cost in US dollars, or None when the model's price is unknown."""
        ...
