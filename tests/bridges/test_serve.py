"""`streamgate serve` as a user runs it: core and bridge together, then SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp

from streamgate.testing.sse import read_events
from tests.conftest import process_env, wait_for_line


async def test_serve_streams_the_default_model_over_http_and_drains_on_sigterm() -> None:
    env = process_env(STREAMGATE_TOKENS_PER_SECOND="20", STREAMGATE_DRAIN_GRACE="0.5")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamgate.cli", "serve", env=env, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    try:
        # Start-up may take seconds (litellm's import, for a model that needs it): a person is told at once.
        async with asyncio.timeout(5.0):  # Python's own start-up only (a loaded CI machine: seconds, not ten)
            first = (await process.stderr.readline()).decode()
        assert "starting the core and the bridge..." in first
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


def _link_folders(tmp: Path) -> list[Path]:
    return list(tmp.glob("streamgate-link-*"))


def _unix_sockets_at(path: str) -> int:
    """Unix sockets the kernel names with `path`: its listener, and each connection accepted on it."""
    with open("/proc/net/unix") as table:
        return sum(line.rstrip().endswith(" " + path) for line in table)


async def _serve(tmp: str, *flags: str) -> tuple[asyncio.subprocess.Process, str]:
    # TMPDIR: where serve makes the link's folder
    env = process_env(STREAMGATE_TOKENS_PER_SECOND="0", STREAMGATE_LEDGER="off", TMPDIR=tmp)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamgate.cli", "serve", *flags, env=env, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    url = await wait_for_line(process.stderr, r"bridge listening on (\S+)")
    return process, url


async def _one_stream(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/query/stream", params={"query": "Hello", "max_tokens": "3"}) as response:
            frames = [frame async for frame in read_events(response)]
    return frames[-1]


async def test_serve_links_its_bridge_and_core_over_a_unix_socket_only_its_user_opens(tmp_path: Path) -> None:
    process, url = await _serve(str(tmp_path))
    try:
        (folder,) = _link_folders(tmp_path)
        socket_file = folder / "core-0.sock"
        assert stat.S_ISSOCK(socket_file.stat().st_mode)
        assert folder.stat().st_mode & 0o077 == 0 and socket_file.stat().st_mode & 0o077 == 0
        final = await _one_stream(url)
        assert final["metadata"]["final_response"] == "Hello! I am"  # type: ignore[index]
        assert _unix_sockets_at(str(socket_file)) >= 2, "the bridge's link is a connection on the socket"
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await process.wait() == 0
        assert not folder.exists(), "nothing is left behind"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_serve_with_link_grpc_links_over_the_relay_call_and_makes_no_socket(tmp_path: Path) -> None:
    process, url = await _serve(str(tmp_path), "--link", "grpc")
    try:
        final = await _one_stream(url)
        assert final["metadata"]["final_response"] == "Hello! I am"  # type: ignore[index]
        assert not _link_folders(tmp_path)
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await process.wait()
