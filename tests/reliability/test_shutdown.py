"""SIGTERM to `streamgate serve` while 100 streams run: each gets one whole final frame; both processes exit."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import aiohttp

from streamgate.testing.sse import SSEParser
from tests.conftest import process_env, wait_for_line

STREAMS = 100
GRACE = 1.0


async def _read_all(response: aiohttp.ClientResponse) -> tuple[list[dict[str, object]], bytes]:
    parser = SSEParser()
    frames: list[dict[str, object]] = []
    async with response:
        async for data in response.content.iter_any():
            frames.extend(json.loads(event) for event in parser.feed(data))  # a cut frame would not parse
    return frames, parser.pending


async def test_sigterm_while_100_streams_run() -> None:
    env = process_env(
        STREAMGATE_TOKENS_PER_SECOND="10", STREAMGATE_DRAIN_GRACE=str(GRACE), STREAMGATE_LOG_LEVEL="WARNING"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamgate.cli", "--log-level", "INFO", "serve", env=env, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    try:
        url = await wait_for_line(process.stderr, r"bridge listening on (\S+)")
        drain_log = asyncio.create_task(process.stderr.read())
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            responses = await asyncio.gather(
                *(http.post(f"{url}/query/stream", json={"query": "Tell me about streaming"}) for _ in range(STREAMS))
            )
            assert [r.status for r in responses] == [200] * STREAMS
            for response in responses:
                await response.content.readuntil(b"\n\n")
            readers = [asyncio.create_task(_read_all(r)) for r in responses]

            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            results = await asyncio.gather(*readers)

        for frames, rest in results:
            assert rest == b"", "nothing cut mid-frame"
            assert sum(bool(f["is_final"]) for f in frames) == 1
            assert frames[-1]["is_final"] is True
            assert frames[-1]["error"] == "the server is shutting down"
        async with asyncio.timeout(GRACE + 10):
            assert await process.wait() == 0
        assert time.monotonic() - signalled < GRACE + 10
        await drain_log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
