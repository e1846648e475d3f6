"""Where a stream's wall time goes under the steady shape: each token followed through every process.

    .venv/bin/python -m benchmarks.trace --streams 300
    .venv/bin/python -m benchmarks.trace --streams 300 --py-spy /tmp/spy/bin/py-spy --out /tmp/trace

Starts the fake upstream and streamgate's core and bridge through `benchmarks.trace_hooks` (time
stamps at each hop, the loop's lag, garbage collections), runs the steady shape of the suite at
`--streams` closed-loop slots with every stream named, and prints, for the measured window:

- the time to first token cut into hops (client → bridge → link → core → upstream → 200 ms → core →
  link → bridge → client), p50 / p99 / max of each over the streams started in the window;
- the same for every later token (upstream write → core read → link writer → bridge → SSE write →
  client), which is where an inter-chunk gap comes from;
- the event loop's lag and the garbage collections of each process;
- the slowest stream: the hops of its slowest first token and of its largest gap, and what each
  process's loop and collector did meanwhile;
- with `--py-spy PATH` (py-spy is not a dependency: `pip install py-spy` in a venv of its own),
  a profile of the core and the bridge over the window (raw collapsed stacks in `--out`, and the top
  functions by own and total share of the samples).

The hooks cost a little CPU per token in every process: compare figures with a suite run, not with
each other across tools.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import bisect
import dataclasses
import itertools
import json
import math
import os
import re
import signal
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import aiohttp

from benchmarks import shapes
from benchmarks.load import ClientPool, Job, Target, percentile
from benchmarks.procs import ROOT, free_port, kill_all, machine_busy_seconds, raise_fd_limit, sched_seconds
from benchmarks.systems import PYTHON, Launch, Pace, deploy_streamgate, start_upstream

ROLES = ("upstream", "core", "bridge")
#: First-token hops: (label, event before, event after); `c_req`/`c_tok` are the client's own times.
FIRST_HOPS = (
    ("client → bridge (request read)", "c_req", "b_open"),
    ("bridge: open queued on the link", "b_open", "b_send"),
    ("link → core (command read)", "b_send", "k_cmd"),
    ("core: admitted", "k_cmd", "k_admit"),
    ("core: upstream request sent", "k_admit", "k_post"),
    ("→ upstream (request received)", "k_post", "u_in"),
    ("upstream's own first-token delay", "u_in", "u_tok"),
    ("upstream → core (delta read)", "u_tok", "k_delta"),
    ("core: outbox → link writer", "k_delta", "k_take"),
    ("link → bridge (frame read)", "k_take", "b_recv"),
    ("bridge: SSE frame built", "b_recv", "b_write"),
    ("bridge → client (chunk read)", "b_write", "c_tok"),
)
#: The hops of every later token.
TOKEN_HOPS = FIRST_HOPS[-5:]


@dataclass
class Stream:
    """One named stream: for each event, its (tokens, time) records in time order."""

    name: str
    requested: float
    events: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))

    def at(self, event: str, tokens: int = 0) -> float | None:
        """When `event` first covered `tokens` tokens; an event of the stream's start (no tokens), its first record."""
        records = self.events.get(event)
        if not records:
            return None
        if tokens <= 0 or records[0][0] == 0:
            return records[0][1]
        i = bisect.bisect_left(records, (tokens, -1.0))
        return records[i][1] if i < len(records) else None


@dataclass
class Dump:
    records: list[tuple[str, str | int, int, float]]
    lags: list[tuple[float, float]]
    collections: list[tuple[float, int, float]]


def hooked(out: Path) -> Launch:
    """The launch of benchmarks.systems that runs each server process through the hooks."""

    def launch(role: str, args: list[str]) -> list[str]:
        return [PYTHON, "-m", "benchmarks.trace_hooks", role, str(out), "--", *args]

    return launch


def streams_of(dumps: dict[str, Dump], traces: list[tuple[str, float, list[tuple[float, int]]]]) -> dict[str, Stream]:
    """Every process's records joined by stream name (link stream ids mapped to names)."""
    found = {name: Stream(name, requested) for name, requested, _ in traces}
    for name, _, chunks in traces:
        found[name].events["c_req"].append((0, found[name].requested))
        found[name].events["c_tok"].extend((tokens, t) for t, tokens in chunks)
    for dump in dumps.values():
        by_id: dict[int, str] = {}
        for event, key, tokens, _ in dump.records:
            if event in ("k_name_of", "b_name_of"):
                by_id[tokens] = str(key)
        for event, key, tokens, t in dump.records:
            if event.endswith("_name_of"):
                continue
            owner = by_id.get(key) if isinstance(key, int) else key
            stream = found.get(owner) if owner is not None else None
            if stream is not None:
                stream.events[event].append((tokens, t))
    for stream in found.values():
        for records in stream.events.values():
            records.sort()
    return found


def _row(label: str, values: list[float]) -> str:
    if not values:
        return f"| {label} | — | — | — | 0 |"
    p50, p99 = percentile(values, 50) * 1e3, percentile(values, 99) * 1e3
    return f"| {label} | {p50:.1f} | {p99:.1f} | {max(values) * 1e3:.1f} | {len(values)} |"


def hop_table(title: str, hops: tuple[tuple[str, str, str], ...], samples: list[tuple[Stream, int]]) -> list[str]:
    """p50 / p99 / max ms of each hop over (stream, token) samples."""
    lines = [f"| {title} | p50 ms | p99 ms | max ms | n |", "| --- | ---: | ---: | ---: | ---: |"]
    for label, before, after in hops:
        values = []
        for stream, tokens in samples:
            t0, t1 = stream.at(before, tokens), stream.at(after, tokens)
            if t0 is not None and t1 is not None:
                values.append(t1 - t0)
        lines.append(_row(label, values))
    return lines


def loop_table(dumps: dict[str, Dump], lo: float, hi: float) -> list[str]:
    lines = [
        "| process | loop lag p50 / p99 / max ms | lags > 20 ms | collections (gen 0/1/2) | GC ms total / max |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for role, dump in dumps.items():
        lags = [lag for t, lag in dump.lags if lo <= t < hi]
        gcs = [(gen, took) for t, gen, took in dump.collections if lo <= t < hi]
        by_gen = Counter(gen for gen, _ in gcs)
        lag = (
            f"{percentile(lags, 50) * 1e3:.1f} / {percentile(lags, 99) * 1e3:.1f} / {max(lags) * 1e3:.1f}"
            if lags
            else "—"
        )
        gc_ms = f"{sum(t for _, t in gcs) * 1e3:.0f} / {max((t for _, t in gcs), default=0) * 1e3:.1f}"
        counts = "/".join(str(by_gen.get(g, 0)) for g in range(3))
        lines.append(f"| {role} | {lag} | {sum(1 for x in lags if x > 0.02)} | {counts} | {gc_ms} |")
    return lines


def link_table(dumps: dict[str, Dump], lo: float, hi: float, streams: int, tokens: int) -> list[str]:
    """Messages of the link (core → bridge): written by the core, read by the bridge, and how many were
    in between (written, not yet read: a backlog in gRPC's buffers), by 100 ms."""
    core, bridge = dumps.get("core"), dumps.get("bridge")
    if core is None or bridge is None:
        return []
    written = sorted((t, n) for event, _, n, t in core.records if event == "k_msg")
    read = sorted((t, n) for event, _, n, t in bridge.records if event == "b_read")
    if not written or not read:
        return ["(the link's messages were not recorded)"]
    written_at = [t for t, _ in written]
    read_at = [t for t, _ in read]
    backlog: list[float] = []
    rates: list[float] = []
    reads: list[float] = []
    t = lo
    while t < hi:
        backlog.append(bisect.bisect_right(written_at, t) - bisect.bisect_right(read_at, t))
        rates.append(bisect.bisect_left(written_at, t + 0.1) - bisect.bisect_left(written_at, t))
        reads.append(bisect.bisect_left(read_at, t + 0.1) - bisect.bisect_left(read_at, t))
        t += 0.1
    frames = [float(n) for t, n in written if lo <= t < hi]
    commands = sum(1 for event, _, _, t in core.records if event == "k_cmd" and lo <= t < hi)
    per_stream = len(frames) / max(streams, 1)
    per_token = len(frames) / max(tokens, 1) * 100
    return [
        f"Link messages core → bridge in the window: {len(frames)} ({len(frames) / (hi - lo):.0f}/s), "
        f"{per_stream:.1f} per stream started, {per_token:.1f} per 100 tokens; open commands read: {commands}.",
        "",
        "| link, core → bridge, per 100 ms | p50 | p99 | max |",
        "| --- | ---: | ---: | ---: |",
        f"| messages written by the core | {percentile(rates, 50):.0f} | {percentile(rates, 99):.0f} | {max(rates)} |",
        f"| messages read by the bridge | {percentile(reads, 50):.0f} | {percentile(reads, 99):.0f} | {max(reads)} |",
        f"| frames per message | {percentile(frames, 50):.0f} | {percentile(frames, 99):.0f} | {max(frames)} |",
        f"| messages written, not yet read | {percentile(backlog, 50):.0f} | {percentile(backlog, 99):.0f} "
        f"| {max(backlog)} |",
    ]


def _around(dumps: dict[str, Dump], t0: float, t1: float) -> str:
    """What each process's loop and collector did between t0 and t1."""
    parts = []
    for role, dump in dumps.items():
        lags = [lag for t, lag in dump.lags if t0 <= t <= t1 + 0.01]
        gcs = [(gen, took) for t, gen, took in dump.collections if t0 - 0.05 <= t <= t1]
        worst = max(lags, default=0.0) * 1e3
        gc_text = ", ".join(f"gen{gen} {took * 1e3:.1f} ms" for gen, took in gcs if took > 0.001) or "none > 1 ms"
        parts.append(f"{role}: worst loop lag {worst:.1f} ms, collections {gc_text}")
    return "; ".join(parts)


def slowest(streams: list[Stream], dumps: dict[str, Dump], lo: float, hi: float) -> list[str]:
    """The stream with the slowest first token, and the one with the largest gap: their hops."""
    lines: list[str] = []
    first = [(t - s.requested, s) for s in streams if (t := s.at("c_tok", 1)) is not None]
    if first:
        ttft, stream = max(first, key=lambda x: x[0])
        lines.append(f"Slowest first token: stream {stream.name}, {ttft * 1e3:.0f} ms after its request:")
        for label, before, after in FIRST_HOPS:
            t0, t1 = stream.at(before, 1), stream.at(after, 1)
            took = "—" if t0 is None or t1 is None else f"{(t1 - t0) * 1e3:.1f} ms"
            lines.append(f"- {label}: {took}")
        lines.append(f"- meanwhile: {_around(dumps, stream.requested, stream.requested + ttft)}")
    gaps = []
    for s in streams:
        chunks = s.events.get("c_tok", [])
        for (_, a), (tokens, b) in itertools.pairwise(chunks):
            if lo <= b < hi:
                gaps.append((b - a, tokens, s))
    if gaps:
        gap, tokens, stream = max(gaps, key=lambda x: x[0])
        lines.append("")
        lines.append(f"Largest gap: stream {stream.name}, {gap * 1e3:.0f} ms before the chunk up to token {tokens}:")
        sent = stream.at("u_tok", tokens)
        for label, before, after in TOKEN_HOPS:
            t0, t1 = stream.at(before, tokens), stream.at(after, tokens)
            took = "—" if t0 is None or t1 is None else f"{(t1 - t0) * 1e3:.1f} ms"
            lines.append(f"- {label}: {took}")
        end = stream.at("c_tok", tokens)
        if sent is not None and end is not None:
            lines.append(f"- meanwhile: {_around(dumps, end - gap, end)}")
    return lines


# -- py-spy ---------------------------------------------------------------------------------------


def _short(frame: str) -> str:
    found = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not found:
        return frame
    function, path = found.groups()
    path = re.sub(r".*/(site-packages|lib/python3\.\d+)/", "", path)
    path = re.sub(rf"^{re.escape(str(ROOT))}/", "", path)
    return f"{function} ({path})"


def top_functions(collapsed: Path, count: int = 25) -> list[str]:
    """The functions with the most samples of a py-spy raw profile: own (leaf) and total shares."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        frames = [_short(f) for f in stack.split(";")]
        samples += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            total[frame] += int(n)
    if not samples:
        return ["(no samples)"]
    lines = [
        f"{samples} samples",
        "",
        "| own % | function | | total % | function |",
        "| ---: | --- | --- | ---: | --- |",
    ]
    for (f1, n1), (f2, n2) in zip(own.most_common(count), total.most_common(count), strict=False):
        lines.append(f"| {n1 / samples * 100:.1f} | {f1} | | {n2 / samples * 100:.1f} | {f2} |")
    return lines


async def _spy(py_spy: str, pids: dict[str, int], out: Path, at: float, seconds: int) -> dict[str, Path]:
    await asyncio.sleep(max(0.0, at - time.time()))
    paths = {role: out / f"{role}.pyspy.txt" for role in pids}
    procs = [
        await asyncio.create_subprocess_exec(
            *(py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100"),
            *("--nonblocking", "--format", "raw", "--output", str(paths[role])),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for role, pid in pids.items()
    ]
    for proc in procs:
        await proc.wait()
    return {role: path for role, path in paths.items() if path.exists()}


# -- the run --------------------------------------------------------------------------------------


def _burst(target: Target, streams: int, s: shapes.Settings, start_at: float) -> Job:
    """The suite's paced shape (each stream opened once, all within `ramp_s`), named and windowed
    over the whole run."""
    job = shapes.paced_job(target, streams, s)
    window = (0.0, s.ramp_s + s.paced_tokens * s.pace_s + 1.0)
    return dataclasses.replace(job, start_at=start_at, window=window, trace=True)


async def trace(streams: int, settings: shapes.Settings, out: Path, py_spy: str | None, burst: bool = False) -> str:
    s = settings
    pace = Pace(tokens=s.steady_lengths[1], delay=s.pace_s, first_token_delay=s.steady_first_token_delay)
    if burst:
        pace = Pace(tokens=s.paced_tokens, delay=s.pace_s)
    pool = ClientPool(2)
    launch = hooked(out)
    try:
        async with aiohttp.ClientSession() as session:
            upstream = await start_upstream(pace, session, free_port(), launch=launch)
            try:
                with tempfile.TemporaryDirectory(prefix="streamgate-trace-") as workdir:
                    deployment = await deploy_streamgate(pace, upstream, Path(workdir), launch=launch)
                    try:
                        await asyncio.sleep(1.0)
                        start_at = time.time() + 1.5
                        job = shapes.steady_job(deployment.target, streams, s, start_at)
                        job = _burst(deployment.target, streams, s, start_at) if burst else job
                        assert job.window is not None
                        lo, hi = start_at + job.window[0], start_at + job.window[1]
                        pids = {role: server.pid for role, server in deployment.servers.items()}
                        spy = _spy(py_spy, pids, out, lo, int(hi - lo)) if py_spy else None
                        spying = asyncio.ensure_future(spy) if spy is not None else None
                        load = os.getloadavg()
                        job = dataclasses.replace(job, trace=True)
                        procs = {"upstream": upstream.server.pid, **pids}
                        procs |= {f"client {i}": pid for i, pid in enumerate(pool.pids[:2])}
                        sched = asyncio.ensure_future(_sched(procs, lo, hi))
                        step = await shapes.windowed(deployment, upstream, pool, job, pace.first_token_delay)
                        waits = await sched
                        load_after = os.getloadavg()
                        profiles = await spying if spying is not None else {}
                        servers = {"upstream": upstream.server, **deployment.servers}
                        for server in servers.values():
                            os.kill(server.pid, signal.SIGUSR1)
                        dumps = await _read_dumps(out)
                    finally:
                        await deployment.stop()
            finally:
                await upstream.server.stop()
    finally:
        pool.close()
    return report(step, dumps, lo, hi, profiles, (load, load_after), waits)


#: The row of `_sched` for the whole machine (busy seconds; no wait).
MACHINE = "the machine (every process)"


async def _sched(pids: dict[str, int], lo: float, hi: float) -> dict[str, tuple[float, float]]:
    """Seconds each process ran, and waited while runnable, between `lo` and `hi`; and the machine's busy seconds."""
    await asyncio.sleep(max(0.0, lo - time.time()))
    before = {name: sched_seconds(pid) for name, pid in pids.items()}
    busy = machine_busy_seconds()
    await asyncio.sleep(max(0.0, hi - time.time()))
    after = {name: sched_seconds(pid) for name, pid in pids.items()}
    busy = machine_busy_seconds() - busy
    found = {name: (after[name][0] - before[name][0], after[name][1] - before[name][1]) for name in pids}
    return found | {MACHINE: (busy, math.nan)}


def sched_table(waits: dict[str, tuple[float, float]], seconds: float) -> list[str]:
    lines = [
        "| process | ran, cores | waited for a CPU while runnable, cores | wait per second run |",
        "| --- | ---: | ---: | ---: |",
    ]
    ours = {name: found for name, found in waits.items() if name != MACHINE}
    total = (sum(r for r, _ in ours.values()), sum(w for _, w in ours.values()))
    for name, (ran, waited) in [*ours.items(), ("all of these", total)]:
        per = waited / max(ran, 1e-9) * 1e3
        lines.append(f"| {name} | {ran / seconds:.2f} | {waited / seconds:.2f} | {per:.0f} ms |")
    if MACHINE in waits:
        busy = waits[MACHINE][0]
        cpus = len(os.sched_getaffinity(0))
        lines.append(f"| {MACHINE}, of {cpus} CPUs | {busy / seconds:.2f} | — | — |")
        lines.append(f"| … of which other work than these | {(busy - total[0]) / seconds:.2f} | — | — |")
    return lines


async def _read_dumps(out: Path, limit_s: float = 10.0) -> dict[str, Dump]:
    deadline = time.monotonic() + limit_s
    paths = {role: out / f"{role}.json" for role in ROLES}
    while time.monotonic() < deadline and not all(p.exists() for p in paths.values()):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    dumps = {}
    for role, path in paths.items():
        if path.exists():
            data = json.loads(path.read_text())
            dumps[role] = Dump([tuple(r) for r in data["records"]], data["lags"], data["collections"])
    return dumps


def report(
    step: shapes.SteadyStep,
    dumps: dict[str, Dump],
    lo: float,
    hi: float,
    profiles: dict[str, Path],
    loads: tuple[tuple[float, float, float], tuple[float, float, float]],
    waits: dict[str, tuple[float, float]],
) -> str:
    found = streams_of(dumps, step.result.traces)
    started = [s for s in found.values() if lo <= s.requested < hi]
    firsts = [(s, 1) for s in started]
    tokens = [
        (s, n)
        for s in found.values()
        for (n, t) in s.events.get("c_tok", [])
        if lo <= t < hi and n > 1  # every later token that a chunk completed in the window
    ]
    lines = [
        f"# Trace: ×{step.streams} ({step.window_s:.0f} s measured)",
        "",
        f"- load average (1 min) before / after: {loads[0][0]:.2f} / {loads[1][0]:.2f}",
        f"- {shapes.describe_steady(step)}",
        f"- server CPU s in the window: {step.cpu.server if step.cpu else '—'}",
        "",
        *hop_table("first token: hop", FIRST_HOPS, firsts),
        "",
        *hop_table("later tokens: hop", TOKEN_HOPS, tokens),
        "",
        *loop_table(dumps, lo, hi),
        "",
        *sched_table(waits, hi - lo),
        "",
        *link_table(dumps, lo, hi, len(started), step.result.window_tokens),
        "",
        *slowest(started or list(found.values()), dumps, lo, hi),
        "",
        *(f"- k_finish (µs): {_finish(dumps)}",),
    ]
    for role, path in profiles.items():
        lines += ["", f"## py-spy: {role} ({path})", "", *top_functions(path)]
    return "\n".join(lines) + "\n"


def _finish(dumps: dict[str, Dump]) -> str:
    core = dumps.get("core")
    values = [float(tokens) for event, _, tokens, _ in core.records if event == "k_finish"] if core else []
    if not values:
        return "—"
    return f"p50 {percentile(values, 50):.0f}, p99 {percentile(values, 99):.0f}, max {max(values):.0f} ({len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument(
        "--burst",
        action="store_true",
        help="the suite's paced shape instead (each stream once, opened within 1 s, 100 tokens, no first-token delay)",
    )
    parser.add_argument("--lengths", default="50-150", help="tokens per stream, drawn from this range (default 50-150)")
    parser.add_argument("--ramp", type=float, default=shapes.FULL.steady_ramp_s)
    parser.add_argument("--run", type=float, default=shapes.FULL.steady_run_s, help="seconds measured")
    parser.add_argument("--py-spy", help="path of a py-spy executable: profile the core and the bridge")
    parser.add_argument("--out", type=Path, help="folder for the records and profiles (default: a new temporary one)")
    args = parser.parse_args()
    raise_fd_limit()
    out = args.out or Path(tempfile.mkdtemp(prefix="streamgate-trace-"))
    out.mkdir(parents=True, exist_ok=True)
    for role in ROLES:
        (out / f"{role}.json").unlink(missing_ok=True)
    low, _, high = args.lengths.partition("-")
    lengths = (int(low), int(high or low))
    settings = dataclasses.replace(shapes.FULL, steady_ramp_s=args.ramp, steady_run_s=args.run, steady_lengths=lengths)
    try:
        text = asyncio.run(trace(args.streams, settings, out, args.py_spy, args.burst))
    finally:
        kill_all()
    print(text)
    (out / "trace.md").write_text(text)
    print(f"records, profiles and this report: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
