"""State shared by several cores through Redis (`--redis-url`): per-key limits, budgets, replays.

Without it, each core counts alone, as one process does, and nothing here is imported (redis-py
included): the path of a stream pays nothing for it. With it:

- **Per-key limits** (`--max-streams-per-key`): an admission takes a lease in the key's set of open
  streams (a sorted set: lease tokens scored by when they expire), in a Lua script that counts the
  live ones first; every core refreshes its open streams' leases a third of `lease_seconds` (15 s)
  apart, and gives a lease back when its stream ends. A core that dies leaves its leases to expire:
  its streams count against their key for at most `lease_seconds`. (`_state.py`)
- **Budgets**: each key holder's spend of the period is a number in Redis, added to as streams end
  and read at each admission of a budgeted key, in the same round trip as the lease. (`_budgets.py`)
- **Replays of resumable streams**: copied to a Redis stream (one write every 10 ms at most for all
  of a core's streams), so that a client resumes through any core; the core that runs a stream still
  serves its own readers from memory. (`_replay.py`)

The admission's round trip is `SharedState.admit()`, awaited before `Gateway.open()` (which stays
synchronous) by the gRPC servicer and the link; only a stream that a per-key limit or a budget
applies to makes one, and concurrent admissions share it (one pipeline in flight at a time).
Redis Cluster is not supported (the scripts touch several keys): one Redis, or a primary that a
failover replaces. When Redis cannot be reached, running streams go on, and new admissions follow
`--redis-fail`: `open` (the default) admits under this core's own limits, `closed` refuses with
UNAVAILABLE the streams a per-key limit or budget applies to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import FailRule, SharedConfig, check_redis_url, redis_location

if TYPE_CHECKING:  # the rest imports redis-py: loaded on first use, so that a core without Redis never does
    from ..gateway import Gateway
    from ._budgets import SharedBudgetBook
    from ._replay import RemoteReplay, SharedReplayStore
    from ._state import Lease, SharedState


async def share(gateway: Gateway, config: SharedConfig) -> SharedState:
    """Make `gateway`'s limits, budgets and replays shared through Redis, before it admits a stream."""
    from ._budgets import SharedBudgetBook
    from ._replay import SharedReplayStore
    from ._state import SharedState

    state = SharedState(config, gateway)
    gateway_config = gateway.config
    state.replays = SharedReplayStore(gateway_config.resume_window, gateway_config.resume_buffer_bytes, state)
    state.budgets = SharedBudgetBook(gateway_config.budgets, state)
    gateway.replays = state.replays
    gateway.budgets = state.budgets
    gateway.shared = state
    await state.start()
    return state


_LAZY = {
    "Lease": "_state",
    "SharedState": "_state",
    "RemoteReplay": "_replay",
    "SharedReplayStore": "_replay",
    "SharedBudgetBook": "_budgets",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FailRule",
    "Lease",
    "RemoteReplay",
    "SharedBudgetBook",
    "SharedConfig",
    "SharedReplayStore",
    "SharedState",
    "check_redis_url",
    "redis_location",
    "share",
]
