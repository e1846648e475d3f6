"""The core's one seam: `Gateway.open(request)` admits a stream; iterating it yields events.

Lifecycle of a stream (see ARCHITECTURE.md for the race it runs):

    open()    validate the model, check draining and the concurrency limit;
              refuse at once with StreamError (INVALID_ARGUMENT, UNAVAILABLE,
              RESOURCE_EXHAUSTED): nothing started, nothing to close.
    iterate   Chunk events, then exactly one Completion or Failure.
              Each wait on the upstream is bounded by the earliest of: the
              stream deadline, the first-token deadline (before the first
              token) or the idle deadline (after it), and an abort (drain).
    close     `aclose()` (or leaving `async with aclosing(stream)`) at any
              point, including a cancelled consumer, closes the upstream
              request and frees the slot. Exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Self

from streamgate.contract import Chunk, Completion, ErrorCode, Event, Failure, Metrics, StreamError, StreamRequest, Usage

from .budgets import BudgetBook
from .ledger import Ledger, NullLedger, UsageRow
from .metrics import GatewayMetrics, StreamClock
from .observe import StreamSpan, stream_fields
from .replay import MemoryReplayStore, Replay
from .upstream import Delta, Provider, clean_text

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from .shared import Lease, RemoteReplay, SharedState
    from .slots import SlotTable

logger = logging.getLogger("streamgate.core")

SHUTTING_DOWN = "the server is shutting down"
#: Longest wait between two tries of the same model, before jitter.
MAX_BACKOFF = 2.0


class Gateway:
    """Admits streams within the configured limits and tracks them to their end."""

    def __init__(self, provider: Provider, metrics: GatewayMetrics | None = None) -> None:
        self.provider = provider
        self.config = provider.config
        self.metrics = metrics or GatewayMetrics()
        self._streams: set[GatewayStream] = set()
        self._per_key: dict[str, int] = {}
        #: Open streams by the model they were admitted for (a fallback does not move them).
        self._per_model: dict[str, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        self.replays = MemoryReplayStore(self.config.resume_window, self.config.resume_buffer_bytes)
        #: Where each stream's row goes when it ends (`streamgate.core.ledger`); the server sets it.
        self.ledger: Ledger = NullLedger()
        #: Spend limits by key holder, checked at admission (`streamgate.core.budgets`).
        self.budgets = BudgetBook(self.config.budgets)
        #: The tasks that run resumable streams (each reads its stream into its replay).
        self._runners: set[asyncio.Task[None]] = set()
        #: Traces each stream when set (`streamgate.core.observe`); None: off, and a stream pays one branch.
        self.tracer: Tracer | None = None
        #: Limits, budgets and replays shared with other cores through Redis (`streamgate.core.shared`);
        #: None: this core counts alone, and nothing here awaits it.
        self.shared: SharedState | None = None
        #: The limits counted over every core worker of one server (`streamgate.core.slots`); None: one core.
        self.slots: SlotTable | None = None

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def open(self, request: StreamRequest, lease: Lease | None = None) -> GatewayStream:
        """Admit a stream, or refuse it at once with a `StreamError`.

        `lease`: the stream's place under its key's limit across the cores (`SharedState.admit()`,
        awaited just before): given back with the stream's slot, or at once when it is refused here.
        """
        try:
            if self.draining:
                raise StreamError(ErrorCode.UNAVAILABLE, SHUTTING_DOWN, retryable=True)
            model = self.provider.resolve_model(request.model)
            limit = self.config.max_concurrent_streams
            if len(self._streams) >= limit:
                raise StreamError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"too many concurrent streams (limit {limit}); retry shortly",
                    retryable=True,
                )
            model_limit = self.provider.model_limit(model)
            if model_limit and self._per_model.get(model, 0) >= model_limit:
                raise StreamError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"too many concurrent streams of model {model!r} (limit {model_limit}); retry shortly",
                    retryable=True,
                )
            per_key = self.config.max_streams_per_key
            principal = request.principal
            if per_key and principal is not None and self._per_key.get(principal, 0) >= per_key:
                raise StreamError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"too many concurrent streams for this API key (limit {per_key}); retry shortly",
                    retryable=True,
                )
            if self.budgets:
                self.budgets.check(principal)
            if self.slots is not None:  # last: nothing after it refuses, so a slot taken is a stream admitted
                self.slots.take(model, principal, limit, model_limit, per_key)
        except StreamError as error:
            if lease is not None:
                lease.release()
            self.metrics.stream_rejected(error.code.value.lower())
            # Counted in the metrics; a line each would let a client flood the log (and the disk).
            logger.debug("stream %s refused: %s %s", request.request_id, error.code.value, error.message)
            raise
        stream = GatewayStream(self, request, model)
        stream.lease = lease
        self._streams.add(stream)
        if request.principal is not None:
            self._per_key[request.principal] = self._per_key.get(request.principal, 0) + 1
        self._per_model[model] = self._per_model.get(model, 0) + 1
        self._idle.clear()
        self.metrics.stream_started()
        logger.debug("stream %s started: model=%s key=%s", request.request_id, model, request.principal)
        return stream

    def open_resumable(self, request: StreamRequest, lease: Lease | None = None) -> Replay:
        """Admit a stream that runs in a task of its own, into a replay that clients read (and read
        again after a dropped connection); or refuse it at once with a `StreamError`."""
        grace = self.config.resume_grace
        try:
            if not grace:
                raise StreamError(ErrorCode.INVALID_ARGUMENT, "resumable streams are off on this server")
            replay = self.replays.create(request.request_id, request.principal, self._away)
        except StreamError:
            if lease is not None:
                lease.release()
            raise
        try:
            stream = self.open(request, lease)
        except StreamError:
            self.replays.remove(replay.stream_id)
            raise
        runner = asyncio.get_running_loop().create_task(self._run_resumable(stream, replay))
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        replay.stream = stream
        self._away(replay)  # until its first reader comes
        return replay

    async def _run_resumable(self, stream: GatewayStream, replay: Replay) -> None:
        try:
            async with stream:
                async for event in stream:
                    self.replays.added(replay, replay.append(event))
        finally:
            if replay.final is None:  # cancelled from outside (shutdown): its readers still get an end
                text = "".join(e.content for e in replay.events if isinstance(e, Chunk))
                gone = StreamError(ErrorCode.UNAVAILABLE, SHUTTING_DOWN, retryable=True)
                final = Failure(gone, text, stream.model, Usage(0, 0), None, Metrics(), stream.request.request_id)
                self.replays.added(replay, replay.append(final))
            replay.stream = None  # ended: the replay outlives it for the window, not the stream object

    def _away(self, replay: Replay) -> None:
        """No client reads `replay` now: end its stream as cancelled unless one comes within the grace."""
        grace = self.config.resume_grace

        def check() -> None:
            stream = replay.stream
            if replay.readers == 0 and replay.final is None and stream is not None:
                if self.shared is not None and self.shared.replays.read_elsewhere(replay):
                    self._away(replay)  # a client reads it through another core: look again later
                    return
                stream.abort(StreamError(ErrorCode.CANCELLED, f"no client read the stream for {grace:g} s"))

        asyncio.get_running_loop().call_later(grace, check)

    async def find_replay(self, stream_id: str, principal: str | None) -> Replay | RemoteReplay:
        """The replay of a resumable stream for its key's holder: this core's own or, with shared state,
        one in Redis (another core runs it); raises `StreamError` (NOT_FOUND)."""
        try:
            return self.replays.find(stream_id, principal)
        except StreamError as error:
            if self.shared is None or error.code is not ErrorCode.NOT_FOUND:
                raise
        return await self.shared.replays.find_remote(stream_id, principal)

    def _release(self, stream: GatewayStream) -> None:
        if stream.lease is not None:
            stream.lease.release()
        self._streams.discard(stream)
        principal = stream.request.principal
        if principal is not None:
            _take_one(self._per_key, principal)
        _take_one(self._per_model, stream.admitted_model)
        if self.slots is not None:
            self.slots.give(stream.admitted_model, principal)
        if not self._streams:
            self._idle.set()

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no stream is open; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def drain(self, grace: float, error: StreamError | None = None) -> None:
        """Refuse new streams, let open ones finish for `grace` seconds, then end them with `error`.

        The default error is UNAVAILABLE, "the server is shutting down".
        """
        self.draining = True
        if await self.wait_idle(grace):
            return
        logger.warning("drain: ending %d open stream(s) after %.1f s of grace", len(self._streams), grace)
        error = error or StreamError(ErrorCode.UNAVAILABLE, SHUTTING_DOWN, retryable=True)
        for stream in list(self._streams):
            stream.abort(error)
        await self.wait_idle(5.0)


def _take_one(counts: dict[str, int], name: str) -> None:
    left = counts.get(name, 1) - 1
    if left:
        counts[name] = left
    else:
        counts.pop(name, None)


class GatewayStream(AsyncIterator[Event]):
    """One admitted stream. Iterate it for events, from one task; `aclose()` it when done (always)."""

    def __init__(self, gateway: Gateway, request: StreamRequest, model: str) -> None:
        self._gateway = gateway
        self.request = request
        self.model = model
        #: The model the stream was admitted for (counted against its limit); `model` may move to a fallback.
        self.admitted_model = model
        #: Its place under its key's limit across the cores, when shared (`Gateway.open`).
        self.lease: Lease | None = None
        self._events: AsyncGenerator[Event, None] | None = None
        self._abort: StreamError | None = None
        # One lazy timer bounds every wait on the upstream (see `_run` and ARCHITECTURE.md): a token
        # only moves `_limit`; the timer, when it fires early, re-arms itself at the current limit.
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop that runs `_run`
        self._waiter: asyncio.Task[object] | None = None  # the task waiting on the upstream, while it waits
        self._limit = 0.0
        self._timer: asyncio.Handle | None = None
        #: When `_timer` fires (loop time). Kept here: uvloop's `call_at` returns a plain `Handle`,
        #: without `when()`, for a time less than about 0.5 ms away.
        self._timer_at = 0.0
        self._expired = False
        self._closed = False
        self._attempt = 0
        self._fallbacks = list(gateway.provider.fallbacks(model))
        #: The answer so far and the provider's usage, if it gave one: what a stream that ends early cost.
        self._parts: list[str] = []
        self._usage: Usage | None = None
        #: The provider refused the current try (or could not be reached) before any token: nothing billed.
        self._refused = False
        #: From admission: time to first token counts the wait for the upstream too.
        self._clock = StreamClock()
        self._started_at = time.time()
        tracer = gateway.tracer
        #: The stream's trace spans, when traced; the model the upstream said it answered with.
        self._span = None if tracer is None else StreamSpan(tracer, request, model)
        self._response_model: str | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        if self._events is None:
            if self._closed:
                raise StopAsyncIteration
            self._events = self._run()
        return await self._events.__anext__()

    async def aclose(self) -> None:
        """Close the upstream request (if any) and free the slot. Safe to call more than once."""
        if self._events is not None:
            await self._events.aclose()
        self._finish("cancelled", None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def abort(self, error: StreamError) -> None:
        """End the stream with `error` as its final event, as soon as it next waits on the upstream."""
        self._abort = error
        if self._waiter is not None:
            self._expire()

    def _arm(self, limit: float) -> None:
        """Bound the wait that starts now by `limit` (loop time)."""
        self._limit = limit
        timer = self._timer
        if timer is None or self._timer_at > limit:
            if timer is not None:
                timer.cancel()
            assert self._loop is not None
            self._timer = self._loop.call_at(limit, self._on_timer)
            self._timer_at = limit

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None:
            return  # not waiting on the upstream: the next wait checks its limit and arms again
        assert self._loop is not None
        if self._loop.time() < self._limit:  # a token came since this timer was set
            self._timer = self._loop.call_at(self._limit, self._on_timer)
            self._timer_at = self._limit
            return
        self._expire()

    def _expire(self) -> None:
        """Interrupt the wait: the waiting task gets a CancelledError that `_run` turns into the final error.

        Cancelling the task directly (not through call_soon) lands the CancelledError in the
        wait even when the upstream's data arrived in this same loop iteration.
        """
        assert self._waiter is not None
        if not self._expired:
            self._expired = True
            self._waiter.cancel()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self, outcome: str, final: Completion | Failure | None) -> None:
        """Record the stream's end and free its slot, once."""
        if self._closed:
            return
        self._closed = True
        self._gateway._release(self)
        request_id = self.request.request_id
        if final is None:  # the client left: what the provider produced so far was billed, so it counts
            usage, cost, _ = self._settle("".join(self._parts))
            m = self._clock.finish(usage.completion_tokens)
        else:
            usage, cost, m = final.usage, final.cost_usd, final.metrics
        self._gateway.metrics.stream_finished(
            self.model, outcome, m, usage.prompt_tokens, usage.completion_tokens, cost
        )
        self._account(outcome, usage, cost, m)
        if self._span is not None:
            self._span.end(outcome, usage, cost, m, final, self._response_model)
        fields = stream_fields(self.request, self.model, outcome, usage, cost, m, final)
        if final is None:
            logger.info(
                "stream %s cancelled by the client after %d chunks: tokens=%d+%d cost=%s",
                request_id,
                m.chunks,
                usage.prompt_tokens,
                usage.completion_tokens,
                cost,
                extra=fields,
            )
        elif isinstance(final, Failure) and final.error.code is ErrorCode.CANCELLED:  # a client's cancel: no failure
            logger.info(
                "stream %s cancelled: %s (chunks=%d tokens=%d+%d cost=%s)",
                request_id,
                final.error.message,
                m.chunks,
                usage.prompt_tokens,
                usage.completion_tokens,
                cost,
                extra=fields,
            )
        elif isinstance(final, Failure):
            logger.warning(
                "stream %s failed: %s %s (ttft=%.1fms chunks=%d)",
                request_id,
                final.error.code.value,
                final.error.message,
                m.ttft_ms,
                m.chunks,
                extra=fields,
            )
        else:
            logger.info(
                "stream %s completed: model=%s finish=%s ttft=%.1fms duration=%.1fms tokens=%d+%d tps=%.1f cost=%s",
                request_id,
                self.model,
                final.finish_reason,
                m.ttft_ms,
                m.duration_ms,
                usage.prompt_tokens,
                usage.completion_tokens,
                m.tokens_per_second,
                cost,
                extra=fields,
            )

    async def _run(self) -> AsyncGenerator[Event, None]:
        config = self._gateway.config
        request = self.request
        loop = self._loop = asyncio.get_running_loop()
        clock = self._clock
        start = loop.time()
        timeout = min(request.timeout or config.stream_timeout, config.stream_timeout)
        deadline = start + timeout
        first_deadline = start + config.first_token_timeout
        idle = config.idle_timeout
        parts = self._parts
        #: Characters of answer still allowed: the text is kept for the final event, so it is bounded.
        room = len_limit = config.max_answer_chars
        finish_reason = "stop"
        error: StreamError | None = None
        span = self._span
        upstream = self._upstream(self.model)
        task = asyncio.current_task()
        assert task is not None
        try:
            try:
                while True:
                    step = first_deadline if clock.first_token is None else loop.time() + idle
                    limit = min(deadline, step)
                    if self._abort is not None:
                        raise self._abort
                    if loop.time() >= limit:
                        raise self._timeout_error(limit == deadline, clock.first_token is None, timeout)
                    self._arm(limit)
                    self._waiter = task
                    try:
                        try:
                            delta = await anext(upstream)
                        except StreamError as exc:
                            # Refused by the provider (or not reached) before any token: not billed.
                            self._refused = clock.first_token is None and self._usage is None
                            retry = self._retry(exc) if clock.first_token is None else None
                            if retry is None:
                                raise
                            await upstream.aclose()
                            if span is not None:
                                span.retried(exc)
                            model, delay = retry
                            logger.info(
                                "stream %s: %s failed before its first token (%s); trying %s in %.2f s",
                                request.request_id,
                                self.model,
                                exc.message,
                                model,
                                delay,
                            )
                            self.model = model
                            await asyncio.sleep(delay)  # within the same limit: a drain or timeout ends it
                            self._refused = False  # a new try: sent again
                            upstream = self._upstream(model)
                            continue
                    except StopAsyncIteration:
                        break
                    except asyncio.CancelledError:
                        if not self._expired or task.uncancel() > 0:
                            raise  # cancelled from outside (the client left), not by the timer
                        self._expired = False
                        if self._abort is not None:
                            raise self._abort from None
                        raise self._timeout_error(limit == deadline, clock.first_token is None, timeout) from None
                    finally:
                        self._waiter = None
                    if self._expired:  # the timer's cancellation was swallowed below the wait: it still counts
                        self._expired = False
                        task.uncancel()
                        if self._abort is not None:
                            raise self._abort
                        raise self._timeout_error(limit == deadline, clock.first_token is None, timeout)
                    if content := delta.content:
                        content = clean_text(content)
                        room -= len(content)
                        if room < 0:  # the answer is over its bound: keep what fits, end it as "length"
                            content = content[: len(content) + room]
                        clock.chunk()
                        parts.append(content)
                        yield Chunk(content, clock.chunks - 1)
                        if room < 0:
                            logger.info("stream %s: answer cut at %d characters", request.request_id, len_limit)
                            finish_reason = "length"
                            break
                    if delta.finish_reason:
                        finish_reason = delta.finish_reason
                        self._response_model = delta.model or self._response_model
                    if delta.usage is not None:
                        self._usage = delta.usage
                        self._response_model = delta.model or self._response_model
            except StreamError as exc:
                error = exc
            except Exception as exc:  # a bug, not an expected failure: log it, still end the stream properly
                logger.exception("stream %s: internal error", request.request_id)
                error = StreamError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
            self._disarm()
            await upstream.aclose()
            final = self._final("".join(parts), finish_reason, error, clock)
            self._finish("completed" if error is None else error.code.value.lower(), final)
            yield final
        finally:
            # Reached on cancellation and on aclose() too: the upstream is closed either way.
            self._disarm()
            await upstream.aclose()
            self._finish("cancelled", None)

    def _upstream(self, model: str) -> AsyncGenerator[Delta, None]:
        """A try of `model` at the upstream; a traced stream's is a span of its own, its `traceparent` sent upstream."""
        provider = self._gateway.provider
        if self._span is None:
            return provider.stream(self.request, model)
        return self._span.upstream(provider, self.request, model)

    def _retry(self, error: StreamError) -> tuple[str, float] | None:
        """Before the first token only: the same model again after a backoff with jitter
        (retryable errors, up to `retries` times), then the next fallback model at once."""
        config = self._gateway.config
        if error.retryable and self._attempt < config.retries:
            self._attempt += 1
            backoff = min(config.retry_backoff * 2 ** (self._attempt - 1), MAX_BACKOFF)
            self._gateway.metrics.retries.labels("retry").inc()
            return self.model, backoff * random.uniform(0.5, 1.5)
        if self._fallbacks:
            self._attempt = 0
            self._gateway.metrics.retries.labels("fallback").inc()
            return self._fallbacks.pop(0), 0.0
        return None

    def _timeout_error(self, whole: bool, before_first: bool, timeout: float) -> StreamError:
        config = self._gateway.config
        if whole:
            message = f"the stream took longer than its timeout of {timeout:g} s"
        elif before_first:
            message = f"upstream timed out: no first token within {config.first_token_timeout:g} s"
        else:
            message = f"upstream timed out: no token for {config.idle_timeout:g} s"
        return StreamError(ErrorCode.DEADLINE_EXCEEDED, message, retryable=True)

    def _account(self, outcome: str, usage: Usage, cost: float | None, metrics: Metrics) -> None:
        """The stream's row in the usage ledger (queued: written off the stream's path), and its cost
        against its key's budget."""
        request = self.request
        if self._gateway.budgets:
            self._gateway.budgets.add(request.principal, cost)
        ledger = self._gateway.ledger
        if isinstance(ledger, NullLedger):
            return
        try:
            row = UsageRow(
                request_id=request.request_id,
                started_at=datetime.fromtimestamp(self._started_at, UTC),
                ended_at=datetime.now(UTC),
                key_holder=request.principal,
                model=self.model,
                transport=request.transport,  # type: ignore[arg-type]  # checked by UsageRow
                outcome=outcome,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost_usd=cost,
                ttft_ms=metrics.ttft_ms if metrics.chunks else None,
                duration_ms=metrics.duration_ms,
            )
        except ValueError:  # a bug: the stream has ended properly, only its row is lost (and said so)
            logger.exception("stream %s: cannot make its ledger row", request.request_id)
            return
        ledger.record(row)

    def _settle(self, text: str) -> tuple[Usage, float | None, bool]:
        """Usage, cost and whether the usage is estimated, for the stream as it ends, however it ends.

        The provider's own usage when it sent one. None when it refused the request (or could not be
        reached) before any token: nothing was billed, so zero tokens and zero cost, whatever the
        price. Otherwise the prompt and the text produced so far, counted with the model's tokenizer
        (an estimate), priced; the cost stays None (unknown, not free) for a model without a price.
        """
        provider = self._gateway.provider
        if self._usage is not None:
            return self._usage, provider.cost(self.model, self._usage), False
        if self._refused and not text:
            return Usage(0, 0), 0.0, False
        prompt = "\n".join(m.content for m in self.request.messages)
        usage = Usage(provider.count_tokens(self.model, prompt), provider.count_tokens(self.model, text))
        return usage, provider.cost(self.model, usage), True

    def _final(
        self,
        text: str,
        finish_reason: str,
        error: StreamError | None,
        clock: StreamClock,
    ) -> Completion | Failure:
        usage, cost, estimated = self._settle(text)
        metrics = clock.finish(usage.completion_tokens)
        if error is None:
            return Completion(
                text=text,
                finish_reason=finish_reason,
                model=self.model,
                usage=usage,
                cost_usd=cost,
                metrics=metrics,
                request_id=self.request.request_id,
                usage_estimated=estimated,
            )
        return Failure(
            error=error,
            partial_text=text,
            model=self.model,
            usage=usage,
            cost_usd=cost,
            metrics=metrics,
            request_id=self.request.request_id,
        )
