"""The values that cross the core's seam: a validated request in, events out."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._errors import StreamError, invalid

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_MESSAGES = 1024
MAX_PROMPT_CHARS = 4 * 1024 * 1024
MAX_STOP_SEQUENCES = 4
MAX_REQUEST_ID = 128
#: What a request without a query is told, on every transport (the WebSocket's spec spells it so).
NO_QUERY = "No query provided"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    name: str | None = None

    def to_openai(self) -> dict[str, str]:
        message = {"role": self.role, "content": self.content}
        if self.name:
            message["name"] = self.name
        return message


@dataclass(frozen=True, slots=True)
class GenerationParameters:
    """Sampling parameters; `None` leaves the provider's default."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        _check_range("temperature", self.temperature, 0.0, 2.0)
        _check_range("top_p", self.top_p, 0.0, 1.0)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.max_tokens is not None and not 1 <= self.max_tokens <= 1_000_000:
            raise invalid(f"max_tokens must be between 1 and 1000000, got {self.max_tokens}")
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise invalid(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(self.stop)}")
        if any(not s for s in self.stop):
            raise invalid("stop sequences must not be empty")

    def merged_over(self, defaults: GenerationParameters) -> GenerationParameters:
        """These parameters, with unset ones taken from `defaults`."""
        return GenerationParameters(
            temperature=_first(self.temperature, defaults.temperature),
            max_tokens=_first(self.max_tokens, defaults.max_tokens),
            top_p=_first(self.top_p, defaults.top_p),
            stop=self.stop or defaults.stop,
            presence_penalty=_first(self.presence_penalty, defaults.presence_penalty),
            frequency_penalty=_first(self.frequency_penalty, defaults.frequency_penalty),
            seed=_first(self.seed, defaults.seed),
            user=self.user or defaults.user,
        )

    def to_kwargs(self) -> dict[str, Any]:
        """The litellm / OpenAI keyword arguments for the parameters that are set."""
        kwargs: dict[str, Any] = {
            name: value
            for name, value in (
                ("temperature", self.temperature),
                ("max_tokens", self.max_tokens),
                ("top_p", self.top_p),
                ("presence_penalty", self.presence_penalty),
                ("frequency_penalty", self.frequency_penalty),
                ("seed", self.seed),
                ("user", self.user),
            )
            if value is not None
        }
        if self.stop:
            kwargs["stop"] = list(self.stop)
        return kwargs

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> GenerationParameters:
        """Parameters from JSON-like input, with a clear error for each wrong field."""
        unknown = set(values) - _PARAMETER_TYPES.keys()
        if unknown:
            raise invalid(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        checked: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            kind = _PARAMETER_TYPES[name]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if name == "stop":
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                    raise invalid("stop must be a string or a list of strings")
                value = tuple(value)
            elif not isinstance(value, kind) or isinstance(value, bool):
                raise invalid(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
            checked[name] = value
        return cls(**checked)


_T = TypeVar("_T")

_PARAMETER_TYPES: dict[str, type] = {
    "temperature": float,
    "max_tokens": int,
    "top_p": float,
    "stop": list,
    "presence_penalty": float,
    "frequency_penalty": float,
    "seed": int,
    "user": str,
}


def check_timeout(timeout: float) -> float:
    """A request's timeout in seconds, if it is positive and finite; raises `StreamError(INVALID_ARGUMENT)`."""
    if not (timeout > 0 and math.isfinite(timeout)):
        raise invalid(f"timeout must be positive (a number of seconds), got {timeout:g}")
    return timeout


def _is_token(text: str, limit: int) -> bool:
    """1 to `limit` printable ASCII characters, no spaces: safe in headers, metadata and log lines."""
    return 0 < len(text) <= limit and text.isascii() and text.isprintable() and " " not in text


def _first(value: _T | None, default: _T | None) -> _T | None:
    return value if value is not None else default


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and (math.isnan(value) or not low <= value <= high):
        raise invalid(f"{name} must be between {low:g} and {high:g}, got {value:g}")


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A validated generation request. Build it with `StreamRequest.create`."""

    messages: tuple[ChatMessage, ...]
    model: str | None = None
    parameters: GenerationParameters = field(default_factory=GenerationParameters)
    request_id: str = ""
    #: Whole-stream timeout in seconds, capped by the gateway's own.
    timeout: float | None = None
    #: Who asked (the API key's holder), for per-key limits and logs; None when auth is off.
    principal: str | None = None
    #: Keep the stream's output for clients that reconnect (`streamgate.core.replay`).
    resumable: bool = False
    #: The door it came in by, for the usage ledger: grpc, sse, ws, openai or library.
    transport: str = "grpc"

    @classmethod
    def create(
        cls,
        *,
        messages: Iterable[ChatMessage] = (),
        query: str | None = None,
        model: str | None = None,
        parameters: GenerationParameters | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        principal: str | None = None,
        resumable: bool = False,
        transport: str = "grpc",
    ) -> StreamRequest:
        """Validate the parts of a request; raises `StreamError(INVALID_ARGUMENT)`."""
        chat = tuple(messages)
        if query and chat:
            raise invalid("give either messages or query, not both")
        if query:
            chat = (ChatMessage("user", query),)
        if not chat:
            raise invalid(NO_QUERY)
        if len(chat) > MAX_MESSAGES:
            raise invalid(f"at most {MAX_MESSAGES} messages are allowed, got {len(chat)}")
        size = 0
        for i, message in enumerate(chat):
            if message.role not in ROLES:
                raise invalid(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}, got {message.role!r}")
            size += len(message.content)
        if not any(m.content.strip() for m in chat):
            raise invalid(f"{NO_QUERY}: every message is empty")
        if size > MAX_PROMPT_CHARS:
            raise invalid(f"the prompt is {size} characters, more than the limit of {MAX_PROMPT_CHARS}")
        if timeout is not None:
            check_timeout(timeout)
        if model is not None and not _is_token(model, 256):
            raise invalid("model must be a name of 1 to 256 printable ASCII characters, without spaces")
        if request_id and not _is_token(request_id, MAX_REQUEST_ID):
            raise invalid(
                f"request_id must be 1 to {MAX_REQUEST_ID} printable ASCII characters, without spaces"
                " (it is sent back in headers and written to logs)"
            )
        return cls(
            messages=chat,
            model=model or None,
            parameters=parameters or GenerationParameters(),
            request_id=request_id or uuid.uuid4().hex,
            timeout=timeout,
            principal=principal,
            resumable=resumable,
            transport=transport,
        )


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Metrics:
    """What the gateway measured of one stream."""

    ttft_ms: float = 0.0
    duration_ms: float = 0.0
    tokens_per_second: float = 0.0
    chunks: int = 0


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of generated text."""

    content: str
    #: Its sequence in the stream: 0, 1, 2, ...; a chunk merged from several carries the last one's,
    #: so that "after N" always means the text past what a client received.
    index: int


@dataclass(frozen=True, slots=True)
class Completion:
    """The final event of a stream that finished."""

    text: str
    finish_reason: str
    model: str
    usage: Usage
    cost_usd: float | None
    metrics: Metrics
    request_id: str
    usage_estimated: bool = False


@dataclass(frozen=True, slots=True)
class Failure:
    """The final event of a stream that failed after it started."""

    error: StreamError
    partial_text: str
    model: str
    usage: Usage
    cost_usd: float | None
    metrics: Metrics
    request_id: str


Event = Chunk | Completion | Failure

__all__ = [
    "NO_QUERY",
    "ChatMessage",
    "Chunk",
    "Completion",
    "Event",
    "Failure",
    "GenerationParameters",
    "Metrics",
    "StreamError",
    "StreamRequest",
    "Usage",
    "check_timeout",
]
