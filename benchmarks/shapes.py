"""The load shapes, each measured against one running system (a `Deployment`).

Every measurement reads the CPU time (utime + stime, /proc/PID/stat) of the system's server
processes, of the upstream and of the client workers over the same interval, so that a result also
says which process was busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from benchmarks.load import ClientPool, Job, Result, Target, percentile
from benchmarks.systems import Deployment, Upstream

KIB = 1024
MIB = KIB * KIB
T = TypeVar("T")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    """Sizes of every shape; `QUICK` and `FULL` below."""

    single_tokens: int = 2000
    single_reps: int = 5
    concurrent_streams: int = 100
    concurrent_tokens: int = 200
    pace_s: float = 0.05
    paced_tokens: int = 100
    paced_steps: tuple[int, ...] = (50, 100, 200, 400, 600, 800)
    #: Paced streams start spread over this many seconds, so the load is steady rather than one burst.
    ramp_s: float = 1.0
    idle_streams: int = 500
    idle_first_token_delay: float = 120.0
    leave_streams: int = 100
    leave_after: int = 10
    #: Seconds to wait for the upstream to go idle after the clients left.
    leave_patience_s: float = 20.0
    #: Steady streams (issue 17): N closed-loop client slots, each opening a new stream as soon as
    #: its last one ended; the slots start spread over `steady_ramp_s`, then `steady_run_s` is measured.
    steady_steps: tuple[int, ...] = (200, 300, 400)
    #: The LiteLLM proxy's steps (it holds about a tenth of streamgate's: the same steps would only
    #: measure its collapse, at the cost of the machine's other work).
    steady_peer_steps: tuple[int, ...] = (20, 40)
    steady_ramp_s: float = 5.0
    steady_run_s: float = 15.0
    #: Tokens per stream, drawn uniformly (both ends included) for each stream.
    steady_lengths: tuple[int, int] = (50, 150)
    steady_first_token_delay: float = 0.2

    @property
    def gap_limit_s(self) -> float:
        return 2 * self.pace_s


FULL = Settings()
#: About 2 minutes: fewer repetitions, steps and streams, and shorter streams.
QUICK = Settings(
    single_reps=3,
    concurrent_tokens=100,
    paced_tokens=60,
    paced_steps=(100, 400),
    idle_streams=200,
    steady_steps=(200, 400),
    steady_peer_steps=(20,),
    steady_ramp_s=2.0,
    steady_run_s=5.0,
)


@dataclass
class Cpu:
    """CPU seconds used over one measurement, by role."""

    server: dict[str, float]
    upstream: float
    client: float
    wall_s: float

    @property
    def server_total(self) -> float:
        return sum(self.server.values())

    def cores(self, seconds: float) -> float:
        return seconds / self.wall_s


def _streaming_s(result: Result) -> float:
    """Seconds streams were open: first start to last end."""
    return result.wall_s


async def measured(
    deployment: Deployment,
    upstream: Upstream,
    run: Callable[[], Awaitable[Result]],
    active: Callable[[Result], float] = _streaming_s,
) -> tuple[Result, Cpu]:
    """Run `run()` and the CPU its servers, the upstream and its client used meanwhile.

    Cores busy are that CPU over `active(result)`, the seconds streams were open (not the job's
    start-up around them), so that a process that was the bottleneck shows near 1.0.
    """
    server0, upstream0 = deployment.cpu(), upstream.server.cpu()
    result = await run()
    server1, upstream1 = deployment.cpu(), upstream.server.cpu()
    cpu = Cpu(
        server={name: server1[name] - server0[name] for name in server0},
        upstream=upstream1 - upstream0 if deployment.uses_upstream else 0.0,
        client=result.cpu_s,
        wall_s=max(active(result), 1e-9),
    )
    return result, cpu


async def wait_upstream_idle(upstream: Upstream, limit_s: float = 15.0) -> None:
    """Until the upstream answers no request (polled over HTTP), at most `limit_s`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and (await upstream.counters())["active"]:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


@dataclass
class Throughput:
    tokens_per_s: float
    #: CPU µs per token by server process, and of the client and the upstream.
    server_us: dict[str, float]
    client_us: float
    upstream_us: float
    cores: Cpu
    #: Chunks (frames, messages) the client received per token: below 1 when a gateway coalesces.
    chunks_per_token: float
    errors: int
    error_samples: list[str]

    @property
    def server_total_us(self) -> float:
        return sum(self.server_us.values())


def throughput(result: Result, cpu: Cpu, tokens_per_s: float) -> Throughput:
    per = 1e6 / max(result.tokens, 1)
    return Throughput(
        tokens_per_s=tokens_per_s,
        server_us={name: seconds * per for name, seconds in cpu.server.items()},
        client_us=cpu.client * per,
        upstream_us=cpu.upstream * per,
        cores=cpu,
        chunks_per_token=result.chunks / max(result.tokens, 1),
        errors=result.errors,
        error_samples=result.error_samples,
    )


async def single_stream(deployment: Deployment, upstream: Upstream, pool: ClientPool, s: Settings) -> Throughput:
    """`single_reps` unpaced streams of `single_tokens`, one after the other."""
    job = Job(deployment.target, 1, max_tokens=s.single_tokens, expect_tokens=s.single_tokens, timeout_s=120)
    await pool.run(job)  # warm-up

    async def reps() -> Result:
        total = Result()
        for _ in range(s.single_reps):
            total = total.merge(await pool.run(job))
        return total

    result, cpu = await measured(deployment, upstream, reps, active=lambda r: r.busy_s)
    return throughput(result, cpu, result.tokens / max(result.busy_s, 1e-9))


async def concurrent_streams(deployment: Deployment, upstream: Upstream, pool: ClientPool, s: Settings) -> Throughput:
    """`concurrent_streams` unpaced streams of `concurrent_tokens` at once, from two client workers."""
    job = Job(
        deployment.target,
        s.concurrent_streams,
        max_tokens=s.concurrent_tokens,
        expect_tokens=s.concurrent_tokens,
        timeout_s=120,
    )
    per_worker = math.ceil(s.concurrent_streams / 2)
    await pool.run(Job(deployment.target, 10, max_tokens=s.concurrent_tokens, timeout_s=60), per_worker=5)
    result, cpu = await measured(deployment, upstream, lambda: pool.run(job, per_worker=per_worker))
    return throughput(result, cpu, result.tokens / result.wall_s)


@dataclass
class PacedStep:
    streams: int
    result: Result
    cpu: Cpu | None = None

    @property
    def gap_ms(self) -> tuple[float, float]:
        return percentile(self.result.gaps, 50) * 1e3, percentile(self.result.gaps, 99) * 1e3

    @property
    def ttft_ms(self) -> tuple[float, float]:
        return percentile(self.result.ttfts, 50) * 1e3, percentile(self.result.ttfts, 99) * 1e3

    def held(self, gap_limit_s: float) -> bool:
        return self.result.errors == 0 and self.result.streams > 0 and self.gap_ms[1] < gap_limit_s * 1e3


def paced_job(target: Target, streams: int, s: Settings) -> Job:
    nominal = s.paced_tokens * s.pace_s
    return Job(target, streams, ramp_s=s.ramp_s, expect_tokens=s.paced_tokens, timeout_s=max(30.0, 4 * nominal))


async def paced_step(
    deployment: Deployment | None, upstream: Upstream, pool: ClientPool, streams: int, s: Settings
) -> PacedStep:
    """`streams` paced streams through `deployment` (None: straight to the upstream, its own timings)."""
    await wait_upstream_idle(upstream)
    await asyncio.sleep(0.3)
    if deployment is None:
        return PacedStep(streams, await pool.run(paced_job(upstream.target, streams, s)))
    job = paced_job(deployment.target, streams, s)
    result, cpu = await measured(deployment, upstream, lambda: pool.run(job))
    return PacedStep(streams, result, cpu)


@dataclass
class Memory:
    streams: int
    opened: int
    #: Resident bytes per open stream, by server process.
    per_stream: dict[str, float]
    before: dict[str, int]
    during: dict[str, int]
    #: Server CPU µs spent per stream opened (admission, upstream request), by server process.
    open_cpu_us: dict[str, float]
    #: Upstream requests still open a second after the idle clients left (None: no upstream).
    upstream_left_open: int | None

    @property
    def per_stream_total(self) -> float:
        return sum(self.per_stream.values())


async def _open_count(deployment: Deployment, upstream: Upstream, pool: ClientPool) -> int:
    """Streams open end to end: requests the upstream is answering, or (no upstream) streams the clients hold."""
    if deployment.uses_upstream:
        return (await upstream.counters())["active"]
    return pool.open_streams()


async def _hold(deployment: Deployment, upstream: Upstream, pool: ClientPool, streams: int, limit_s: float) -> int:
    """Wait (at most `limit_s`) until `streams` more streams are open; the count open then."""
    already = await _open_count(deployment, upstream, pool)
    opened = 0
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and opened < streams:
        await asyncio.sleep(0.1)
        opened = await _open_count(deployment, upstream, pool) - already
    return opened


@dataclass
class _Held:
    opened: int
    rss: dict[str, int]
    #: Server CPU seconds from the job's start until every stream was open.
    cpu: dict[str, float]


async def _held(deployment: Deployment, upstream: Upstream, pool: ClientPool, streams: int, settle_s: float) -> _Held:
    """Hold `streams` streams open (first token far away); the count open, the servers' RSS and CPU meanwhile."""
    job = Job(deployment.target, streams, ramp_s=streams / 500, hold=True, timeout_s=90)
    cpu0 = deployment.cpu()
    task = asyncio.ensure_future(pool.run(job))
    try:
        opened = await _hold(deployment, upstream, pool, streams, limit_s=45)
        cpu1 = deployment.cpu()
        await asyncio.sleep(settle_s)
        return _Held(opened, deployment.rss(), {name: cpu1[name] - cpu0[name] for name in cpu0})
    finally:
        pool.release()
        with contextlib.suppress(Exception):
            await task


async def idle_memory(deployment: Deployment, upstream: Upstream, pool: ClientPool, s: Settings) -> Memory:
    """RSS of the server processes before and while `idle_streams` streams wait for their first token.

    A first round of 10 streams pays the one-time costs (lazy imports, pools) before the baseline is read.
    """
    await _held(deployment, upstream, pool, 10, settle_s=0.5)
    await wait_upstream_idle(upstream, limit_s=5)
    await asyncio.sleep(1.0)
    before, active = deployment.rss(), (await upstream.counters())["active"]
    held = await _held(deployment, upstream, pool, s.idle_streams, settle_s=1.5)
    await asyncio.sleep(1.0)
    left_open = (await upstream.counters())["active"] - active if deployment.uses_upstream else None
    n = max(held.opened, 1)
    return Memory(
        streams=s.idle_streams,
        opened=held.opened,
        per_stream={name: (held.rss[name] - before[name]) / n for name in before},
        before=before,
        during=held.rss,
        open_cpu_us={name: seconds * 1e6 / n for name, seconds in held.cpu.items()},
        upstream_left_open=left_open,
    )


@dataclass
class Leave:
    streams: int
    errors: int
    error_samples: list[str]
    #: Upstream requests started after the last client left (none should be).
    started_after: int
    #: Upstream requests started in all, for `streams` clients.
    upstream_requests: int
    #: Seconds from the last client leaving to no upstream request open; None: not within the patience.
    idle_after_s: float | None


@dataclass
class _Sample:
    at: float
    active: int
    started: int


@dataclass
class _Poller:
    """Polls the upstream's counters every 20 ms (bounded) while the clients come and go."""

    upstream: Upstream
    limit_s: float
    samples: list[_Sample] = field(default_factory=list)

    async def run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        while time.monotonic() < deadline:
            counters = await self.upstream.counters()
            self.samples.append(_Sample(time.time(), counters["active"], counters["started"]))
            await asyncio.sleep(0.02)

    def started_by(self, moment: float, default: int) -> int:
        """The upstream's `started` counter as last read at or before `moment`."""
        return next((sample.started for sample in reversed(self.samples) if sample.at <= moment), default)

    def idle_since(self, since: float) -> float | None:
        for sample in self.samples:
            if sample.at >= since and sample.active == 0:
                return sample.at - since
        return None


async def clients_leave(deployment: Deployment, upstream: Upstream, pool: ClientPool, s: Settings) -> Leave:
    """`leave_streams` paced streams whose clients leave after `leave_after` tokens; what the upstream sees."""
    await wait_upstream_idle(upstream)
    started0 = (await upstream.counters())["started"]
    job = Job(deployment.target, s.leave_streams, ramp_s=0.5, stop_after=s.leave_after, timeout_s=30)
    poller = _Poller(upstream, limit_s=job.ramp_s + job.timeout_s + s.leave_patience_s + 5)
    polling = asyncio.ensure_future(poller.run())
    try:
        result = await pool.run(job)
        left_at = result.last_end
        while time.time() < left_at + s.leave_patience_s and poller.idle_since(left_at) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # anything started late for the clients gone shows up here
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
    started = (await upstream.counters())["started"]
    return Leave(
        streams=s.leave_streams,
        errors=result.errors,
        error_samples=result.error_samples,
        started_after=started - poller.started_by(left_at, started0),
        upstream_requests=started - started0,
        idle_after_s=poller.idle_since(left_at),
    )


@dataclass
class SteadyStep:
    """Streams that keep opening and closing: `streams` closed-loop client slots, measured over a window.

    Gaps and tokens are those of chunks that arrived in the window; time to first token, that of
    the streams started in it; the server's and the upstream's CPU are read at the window's ends.
    """

    streams: int
    result: Result
    #: The upstream's own delay before a stream's first token: TTFT beyond it is what the path added.
    first_token_delay: float
    window_s: float
    cpu: Cpu | None = None

    @property
    def gap_ms(self) -> tuple[float, float]:
        return percentile(self.result.gaps, 50) * 1e3, percentile(self.result.gaps, 99) * 1e3

    @property
    def added_ttft_ms(self) -> tuple[float, float]:
        """Time to first token over the upstream's own delay (p50, p99)."""
        delay = self.first_token_delay * 1e3
        ttfts = self.result.ttfts
        return percentile(ttfts, 50) * 1e3 - delay, percentile(ttfts, 99) * 1e3 - delay

    @property
    def server_us_per_token(self) -> float:
        if self.cpu is None or not self.result.window_tokens:
            return math.nan
        return self.cpu.server_total * 1e6 / self.result.window_tokens

    def held(self, gap_limit_s: float) -> bool:
        return self.result.errors == 0 and bool(self.result.gaps) and self.gap_ms[1] < gap_limit_s * 1e3


def steady_job(target: Target, streams: int, s: Settings, start_at: float) -> Job:
    window = (s.steady_ramp_s, s.steady_ramp_s + s.steady_run_s)
    longest = s.steady_first_token_delay + s.steady_lengths[1] * s.pace_s
    return Job(
        target,
        streams,
        start_at=start_at,
        ramp_s=s.steady_ramp_s,
        loop_s=window[1],
        lengths=s.steady_lengths,
        window=window,
        timeout_s=max(30.0, 4 * longest),
    )


async def _at(moment: float, read: Callable[[], T]) -> T:
    """`read()` at wall-clock time `moment` (time.time())."""
    await asyncio.sleep(max(0.0, moment - time.time()))
    return read()


async def steady_step(
    deployment: Deployment | None,
    upstream: Upstream,
    pool: ClientPool,
    streams: int,
    s: Settings,
    trace: bool = False,
    start_at: float = 0.0,
) -> SteadyStep:
    """`streams` closed-loop slots through `deployment` (None: straight to the upstream), two client
    workers; the servers' and the upstream's CPU over the measured window. `trace`: name each stream
    and keep its chunks' times (benchmarks.trace); `start_at`: when the first slot starts (time.time()),
    by default half a second from now."""
    await wait_upstream_idle(upstream)
    await asyncio.sleep(0.3)
    target = upstream.target if deployment is None else deployment.target
    job = dataclasses.replace(steady_job(target, streams, s, start_at or time.time() + 0.5), trace=trace)
    return await windowed(deployment, upstream, pool, job, s.steady_first_token_delay)


async def windowed(
    deployment: Deployment | None, upstream: Upstream, pool: ClientPool, job: Job, first_token_delay: float
) -> SteadyStep:
    """Run `job` (it has a start and a window) from two client workers, with the servers' and the
    upstream's CPU read at the window's ends."""
    assert job.window is not None and job.start_at
    start_at, window = job.start_at, job.window

    def read() -> tuple[dict[str, float], float]:
        return (deployment.cpu() if deployment is not None else {}), upstream.server.cpu()

    first = asyncio.ensure_future(_at(start_at + window[0], read))
    last = asyncio.ensure_future(_at(start_at + window[1], read))
    try:
        result = await pool.run(job, per_worker=math.ceil(job.streams / 2))  # two client processes
        (server0, upstream0), (server1, upstream1) = await first, await last
    finally:
        first.cancel()
        last.cancel()
    window_s = window[1] - window[0]
    cpu = Cpu(
        server={name: server1[name] - server0[name] for name in server0},
        upstream=upstream1 - upstream0,
        client=result.window_cpu_s,
        wall_s=window_s,
    )
    return SteadyStep(job.streams, result, first_token_delay, window_s, cpu)


def describe_steady(step: SteadyStep) -> str:
    """One progress line for a steady step."""
    p50, p99 = step.gap_ms
    added = step.added_ttft_ms[1]
    result = step.result
    return (
        f"gap p50 {p50:.1f} / p99 {p99:.1f} ms, added TTFT p99 {added:.1f} ms, "
        f"server {step.server_us_per_token:.0f} µs/token, {result.completed} completed, "
        f"{result.errors} errors{': ' + result.error_samples[0] if result.error_samples else ''}"
    )
