"""`streamgate serve --workers 2` as a user runs it: two core processes and two bridges on one port, and
the limits of the whole server exact across them (the cores count in one table: `streamgate.core.slots`)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamgate.testing.upstream import FakeUpstream, Scenario
from tests.conftest import wait_for_line

LIMIT = 10
MODEL_LIMIT = 2
PER_KEY = 3
NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
KEYS = {name: f"key-of-{name}-0123456789" for name in NAMES}
CONFIG = """
default: fast
models:
  fast:
    model: openai/fake
    api_base: {base}
    api_key_env: WORKERS_TEST_KEY
  slow:
    model: openai/fake
    api_base: {base}
    api_key_env: WORKERS_TEST_KEY
    max_concurrent_streams: {model_limit}
"""


@dataclass
class Serve:
    process: asyncio.subprocess.Process
    url: str
    #: Each core worker's metrics port (0: off), in the order they said they listen.
    metrics: list[int]
    log: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None


async def _start(tmp: Path, upstream: FakeUpstream | None, *extra: str, **env_extra: str) -> Serve:
    env = {
        **os.environ,
        "STREAMGATE_GRPC_PORT": "0",
        "STREAMGATE_HTTP_PORT": "0",
        "STREAMGATE_METRICS_PORT": "0",
        "STREAMGATE_DRAIN_GRACE": "0.5",
        "STREAMGATE_DATA_DIR": str(tmp / "data"),
        "WORKERS_TEST_KEY": "sk-test-0123456789",
        **env_extra,
    }
    argv = ["serve", "--workers", "2", *extra]
    if upstream is not None:
        (tmp / "models.yaml").write_text(CONFIG.format(base=upstream.api_base, model_limit=MODEL_LIMIT))
        argv += ["--config", str(tmp / "models.yaml")]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamgate.cli", *argv, env=env, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    metrics: list[int] = []
    async with asyncio.timeout(60):
        while len(metrics) < 2:
            port = await wait_for_line(process.stderr, r"core listening on \S+ \(.*metrics on (\w+)")
            metrics.append(int(port) if port.isdigit() else 0)
    url = await wait_for_line(process.stderr, r"bridge listening on (\S+)")
    serve = Serve(process, url, metrics)

    async def read() -> None:  # keep the pipe drained (and the lines, for the assertions)
        assert process.stderr is not None
        while line := await process.stderr.readline():
            serve.log.append(line.decode())

    serve.reader = asyncio.create_task(read())
    # Serve says so once every bridge listens: until then the kernel gives every connection to the first.
    await _until(lambda: _logged(serve, "serving on "), within=60)
    async with aiohttp.ClientSession() as http:  # every core answers
        for _ in range(4):
            await _until(lambda: _ready(http, url))
    return serve


async def _until(predicate: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll `predicate` until it holds; fail after `within` seconds."""
    for _ in range(int(within / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {within} s")


async def _ready(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(f"{url}/readyz") as response:
        return response.status == 200


async def _stop(serve: Serve) -> int:
    if serve.process.returncode is None:
        serve.process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(20):
            return await serve.process.wait()
    finally:
        if serve.process.returncode is None:
            serve.process.kill()
            await serve.process.wait()
        if serve.reader is not None:
            serve.reader.cancel()


@pytest.fixture(scope="module")
async def stalled(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FakeUpstream]:
    """An upstream whose answers start and then wait: a stream holds its slot until its client leaves."""
    upstream = FakeUpstream(Scenario(tokens=200, delay=0.05))
    await upstream.start()
    yield upstream
    await upstream.close()


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory, stalled: FakeUpstream) -> AsyncIterator[Serve]:
    keys = ",".join(f"{name}:{key}" for name, key in KEYS.items())
    serve = await _start(
        tmp_path_factory.mktemp("workers"),
        stalled,
        STREAMGATE_MAX_CONCURRENT_STREAMS=str(LIMIT),
        STREAMGATE_MAX_STREAMS_PER_KEY=str(PER_KEY),
        STREAMGATE_API_KEYS=keys,
    )
    yield serve
    assert await _stop(serve) == 0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
        yield session


async def _open(
    http: aiohttp.ClientSession,
    serve: Serve,
    holders: list[str],
    model: str = "fast",
    firsts: dict[aiohttp.ClientResponse, bytes] | None = None,
    **params: str,
) -> tuple[list[aiohttp.ClientResponse], list[aiohttp.ClientResponse]]:
    """Open one stream per holder at once: (admitted ones, still open; refused ones). `firsts`: where
    to keep each admitted stream's first frame."""

    async def one(holder: str) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bearer {KEYS[holder]}"}
        response = await http.get(
            f"{serve.url}/query/stream", params={"query": "hi", "model": model, **params}, headers=headers
        )
        if response.status == 200:
            first = await response.content.readuntil(b"\n\n")  # its first chunk: it runs
            if firsts is not None:
                firsts[response] = first
        return response

    responses = await asyncio.gather(*(one(holder) for holder in holders))
    admitted = [r for r in responses if r.status == 200]
    refused = [r for r in responses if r.status != 200]
    for response in refused:
        assert response.status == 429, await response.text()
    return admitted, refused


async def _refusals(refused: list[aiohttp.ClientResponse]) -> list[str]:
    messages = [json.loads(await r.text())["error"]["message"] for r in refused]
    for r in refused:
        r.close()
    return messages


def _close(responses: list[aiohttp.ClientResponse]) -> None:
    for response in responses:
        response.close()


async def _metric(http: aiohttp.ClientSession, port: int, name: str) -> float:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def _active(http: aiohttp.ClientSession, serve: Serve) -> list[float]:
    return [await _metric(http, port, "streamgate_active_streams") for port in serve.metrics]


async def _all_ended(http: aiohttp.ClientSession, serve: Serve) -> None:
    async def idle() -> bool:
        return sum(await _active(http, serve)) == 0

    await _until(idle)


async def test_the_concurrency_limit_is_the_servers_across_two_core_workers(
    server: Serve, http: aiohttp.ClientSession
) -> None:
    holders = [*NAMES, "alice", "bob", "carol"]  # 13 streams, at most 2 a key: only the server's limit applies
    admitted, refused = await _open(http, server, holders)
    try:
        assert (len(admitted), len(refused)) == (LIMIT, len(holders) - LIMIT)
        assert await _refusals(refused) == [f"too many concurrent streams (limit {LIMIT}); retry shortly"] * 3
        assert sum(await _active(http, server)) == LIMIT
    finally:
        _close(admitted)
    await _all_ended(http, server)  # the clients left: every slot comes back ...
    admitted, refused = await _open(http, server, holders[:LIMIT])
    _close(admitted)
    assert (len(admitted), refused) == (LIMIT, [])  # ... and is taken again
    await _all_ended(http, server)


async def test_the_per_key_and_per_model_limits_are_the_servers_across_two_core_workers(
    server: Serve, http: aiohttp.ClientSession
) -> None:
    admitted, refused = await _open(http, server, ["alice"] * (PER_KEY + 2))
    _close(admitted)
    assert len(admitted) == PER_KEY
    assert (
        await _refusals(refused)
        == [f"too many concurrent streams for this API key (limit {PER_KEY}); retry shortly"] * 2
    )
    await _all_ended(http, server)

    admitted, refused = await _open(http, server, ["alice", "bob", "carol", "dave"], model="slow")
    _close(admitted)
    assert len(admitted) == MODEL_LIMIT
    expected = f"too many concurrent streams of model 'slow' (limit {MODEL_LIMIT}); retry shortly"
    assert await _refusals(refused) == [expected] * 2
    await _all_ended(http, server)


async def test_streams_that_end_give_their_slots_back(
    server: Serve, http: aiohttp.ClientSession, stalled: FakeUpstream
) -> None:
    stalled.default = Scenario(tokens=3, delay=0.05)
    try:
        for _ in range(3):  # three rounds of the whole limit, each stream read to its end
            admitted, refused = await _open(http, server, list(NAMES))
            assert (len(admitted), refused) == (LIMIT, [])
            for response in admitted:
                assert b'"is_final": true' in await response.read()
                response.close()
    finally:
        stalled.default = Scenario(tokens=200, delay=0.05)
    await _all_ended(http, server)


def _frame(block: bytes) -> tuple[str, dict[str, Any]]:
    fields = dict(line.split(": ", 1) for line in block.decode().strip().splitlines() if ": " in line)
    return fields["id"], json.loads(fields["data"])


async def _on_both_cores(
    http: aiohttp.ClientSession,
    serve: Serve,
    holders: list[str],
    firsts: dict[aiohttp.ClientResponse, bytes],
    **params: str,
) -> tuple[list[str], list[aiohttp.ClientResponse]]:
    """Streams opened one at a time (a new connection each: the kernel picks its bridge, and each bridge
    takes its streams to its own core) until both cores run some: (their holders, their responses)."""
    opened: list[aiohttp.ClientResponse] = []
    for holder in holders:
        admitted, refused = await _open(http, serve, [holder], firsts=firsts, **params)
        assert refused == []
        opened += admitted
        if len(opened) >= 2 and all(a > 0 for a in await _active(http, serve)):
            return holders[: len(opened)], opened
    raise AssertionError(f"every stream went to one core: {await _active(http, serve)}")


async def test_resume_with_last_event_id_finds_the_core_that_runs_the_stream(
    server: Serve, http: aiohttp.ClientSession, stalled: FakeUpstream
) -> None:
    stalled.default = Scenario(tokens=40, delay=0.02)
    try:
        async with asyncio.timeout(20):
            blocks: dict[aiohttp.ClientResponse, bytes] = {}
            holders, admitted = await _on_both_cores(http, server, list(NAMES), blocks, resumable="1")
            firsts = []
            for response in admitted:  # drop each connection after its first chunk
                firsts.append(_frame(blocks[response]))
                response.close()
            for holder, (last_id, first) in zip(holders, firsts, strict=True):  # come back, through either bridge
                stream_id = last_id.rpartition(":")[0]
                headers = {"Authorization": f"Bearer {KEYS[holder]}", "Last-Event-ID": last_id}
                async with http.get(f"{server.url}/query/stream/{stream_id}", headers=headers) as response:
                    assert response.status == 200, await response.text()
                    rest = [_frame(block) for block in (await response.read()).split(b"\n\n") if block.strip()]
                frames = [first, *(data for _, data in rest)]
                assert frames[-1]["is_final"] and sum(f["is_final"] for f in frames) == 1
                assert "error" not in frames[-1] or not frames[-1]["error"], frames[-1]
                assert "".join(f["content"] for f in frames[:-1]) == frames[-1]["metadata"]["final_response"]
    finally:
        stalled.default = Scenario(tokens=200, delay=0.05)
    await _all_ended(http, server)


async def test_a_killed_core_workers_slots_come_back_and_it_is_started_again(
    server: Serve, http: aiohttp.ClientSession
) -> None:
    """Last of the module's tests on `server`: the restarted core has another metrics port."""
    _, admitted = await _on_both_cores(http, server, list(NAMES), {})
    active = await _active(http, server)
    victim = 0 if active[0] >= active[1] else 1
    survivors = len(admitted) - int(active[victim])
    os.kill(_pid_listening_on(server.metrics[victim]), signal.SIGKILL)
    await _until(lambda: _logged(server, "exited with status -9"))
    # Its streams ended with it: their slots are the server's again at once (while it starts again).
    room = LIMIT - survivors
    more, refused = await _open(http, server, list(reversed(NAMES))[:room])  # at most 2 a key, with the first ones
    assert (len(more), refused) == (room, [])
    extra, refused = await _open(http, server, ["judy"])
    assert (extra, len(refused)) == ([], 1)  # and the limit still holds, exactly
    _close(admitted + more)
    await _until(lambda: _logged(server, "starting the core"))
    found = await wait_for_line_in(server, r"core listening on \S+ \(.*metrics on (\d+)", after="starting the core")
    server.metrics[victim] = int(found)
    await _all_ended(http, server)
    admitted, refused = await _open(http, server, list(NAMES))
    _close(admitted)
    assert (len(admitted), refused) == (LIMIT, [])
    await _all_ended(http, server)


async def _logged(serve: Serve, text: str) -> bool:
    return any(text in line for line in serve.log)


async def wait_for_line_in(serve: Serve, pattern: str, after: str, within: float = 30.0) -> str:
    """The first group of the first line matching `pattern` logged after a line that holds `after`."""
    async with asyncio.timeout(within):
        while True:
            lines = serve.log[next(i for i, line in enumerate(serve.log) if after in line) :]
            for line in lines:
                if found := re.search(pattern, line):
                    return found.group(1)
            await asyncio.sleep(0.05)


def _pid_listening_on(port: int) -> int:
    """The process that listens on a loopback TCP port (from /proc: Linux)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == "0A":  # 0A: listening
            inode = fields[9]
    assert inode is not None, f"nothing listens on {port}"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return int(pid)
        except OSError:
            continue
    raise AssertionError(f"no process of ours holds the socket of port {port}")


async def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    """Two cores on the embedded model, two bridges: a stream open at SIGTERM gets the cores' final
    frame, and serve exits 0 once every child has."""
    serve = await _start(tmp_path, None, STREAMGATE_TOKENS_PER_SECOND="20", STREAMGATE_METRICS_PORT="off")
    try:
        async with aiohttp.ClientSession() as http:
            responses = [
                await http.post(f"{serve.url}/query/stream", json={"query": "Tell me about streaming"})
                for _ in range(4)
            ]
            for response in responses:
                await response.content.readuntil(b"\n\n")
            serve.process.send_signal(signal.SIGTERM)
            finals = []
            for response in responses:
                frames = [_frame(b) for b in (await response.read()).split(b"\n\n") if b.strip()]
                finals.append(frames[-1][1])
                response.close()
        assert [f["error"] for f in finals] == ["the server is shutting down"] * 4
        assert all(f["is_final"] for f in finals)
        assert await _stop(serve) == 0
        assert not any("Traceback" in line for line in serve.log), "".join(serve.log)
    finally:
        await _stop(serve)


def _alive(pids: list[int]) -> bool:
    return any(Path(f"/proc/{pid}").exists() for pid in pids)


def _children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


async def test_a_serve_killed_with_sigkill_leaves_no_worker_behind(tmp_path: Path) -> None:
    serve = await _start(tmp_path, None, STREAMGATE_METRICS_PORT="off")
    children = _children(serve.process.pid)
    assert len(children) == 3  # two cores and the second bridge
    serve.process.kill()
    await serve.process.wait()

    async def gone() -> bool:
        return not _alive(children)

    await _until(gone, within=20.0)
    if serve.reader is not None:
        serve.reader.cancel()


def _bridge_figure(text: str, name: str, **labels: str) -> float:
    """One sample of a bridge's `/metrics` text (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric.startswith(name + "{") and ",".join(sorted(metric[len(name) + 1 : -1].split(","))) == wanted:
            return float(value)
    return 0.0


async def test_metrics_on_the_shared_port_count_every_bridges_streams(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Two bridges share the HTTP port, and the kernel gives each new connection to either: `/metrics`,
    whichever bridge answers, sums both (12 streams over 12 connections all on one bridge, and 8 scrapes
    all answered by it, would be a chance of about 1 in 2^19)."""
    quick = FakeUpstream(Scenario(tokens=3))
    await quick.start()
    serve = await _start(tmp_path, quick)
    try:
        for _ in range(12):  # `http` closes each connection: each stream on a new one
            async with http.post(f"{serve.url}/query/stream", json={"query": "hi"}) as response:
                assert response.status == 200
                assert b'"is_final": true' in await response.read()

        async def completed() -> float:
            async with http.get(f"{serve.url}/metrics") as response:
                text = await response.text()
            return _bridge_figure(text, "streamgate_bridge_streams_total", outcome="completed", transport="sse")

        async def counted() -> bool:  # a stream is counted just after its last byte is sent
            return await completed() == 12

        await _until(counted)
        for _ in range(8):
            async with http.get(f"{serve.url}/metrics") as response:
                text = await response.text()
            assert _bridge_figure(text, "streamgate_bridge_streams_total", outcome="completed", transport="sse") == 12
            # At least a content frame and the final one a stream (the core may send tokens that wait as one).
            assert _bridge_figure(text, "streamgate_bridge_frames_total", transport="sse") >= 12 * 2
    finally:
        assert await _stop(serve) == 0
        await quick.close()


async def test_metrics_on_the_shared_port_show_every_bridges_open_streams(
    server: Serve, http: aiohttp.ClientSession
) -> None:
    await _all_ended(http, server)
    opened, refused = await _open(http, server, list(NAMES[:6]))  # each on a connection of its own
    try:
        assert len(opened) == 6 and not refused
        for _ in range(8):
            async with http.get(f"{server.url}/metrics") as response:
                text = await response.text()
            assert _bridge_figure(text, "streamgate_bridge_open_streams", transport="sse") == 6
    finally:
        _close(opened)

    async def none_open() -> bool:
        async with http.get(f"{server.url}/metrics") as response:
            return _bridge_figure(await response.text(), "streamgate_bridge_open_streams", transport="sse") == 0

    await _until(none_open)
