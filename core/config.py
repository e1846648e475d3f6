"""Configuration of generation: one frozen dataclass, validated on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from streamgate.contract import GenerationParameters

from .budgets import Budget
from .models import ModelRoute

#: The embedded model: needs no key and no network (see `streamgate.core.embedded`).
DEFAULT_MODEL = "streamgate/default"


@dataclass(frozen=True, slots=True)
class LiteLLMConfig:
    """How streams are generated, limited and timed out.

    The same configuration serves the gRPC core and the in-process
    `StreamingHandler`, so both behave alike.
    """

    #: A litellm model string: "openai/gpt-4o", "anthropic/claude-3-5-sonnet", "ollama/llama3", ...
    model: str = DEFAULT_MODEL
    #: False: the provider answers in one piece, sent as one chunk and the final frame.
    enable_streaming: bool = True
    #: Seconds a whole stream may last.
    stream_timeout: float = 300.0
    #: Seconds to wait for the first token (includes connecting to the upstream).
    first_token_timeout: float = 60.0
    #: Seconds the upstream may stay silent between two tokens.
    idle_timeout: float = 30.0
    #: Streams open at once; the next one is refused at once, never queued.
    max_concurrent_streams: int = 1000
    #: Characters of answer one stream may produce (the core keeps the text for the final event);
    #: past it the upstream request is closed and the stream completes with finish_reason "length".
    max_answer_chars: int = 4 * 1024 * 1024
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    #: Defaults for requests that leave a parameter unset.
    parameters: GenerationParameters = field(default_factory=GenerationParameters)
    #: Models a request may name besides `model` and `fallback_models` (see `streamgate.core.policy`).
    allowed_models: tuple[str, ...] = ()
    #: Let a request name other models too: of a vetted list of hosted providers, or of the default
    #: model's own provider; never a model string that carries a URL or a host. Off by default: a
    #: model string chooses where the server connects and which code path it pays for.
    allow_any_model: bool = False
    #: Streams one API key may hold open at once (0: only the overall limit applies).
    max_streams_per_key: int = 0
    #: Tries of the same model again when it fails before its first token with a retryable error.
    retries: int = 2
    #: Seconds before the first retry; doubled each time (at most 2 s), with +/-50% jitter.
    retry_backoff: float = 0.2
    #: Models tried in order when the model fails before its first token (after its retries).
    fallback_models: tuple[str, ...] = ()
    #: Stream OpenAI-compatible upstreams through the lean parser instead of litellm's stream wrapper
    #: (same frames, a fraction of the CPU); litellm still resolves models and prices them.
    fast_path: bool = True
    #: On the lean path, send the tokens that were already waiting together as one chunk: a stream
    #: whose reader fell behind catches up at once (chunk boundaries then differ, never the text).
    coalesce: bool = True
    #: On the lean path, keep a spare idle connection open ahead of the streams to each upstream, so
    #: that a new stream finds one instead of paying a connect (and TLS handshake) before its first token.
    preconnect: bool = True
    #: Seconds a resumable stream goes on while no client reads it (0: streams are never resumable).
    resume_grace: float = 10.0
    #: Seconds a resumable stream's replay is kept after its end (for a client that missed the final frame).
    resume_window: float = 60.0
    #: Bytes all replays together may hold; the oldest finished ones go first.
    resume_buffer_bytes: int = 64 * 1024 * 1024
    #: Pace of the embedded default model, in tokens per second (0: as fast as it can).
    embedded_tokens_per_second: float = 30.0
    #: The model list of a config file (`streamgate.core.models`): the names clients may ask for, each
    #: with its own upstream. With it, `model` and `fallback_models` are names of the list, and
    #: `api_base`, `api_key` and `allowed_models` are not used (each entry has its own).
    routes: tuple[ModelRoute, ...] = ()
    #: Spend limits by API key holder (`streamgate.core.budgets`), from the config file.
    budgets: tuple[Budget, ...] = ()

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError("model must not be empty")
        if self.routes:
            names = [route.name for route in self.routes]
            if len(set(names)) != len(names):
                raise ValueError("the model list names a model twice")
            for model in (self.model, *self.fallback_models):
                if model not in names:
                    raise ValueError(f"model {model!r} is not in the config file's models: {', '.join(names)}")
            if self.api_base or self.api_key or self.allowed_models:
                raise ValueError("with a config file, each model's api_base and key are set in the file (not by flags)")
        for name in ("stream_timeout", "first_token_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        if self.max_concurrent_streams < 1:
            raise ValueError(f"max_concurrent_streams must be at least 1, got {self.max_concurrent_streams}")
        for name in ("resume_grace", "resume_window"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value}")
        if self.resume_buffer_bytes < 0:
            raise ValueError(f"resume_buffer_bytes must not be negative, got {self.resume_buffer_bytes}")
        if self.max_answer_chars < 1:
            raise ValueError(f"max_answer_chars must be at least 1, got {self.max_answer_chars}")
        if self.max_streams_per_key < 0:
            raise ValueError(f"max_streams_per_key must not be negative, got {self.max_streams_per_key}")
        if self.retries < 0:
            raise ValueError(f"retries must not be negative, got {self.retries}")
        if not (self.retry_backoff >= 0 and math.isfinite(self.retry_backoff)):
            raise ValueError(f"retry_backoff must be a non-negative number of seconds, got {self.retry_backoff}")
        if self.embedded_tokens_per_second < 0:
            raise ValueError("embedded_tokens_per_second must not be negative")
