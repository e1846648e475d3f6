"""The connection to Redis, the per-key leases, and what happens while Redis is away.

One `SharedState` per core. Its tasks:

- the courier: one pipeline at a time carries what waits, in order: released leases (ZREM), the
  periodic refresh of this core's open leases and running replays (a third of `lease_seconds`
  apart), finished streams' costs, and admissions (the ADMIT script). What comes while a pipeline
  is in flight goes in the next one, so under load many admissions and releases share a round trip
  (redis-py costs far more CPU per command than per pipeline), and when idle nothing waits: a lone
  admission is sent at once. One pipeline at a time also keeps a release before a later admission,
  and a refresh from bringing back a lease released after it;
- the keeper: asks the courier for the refresh, and, while Redis is away, tries it again every
  `probe_seconds`;
- the listener: the replays' control channel (a client that reads a stream through another core
  keeps it alive, or stops it: `_replay.py`);
- the replay writer (`SharedReplayStore`).

Redis away (a command fails, or takes over `COMMAND_TIMEOUT`): logged once, with where it was (never
the URL: it may hold a password), and again once when it is back. Meanwhile nothing waits on it:
an admission that needs it follows the fail rule at once (`open`: admitted under this core's own
limits, its lease kept here and added to Redis when it is back; `closed`: UNAVAILABLE), streams go
on, releases and costs wait in bounded queues, replays wait in this core's own store.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamgate.contract import ErrorCode, StreamError, StreamRequest

from . import _scripts
from ._config import SharedConfig, digest

if TYPE_CHECKING:
    from ..gateway import Gateway
    from ._budgets import SharedBudgetBook
    from ._replay import SharedReplayStore

logger = logging.getLogger("streamgate.core")

#: What a Redis that went away raises: its client's errors and the OS's.
REDIS_ERRORS = (redis_errors.RedisError, OSError)
#: Seconds a command may take (a Redis that does not answer counts as away), and a connect.
COMMAND_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0
#: Released leases waiting for Redis, at most; past it they are left to expire (`lease_seconds`).
MAX_RELEASES = 10_000
#: Seconds `close()` may spend writing what waits.
CLOSE_TIMEOUT = 2.0
UNREACHABLE = "the limits shared by the servers cannot be checked now (Redis cannot be reached); retry shortly"


def connect(url: str, **options: Any) -> Redis:
    """A client that fails fast: no retries (the keeper tries again), short timeouts."""
    options.setdefault("socket_timeout", COMMAND_TIMEOUT)
    options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    return Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)


class Lease:
    """A stream's place under its key's limit, shared by every core: a member of the key's lease set."""

    __slots__ = ("_state", "key", "token")

    def __init__(self, state: SharedState, key: str, token: str) -> None:
        self._state = state
        self.key = key
        self.token = token

    def release(self) -> None:
        """Give the place back (queued: the courier removes it from Redis, with what else waits)."""
        self._state.release(self)


@dataclass(slots=True)
class Spend:
    """Costs of one key holder's period waiting to be added in Redis."""

    holder: str
    start: Any  # the period's start (a datetime)
    seed: float
    expires_at: int
    cost: float = 0.0


class SharedState:
    """A core's view of the state every core shares: see the module's docstring."""

    def __init__(self, config: SharedConfig, gateway: Gateway) -> None:
        self.config = config
        self.gateway = gateway
        #: This core's name in lease tokens and replay markers.
        self.instance = uuid.uuid4().hex[:12]
        self.redis = connect(config.url)
        self.channel = f"{config.prefix}:replays"
        self.lease_ms = max(1, int(config.lease_seconds * 1000))
        self._tokens = itertools.count()
        self._up = False
        self._up_event = asyncio.Event()
        #: Wakes the courier (something waits to be sent) and the keeper (Redis went away).
        self._send = asyncio.Event()
        self._wake = asyncio.Event()
        self._refresh_due = False
        #: Admissions waiting for the courier: the script's keys and arguments, and who waits for its answer.
        self._admissions: list[tuple[list[str], list[str | int], asyncio.Future[Any]]] = []
        #: Lease set → the tokens of this core's open streams in it.
        self._open: dict[str, set[str]] = {}
        #: Lease set → released tokens not yet removed from Redis.
        self._releasing: dict[str, list[str]] = {}
        self._release_count = 0
        #: Spend key → costs not yet added in Redis.
        self._spending: dict[str, Spend] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        #: Set by `share()`.
        self.replays: SharedReplayStore
        self.budgets: SharedBudgetBook

    # -- the connection -------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self._up

    async def wait_up(self) -> None:
        await self._up_event.wait()

    def lost(self, exc: BaseException) -> None:
        """A command failed: Redis counts as away until the keeper reaches it again (logged once)."""
        if not self._up:
            return
        self._up = False
        self._up_event.clear()
        self._wake.set()
        rule = (
            "admitted under this core's own limits"
            if self.config.fail == "open"
            else "refused (UNAVAILABLE) when a shared limit or budget applies"
        )
        logger.warning(
            "shared state: Redis at %s cannot be reached (%s: %s): running streams go on and their replays"
            " are kept here until it is back; new streams are %s (--redis-fail %s)",
            self.config.location,
            type(exc).__name__,
            exc,
            rule,
            self.config.fail,
        )

    def _back(self, first: bool) -> None:
        self._up = True
        self._up_event.set()
        if first:
            logger.info("shared state: per-key limits, budgets and replays in Redis at %s", self.config.location)
        else:
            logger.info("shared state: Redis at %s is back; limits are shared again", self.config.location)

    async def _reach(self) -> None:
        """Ping Redis and load the scripts (a Redis that restarted has none), on new connections (the
        idle ones were to a Redis that went away: each would fail once more)."""
        await self.redis.connection_pool.disconnect(inuse_connections=False)
        await self.replays.reader.connection_pool.disconnect(inuse_connections=False)
        pipe = self.redis.pipeline(transaction=False)
        pipe.ping()
        for script in _scripts.ALL:
            pipe.script_load(script)
        await pipe.execute()

    async def start(self) -> None:
        """Reach Redis (a Redis that is away now is tried again in the background) and start the tasks."""
        try:
            await self._reach()
        except REDIS_ERRORS as exc:
            self._up = True  # so that `lost` says it, once
            self.lost(exc)
        else:
            self._back(first=True)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._courier(), name="streamgate-shared-courier"),
            loop.create_task(self._keep(), name="streamgate-shared-keeper"),
            loop.create_task(self._listen(), name="streamgate-shared-listener"),
            loop.create_task(self.replays.write_forever(), name="streamgate-shared-replays"),
        ]

    async def close(self) -> None:
        """Write what waits (within `CLOSE_TIMEOUT`), then let go of Redis. After the drain."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._up:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.replays.write_all()
                    await self._deliver()
            except (*REDIS_ERRORS, TimeoutError) as exc:
                logger.warning("shared state: could not write what waited for Redis at close (%s)", type(exc).__name__)
        for task in list(self._background):
            task.cancel()
        await self.replays.close()
        await self.redis.aclose()

    def spawn(self, coroutine: Any) -> None:
        """Run a short command in the background (held here until it ends)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- admission ------------------------------------------------------------------------------------

    def lease_key(self, principal: str) -> str:
        return f"{self.config.prefix}:leases:{digest(principal)}"

    async def admit(self, request: StreamRequest) -> Lease | None:
        """The shared part of admission, before `Gateway.open()`: a lease under the key's limit and
        the key holder's spend, read from Redis in one round trip. None when neither applies (no
        round trip). Raises `StreamError` (RESOURCE_EXHAUSTED over the limit; UNAVAILABLE when Redis
        is away and the rule is closed)."""
        principal = request.principal
        if principal is None or self.gateway.draining:  # (a draining core refuses it without Redis)
            return None
        limit = self.gateway.config.max_streams_per_key
        spend = self.budgets.shared_spend(principal)
        if not limit and spend is None:
            return None
        lease = Lease(self, self.lease_key(principal), f"{self.instance}:{next(self._tokens)}") if limit else None
        if not self._up:
            return self._unshared(lease)
        keys: list[str] = []
        if lease is not None:
            keys.append(lease.key)
        if spend is not None:
            keys.append(spend[0])
        args: list[str | int] = [
            "1" if lease is not None else "0",
            "1" if spend is not None else "0",
            lease.token if lease is not None else "",
            limit,
            self.lease_ms,
            repr(spend[1].seed) if spend is not None else "0",
            spend[1].expires_at if spend is not None else 0,
        ]
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._admissions.append((keys, args, answer))
        self._send.set()
        try:
            admitted, _, spent = await answer
        except REDIS_ERRORS as exc:
            self.lost(exc)
            return self._unshared(lease)
        except BaseException:  # cancelled while Redis took the lease, perhaps: give it back
            if lease is not None:
                self._queue_release(lease)
            raise
        if spend is not None and spent:
            self.budgets.shared_figure(principal, spend[1].start, float(spent) + self.pending_spend(spend[0]))
        if not admitted:
            self.gateway.metrics.stream_rejected(ErrorCode.RESOURCE_EXHAUSTED.value.lower())
            raise StreamError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"too many concurrent streams for this API key (limit {limit}, across the servers); retry shortly",
                retryable=True,
            )
        if lease is not None:
            self._open.setdefault(lease.key, set()).add(lease.token)
        return lease

    def _unshared(self, lease: Lease | None) -> Lease | None:
        """Redis is away: the fail rule. Open: admitted under this core's limits, the lease kept here
        (the refresh adds it to Redis when it is back). Closed: UNAVAILABLE."""
        if self.config.fail == "closed":
            if lease is not None:
                self._queue_release(lease)
            self.gateway.metrics.stream_rejected(ErrorCode.UNAVAILABLE.value.lower())
            raise StreamError(ErrorCode.UNAVAILABLE, UNREACHABLE, retryable=True)
        if lease is not None:
            self._open.setdefault(lease.key, set()).add(lease.token)
        return lease

    def release(self, lease: Lease) -> None:
        tokens = self._open.get(lease.key)
        if tokens is not None:
            tokens.discard(lease.token)
            if not tokens:
                del self._open[lease.key]
        self._queue_release(lease)

    def _queue_release(self, lease: Lease) -> None:
        if self._release_count >= MAX_RELEASES:
            return  # Redis has been away a while: this lease expires by itself
        self._releasing.setdefault(lease.key, []).append(lease.token)
        self._release_count += 1
        self._send.set()

    # -- budgets --------------------------------------------------------------------------------------

    def spend(self, key: str, spend: Spend, cost: float) -> None:
        """Add `cost` to a key holder's spend in Redis (queued: the courier sends it)."""
        waiting = self._spending.get(key)
        if waiting is None:
            waiting = self._spending[key] = spend
        waiting.cost += cost
        self._send.set()

    def pending_spend(self, key: str) -> float:
        waiting = self._spending.get(key)
        return waiting.cost if waiting is not None else 0.0

    # -- the courier and the keeper ------------------------------------------------------------------

    async def _courier(self) -> None:
        while True:
            await self._send.wait()
            self._send.clear()
            if not self._up:
                self._refuse_admissions(redis_errors.ConnectionError("Redis is away"))
                await self.wait_up()
            try:
                await self._deliver()
            except REDIS_ERRORS as exc:
                self.lost(exc)

    def _refuse_admissions(self, error: BaseException) -> None:
        admissions, self._admissions = self._admissions, []
        for _, _, answer in admissions:
            if not answer.done():
                answer.set_exception(error)

    async def _deliver(self) -> None:
        """One pipeline with what waits: releases, the refresh when due, costs, admissions."""
        releases, self._releasing, self._release_count = self._releasing, {}, 0
        spends, self._spending = self._spending, {}
        # An admission whose caller left before it was sent is not sent (its lease, released, was never taken).
        admissions = [admission for admission in self._admissions if not admission[2].done()]
        self._admissions = []
        refresh, self._refresh_due = self._refresh_due, False
        pipe = self.redis.pipeline(transaction=False)
        for key, tokens in releases.items():
            pipe.zrem(key, *tokens)
        if refresh:
            for key, open_tokens in self._open.items():
                pipe.evalsha(_scripts.REFRESH_SHA, 1, key, self.lease_ms, *open_tokens)
            self.replays.refresh(pipe)
        refreshed = len(pipe)
        for key, spend in spends.items():
            pipe.evalsha(_scripts.SPEND_SHA, 1, key, repr(spend.cost), repr(spend.seed), spend.expires_at)
        for keys, args, _ in admissions:
            pipe.evalsha(_scripts.ADMIT_SHA, len(keys), *keys, *args)
        if not len(pipe):
            return
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            # No answer: all of it again later. A connection lost while Redis ran some of the costs
            # counts those twice: a budget then errs on the side of refusing early.
            self._requeue(releases, spends, refresh)
            for _, _, answer in admissions:
                if not answer.done():
                    answer.cancel() if isinstance(exc, asyncio.CancelledError) else answer.set_exception(exc)
            raise
        failed: BaseException | None = next((r for r in results[:refreshed] if isinstance(r, BaseException)), None)
        if failed is not None:
            self._requeue(releases, {}, refresh)
        for (key, spend), total in zip(spends.items(), results[refreshed:], strict=False):
            if isinstance(total, BaseException):  # not added: it waits for the next try
                failed = total
                self._requeue({}, {key: spend}, False)
            else:
                self.budgets.shared_figure(spend.holder, spend.start, float(total) + self.pending_spend(key))
        for (_, _, answer), result in zip(admissions, results[refreshed + len(spends) :], strict=True):
            if not answer.done():
                answer.set_exception(result) if isinstance(result, BaseException) else answer.set_result(result)
        if failed is not None:
            raise failed

    def _requeue(self, releases: dict[str, list[str]], spends: dict[str, Spend], refresh: bool) -> None:
        """What a pipeline did not deliver waits for the next one (costs merged with newer ones)."""
        for key, tokens in releases.items():
            if self._release_count < MAX_RELEASES:
                self._releasing.setdefault(key, []).extend(tokens)
                self._release_count += len(tokens)
        for key, spend in spends.items():
            newer = self._spending.get(key)
            if newer is not None:
                spend.cost += newer.cost
            self._spending[key] = spend
        self._refresh_due = self._refresh_due or refresh

    async def _keep(self) -> None:
        """The refresh, a third of `lease_seconds` apart; while Redis is away, a try every `probe_seconds`."""
        loop = asyncio.get_running_loop()
        refresh_at = 0.0
        while True:
            if self._up:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, refresh_at - loop.time())):
                        await self._wake.wait()  # Redis went away
                self._wake.clear()
                if self._up:
                    self._refresh_due = True
                    self._send.set()
                    refresh_at = loop.time() + self.config.lease_seconds / 3
                continue
            await asyncio.sleep(self.config.probe_seconds)
            try:
                await self._reach()
            except REDIS_ERRORS:
                continue
            self._refresh_due = True  # every open lease and running replay again, at once
            refresh_at = loop.time() + self.config.lease_seconds / 3
            self._back(first=False)
            self._send.set()

    # -- the replays' control channel ----------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            await self.wait_up()
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.replays.control(message["data"])
            except REDIS_ERRORS as exc:
                self.lost(exc)
                await asyncio.sleep(self.config.probe_seconds)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
