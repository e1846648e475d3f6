"""`streamgate serve` as a user runs it: core and bridge together, then SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import aiohttp

from streamgate.testing.sse import read_events
from tests.conftest import wait_for_line


async def test_serve_streams_the_default_model_over_http_and_drains_on_sigterm() -> None:
    env = dict(
        os.environ,
        STREAMGATE_GRPC_PORT="0",
        STREAMGATE_HTTP_PORT="0",
        STREAMGATE_METRICS_PORT="off",
        STREAMGATE_TOKENS_PER_SECOND="20",
        STREAMGATE_DRAIN_GRACE="0.5",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamgate.cli", "serve", env=env, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    try:
        # Start-up takes about 10 s (litellm's import): a person is told so at once, not left at a silent prompt.
        async with asyncio.timeout(5.0):  # Python's own start-up only (a loaded CI machine: seconds, not ten)
            first = (await process.stderr.readline()).decode()
        assert "starting: loading the model library (about 10 s)..." in first
        url = await wait_for_line(process.stderr, r"bridge listening on (\S+)")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/query/stream", params={"query": "Hello", "max_tokens": "3"}) as response:
                quick = [frame async for frame in read_events(response)]
            async with http.get(f"{url}/") as page:
                assert "streamgate" in await page.text()

            response = await http.post(f"{url}/query/stream", json={"query": "Tell me about streaming"})
            await response.content.readuntil(b"\n\n")
            process.send_signal(signal.SIGTERM)
            frames = [frame async for frame in read_events(response)]
            response.close()

        assert quick[-1]["metadata"]["final_response"] == "Hello! I am"
        assert frames[-1]["is_final"] is True
        assert frames[-1]["error"] == "the server is shutting down"
        assert sum(f["is_final"] for f in frames) == 1
        async with asyncio.timeout(15):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
