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
import logging
import os
import re
import secrets
import signal
import sys
from collections.abc import Callable

from streamgate.bridges.app import BridgeServer
from streamgate.bridges.config import BridgeConfig

logger = logging.getLogger("streamgate.serve")
_LISTENING = re.compile(r"core listening on (\S+)")
#: The variable that hands the core child its link token (the `--link-token` flag's).
LINK_TOKEN_ENV = "STREAMGATE_LINK_TOKEN"


async def _relay(stream: asyncio.StreamReader, found: asyncio.Future[str]) -> None:
    """Copy the core's log to ours; resolve `found` with its address when it listens."""
    while line := await stream.readline():
        sys.stderr.write(line.decode(errors="replace"))
        if not found.done() and (match := _LISTENING.search(line.decode(errors="replace"))):
            found.set_result(match.group(1))
    if not found.done():
        found.set_exception(RuntimeError("the core exited before it listened"))


async def serve(options: list[str], core_argv: list[str], bridge_config: Callable[[str], BridgeConfig]) -> int:
    """Run `streamgate [options] core [core_argv]` as a child, and the bridge from `bridge_config(address)`."""
    link_token = secrets.token_urlsafe(32)
    core = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streamgate.cli",
        *options,
        "core",
        *core_argv,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, LINK_TOKEN_ENV: link_token},
    )
    assert core.stderr is not None
    address: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    relay = asyncio.create_task(_relay(core.stderr, address))
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
        await relay
