"""Server processes of a benchmark: start, wait until they listen, drain their output, read /proc, stop.

Every process is started in a session of its own (so its whole group can be signalled) with the fd
limit raised to the hard limit, and is registered until stopped: `kill_all()` (also run at exit)
kills whatever is left, so a Ctrl-C or an exception leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import resource
import signal
import socket
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
ROOT = Path(__file__).resolve().parent.parent
#: Offline: no model cost map, telemetry or hub look-ups from any process.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_OFFLINE_MODE": "true",
    "HF_HUB_OFFLINE": "1",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
}

_LIVE: set[int] = set()
T = TypeVar("T")


def raise_fd_limit() -> None:
    """Raise this process's open-file limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (as streamgate's `--loop auto` and the LiteLLM proxy pick), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on `new_event_loop()`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3, `state`, is index 0)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, now."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parents.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its live descendants, each alone (children's waited-for time excluded)."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = _stat(member)
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def sched_seconds(pid: int) -> tuple[float, float]:
    """Seconds `pid` and its live descendants (every thread) ran on a CPU, and waited for one while
    runnable (/proc/PID/task/TID/schedstat): the wait is what other work on the machine cost them."""
    ran = waited = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{member}/task"):
                with contextlib.suppress(OSError, ValueError), open(f"/proc/{member}/task/{task}/schedstat") as stat:
                    fields = stat.read().split()
                    ran += int(fields[0])
                    waited += int(fields[1])
    return ran / 1e9, waited / 1e9


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot, all CPUs and processes (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its descendants, from /proc/PID/statm."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/statm") as statm:
            total += int(statm.read().split()[1]) * PAGE
    return total


@dataclass
class Server:
    """A started process and where it listens."""

    name: str
    proc: asyncio.subprocess.Process
    address: str = ""
    log: deque[str] = field(default_factory=lambda: deque(maxlen=60))
    _drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def tail(self) -> str:
        return "\n".join(self.log)

    async def _read_until(self, pattern: re.Pattern[str]) -> str:
        assert self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                raise RuntimeError(f"{self.name} exited ({await self.proc.wait()}) before listening:\n{self.tail()}")
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if found := pattern.search(line):
                return found.group(1)

    async def _drain_forever(self) -> None:
        assert self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            self.log.append(raw.decode(errors="replace").rstrip())

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), wait)
                break
        _LIVE.discard(self.pid)
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._drain


def _environment(changes: dict[str, str | None]) -> dict[str, str]:
    """This process's environment with the offline variables and `changes` (None: removed)."""
    env = {**os.environ, **OFFLINE_ENV}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


async def start(
    name: str, argv: list[str], pattern: str, env: dict[str, str | None] | None = None, timeout: float = 120.0
) -> Server:
    """Start `argv`, wait (at most `timeout` s) for the output line matching `pattern`; group 1 is the address.

    `env` changes the environment (a None value removes the variable).
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=_environment(env or {}),
        cwd=ROOT,
        start_new_session=True,
        preexec_fn=raise_fd_limit,
        limit=1024 * 1024,
    )
    _LIVE.add(proc.pid)
    server = Server(name, proc)
    try:
        server.address = await asyncio.wait_for(server._read_until(re.compile(pattern)), timeout)
    except BaseException:
        await server.stop(grace=1.0)
        raise
    server._drain = asyncio.create_task(server._drain_forever())
    return server


def kill_all() -> None:
    """SIGKILL every process group still registered (at exit, whatever happened)."""
    for pid in list(_LIVE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _LIVE.discard(pid)


atexit.register(kill_all)
