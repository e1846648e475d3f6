"""The load client: streams opened from worker processes, one client for every system.

A `Target` says how to reach a system: SSE (`POST` a JSON body, read `data:` events in the
`streamgate` dialect — the bridge's frames, ended by one `is_final: true` — or the `openai` dialect —
`choices[0].delta.content`, ended by `[DONE]`) or gRPC (`StreamGateService/Generate`). A `Job` says
how many streams, how they start (spread over `ramp_s`), how long they may take and when the client
leaves (after `stop_after` tokens, or when released, for streams held open). Every stream records
its time to first chunk and the gaps between chunks as the client sees them, and counts the chunks
and the tokens in them (a gateway may send several tokens in one chunk).

A closed-loop job (`loop_s`) keeps `streams` client slots busy: each slot opens a new stream as
soon as its last one ended, each asking for a length drawn from `lengths`, until `loop_s` after the
start; the streams still open then are dropped (not errors). Only what falls in its `window` is
recorded (first tokens of the streams started in it, gaps and tokens of the chunks that arrive in
it, the worker's CPU over it), so the ramp and the end are left out.

`ClientPool` keeps worker processes (spawned once, each with its own event loop) and splits a job
between them; each worker reports its own CPU time so the reader sees whether the client was the
bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import multiprocessing as mp
import random
import resource
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as MpEvent
from typing import Any, Literal, Protocol

import aiohttp
import grpc

from benchmarks.procs import new_event_loop, raise_fd_limit
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

Dialect = Literal["streamgate", "openai"]
#: What one SSE event is to the client.
CHUNK, SKIP, DONE = "chunk", "skip", "done"
#: How a stream ended, besides an error message.
LEFT, HELD = "left", "held"


@dataclass(frozen=True)
class Target:
    """How to reach one system."""

    kind: Literal["sse", "grpc"]
    #: SSE: the endpoint's URL; gRPC: HOST:PORT.
    address: str
    body: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    dialect: Dialect = "streamgate"


@dataclass(frozen=True)
class Job:
    target: Target
    streams: int
    #: Wall-clock time (time.time()) at which stream 0 starts; stream i starts ramp_s * i / streams later.
    start_at: float = 0.0
    ramp_s: float = 0.0
    max_tokens: int | None = None
    #: Tokens a finished stream must have had; another count is an error.
    expect_tokens: int | None = None
    #: The client leaves after this many tokens.
    stop_after: int | None = None
    #: Keep each stream open until the pool is released.
    hold: bool = False
    timeout_s: float = 60.0
    #: This worker's share: streams first, first + stride, ...
    first: int = 0
    stride: int = 1
    #: Closed loop: each of the `streams` slots opens a new stream as soon as its last one ended, until
    #: this many seconds after `start_at`; the streams still open then are dropped, not counted as
    #: errors. 0: each slot opens one stream.
    loop_s: float = 0.0
    #: Each stream asks for a number of tokens drawn uniformly from this range (both ends included), and
    #: must get exactly that many (`max_tokens` and `expect_tokens` are then unused).
    lengths: tuple[int, int] | None = None
    #: Seconds after `start_at` (from, to): only first tokens of streams started within it, and gaps and
    #: tokens of chunks that arrive within it, are recorded (`window_*` of the result); the worker's
    #: CPU is read at its ends. None: everything is recorded.
    window: tuple[float, float] | None = None
    #: Seeds the lengths drawn (each slot draws from its own generator: the same job asks the same).
    seed: int = 0
    #: Name each stream (`request_id` and `user` in its body, which the gateway passes on to the
    #: upstream) and keep the wall-clock time of its request and of each chunk (`Result.traces`),
    #: for benchmarks.trace to follow it through every process.
    trace: bool = False


@dataclass
class Result:
    streams: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    chunks: int = 0
    tokens: int = 0
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    #: Sum over streams of request-to-last-chunk seconds.
    busy_s: float = 0.0
    first_start: float = math.inf
    last_end: float = 0.0
    #: The client's own CPU seconds (all workers).
    cpu_s: float = 0.0
    #: Streams that ended with their final event (of those started), and streams dropped open at the
    #: end of a closed loop.
    completed: int = 0
    dropped: int = 0
    #: Tokens and chunks that arrived within the job's window (all of them without one), and the
    #: client's CPU seconds over it (summed over workers; 0 without a window).
    window_tokens: int = 0
    window_chunks: int = 0
    window_cpu_s: float = 0.0
    #: Traced streams (`Job.trace`): name, time.time() of the request, and of each chunk with the
    #: stream's tokens received by then.
    traces: list[tuple[str, float, list[tuple[float, int]]]] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return max(self.last_end - self.first_start, 1e-9)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(message[:300])

    def merge(self, other: Result) -> Result:
        return Result(
            streams=self.streams + other.streams,
            errors=self.errors + other.errors,
            error_samples=(self.error_samples + other.error_samples)[:3],
            chunks=self.chunks + other.chunks,
            tokens=self.tokens + other.tokens,
            ttfts=self.ttfts + other.ttfts,
            gaps=self.gaps + other.gaps,
            busy_s=self.busy_s + other.busy_s,
            first_start=min(self.first_start, other.first_start),
            last_end=max(self.last_end, other.last_end),
            cpu_s=self.cpu_s + other.cpu_s,
            completed=self.completed + other.completed,
            dropped=self.dropped + other.dropped,
            window_tokens=self.window_tokens + other.window_tokens,
            window_chunks=self.window_chunks + other.window_chunks,
            window_cpu_s=self.window_cpu_s + other.window_cpu_s,
            traces=self.traces + other.traces,
        )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


#: Seconds a closed-loop slot waits after a failed stream before it opens the next.
FAILED_PAUSE_S = 0.1
#: A window that holds every moment: everything is recorded.
ALWAYS = (-math.inf, math.inf)


class Recorder:
    """One stream's timings, written into the worker's `Result` (within `window`, perf_counter times)."""

    __slots__ = ("chunks", "hi", "last", "lo", "max_tokens", "name", "result", "stop_after", "t0", "times", "tokens")

    def __init__(
        self,
        result: Result,
        stop_after: int | None,
        max_tokens: int | None = None,
        window: tuple[float, float] = ALWAYS,
    ) -> None:
        self.result = result
        self.stop_after = stop_after
        self.max_tokens = max_tokens
        self.lo, self.hi = window
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.chunks = 0
        self.tokens = 0
        #: A traced stream's name, and the perf_counter time of each chunk with the tokens by then.
        self.name = ""
        self.times: list[tuple[float, int]] | None = None

    def trace(self, name: str) -> None:
        self.name = name
        self.times = []

    def traced(self) -> tuple[str, float, list[tuple[float, int]]]:
        """This traced stream in time.time(): its name, its request, its chunks (with the tokens by then)."""
        offset = time.time() - time.perf_counter()
        return self.name, self.t0 + offset, [(t + offset, tokens) for t, tokens in self.times or ()]

    def chunk(self, now: float, content: str) -> bool:
        """Record a chunk; True when the client leaves now."""
        n = tokens_in(content, first=not self.tokens)
        if self.lo <= now < self.hi:
            result = self.result
            if self.chunks:
                result.gaps.append(now - self.last)
            elif self.lo <= self.t0:
                result.ttfts.append(now - self.t0)
            result.window_tokens += n
            result.window_chunks += 1
        self.last = now
        self.chunks += 1
        self.tokens += n
        if self.times is not None:
            self.times.append((now, self.tokens))
        return self.stop_after is not None and self.tokens >= self.stop_after


def tokens_in(content: str, first: bool) -> int:
    """Tokens of the fake upstream in `content`: one word each, every one but a stream's first after a space."""
    return content.count(" ") + (1 if first and content and not content.startswith(" ") else 0)


def read_streamgate(data: bytes) -> tuple[str, str]:
    """One event of the bridge's frames: (CHUNK, content) or (DONE, "")."""
    event = json.loads(data)
    if not event.get("is_final"):
        return CHUNK, event.get("content") or ""
    if event.get("error"):
        raise StreamFailed(f"final frame: {event['error']}")
    return DONE, ""


def read_openai(data: bytes) -> tuple[str, str]:
    """One event of an OpenAI-compatible stream: (CHUNK, content), (SKIP, "") or (DONE, "")."""
    if data == b"[DONE]":
        return DONE, ""
    event = json.loads(data)
    if "error" in event:
        raise StreamFailed(f"error event: {event['error']}")
    choices = event.get("choices") or [{}]
    content = (choices[0].get("delta") or {}).get("content")
    return (CHUNK, content) if content else (SKIP, "")


DIALECTS: dict[str, Callable[[bytes], tuple[str, str]]] = {"streamgate": read_streamgate, "openai": read_openai}


class StreamFailed(Exception):
    pass


class Transport(Protocol):
    async def stream(self, job: Job, rec: Recorder, opened: Callable[[], None]) -> str: ...


class SseTransport:
    def __init__(self, session: aiohttp.ClientSession, target: Target) -> None:
        self.session = session
        self.target = target
        self.read = DIALECTS[target.dialect]

    async def stream(self, job: Job, rec: Recorder, opened: Callable[[], None]) -> str:
        body = dict(self.target.body)
        if rec.max_tokens:
            body["max_tokens"] = rec.max_tokens
        if rec.name:  # the gateway passes `user` on to the upstream; streamgate takes `request_id` as its own
            body["user"] = rec.name
            if self.target.dialect == "streamgate":
                body["request_id"] = rec.name
        async with self.session.post(self.target.address, json=body, headers=dict(self.target.headers)) as response:
            if response.status != 200:
                raise StreamFailed(f"HTTP {response.status}: {(await response.text())[:200]}")
            opened()
            buffer = b""
            async for data in response.content.iter_any():
                now = time.perf_counter()
                *blocks, buffer = (buffer + data).replace(b"\r\n", b"\n").split(b"\n\n")
                for block in blocks:
                    for line in block.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        event, content = self.read(line[5:].strip())
                        if event == DONE:
                            return DONE
                        if event == CHUNK and rec.chunk(now, content):
                            response.close()  # leave: drop the connection, as a closed browser tab does
                            return LEFT
        raise StreamFailed("the stream ended without its final event")


class GrpcTransport:
    def __init__(self, stub: pb_grpc.StreamGateServiceAsyncStub) -> None:
        self.stub = stub

    async def stream(self, job: Job, rec: Recorder, opened: Callable[[], None]) -> str:
        parameters = pb.GenerationParameters(max_tokens=rec.max_tokens) if rec.max_tokens else None
        call = self.stub.Generate(pb.GenerateRequest(query="go", parameters=parameters), timeout=job.timeout_s)
        try:
            await call.initial_metadata()
            opened()
            async for response in call:
                kind = response.WhichOneof("event")
                if kind == "chunk":
                    if rec.chunk(time.perf_counter(), response.chunk.content):
                        return LEFT
                elif kind == "completion":
                    return DONE
                else:
                    raise StreamFailed(f"final error: {response.error.message}")
            raise StreamFailed("the stream ended without its final message")
        except grpc.aio.AioRpcError as error:
            raise StreamFailed(f"gRPC {error.code().name}: {error.details()}") from None
        finally:
            call.cancel()


@asynccontextmanager
async def open_transport(target: Target) -> AsyncIterator[Transport]:
    if target.kind == "grpc":
        async with grpc.aio.insecure_channel(target.address) as channel:
            yield GrpcTransport(pb_grpc.StreamGateServiceStub(channel))
    else:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            yield SseTransport(session, target)


class WorkerState:
    """A worker's link to the pool: how many of its streams are open, and the release signal."""

    def __init__(self, opened: Synchronized[int], release: MpEvent) -> None:
        self.opened = opened
        self.release = release

    def add(self, n: int) -> None:
        with self.opened.get_lock():
            self.opened.value += n


async def _released(state: WorkerState, limit_s: float) -> None:
    """Returns once the pool releases held streams (polled: it is another process's event; at most `limit_s`)."""
    deadline = time.monotonic() + limit_s
    while not state.release.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _one(transport: Transport, job: Job, index: int, result: Result, state: WorkerState, release: Any) -> None:
    await asyncio.sleep(max(0.0, job.start_at + job.ramp_s * index / job.streams - time.time()))
    await _stream(transport, job, Recorder(result, job.stop_after, job.max_tokens), job.expect_tokens, state, release)


def _window(job: Job) -> tuple[float, float]:
    """The job's window in this process's perf_counter time."""
    if job.window is None:
        return ALWAYS
    offset = time.perf_counter() - time.time()
    return job.start_at + job.window[0] + offset, job.start_at + job.window[1] + offset


async def _slot(transport: Transport, job: Job, index: int, result: Result, state: WorkerState, release: Any) -> None:
    """A closed-loop client: a new stream as soon as the last one ended, until the loop's end."""
    assert job.lengths is not None
    lengths = random.Random(job.seed * 1_000_003 + index)
    window = _window(job)
    end = job.start_at + job.loop_s
    await asyncio.sleep(max(0.0, job.start_at + job.ramp_s * index / job.streams - time.time()))
    while time.time() < end:
        tokens = lengths.randint(*job.lengths)
        errors = result.errors
        await _stream(transport, job, Recorder(result, job.stop_after, tokens, window), tokens, state, release)
        if result.errors > errors:
            await asyncio.sleep(FAILED_PAUSE_S)  # a failure may be at once: no busy loop of refusals


async def _stream(
    transport: Transport, job: Job, rec: Recorder, expect: int | None, state: WorkerState, release: Any
) -> None:
    result = rec.result
    result.streams += 1
    result.first_start = min(result.first_start, time.time())
    if job.trace:
        rec.trace(f"t{job.first}x{result.streams}")
    counted = False

    def opened() -> None:
        nonlocal counted
        counted = True
        state.add(1)

    task = asyncio.ensure_future(transport.stream(job, rec, opened))
    waiting = {task, release} if job.hold else {task}
    try:
        await asyncio.wait(waiting, timeout=job.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            outcome = task.result()
            if outcome == DONE:
                result.completed += 1
                if expect is not None and rec.tokens != expect:
                    result.error(f"{rec.tokens} tokens, expected {expect}")
        elif job.hold and release.done():
            outcome = HELD
        else:
            result.error(f"no end within {job.timeout_s:.0f} s ({rec.tokens} tokens)")
    except Exception as exc:  # any failure of one stream is counted, and the others go on
        result.error(f"{type(exc).__name__}: {exc}")
    except asyncio.CancelledError:
        result.dropped += 1  # the end of a closed loop: dropped open, not an error
        raise
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if counted:
            state.add(-1)
        result.chunks += rec.chunks
        result.tokens += rec.tokens
        result.busy_s += (rec.last or time.perf_counter()) - rec.t0
        result.last_end = max(result.last_end, time.time())
        if rec.times is not None:
            result.traces.append(rec.traced())


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_job(job: Job, state: WorkerState) -> Result:
    result = Result()
    release = asyncio.ensure_future(_released(state, job.timeout_s)) if job.hold else asyncio.Future[None]()
    # A full collection over the worker's heap (grpc, aiohttp, the protos) took 12-45 ms, and a
    # stream that started then had that much added to its time to first token: the client's
    # pause, not the server's. What the worker holds before the job is left out of collections.
    gc.collect()
    gc.freeze()
    cpu = _own_cpu()
    window_cpu = asyncio.ensure_future(_window_cpu(job)) if job.window is not None else None
    try:
        async with open_transport(job.target) as transport:
            if job.loop_s:
                await _closed_loop(transport, job, result, state, release)
            else:
                shares = range(job.first, job.streams, job.stride)
                await asyncio.gather(*(_one(transport, job, i, result, state, release) for i in shares))
        if window_cpu is not None:
            result.window_cpu_s = await window_cpu
    finally:
        if window_cpu is not None:
            window_cpu.cancel()
        gc.unfreeze()
    release.cancel()
    result.cpu_s = _own_cpu() - cpu
    return result


async def _closed_loop(transport: Transport, job: Job, result: Result, state: WorkerState, release: Any) -> None:
    """This worker's slots until the loop's end; then the streams still open are dropped."""
    slots = [
        asyncio.ensure_future(_slot(transport, job, i, result, state, release))
        for i in range(job.first, job.streams, job.stride)
    ]
    try:
        await asyncio.wait(slots, timeout=max(0.0, job.start_at + job.loop_s - time.time()))
    finally:
        for slot in slots:
            slot.cancel()
        await asyncio.gather(*slots, return_exceptions=True)
    for slot in slots:  # a slot that failed outside its streams (a bug here) must not pass unseen
        if not slot.cancelled() and (exc := slot.exception()) is not None:
            result.error(f"client slot failed: {type(exc).__name__}: {exc}")


async def _window_cpu(job: Job) -> float:
    """This worker's CPU seconds over the job's window."""
    assert job.window is not None
    await asyncio.sleep(max(0.0, job.start_at + job.window[0] - time.time()))
    cpu = _own_cpu()
    await asyncio.sleep(max(0.0, job.start_at + job.window[1] - time.time()))
    return _own_cpu() - cpu


def worker_main(conn: Connection, opened: Synchronized[int], release: MpEvent) -> None:
    """A client worker: run each job received on `conn` on one event loop, send back its `Result`.

    Ctrl-C is the parent's to handle: it stops the workers (None on `conn`, then SIGKILL if busy).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_fd_limit()
    loop = new_event_loop()
    state = WorkerState(opened, release)
    try:
        while (job := conn.recv()) is not None:
            conn.send(loop.run_until_complete(run_job(job, state)))
    except EOFError:
        pass
    finally:
        loop.close()


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    opened: Synchronized[int]


def closed_loop_sse(job: Job) -> bool:
    """A closed-loop SSE job (the steady shape), untraced: what `ClientPool`'s `closed_loop` takes."""
    return job.target.kind == "sse" and bool(job.loop_s) and job.lengths is not None and not job.trace


class ClientPool:
    """`size` client worker processes, started once; `run(job)` splits a job between them. With
    `closed_loop` (benchmarks.sgload's Go clients), the jobs it runs (closed-loop SSE) go to it."""

    def __init__(self, size: int, closed_loop: Callable[[Job], Awaitable[Result]] | None = None) -> None:
        self.closed_loop = closed_loop
        ctx = mp.get_context("spawn")
        self._release = ctx.Event()
        self._workers: list[_Worker] = []
        for _ in range(size):
            parent, child = ctx.Pipe()
            opened = ctx.Value("i", 0)
            process = ctx.Process(target=worker_main, args=(child, opened, self._release), daemon=True)
            process.start()
            child.close()
            self._workers.append(_Worker(process, parent, opened))

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers if worker.process.pid is not None]

    def open_streams(self) -> int:
        return sum(worker.opened.value for worker in self._workers)

    def release(self) -> None:
        """Let the held streams of the running job go."""
        self._release.set()

    async def run(self, job: Job, per_worker: int = 200, lead_s: float = 0.5) -> Result:
        """Run `job` on ceil(streams / per_worker) workers (at most all), starting `lead_s` from now
        (or at the job's own `start_at`, when it has one)."""
        start_at = job.start_at or time.time() + lead_s
        if self.closed_loop is not None and closed_loop_sse(job):
            return await self.closed_loop(replace(job, start_at=start_at))
        count = max(1, min(self.size, math.ceil(job.streams / per_worker)))
        self._release.clear()
        limit = max(0.0, start_at - time.time()) + job.ramp_s + job.loop_s + job.timeout_s + 30
        workers = self._workers[:count]
        for k, worker in enumerate(workers):
            worker.conn.send(replace(job, start_at=start_at, first=k, stride=count))
        results = await asyncio.gather(*(asyncio.to_thread(self._receive, w, limit) for w in workers))
        merged = Result()
        for part in results:
            merged = merged.merge(part)
        return merged

    @staticmethod
    def _receive(worker: _Worker, limit: float) -> Result:
        if not worker.conn.poll(limit):
            raise TimeoutError(f"a client worker did not answer within {limit:.0f} s")
        result: Result = worker.conn.recv()
        return result

    def close(self) -> None:
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
        for worker in self._workers:
            worker.process.join(timeout=3)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=3)
