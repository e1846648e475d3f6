"""`streamgate serve`: the core as a child process, the bridge in this one.

Two processes, so that the core's generation and the bridge's framing each get
a core of the CPU. On SIGTERM or SIGINT the bridge refuses new streams, the
core drains (its open streams finish within the grace, or end with a final
error that the bridge forwards), then both exit.

The link between them (`Relay`) needs a shared secret: a new random link
token each run, handed to the core child through its environment (a command
line is visible to every user of the machine) and to the bridge in its config.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable

from streamgate.bridges.app import BridgeServer
from streamgate.bridges.config import BridgeConfig
from streamgate.link._wire import TOKEN_ENV

logger = logging.getLogger("streamgate.serve")


async def _core_address(read_end: int) -> str:
    """The address the core child writes to its ready pipe once it listens (one JSON line)."""
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
        raise RuntimeError("the core exited before it listened")
    address: str = json.loads(line)["address"]
    return address


async def serve(options: list[str], core_argv: list[str], bridge_config: Callable[[str], BridgeConfig]) -> int:
    """Run `streamgate [options] core [core_argv]` as a child, and the bridge from `bridge_config(address)`.

    The core shares this process's standard error (each writes whole lines) and tells its address
    through a pipe of its own (`--ready-fd`), once it listens.
    """
    link_token = secrets.token_urlsafe(32)
    read_end, write_end = os.pipe()
    try:
        core = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streamgate.cli",
            *options,
            "core",
            *core_argv,
            "--ready-fd",
            str(write_end),
            pass_fds=(write_end,),
            env={**os.environ, TOKEN_ENV: link_token},
        )
    finally:
        os.close(write_end)  # the child holds its own copy: EOF here when it exits
    address = asyncio.ensure_future(_core_address(read_end))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bridge: BridgeServer | None = None
    try:
        waiting: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
        await asyncio.wait([address, waiting], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if not address.done():
            return 0
        config = dataclasses.replace(bridge_config(address.result()), link_token=link_token)
        bridge = BridgeServer(config)
        await bridge.start()
        gc.freeze()  # what startup left lives as long as the process: keep full collections short
        exited: asyncio.Future[int] = asyncio.ensure_future(core.wait())
        await asyncio.wait([waiting, exited], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if exited.done():
            logger.error("the core exited with status %s", core.returncode)
            await bridge.stop(grace=0)
            return 1
        logger.info("shutting down: draining the bridge and the core")
        bridge.state.draining = True
        core.send_signal(signal.SIGTERM)
        await bridge.stop(grace=config.drain_grace + 2.0)
        return 0
    finally:
        if core.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                core.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(core.wait(), 30)
            except TimeoutError:
                core.kill()
                await core.wait()
        if not address.done():
            address.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            await address
