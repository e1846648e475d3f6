"""The benchmark suite: streamgate beside the raw transports and the LiteLLM proxy, in one table.

    .venv/bin/python -m benchmarks.run            # full run, about 12 minutes
    .venv/bin/python -m benchmarks.run --phases steady --quick   # the steady shape alone, under 2 minutes
    .venv/bin/python -m benchmarks.run --quick    # about 2 minutes
    .venv/bin/python benchmarks/run.py --quick --systems streamgate,raw-sse

Starts its own processes on 127.0.0.1 (the fake upstream, restarted with each pace, every system,
client workers), measures each shape against each system, prints one table and the targets of issue 7,
and saves them with a description of the machine to benchmarks/results/latest.md (and a timestamped
copy). Progress goes to stderr. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import dataclasses
import math
import signal
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

from benchmarks import report, sgload, shapes
from benchmarks.load import ClientPool
from benchmarks.procs import free_port, kill_all, raise_fd_limit
from benchmarks.proxy_install import ensure_litellm_proxy
from benchmarks.report import Run, SystemResults
from benchmarks.shapes import Settings, log
from benchmarks.systems import (
    ALL,
    PEERS,
    STREAMGATE,
    Deployment,
    Pace,
    System,
    Upstream,
    start_upstream,
    streamgate_with,
)

T = TypeVar("T")
#: Seconds freshly started systems are left alone before their idle resident memory is read.
STARTED_SETTLE_S = 2.0


def one_line(exc: BaseException) -> str:
    """An error for a notes line: its type, its first and last lines (a process's output can be long)."""
    lines = str(exc).strip().splitlines() or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    return f"{type(exc).__name__}: {text}"


@dataclass
class Bench:
    settings: Settings
    systems: list[System]
    pool: ClientPool
    session: aiohttp.ClientSession
    workdir: Path
    run: Run
    started: float
    #: sgload (Go): the upstream, and the steady shape's SSE clients; None: the Python ones.
    go: Path | None = None

    def results(self, key: str) -> SystemResults:
        return self.run.results[key]

    def say(self, message: str) -> None:
        log(f"[{time.monotonic() - self.started:6.1f} s] {message}")

    async def guarded(self, key: str, what: str, measurement: Awaitable[T]) -> T | None:
        """Run one measurement; a failure is recorded against the system and the run goes on."""
        try:
            return await measurement
        except Exception as exc:
            self.results(key).problems.append(f"{what} failed: {one_line(exc)}")
            self.say(f"{key}: {what} failed: {type(exc).__name__}: {exc}")
            return None


class Environment:
    """The upstream on one port and every system in front of it.

    The gateways keep the upstream's URL: for each pace the upstream is restarted on the same port,
    and the raw servers (which pace their own tokens) are started anew; `fresh` starts every system
    anew. Only the systems that run in the phase are deployed (the others are stopped). A system that
    fails to start is recorded and left out.
    """

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.port = free_port()
        self.upstream: Upstream | None = None
        self.deployments: dict[str, Deployment] = {}
        self.failed: set[str] = set()

    async def use(self, phase: str, pace: Pace, fresh: bool = False) -> tuple[Upstream, dict[str, Deployment]]:
        bench = self.bench
        bench.say(f"upstream and {'fresh ' if fresh else ''}systems for {phase}: {pace}")
        if self.upstream is not None:
            await self.upstream.server.stop()
        self.upstream = await start_upstream(pace, bench.session, self.port, go=bench.go)
        inside = {s.key for s in bench.systems if s.runs_in(phase)}
        stale = [
            key
            for key, deployment in self.deployments.items()
            if fresh or not deployment.uses_upstream or key not in inside
        ]
        await asyncio.gather(*(self.deployments.pop(key).stop() for key in stale))
        wanted = [
            s for s in bench.systems if s.key in inside and s.key not in self.deployments and s.key not in self.failed
        ]
        outcomes = await asyncio.gather(
            *(system.deploy(pace, self.upstream, bench.workdir) for system in wanted), return_exceptions=True
        )
        for system, outcome in zip(wanted, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self.failed.add(system.key)
                bench.results(system.key).problems.append(f"did not start: {one_line(outcome)}")
                bench.say(f"{system.key} did not start: {outcome}")
            else:
                self.deployments[system.key] = outcome
        return self.upstream, {s.key: self.deployments[s.key] for s in bench.systems if s.key in self.deployments}

    async def close(self) -> None:
        servers = [d.stop() for d in self.deployments.values()]
        if self.upstream is not None:
            servers.append(self.upstream.server.stop())
        await asyncio.gather(*servers, return_exceptions=True)


async def idle(bench: Bench, env: Environment) -> None:
    """Memory per open stream, on fresh processes (a heap grown by earlier shapes would hide it); last,
    since a system may keep upstream requests open after its clients left."""
    s = bench.settings
    upstream, deployments = await env.use(
        "idle", Pace(tokens=10, first_token_delay=s.idle_first_token_delay), fresh=True
    )
    for key, deployment in deployments.items():
        memory = await bench.guarded(key, "idle streams", shapes.idle_memory(deployment, upstream, bench.pool, s))
        bench.results(key).memory = memory
        if memory is not None:
            bench.say(f"{key} idle ×{memory.streams}: {memory.per_stream_total / 1024:.1f} KiB per stream")


async def unpaced(bench: Bench, env: Environment) -> None:
    s = bench.settings
    upstream, deployments = await env.use("unpaced", Pace(tokens=max(s.single_tokens, s.concurrent_tokens)))
    for key, deployment in deployments.items():
        results = bench.results(key)
        results.single = await bench.guarded(
            key, "1 unpaced stream", shapes.single_stream(deployment, upstream, bench.pool, s)
        )
        results.concurrent = await bench.guarded(
            key, "concurrent unpaced streams", shapes.concurrent_streams(deployment, upstream, bench.pool, s)
        )
        for name, t in (("1 stream", results.single), ("concurrent", results.concurrent)):
            if t is not None:
                bench.say(
                    f"{key} {name}: {t.tokens_per_s:,.0f} tokens/s, server {t.server_total_us:.0f} µs/token, "
                    f"client {t.client_us:.0f} µs/token, {t.errors} errors"
                )


async def _step(bench: Bench, key: str, deployment: Deployment, upstream: Upstream, streams: int) -> bool:
    """One paced step of one system, recorded; True when it was held."""
    s = bench.settings
    step = await bench.guarded(
        key, f"paced ×{streams}", shapes.paced_step(deployment, upstream, bench.pool, streams, s)
    )
    if step is None:
        return False
    bench.results(key).paced.append(step)
    p50, p99 = step.gap_ms
    bench.say(
        f"{key} paced ×{streams}: gap p50 {p50:.1f} / p99 {p99:.1f} ms, TTFT p99 {step.ttft_ms[1]:.1f} ms, "
        f"{step.result.errors} errors"
    )
    return step.held(s.gap_limit_s)


async def _baseline(bench: Bench, upstream: Upstream, streams: int) -> None:
    """The upstream read directly at this concurrency: its own time to first token, which the gateways add to."""
    try:
        baseline = await shapes.paced_step(None, upstream, bench.pool, streams, bench.settings)
    except Exception as exc:
        bench.run.problems.append(f"the upstream alone at ×{streams} failed: {one_line(exc)}")
        return
    bench.run.baseline[streams] = baseline
    p50, p99 = baseline.ttft_ms
    bench.say(f"upstream alone ×{streams}: TTFT p50 / p99 {p50:.1f} / {p99:.1f} ms, {baseline.result.errors} errors")


async def paced(bench: Bench, env: Environment) -> None:
    """Clients that leave mid-stream, then paced streams at rising concurrency until a system fails a step."""
    s = bench.settings
    upstream, deployments = await env.use("paced", Pace(tokens=s.paced_tokens, delay=s.pace_s))
    for key, deployment in deployments.items():
        if deployment.uses_upstream:
            leave = await bench.guarded(key, "clients leave", shapes.clients_leave(deployment, upstream, bench.pool, s))
            bench.results(key).leave = leave
            if leave is not None:
                bench.say(
                    f"{key} clients leave: {leave.started_after} started after, idle after {leave.idle_after_s} s"
                )
    alive = dict(deployments)
    held: dict[str, int] = {key: 0 for key in deployments}
    for streams in s.paced_steps:
        if not alive:
            break
        await _baseline(bench, upstream, streams)
        for key, deployment in list(alive.items()):
            if await _step(bench, key, deployment, upstream, streams):
                held[key] = streams
                continue
            del alive[key]
            if streams == s.paced_steps[0]:  # failed the first step: find a lower level it holds
                for lower in (streams // 2, streams // 5):
                    if await _step(bench, key, deployment, upstream, lower):
                        held[key] = lower
                        break
            await _refine(bench, key, deployment, upstream, held[key], streams)


async def _refine(bench: Bench, key: str, deployment: Deployment, upstream: Upstream, held: int, failed: int) -> None:
    """Between the level a system held and the one it failed: halve the interval until it is within
    20% of what it held (3 steps at most), so that a capacity, and a ratio of two, is known closely."""
    for _ in range(3):
        if held == 0 or failed - held <= max(1, held // 5):
            return
        middle = (held + failed) // 2
        if middle not in bench.run.baseline:
            await _baseline(bench, upstream, middle)
        if await _step(bench, key, deployment, upstream, middle):
            held = middle
        else:
            failed = middle


async def _steady_step(bench: Bench, key: str, deployment: Deployment, upstream: Upstream, streams: int) -> None:
    step = await bench.guarded(
        key, f"steady ×{streams}", shapes.steady_step(deployment, upstream, bench.pool, streams, bench.settings)
    )
    if step is not None:
        bench.results(key).steady.append(step)
        bench.say(f"{key} steady ×{streams}: {shapes.describe_steady(step)}")


async def steady(bench: Bench, env: Environment) -> None:
    """Streams that keep opening and closing (issue 17): at each step, the upstream read directly,
    then every system; the peers (the LiteLLM proxy, plain and with LITELLM_RUST=true) at their own,
    lower steps, one after the other at each. On fresh processes, whose resident memory is read first, idle."""
    s = bench.settings
    pace = Pace(tokens=s.steady_lengths[1], delay=s.pace_s, first_token_delay=s.steady_first_token_delay)
    upstream, deployments = await env.use("steady", pace, fresh=True)
    peers = {system.key for system in PEERS}
    await asyncio.sleep(STARTED_SETTLE_S)
    for key, deployment in deployments.items():
        bench.results(key).started_rss = deployment.rss()
    for streams in s.steady_steps:
        try:
            baseline = await shapes.steady_step(None, upstream, bench.pool, streams, s)
        except Exception as exc:
            bench.run.problems.append(f"the upstream alone, steady ×{streams}, failed: {one_line(exc)}")
        else:
            bench.run.steady_baseline[streams] = baseline
            bench.say(f"upstream alone steady ×{streams}: {shapes.describe_steady(baseline)}")
        for key, deployment in deployments.items():
            if key not in peers:
                await _steady_step(bench, key, deployment, upstream, streams)
    for streams in s.steady_peer_steps:
        for key, deployment in deployments.items():
            if key in peers:
                await _steady_step(bench, key, deployment, upstream, streams)


def _systems(args: argparse.Namespace, run: Run) -> list[System]:
    chosen = [system for system in ALL if system.key in args.systems.split(",")]
    chosen = [streamgate_with(args.workers, args.link) if system.key == STREAMGATE.key else system for system in chosen]
    if peers := [system for system in chosen if system in PEERS]:
        availability = ensure_litellm_proxy()
        if not availability.ok:
            for peer in peers:
                run.unavailable[peer.key] = availability.reason
                chosen.remove(peer)
    for system in ALL:
        if system not in chosen and system.key not in run.unavailable:
            run.unavailable[system.key] = "not selected (--systems)"
    return chosen


PHASES = {"unpaced": unpaced, "paced": paced, "steady": steady, "idle": idle}


async def bench_all(
    settings: Settings, systems: list[System], run: Run, phases: list[str], go: Path | None = None
) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    for system in systems:
        run.results[system.key] = SystemResults(uses_upstream=system.uses_upstream)
    closed_loop = sgload.GoClients(go).run if go is not None else None
    pool = ClientPool(max(2, math.ceil(max(*settings.paced_steps, settings.idle_streams) / 200)), closed_loop)
    try:
        with tempfile.TemporaryDirectory(prefix="streamgate-bench-") as workdir:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                bench = Bench(settings, systems, pool, session, Path(workdir), run, time.monotonic(), go)
                env = Environment(bench)
                try:
                    for phase in phases:
                        await PHASES[phase](bench, env)
                finally:
                    await env.close()
    finally:
        pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and streams: about 2 minutes")
    parser.add_argument(
        "--systems",
        default=",".join(system.key for system in ALL),
        help="comma-separated systems to run (default: all): " + ", ".join(system.key for system in ALL),
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="comma-separated phases to run (default: all): " + ", ".join(PHASES),
    )
    parser.add_argument(
        "--paced-steps", help="comma-separated paced concurrencies to try, e.g. 300,400,500 (default: the mode's)"
    )
    parser.add_argument(
        "--steady-steps", help="comma-separated steady concurrencies to try, e.g. 200,300,400 (default: the mode's)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="streamgate as `streamgate serve --workers N` (N core and N bridge processes; default 1: one of each)",
    )
    parser.add_argument(
        "--link",
        choices=("socket", "grpc"),
        default="socket",
        help="how streamgate's bridge reaches its core: socket (a Unix socket, as serve does; default) or grpc"
        " (the Relay call, as between machines); a run with grpc is printed, not saved",
    )
    parser.add_argument(
        "--load",
        choices=("python", "go"),
        default="python",
        help="the load generator: python (streamgate.testing.upstream and benchmarks.load's clients; default)"
        " or go (sgload, benchmarks/loadgen: the upstream, and the steady shape's SSE clients, at a quarter"
        " of the CPU a token; gRPC and the other shapes keep the Python clients)",
    )
    parser.add_argument("--no-save", action="store_true", help="print only; do not write benchmarks/results/")
    args = parser.parse_args()
    phases = args.phases.split(",")
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    raise_fd_limit()
    started = time.monotonic()
    mode = "quick" if args.quick else "full"
    settings = shapes.QUICK if args.quick else shapes.FULL
    if args.paced_steps:
        settings = dataclasses.replace(settings, paced_steps=tuple(int(n) for n in args.paced_steps.split(",")))
    if args.steady_steps:
        settings = dataclasses.replace(settings, steady_steps=tuple(int(n) for n in args.steady_steps.split(",")))
    if args.workers > 1:
        mode += f", streamgate --workers {args.workers}"
    if args.link != "socket":
        mode += f", streamgate's link over {args.link}"
    go = None
    if args.load == "go":
        if (go := sgload.find_sgload()) is None:
            parser.error("--load go: sgload is not built and there is no Go to build it")
        mode += ", load: sgload (Go upstream; Go SSE clients in the steady shape)"
    changed = args.workers > 1 or args.link != "socket" or args.load != "python"
    if args.paced_steps or args.steady_steps or phases != list(PHASES) or changed:
        args.no_save = True  # a partial run is not the suite's result
        mode += " (partial)"
    run = Run(settings, mode, {})
    try:
        systems = _systems(args, run)
        asyncio.run(bench_all(run.settings, systems, run, phases, go))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted: every process stopped")
        return 130
    finally:
        kill_all()
    run.wall_s = time.monotonic() - started
    text = report.render(run)
    print(text)
    if not args.no_save:
        latest, stamped = report.save(text, mode)
        log(f"saved {latest} and {stamped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
