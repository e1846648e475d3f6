"""`streamgate serve`: the core as a child process, the bridge in this one; or, with `--workers N`,
N core children and N bridges (this process and N-1 children) sharing the HTTP port.

Two processes at least, so that the core's generation and the bridge's framing each get a core of
the CPU. On SIGTERM or SIGINT the bridges refuse new streams, the cores drain (their open streams
finish within the grace, or end with a final error that the bridges forward), then all exit.

The link between them (`Relay`) needs a shared secret: a new random link token each run, handed to
the children through their environment (a command line is visible to every user of the machine)
and to this process's bridge in its config.

Workers (`Workers`): each core child listens on its own loopback port (`--grpc-port` + i, or any free
port) and serves its metrics on `--metrics-port` + i; every bridge links to every core and spreads
its streams over them (`streamgate.link.pool`). The limits are the whole server's: the core children
count their streams in one table (`streamgate.core.slots`: a file this process makes in /dev/shm and
unlinks at once; the cores inherit it open).
A worker that exits while the server runs is started again on the same port (its row of the table
cleared first); with one core, as before workers, a core that exits ends the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from streamgate.bridges.app import BridgeServer
from streamgate.bridges.config import BridgeConfig
from streamgate.bridges.metrics import SHARED_ENV as SHARED_METRICS_ENV
from streamgate.link._wire import TOKEN_ENV

logger = logging.getLogger("streamgate.serve")

#: A worker that exits sooner than this after it started is restarted after a growing pause.
QUICK_EXIT = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Workers:
    """How many core and bridge processes `serve` runs, and what the extra ones need."""

    cores: int = 1
    bridges: int = 1
    #: `streamgate bridge` flags of the bridges after the first (the HTTP port and cores are added).
    bridge_argv: tuple[str, ...] = ()
    #: The slot table's columns and budget cells (`streamgate.core.slots.slot_names`), for several cores.
    slot_columns: tuple[str, ...] = ()
    slot_budgets: tuple[str, ...] = ()
    #: The first core's ports; core i takes the port + i (0: any free port; None: no metrics).
    grpc_port: int = 0
    metrics_port: int | None = None
    #: How the bridges reach the cores: "socket" (each core's Unix socket, `streamgate.link._stream`)
    #: or "grpc" (the `Relay` call on its gRPC port).
    link: str = "socket"
    #: With several bridges: the folder where each keeps its metrics (`bridges.metrics.SHARED_ENV`, set
    #: in this process's environment before prometheus_client was imported), removed at the end.
    bridge_metrics: str | None = None

    def __post_init__(self) -> None:
        if self.cores < 1 or self.bridges < 1:
            raise ValueError("workers must be at least 1")


async def _ready_line(read_end: int) -> dict[str, Any]:
    """What a child writes to its ready pipe once it listens (one JSON line)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", buffering=0)
    )
    try:
        line = await reader.readline()
    finally:
        transport.close()
    if not line:
        raise RuntimeError("the child exited before it listened")
    ready: dict[str, Any] = json.loads(line)
    return ready


class _Child:
    """A `streamgate core` or `streamgate bridge` child, started with `--ready-fd`."""

    def __init__(
        self, name: str, argv: Callable[[], list[str]], env: dict[str, str], pass_fds: tuple[int, ...] = ()
    ) -> None:
        self.name = name
        self._argv = argv
        self._env = env
        self._pass_fds = pass_fds
        self.process: asyncio.subprocess.Process | None = None
        self.ready: asyncio.Future[dict[str, Any]] | None = None
        self.started = 0.0
        self.quick_exits = 0

    async def start(self) -> None:
        read_end, write_end = os.pipe()
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "streamgate.cli",
                *self._argv(),
                "--ready-fd",
                str(write_end),
                pass_fds=(write_end, *self._pass_fds),
                env=self._env,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the child holds its own copy: EOF here when it exits
        self.started = time.monotonic()
        self.ready = asyncio.ensure_future(_ready_line(read_end))

    async def stop(self) -> None:
        """SIGTERM (it drains), then wait; SIGKILL after 30 s."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self.ready is not None and not self.ready.done():
            self.ready.cancel()
        if self.ready is not None:
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self.ready


async def _until(stop: asyncio.Future[Any], *waits: asyncio.Future[Any]) -> bool:
    """Wait for every one of `waits`; False if `stop` (or an exit: a failed wait) came first."""
    pending: set[asyncio.Future[Any]] = set(waits)
    while pending:
        done, pending = await asyncio.wait({stop, *pending}, return_when=asyncio.FIRST_COMPLETED)
        if stop in done:
            return False
        if any(future.exception() is not None for future in done):
            return False
        pending.discard(stop)
    return True


async def serve(
    options: list[str],
    core_argv: list[str],
    bridge_config: Callable[[str], BridgeConfig],
    workers: Workers | None = None,
) -> int:
    """Run `streamgate [options] core [core_argv]` as children, and the bridge from `bridge_config(cores)`.

    The children share this process's standard error (each writes whole lines) and tell their
    address through a pipe of their own (`--ready-fd`), once they listen.
    """
    workers = workers or Workers()
    link_token = secrets.token_urlsafe(32)
    env = {**os.environ, TOKEN_ENV: link_token}
    table = None
    slots: tuple[int, ...] = ()  # the table's file, open here and in each core; its name is gone at once
    if workers.cores > 1:
        from streamgate.core.slots import SlotTable, create_table

        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        fd, path = tempfile.mkstemp(prefix="streamgate-slots-", dir=shm)
        try:
            create_table(path, workers.cores, list(workers.slot_columns), list(workers.slot_budgets))
            table = SlotTable(path)
        finally:
            os.unlink(path)  # nothing is left behind, however this process ends
        slots = (fd,)
    ports: list[int | None] = [None] * workers.cores
    # The link's sockets: in a directory only this user can open, removed at the end.
    sockets = tempfile.mkdtemp(prefix="streamgate-link-") if workers.link == "socket" else None

    def core_argv_of(i: int) -> Callable[[], list[str]]:
        def argv() -> list[str]:
            link = ["--link-listen", f"unix:{sockets}/core-{i}.sock"] if sockets is not None else []
            if workers.cores == 1:
                return [*options, "core", *core_argv, *link]
            port = ports[i] if ports[i] is not None else (workers.grpc_port + i if workers.grpc_port else 0)
            metrics = workers.metrics_port
            extra = [
                "--grpc-port",
                str(port),
                "--metrics-port",
                "off" if metrics is None else str(metrics + i if metrics else 0),
            ]
            table_file = f"/dev/fd/{slots[0]}"  # the child reopens the file it inherits
            return [*options, "core", *core_argv, *extra, *link, "--slots-file", table_file, "--worker", str(i)]

        return argv

    core_env = {name: value for name, value in env.items() if name != SHARED_METRICS_ENV}  # each core its own
    cores = [
        _Child(f"core {i}" if workers.cores > 1 else "core", core_argv_of(i), core_env, slots)
        for i in range(workers.cores)
    ]
    bridge_children: list[_Child] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    bridge: BridgeServer | None = None
    reserved: socket.socket | None = None
    try:
        for core in cores:
            await core.start()
        if not await _until(stopping, *(core.ready for core in cores if core.ready is not None)):
            if stop.is_set():
                return 0
            raise RuntimeError("the core exited before it listened")
        addresses = []
        links: list[str] = []
        for i, core in enumerate(cores):
            assert core.ready is not None
            address: str = core.ready.result()["address"]
            ports[i] = int(address.rpartition(":")[2])
            addresses.append(address)
            if core.ready.result().get("link"):
                links.append(core.ready.result()["link"])
        # Bridge i takes its streams to core i (i modulo the cores) while it takes them, when every core
        # is some bridge's first: each link then carries a whole bridge's streams (see link/pool.py).
        spread = workers.bridges < workers.cores

        def cores_of(i: int, of: list[str] = addresses) -> str:
            first = 0 if spread else i % len(of)
            return ",".join(of[first:] + of[:first])

        core_links = len(links) == len(addresses)  # every core serves its socket (else gRPC for all)
        config = dataclasses.replace(
            bridge_config(cores_of(0)),
            link_token=link_token,
            reuse_port=workers.bridges > 1,
            spread=spread,
            core_link=cores_of(0, links) if core_links else None,
        )
        if workers.bridges > 1 and config.http_port == 0:  # one free port for them all, held while they bind it
            reserved = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
            reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            reserved.bind((config.host, 0))
            config = dataclasses.replace(config, http_port=reserved.getsockname()[1])

        def bridge_argv(i: int) -> list[str]:
            where = ["--core", cores_of(i), "--spread", "on" if spread else "off"]
            if core_links:
                where += ["--core-link", cores_of(i, links)]
            port = ["--host", config.host, "--http-port", str(config.http_port), "--reuse-port", "on"]
            return [*options, "bridge", *workers.bridge_argv, *where, *port]

        # The other bridges first: a process forked once this one's gRPC channels run makes gRPC complain.
        bridge_children = [
            _Child(f"bridge {i}", functools.partial(bridge_argv, i), env) for i in range(1, workers.bridges)
        ]
        for child in bridge_children:
            await child.start()
        bridge = BridgeServer(config)
        await bridge.start()
        if not await _until(stopping, *(child.ready for child in bridge_children if child.ready is not None)):
            if stop.is_set():
                return 0
            raise RuntimeError("a bridge exited before it listened")
        if reserved is not None:
            reserved.close()
        if workers.cores > 1 or workers.bridges > 1:
            logger.info("serving on %s with %d core(s) and %d bridge(s)", bridge.url, workers.cores, workers.bridges)
        gc.freeze()  # what startup left lives as long as the process: keep full collections short
        while True:
            exits: dict[asyncio.Future[Any], _Child] = {
                asyncio.ensure_future(child.process.wait()): child
                for child in (*cores, *bridge_children)
                if child.process
            }
            try:
                done, _ = await asyncio.wait({stopping, *exits}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in exits:
                    waiting.cancel()
            if stopping in done:
                break
            for exited in done:
                child = exits[exited]
                assert child.process is not None
                logger.error("the %s exited with status %s", child.name, child.process.returncode)
                if workers.cores == 1 and child in cores:  # one core: as before workers, the server ends with it
                    await bridge.stop(grace=0)
                    return 1
                if table is not None and child in cores:
                    table.clear(cores.index(child))  # its streams are gone: their slots come back now
                if workers.bridge_metrics is not None and child in bridge_children:
                    from prometheus_client import multiprocess

                    # Its open streams leave the live sum (prometheus_client leaves this untyped).
                    multiprocess.mark_process_dead(child.process.pid, workers.bridge_metrics)  # type: ignore[no-untyped-call]
                await _restart(child, stopping)
                if stop.is_set():
                    break
            if stop.is_set():
                break
        logger.info("shutting down: draining the bridges and the cores")
        bridge.state.draining = True
        for child in (*bridge_children, *cores):
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        await bridge.stop(grace=config.drain_grace + 2.0)
        return 0
    finally:
        await asyncio.gather(*(child.stop() for child in (*bridge_children, *cores)))
        stopping.cancel()
        if reserved is not None:
            reserved.close()
        if table is not None:
            table.close()
        for fd in slots:
            os.close(fd)
        if sockets is not None:
            shutil.rmtree(sockets, ignore_errors=True)
        if workers.bridge_metrics is not None:
            shutil.rmtree(workers.bridge_metrics, ignore_errors=True)


async def _restart(child: _Child, stopping: asyncio.Future[Any]) -> None:
    """Start an exited worker again (after a pause that grows while it keeps exiting soon after its start)."""
    child.quick_exits = child.quick_exits + 1 if time.monotonic() - child.started < QUICK_EXIT else 0
    pause = min(2.0**child.quick_exits - 1, 30.0)
    if pause:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(stopping), pause)
        if stopping.done():
            return
    logger.info("starting the %s again", child.name)
    await child.start()
    assert child.ready is not None
    await _until(stopping, child.ready)
