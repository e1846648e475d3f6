"""What the ledger keeps: one `UsageRow` per stream, and what it answers: `UsageGroup`s."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

Transport = Literal["grpc", "sse", "ws", "openai", "library"]
GroupBy = Literal["model", "key", "day"]
TRANSPORTS: frozenset[str] = frozenset(get_args(Transport))
GROUP_BYS: frozenset[str] = frozenset(get_args(GroupBy))

MAX_ID = 128
MAX_NAME = 256
MAX_OUTCOME = 64


class LedgerError(Exception):
    """The ledger cannot answer (its database is unreachable) or cannot start (a bad spec)."""


def utc(moment: datetime, name: str = "datetime") -> datetime:
    """`moment` in UTC; a naive datetime is refused (its zone would be a guess)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), not naive: {moment!r}")
    return moment.astimezone(UTC)


def _text(value: object, name: str, limit: int, *, empty: bool = False) -> None:
    if not isinstance(value, str) or (not value and not empty) or len(value) > limit:
        raise ValueError(f"{name} must be a string of {0 if empty else 1} to {limit} characters, not {value!r}")


def _count(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise ValueError(f"{name} must be an integer >= 0, not {value!r}")


def _measure(value: object, name: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0{' or None' if optional else ''}, not {value!r}")


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One stream, as the ledger keeps it. Validated on creation (a bad row raises here, in the
    caller's code, never later in the writer).

    `cost_usd` None means unknown (litellm has no price for the model): it is kept as NULL, never
    as 0. `ttft_ms` None means the stream produced no token. `key_holder` is the key's holder
    (its name or id, as logs show it), never the secret; None when authentication is off.

    `row_id` makes writes idempotent: a batch written again after a lost acknowledgement, or a
    spill file replayed twice, never doubles a row. It is made here, by the server, because
    `request_id` may come from the client, which could reuse one to hide a stream from its
    budget; two streams with the same `request_id` are two rows.
    """

    request_id: str
    started_at: datetime
    ended_at: datetime
    key_holder: str | None
    model: str
    transport: Transport
    #: How the stream ended, as the gateway's metrics label it: "completed", "cancelled",
    #: "deadline_exceeded", "unavailable", "resource_exhausted", ... (lower case, [a-z0-9_]).
    outcome: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    ttft_ms: float | None
    duration_ms: float
    row_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        _text(self.request_id, "request_id", MAX_ID)
        _text(self.row_id, "row_id", MAX_ID)
        object.__setattr__(self, "started_at", utc(self.started_at, "started_at"))
        object.__setattr__(self, "ended_at", utc(self.ended_at, "ended_at"))
        if self.key_holder is not None:
            _text(self.key_holder, "key_holder", MAX_NAME)
        _text(self.model, "model", MAX_NAME, empty=True)  # a stream refused before a model is chosen
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}, not {self.transport!r}")
        _text(self.outcome, "outcome", MAX_OUTCOME)
        if not all(c.islower() or c.isdigit() or c == "_" for c in self.outcome) or not self.outcome.isascii():
            raise ValueError(f"outcome must be lower case [a-z0-9_], not {self.outcome!r}")
        _count(self.prompt_tokens, "prompt_tokens")
        _count(self.completion_tokens, "completion_tokens")
        _measure(self.cost_usd, "cost_usd", optional=True)
        _measure(self.ttft_ms, "ttft_ms", optional=True)
        _measure(self.duration_ms, "duration_ms", optional=False)

    def to_json(self) -> str:
        """One line of the spill file."""
        fields = asdict(self)
        fields["started_at"] = self.started_at.isoformat()
        fields["ended_at"] = self.ended_at.isoformat()
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_json(cls, line: str) -> UsageRow:
        """The row of a spill file's line; ValueError (or KeyError, TypeError) when it is not one."""
        fields: dict[str, Any] = json.loads(line)
        fields["started_at"] = datetime.fromisoformat(fields["started_at"])
        fields["ended_at"] = datetime.fromisoformat(fields["ended_at"])
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """The streams of one model, key holder or UTC day (`group`: None for streams without a key).

    `cost_usd` is the sum of the costs that are known; `unpriced_streams` counts the streams whose
    cost is unknown, which it leaves out. When no stream of the group has a known cost, `cost_usd`
    is None: unknown, not free.
    """

    group: str | None
    streams: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    unpriced_streams: int


def sort_groups(groups: list[UsageGroup]) -> list[UsageGroup]:
    """The order both databases answer in: by group, the streams without a key last."""
    return sorted(groups, key=lambda g: (g.group is None, g.group or ""))


#: The table both databases keep (the schema is in each store's module and in the package's docstring).
TABLE = "streamgate_usage"
COLUMNS = (
    "row_id",
    "request_id",
    "started_at",
    "ended_at",
    "key_holder",
    "model",
    "transport",
    "outcome",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "ttft_ms",
    "duration_ms",
)
