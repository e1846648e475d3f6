"""Scaling with workers: the steady shape at rising concurrency, streamgate with 1 worker and with N.

    .venv/bin/python -m benchmarks.device_scale                 # a many-core machine: about 6-8 minutes
    .venv/bin/python -m benchmarks.device_scale --small         # a small machine (2 cores): about 2 minutes
    .venv/bin/python -m benchmarks.device_scale --workers 1,2 --streams 200,400   # 1 vs 2, one run

For each worker count (default: 1, then one for every two CPUs as `--workers auto` starts; `streamgate
serve --workers N`, N cores and N bridges), the steady shape (closed-loop client slots that open a new
stream as theirs ends; first token 200 ms after the request, 50-150 tokens 50 ms apart) runs at rising
concurrency until a step fails (p99 gap between chunks 100 ms or more, or an error); "held" is the
highest step that passed.
Scaling efficiency = held(N) / (N x held(1)), N the core processes.

Everything runs on this machine, the load included: the fake upstream, the clients, and the gateway.
The load is `sgload` (benchmarks/loadgen, Go) where it can be had: the same upstream and the same
closed-loop clients as benchmarks.load at a few µs of CPU a token, where the Python ones cost about
100 µs a token each, as much as the gateway; with them (`--load python`: several upstream processes
sharing one port, several client processes) the load generator takes most of the machine's CPUs
before the gateway runs out. Nothing is downloaded: it needs the repository's .venv (Python 3.11 and
the packages of `scripts/setup`), carried along to the machine that runs it. Results are printed as
a table and written to benchmarks/results/scale-<time>.md unless --no-save.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import dataclasses
import functools
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import aiohttp

from benchmarks import procs, sgload, shapes
from benchmarks.load import ClientPool
from benchmarks.shapes import Cpu, Settings, SteadyStep, log, steady_job, wait_upstream_idle
from benchmarks.systems import Pace, Upstream, deploy_streamgate

T = TypeVar("T")
RESULTS = Path(__file__).resolve().parent / "results"


def _workers(text: str) -> tuple[int, int]:
    """`N` (N cores, N bridges) or `NxM` (N cores, M bridges)."""
    cores, _, bridges = text.partition("x")
    return int(cores), int(bridges or cores)


@dataclasses.dataclass(frozen=True)
class Plan:
    #: (core processes, bridges) of each run.
    workers: tuple[tuple[int, int], ...]
    #: Concurrency steps by worker count: one list for 1 worker, one for the others.
    steps_one: tuple[int, ...]
    steps_many: tuple[int, ...]
    upstreams: int
    clients: int
    settings: Settings
    #: The Go load generator's binary, or None for the Python upstream and clients.
    sgload: Path | None = None
    #: Run every step, also past the first that failed (to compare worker counts step by step).
    keep_going: bool = False


def plan(args: argparse.Namespace) -> Plan:
    cpus = os.cpu_count() or 1
    small = args.small
    counts = args.workers.split(",") if args.workers else ["1", "2" if small else str(max(2, cpus // 2))]
    workers = tuple(_workers(w) for w in counts)
    steps_one = (100, 200, 300) if small else (250, 500, 750, 1000)
    steps_many = (200, 400) if small else (1000, 2000, 3000, 4000, 5000, 6000)
    if args.streams:
        steps_one = steps_many = tuple(int(n) for n in args.streams.split(","))
    settings = dataclasses.replace(shapes.FULL, steady_ramp_s=2.0 if small else 3.0, steady_run_s=5.0 if small else 8.0)
    go = sgload.find_sgload() if args.load != "python" else None
    if args.load == "go" and go is None:
        raise SystemExit(
            f"--load go: no {sgload.SGLOAD} and no Go to build it (benchmarks/device_scale.sh pack builds it)"
        )
    return Plan(
        workers=workers,
        steps_one=steps_one,
        steps_many=steps_many,
        upstreams=args.upstreams or max(1, cpus // 4),
        clients=args.clients or max(2, cpus // 4),
        settings=settings,
        keep_going=args.keep_going,
        sgload=go,
    )


# -- the upstream: several processes on one port ---------------------------------------------------


def upstream_main(argv: list[str]) -> None:
    """`device_scale upstream --procs N ...`: the fake upstream, N processes sharing the port."""

    from aiohttp import web

    procs_count = int(argv[argv.index("--procs") + 1])
    rest = [a for i, a in enumerate(argv) if a != "--procs" and (i == 0 or argv[i - 1] != "--procs")]
    # Every process binds the port with SO_REUSEPORT (the kernel spreads the connections over them).
    web.TCPSite = functools.partial(web.TCPSite, reuse_port=True)  # type: ignore[misc]
    children = [
        subprocess.Popen([sys.executable, "-m", "benchmarks.device_scale", "upstream", "--procs", "1", *rest])
        for _ in range(procs_count - 1)
    ]
    sys.argv = ["upstream", *rest]
    try:
        from streamgate.testing.upstream import main as run

        run()
    finally:
        for child in children:
            child.terminate()


async def start_upstream(pace: Pace, session: aiohttp.ClientSession, plan: Plan) -> Upstream:
    port = procs.free_port()
    if plan.sgload is not None:
        argv = sgload.upstream_argv(plan.sgload, port, pace)
    else:
        argv = [sys.executable, "-m", "benchmarks.device_scale", "upstream", "--procs", str(plan.upstreams)]
        argv += ["--port", str(port), *pace.argv()]
    return Upstream(await procs.start("upstream", argv, r"upstream listening on (\S+)"), session)


# -- one step ----------------------------------------------------------------------------------------


async def _at(moment: float, read: Callable[[], T]) -> T:
    await asyncio.sleep(max(0.0, moment - time.time()))
    return read()


async def step(deployment: object, upstream: Upstream, pool: ClientPool, streams: int, plan: Plan) -> SteadyStep:
    """`shapes.steady_step`, from all the client processes (it uses two)."""
    s = plan.settings
    await wait_upstream_idle(upstream)
    await asyncio.sleep(0.3)
    job = steady_job(deployment.target, streams, s, time.time() + 0.5)  # type: ignore[attr-defined]
    assert job.window is not None
    window = job.window

    def read() -> tuple[dict[str, float], float]:
        return deployment.cpu(), upstream.server.cpu()  # type: ignore[attr-defined]

    first = asyncio.ensure_future(_at(job.start_at + window[0], read))
    last = asyncio.ensure_future(_at(job.start_at + window[1], read))
    try:
        result = await pool.run(job, per_worker=math.ceil(streams / plan.clients))
        (server0, upstream0), (server1, upstream1) = await first, await last
    finally:
        first.cancel()
        last.cancel()
    cpu = Cpu(
        server={name: server1[name] - server0[name] for name in server0},
        upstream=upstream1 - upstream0,
        client=result.window_cpu_s,
        wall_s=window[1] - window[0],
    )
    return SteadyStep(streams, result, s.steady_first_token_delay, window[1] - window[0], cpu)


@dataclasses.dataclass
class Outcome:
    workers: tuple[int, int]
    steps: list[SteadyStep]
    held: int
    load: tuple[float, float, float]


async def measure(plan: Plan) -> list[Outcome]:
    s = plan.settings
    pace = Pace(tokens=s.steady_lengths[1], delay=s.pace_s, first_token_delay=s.steady_first_token_delay)
    outcomes = []
    closed_loop = sgload.GoClients(plan.sgload).run if plan.sgload is not None else None
    pool = ClientPool(plan.clients if closed_loop is None else 0, closed_loop)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            upstream = await start_upstream(pace, session, plan)
            try:
                with tempfile.TemporaryDirectory(prefix="streamgate-scale-") as workdir:
                    for workers in plan.workers:
                        cores, bridges = workers
                        deployment = await deploy_streamgate(
                            pace, upstream, Path(workdir), workers=cores, bridges=bridges
                        )
                        steps: list[SteadyStep] = []
                        held = 0
                        try:
                            await asyncio.sleep(2.0)
                            for streams in plan.steps_one if workers == (1, 1) else plan.steps_many:
                                done = await step(deployment, upstream, pool, streams, plan)
                                steps.append(done)
                                log(
                                    f"workers {cores}x{bridges} ×{streams}: {shapes.describe_steady(done)};"
                                    f" CPUs busy (server / upstream / clients) {_busy(done)}"
                                )
                                if not done.held(s.gap_limit_s):
                                    if not plan.keep_going:
                                        break
                                elif all(st.held(s.gap_limit_s) for st in steps):
                                    held = streams
                            load = os.getloadavg()
                        finally:
                            await deployment.stop()
                        outcomes.append(Outcome(workers, steps, held, load))
            finally:
                await upstream.server.stop()
    finally:
        pool.close()
    return outcomes


def _busy(st: SteadyStep) -> str:
    """CPUs kept busy over the window by the server, the upstream and the clients: a load generator
    near its processes' count is what saturated, not the server."""
    cpu = st.cpu
    if cpu is None:
        return "—"
    return f"{cpu.cores(cpu.server_total):.1f} / {cpu.cores(cpu.upstream):.1f} / {cpu.cores(cpu.client):.1f}"


def _load(plan: Plan) -> str:
    if plan.sgload is not None:
        return "sgload (Go): one upstream process and one client process"
    return f"Python: {plan.clients} client processes, {plan.upstreams} upstream process(es)"


def render(plan: Plan, outcomes: list[Outcome]) -> str:
    cpus = os.cpu_count()
    one = next((o.held for o in outcomes if o.workers == (1, 1)), 0)
    lines = [
        f"# streamgate workers: the steady shape at rising concurrency ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {cpus} CPUs; load generator on the same machine: {_load(plan)}."
        f" Held: p99 gap < {plan.settings.gap_limit_s * 1e3:.0f} ms,"
        " no errors. Efficiency: held(N) / (N x held(1)).",
        "",
        "| workers: cores x bridges | held | efficiency"
        " | step: gap p50 / p99 ms, added TTFT p99 ms, server µs/token, errors;"
        " CPUs busy: server / upstream / clients | load average at the end |",
        "| ---: | ---: | ---: | --- | --- |",
    ]
    for o in outcomes:
        cores, bridges = o.workers
        eff = f"{o.held / (cores * one):.0%}" if one and o.workers != (1, 1) else "—"
        cells = "; ".join(
            f"×{st.streams}: {st.gap_ms[0]:.0f} / {st.gap_ms[1]:.0f}, {st.added_ttft_ms[1]:.0f},"
            f" {st.server_us_per_token:.0f}, {st.result.errors}; {_busy(st)}"
            for st in o.steps
        )
        lines.append(f"| {cores}x{bridges} | {o.held} | {eff} | {cells} | {' '.join(f'{x:.1f}' for x in o.load)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if sys.argv[1:2] == ["upstream"]:
        upstream_main(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small steps for a 2-core machine (about 2 minutes)")
    parser.add_argument(
        "--workers",
        help="comma-separated worker counts, N (N cores and N bridges) or NxM (N cores, M bridges);"
        " default: 1 and one for every two CPUs (--small: 1,2)",
    )
    parser.add_argument("--streams", help="comma-separated concurrency steps for every worker count")
    parser.add_argument("--upstreams", type=int, default=0, help="Python fake upstream processes (default: CPUs / 4)")
    parser.add_argument(
        "--clients", type=int, default=0, help="Python client worker processes (default: CPUs / 4, 2 at least)"
    )
    parser.add_argument(
        "--load",
        choices=("auto", "go", "python"),
        default="auto",
        help="the load generator: sgload (Go) or benchmarks.load's Python clients and upstream"
        " (default: sgload when it is built or Go is here)",
    )
    parser.add_argument("--keep-going", action="store_true", help="run every step, also past the first that failed")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    procs.raise_fd_limit()
    chosen = plan(args)
    started = time.monotonic()
    try:
        outcomes = asyncio.run(measure(chosen))
    except KeyboardInterrupt:
        return 130
    finally:
        procs.kill_all()
    text = render(chosen, outcomes) + f"\nWall time: {time.monotonic() - started:.0f} s.\n"
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"scale-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.md"
        path.write_text(text)
        log(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
