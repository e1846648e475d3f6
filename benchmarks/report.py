"""The results as one markdown table, the targets of issue 7 (met / not met), and the machine they ran on."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

from benchmarks.shapes import KIB, MIB, Cpu, Leave, Memory, PacedStep, Settings, SteadyStep, Throughput
from benchmarks.systems import ALL, LITELLM_PROXY, LITELLM_PROXY_RUST, STREAMGATE, System

RESULTS = Path(__file__).resolve().parent / "results"
DASH = "—"
T = TypeVar("T")


@dataclass
class SystemResults:
    single: Throughput | None = None
    concurrent: Throughput | None = None
    paced: list[PacedStep] = field(default_factory=list)
    memory: Memory | None = None
    leave: Leave | None = None
    steady: list[SteadyStep] = field(default_factory=list)
    #: Resident bytes of each server process, started afresh and idle (before any stream).
    started_rss: dict[str, int] | None = None
    #: Why a system, or a shape of it, has no figures.
    problems: list[str] = field(default_factory=list)
    uses_upstream: bool = True

    def held(self, s: Settings) -> tuple[int, int | None]:
        """The highest paced concurrency held, and the lowest above it not held (None: none failed)."""
        held = max((step.streams for step in self.paced if step.held(s.gap_limit_s)), default=0)
        failed = [step.streams for step in self.paced if step.streams > held and not step.held(s.gap_limit_s)]
        return held, min(failed, default=None)

    def step(self, streams: int) -> PacedStep | None:
        return next((step for step in self.paced if step.streams == streams), None)

    def steady_step(self, streams: int) -> SteadyStep | None:
        return next((step for step in self.steady if step.streams == streams), None)

    def steady_held(self, s: Settings) -> tuple[int, int | None]:
        """The highest steady concurrency held, and the lowest above it not held (None: none failed)."""
        held = max((step.streams for step in self.steady if step.held(s.gap_limit_s)), default=0)
        failed = [step.streams for step in self.steady if step.streams > held and not step.held(s.gap_limit_s)]
        return held, min(failed, default=None)


@dataclass
class Run:
    settings: Settings
    mode: str
    results: dict[str, SystemResults]
    #: The upstream read directly at each paced step: its own time to first token.
    baseline: dict[int, PacedStep] = field(default_factory=dict)
    #: The steady shape read straight from the upstream at each step (the raw chain).
    steady_baseline: dict[int, SteadyStep] = field(default_factory=dict)
    #: Systems not run at all, and why.
    unavailable: dict[str, str] = field(default_factory=dict)
    #: What went wrong outside any one system (the upstream's own measurements).
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])


@dataclass(frozen=True)
class Cell:
    text: str
    #: The number the ratio columns compare (streamgate's over each peer's); None: no ratio.
    key: float | None = None


def num(x: float) -> str:
    if math.isnan(x):
        return DASH
    if math.isinf(x):
        return "∞"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def figure(x: float) -> Cell:
    return Cell(num(x), x)


def cores(cpu: Cpu) -> Cell:
    """Cores busy: the server processes (each, when more than one), the client, the upstream."""
    server = " + ".join(num(cpu.cores(seconds)) for seconds in cpu.server.values())
    return Cell(f"{server} / {num(cpu.cores(cpu.client))} / {num(cpu.cores(cpu.upstream))}")


#: The ratio columns: their titles and the peer whose figure is each one's denominator.
RATIOS = (("streamgate / proxy", LITELLM_PROXY), ("streamgate / proxy (Rust)", LITELLM_PROXY_RUST))


class Table:
    """A row per figure, a column per system, and streamgate's figure over each peer's (the proxy, plain and
    with LITELLM_RUST=true).

    A cell is `—` where a shape does not apply to a system (or the system does not run in it), and `n/a`
    where the system could not run.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.rows: list[tuple[str, dict[str, Cell]]] = []

    def row(self, label: str, pick: Callable[[SystemResults], T | None], cell: Callable[[T], Cell]) -> None:
        """A row: for each system, `cell` of what `pick` finds in its results (nothing: no cell)."""
        cells = {}
        for key, results in self.run.results.items():
            found = pick(results)
            if found is not None:
                cells[key] = cell(found)
        self.rows.append((label, cells))

    def _text(self, system: System, cells: dict[str, Cell]) -> str:
        if system.key in cells:
            return cells[system.key].text
        return "n/a" if system.key in self.run.unavailable else DASH

    @staticmethod
    def ratio(cells: dict[str, Cell], peer: System = LITELLM_PROXY) -> str:
        ours, theirs = cells.get(STREAMGATE.key), cells.get(peer.key)
        if ours is None or theirs is None or ours.key is None or theirs.key is None:
            return DASH
        if theirs.key == 0 or not (math.isfinite(ours.key) and math.isfinite(theirs.key)):
            return DASH
        ratio = ours.key / theirs.key
        return f"{ratio:.2f}" if abs(ratio) >= 0.1 else f"{ratio:.2g}"

    def markdown(self) -> str:
        header = ["shape / figure", *(system.title for system in ALL), *(title for title, _ in RATIOS)]
        lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
        for label, cells in self.rows:
            texts = [self._text(system, cells) for system in ALL]
            ratios = [self.ratio(cells, peer) for _, peer in RATIOS]
            lines.append("| " + " | ".join([label, *texts, *ratios]) + " |")
        return "\n".join(lines)


def _server_part(name: str, figures: Callable[[T], dict[str, float]], scale: float = 1.0) -> Callable[[T], Cell]:
    """One server process's figure (`—` for systems without that process)."""

    def cell(found: T) -> Cell:
        values = figures(found)
        return figure(values[name] / scale) if name in values else Cell(DASH)

    return cell


def _throughput_rows(table: Table, title: str, pick: Callable[[SystemResults], Throughput | None]) -> None:
    table.row(f"**{title}**: tokens/s", pick, lambda t: figure(t.tokens_per_s))
    table.row(f"{title}: server CPU µs/token (all server processes)", pick, lambda t: figure(t.server_total_us))
    for name in ("core", "bridge"):
        table.row(f"{title}: … of which {name}", pick, _server_part(name, lambda t: t.server_us))
    table.row(f"{title}: client CPU µs/token", pick, lambda t: Cell(num(t.client_us)))
    table.row(f"{title}: upstream CPU µs/token", pick, lambda t: Cell(num(t.upstream_us) if t.upstream_us else DASH))
    table.row(f"{title}: CPU busy, cores: server / client / upstream", pick, lambda t: cores(t.cores))
    table.row(f"{title}: chunks received per token", pick, lambda t: Cell(f"{t.chunks_per_token:.2f}"))
    table.row(f"{title}: errors", pick, lambda t: Cell(str(t.errors)))


def added_ttft_ms(step: PacedStep, baseline: PacedStep | None, uses_upstream: bool) -> tuple[float, float]:
    """Time to first token over the upstream's own (p50, p99); raw servers have no upstream: their whole TTFT."""
    p50, p99 = step.ttft_ms
    if not uses_upstream:
        return p50, p99
    if baseline is None:
        return math.nan, math.nan
    base50, base99 = baseline.ttft_ms
    return p50 - base50, p99 - base99


def _held(results: SystemResults, s: Settings) -> Cell | None:
    if not results.paced:
        return None
    held, failed = results.held(s)
    return Cell(f"≥ {held}" if failed is None else f"{held} (not {failed})", held)


def _gap(step: PacedStep) -> Cell:
    p50, p99 = step.gap_ms
    return Cell(f"{num(p50)} / {num(p99)}, {step.result.errors} err", p99)


def _per_token(step: PacedStep) -> Cell:
    """Server CPU per token of a paced step (stream starts included), and how many chunks carried them."""
    if step.cpu is None or not step.result.tokens:
        return Cell(DASH)
    us = step.cpu.server_total * 1e6 / step.result.tokens
    return Cell(f"{num(us)}; {step.result.chunks / step.result.tokens:.2f}", us)


def _paced_rows(table: Table, run: Run) -> None:
    s = run.settings
    pace_ms = s.pace_s * 1e3
    table.row(
        f"**paced streams ({s.paced_tokens} tokens, {pace_ms:.0f} ms apart)**: highest concurrency held "
        f"(p99 gap < {2 * pace_ms:.0f} ms, no errors)",
        lambda r: _held(r, s),
        lambda cell: cell,
    )
    measured = {step.streams for r in run.results.values() for step in r.paced}
    for streams in sorted(set(s.paced_steps) | measured):
        base = run.baseline.get(streams)
        own = f"; the upstream's own: {num(base.ttft_ms[0])} / {num(base.ttft_ms[1])}" if base else ""

        def step(r: SystemResults, n: int = streams) -> tuple[PacedStep, bool] | None:
            found = r.step(n)
            return None if found is None else (found, r.uses_upstream)

        def ttft(found: tuple[PacedStep, bool], b: PacedStep | None = base) -> Cell:
            p50, p99 = added_ttft_ms(found[0], b, found[1])
            return Cell(f"{num(p50)} / {num(p99)}", p99)

        table.row(f"paced ×{streams}: inter-chunk gap p50 / p99 ms, errors", step, lambda f: _gap(f[0]))
        table.row(f"paced ×{streams}: added TTFT p50 / p99 ms{own}", step, ttft)
        table.row(
            f"paced ×{streams}: CPU busy, cores: server / client / upstream",
            step,
            lambda f: cores(f[0].cpu) if f[0].cpu else Cell(DASH),
        )
        table.row(f"paced ×{streams}: server CPU µs/token; chunks received per token", step, lambda f: _per_token(f[0]))


def _steady_gap(step: SteadyStep) -> Cell:
    p50, p99 = step.gap_ms
    return Cell(f"{num(p50)} / {num(p99)}, {step.result.errors} err", p99)


def _steady_ttft(step: SteadyStep) -> Cell:
    p50, p99 = step.added_ttft_ms
    return Cell(f"{num(p50)} / {num(p99)}", p99)


def _steady_per_token(step: SteadyStep) -> Cell:
    us = step.server_us_per_token
    if math.isnan(us):
        return Cell(DASH)
    return Cell(f"{num(us)}; {step.result.window_chunks / max(step.result.window_tokens, 1):.2f}", us)


def _steady_streams(step: SteadyStep) -> Cell:
    result = step.result
    return Cell(f"{result.completed} ({result.dropped})", result.completed)


def steady_title(s: Settings) -> str:
    lo, hi = s.steady_lengths
    return (
        f"steady streams (closed loop: N clients, each opens a new stream when its own ends; first token after "
        f"{s.steady_first_token_delay * 1e3:.0f} ms, {lo}-{hi} tokens {s.pace_s * 1e3:.0f} ms apart; "
        f"{s.steady_ramp_s:.0f} s ramp, {s.steady_run_s:.0f} s measured; 2 client processes)"
    )


def _steady_rows(table: Table, run: Run) -> None:
    s = run.settings
    limit_ms = s.gap_limit_s * 1e3
    own = ""
    if run.steady_baseline:
        held = [n for n, step in run.steady_baseline.items() if step.held(s.gap_limit_s)]
        tried = ", ".join(map(str, run.steady_baseline))
        own = f"; straight to the upstream: {max(held) if held else 0} held (of {tried})"
    table.row(
        f"**{steady_title(s)}**: highest concurrency held (p99 gap < {limit_ms:.0f} ms, no errors){own}",
        lambda r: _steady_held(r, s),
        lambda cell: cell,
    )
    measured = sorted({step.streams for r in run.results.values() for step in r.steady} | set(s.steady_steps))
    for streams in measured:
        base = run.steady_baseline.get(streams)

        def step(r: SystemResults, n: int = streams) -> SteadyStep | None:
            return r.steady_step(n)

        gap = ttft = cpu = ""
        if base is not None:
            gap = f"; straight to the upstream: {_steady_gap(base).text}"
            ttft = f"; straight to the upstream: {_steady_ttft(base).text}"
            if base.cpu is not None:
                cpu = f"; straight to the upstream: client {num(base.cpu.cores(base.cpu.client))}"
                cpu += f", upstream {num(base.cpu.cores(base.cpu.upstream))}"
        delay_ms = s.steady_first_token_delay * 1e3
        table.row(f"steady ×{streams}: inter-chunk gap p50 / p99 ms, errors{gap}", step, _steady_gap)
        table.row(
            f"steady ×{streams}: added TTFT p50 / p99 ms (over the upstream's {delay_ms:.0f}){ttft}", step, _steady_ttft
        )
        table.row(f"steady ×{streams}: server CPU µs/token; chunks received per token", step, _steady_per_token)
        table.row(
            f"steady ×{streams}: CPU busy, cores: server / client / upstream{cpu}",
            step,
            lambda found: cores(found.cpu) if found.cpu else Cell(DASH),
        )
        table.row(f"steady ×{streams}: streams completed (dropped open at the end)", step, _steady_streams)


def _steady_held(results: SystemResults, s: Settings) -> Cell | None:
    if not results.steady:
        return None
    held, failed = results.steady_held(s)
    return Cell(f"≥ {held}" if failed is None else f"{held} (not {failed})", held)


def _started_rows(table: Table) -> None:
    def cell(rss: dict[str, int]) -> Cell:
        total = sum(rss.values())
        parts = " + ".join(f"{name} {value / MIB:.0f}" for name, value in rss.items())
        return Cell(f"{total / MIB:.0f}" + (f" ({parts})" if len(rss) > 1 else ""), total / MIB)

    table.row("**started afresh, idle**: server RSS MiB", lambda r: r.started_rss, cell)


def _memory_rows(table: Table, s: Settings) -> None:
    def pick(r: SystemResults) -> Memory | None:
        return r.memory

    title = f"idle open streams ×{s.idle_streams}"
    table.row(
        f"**{title}**: KiB per open stream (all server processes)", pick, lambda m: figure(m.per_stream_total / KIB)
    )
    for name in ("core", "bridge"):
        table.row(f"{title}: … of which {name}", pick, _server_part(name, lambda m: m.per_stream, KIB))
    table.row(
        f"{title}: server RSS MiB before → while open (streams open)",
        pick,
        lambda m: Cell(f"{sum(m.before.values()) / KIB**2:.0f} → {sum(m.during.values()) / KIB**2:.0f} ({m.opened})"),
    )
    table.row(f"{title}: server CPU µs per stream opened", pick, lambda m: figure(sum(m.open_cpu_us.values())))
    table.row(
        f"{title}: upstream requests still open 1 s after the clients left",
        pick,
        lambda m: Cell(DASH if m.upstream_left_open is None else str(m.upstream_left_open)),
    )


def _leave_rows(table: Table, s: Settings) -> None:
    def pick(r: SystemResults) -> Leave | None:
        return r.leave

    def idle(leave: Leave) -> Cell:
        return Cell(f"> {s.leave_patience_s:.0f}" if leave.idle_after_s is None else num(leave.idle_after_s))

    title = f"clients leave after {s.leave_after} tokens (×{s.leave_streams} paced)"
    table.row(f"**{title}**: upstream requests started after they left", pick, lambda x: Cell(str(x.started_after)))
    table.row(f"{title}: seconds until the upstream is idle", pick, idle)
    table.row(
        f"{title}: upstream requests in all / clients (client errors)",
        pick,
        lambda x: Cell(f"{x.upstream_requests} / {x.streams} ({x.errors})"),
    )


def build_table(run: Run) -> Table:
    s = run.settings
    table = Table(run)
    _throughput_rows(table, f"1 unpaced stream ({s.single_tokens} tokens, ×{s.single_reps})", lambda r: r.single)
    concurrent = f"{s.concurrent_streams} unpaced streams ({s.concurrent_tokens} tokens each)"
    _throughput_rows(table, concurrent, lambda r: r.concurrent)
    _paced_rows(table, run)
    _steady_rows(table, run)
    _started_rows(table)
    _memory_rows(table, s)
    _leave_rows(table, s)
    return table


def _verdict(ok: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not evaluable"}[ok]


def _cpu_target(ours: SystemResults, s: Settings) -> str:
    figures = {
        "1 stream": ours.single.server_total_us if ours.single else None,
        f"{s.concurrent_streams} streams": ours.concurrent.server_total_us if ours.concurrent else None,
    }
    known = [x for x in figures.values() if x is not None]
    ok = max(known) <= 120 if known else None
    shown = ", ".join(f"{name} {DASH if x is None else num(x)} µs" for name, x in figures.items())
    return f"- server CPU per token, core + bridge, unpaced ≤ 120 µs: {shown} → {_verdict(ok)}"


def _held_target(ours: SystemResults, proxy: SystemResults | None, s: Settings) -> str:
    if not ours.paced:
        return "- paced streams held ≥ 400 and ≥ 10× the proxy: not measured → not evaluable"
    held, failed = ours.held(s)
    bound = " (every step held: a lower bound)" if failed is None else f" (not {failed})"
    if proxy is None or not proxy.paced:
        versus, tenfold = "the proxy not measured", None
    else:
        p_held, p_failed = proxy.held(s)
        ceiling = math.inf if p_failed is None else p_failed
        # The proxy's capacity lies between what it held and where it failed.
        tenfold = True if held >= 10 * ceiling else False if held < 10 * p_held else None
        versus = f"the proxy held {p_held}" + ("" if p_failed is None else f" (not {p_failed})")
    ok = False if held < 400 else tenfold
    return f"- paced streams held ≥ 400 and ≥ 10× the proxy: streamgate held {held}{bound}; {versus} → {_verdict(ok)}"


def _ttft_target(ours: SystemResults, run: Run) -> str:
    step = ours.step(100)
    if step is None:
        return "- added TTFT p99 at 100 paced streams < 5 ms: not measured → not evaluable"
    p99 = added_ttft_ms(step, run.baseline.get(100), True)[1]
    ok = None if math.isnan(p99) else p99 < 5 and step.result.errors == 0
    return f"- added TTFT p99 at 100 paced streams < 5 ms: {num(p99)} ms ({step.result.errors} errors) → {_verdict(ok)}"


def _memory_target(ours: SystemResults) -> str:
    memory = ours.memory
    if memory is None:
        return "- memory per open stream, core + bridge < 64 KiB: not measured → not evaluable"
    kib = memory.per_stream_total / KIB
    ok = kib < 64 and memory.opened >= memory.streams
    opened = f"{memory.opened} of {memory.streams} streams open"
    return f"- memory per open stream, core + bridge < 64 KiB: {num(kib)} KiB ({opened}) → {_verdict(ok)}"


def _leave_target(ours: SystemResults) -> str:
    name = "- after clients leave: 0 upstream requests started for them, upstream idle within 1 s"
    leave = ours.leave
    if leave is None:
        return f"{name}: not measured → not evaluable"
    idle = "not within the patience" if leave.idle_after_s is None else f"{leave.idle_after_s:.2f} s"
    ok = leave.started_after == 0 and leave.idle_after_s is not None and leave.idle_after_s <= 1.0
    return f"{name}: {leave.started_after} started, idle after {idle} → {_verdict(ok)}"


def targets(run: Run) -> list[str]:
    """Issue 7's targets, each with its figures and met / not met."""
    ours = run.results.get(STREAMGATE.key, SystemResults())
    proxy = run.results.get(LITELLM_PROXY.key)
    return [
        _cpu_target(ours, run.settings),
        _held_target(ours, proxy, run.settings),
        _ttft_target(ours, run),
        _memory_target(ours),
        _leave_target(ours),
    ]


def _steady_tenfold(held: int, peer: SystemResults | None, name: str, s: Settings) -> tuple[str, bool | None] | None:
    """Whether streamgate's steady capacity is ≥ 10× one peer's (which lies between what the peer held and where
    it failed), said for the targets line; None: the peer was not measured."""
    if peer is None or not peer.steady:
        return None
    p_held, p_failed = peer.steady_held(s)
    ceiling = math.inf if p_failed is None else p_failed
    tenfold = True if held >= 10 * ceiling else False if held < 10 * p_held else None
    said = f"{name} held {p_held}" + ("" if p_failed is None else f" (not {p_failed})")
    return f"{said}: 10× {_verdict(tenfold)}", tenfold


def _weakest(verdicts: list[bool | None]) -> bool | None:
    """The weaker of several verdicts: not met before not evaluable before met; none at all: not evaluable."""
    if False in verdicts:
        return False
    return True if verdicts and None not in verdicts else None


def _steady_targets(run: Run) -> list[str]:
    """Issue 17's targets on the steady shape, each with its figures and met / not met."""
    s = run.settings
    ours = run.results.get(STREAMGATE.key, SystemResults())
    lines = []
    name = "- steady streams held ≥ 400 and ≥ 10× each peer (the proxy, and the proxy with LITELLM_RUST=true)"
    if not ours.steady:
        lines.append(f"{name}: not measured → not evaluable")
    else:
        held, failed = ours.steady_held(s)
        bound = " (every step held: a lower bound)" if failed is None else f" (not {failed})"
        said, verdicts = [], []
        for peer, title in ((LITELLM_PROXY, "the proxy"), (LITELLM_PROXY_RUST, "the proxy with LITELLM_RUST=true")):
            found = _steady_tenfold(held, run.results.get(peer.key), title, s)
            if found is None:
                said.append(f"{title} not measured")
            else:
                said.append(found[0])
                verdicts.append(found[1])
        # The weaker verdict over the peers measured decides (none measured: not evaluable).
        ok = False if held < 400 else _weakest(verdicts)
        lines.append(f"{name}: streamgate held {held}{bound}; {'; '.join(said)} → {_verdict(ok)}")
    step = ours.steady_step(200)
    if step is None:
        lines.append("- steady ×200: added TTFT p99 < 25 ms: not measured → not evaluable")
        lines.append("- steady ×200: server CPU per token ≤ 120 µs: not measured → not evaluable")
    else:
        p99 = step.added_ttft_ms[1]
        ok = None if math.isnan(p99) else p99 < 25 and step.result.errors == 0
        errors = f"{step.result.errors} errors"
        lines.append(f"- steady ×200: added TTFT p99 < 25 ms: {num(p99)} ms ({errors}) → {_verdict(ok)}")
        us = step.server_us_per_token
        ok = None if math.isnan(us) else us <= 120
        lines.append(f"- steady ×200: server CPU per token ≤ 120 µs: {num(us)} µs → {_verdict(ok)}")
    rss = ours.started_rss
    if rss is None:
        lines.append("- idle resident memory, core + bridge < 250 MiB: not measured → not evaluable")
    else:
        total = sum(rss.values()) / MIB
        parts = ", ".join(f"{name} {value / MIB:.0f}" for name, value in rss.items())
        lines.append(
            f"- idle resident memory, core + bridge < 250 MiB: {total:.0f} MiB ({parts}) → {_verdict(total < 250)}"
        )
    return lines


def _error_samples(results: SystemResults) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str] | None]] = [
        ("1 stream", results.single.error_samples if results.single else None),
        ("concurrent", results.concurrent.error_samples if results.concurrent else None),
        *((f"paced ×{step.streams}", step.result.error_samples) for step in results.paced),
        *((f"steady ×{step.streams}", step.result.error_samples) for step in results.steady),
        ("clients leave", results.leave.error_samples if results.leave else None),
    ]
    return [(name, samples) for name, samples in found if samples]


def notes(run: Run) -> list[str]:
    lines = [f"- {key}: n/a: {why}" for key, why in run.unavailable.items()]
    lines += [f"- {problem}" for problem in run.problems]
    for key, results in run.results.items():
        lines += [f"- {key}: {problem}" for problem in results.problems]
        lines += [f"- {key}, {name}: first errors: {'; '.join(samples)}" for name, samples in _error_samples(results)]
    return lines


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(run: Run) -> list[str]:
    model = DASH
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), DASH)
    except OSError:
        pass
    head = _git("rev-parse", "--short", "HEAD").strip()
    changed = [
        line[3:] for line in _git("status", "--porcelain").splitlines() if not line[3:].startswith("benchmarks/")
    ]
    shown = ", ".join(changed[:6]) + (", …" if len(changed) > 6 else "")
    dirty = f" with uncommitted changes in {shown}" if changed else ""
    versions = ", ".join(f"{name} {version(name)}" for name in ("litellm", "grpcio", "aiohttp"))
    cpus = f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable)"
    return [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpus}, {model}; {platform.system()} {platform.release()}",
        f"- load average (1 min) before the run: {run.load_before:.2f} (other work on the machine skews every figure)",
        f"- Python {platform.python_version()}; {versions}",
        f"- code: git {head or DASH}{dirty}",
    ]


def render(run: Run) -> str:
    s = run.settings
    parts = [
        f"# streamgate benchmarks ({run.mode} run, {run.wall_s:.0f} s)",
        "",
        *machine(run),
        "",
        "Every system runs as its own processes on 127.0.0.1 beside the fake upstream and the client workers, "
        "all on the same cores: the CPU rows say which process was busy. "
        f"Paced streams start spread over {s.ramp_s:.0f} s. `—`: does not apply; `n/a`: the system could not run. "
        "See benchmarks/README.md for what each figure means.",
        "",
        build_table(run).markdown(),
        "",
        "## Targets (issue 7)",
        "",
        *targets(run),
    ]
    if any(r.steady or r.started_rss for r in run.results.values()):
        parts += ["", "## Targets (issue 17, steady shape)", "", *_steady_targets(run)]
    if extra := notes(run):
        parts += ["", "## Notes", "", *extra]
    return "\n".join(parts) + "\n"


def save(text: str, mode: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest = RESULTS / "latest.md"
    stamped = RESULTS / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{mode}.md"
    latest.write_text(text)
    stamped.write_text(text)
    return latest, stamped
