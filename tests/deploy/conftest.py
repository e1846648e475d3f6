"""The load-balanced set on loopback: nginx (Debian's package, run by the test as any user) with the shipped
deploy/nginx/streamgate.conf, in front of two bridges and two cores, each its own process, and the
OpenAI-compatible test upstream. The bridges reach the cores through nginx's link listener, as deployed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from streamgate.testing.sse import read_events
from streamgate.testing.upstream import FakeUpstream, Scenario
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import LINK_TOKEN

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "nginx" / "streamgate.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_INSTALLED = os.path.exists(NGINX)
#: The placeholders of deploy/nginx/streamgate.conf (the envsubst list its header gives).
PLACEHOLDERS = (
    "STREAMGATE_HTTP_LISTEN",
    "STREAMGATE_GRPC_LISTEN",
    "STREAMGATE_LINK_LISTEN",
    "STREAMGATE_BRIDGE_1",
    "STREAMGATE_BRIDGE_2",
    "STREAMGATE_CORE_1",
    "STREAMGATE_CORE_2",
)


def render(template: str, values: Mapping[str, str]) -> str:
    """What `envsubst '${A} ${B} ...'` makes of the template: the listed placeholders, nothing else."""
    assert set(values) == set(PLACEHOLDERS), sorted(set(values) ^ set(PLACEHOLDERS))
    text = template
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    left = re.findall(r"\$\{\w+\}", text)
    assert not left, f"placeholders the list does not name: {left}"
    return text


def main_conf(prefix: Path, include: Path) -> str:
    """The main context around the shipped http-context file, for an nginx of our own: every path in
    `prefix` (pid, logs, temp files), in the foreground, one worker."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind};" for kind in kinds)
    # Run by root, nginx would hand its workers to `nobody`, who cannot enter pytest's private tmp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format upstream '$remote_addr "$request" $status $body_bytes_sent upstream=$upstream_addr '
                        'upstream_status=$upstream_status time=$request_time';
    access_log {prefix}/access.log upstream;
{temp}
    include {include};
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    """A `streamgate core` or `streamgate bridge` process; its log (stdout and stderr) is a file."""

    name: str
    process: asyncio.subprocess.Process
    log: Path
    #: HOST:PORT of a core, the URL of a bridge.
    address: str

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes `pid` started (nginx's workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
    await process.wait()


def _tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


async def _wait_for_log(process: asyncio.subprocess.Process, log: Path, pattern: str, within: float) -> str:
    deadline = time.monotonic() + within
    while True:
        if found := re.search(pattern, await asyncio.to_thread(_tail, log, 1_000_000)):
            return found.group(1)
        if process.returncode is not None:
            raise AssertionError(f"{log.name}: the process ended ({process.returncode}):\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{log.name}: no {pattern!r} within {within} s:\n{_tail(log)}")
        await asyncio.sleep(0.05)


async def start_streamgate(name: str, args: list[str], logs: Path, pattern: str) -> Process:
    env = dict(
        os.environ,
        OPENAI_API_KEY="test-key",
        STREAMGATE_LINK_TOKEN=LINK_TOKEN,
        STREAMGATE_LOG_LEVEL="INFO",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_OFFLINE_MODE="true",
        HF_HUB_OFFLINE="1",
    )
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamgate.cli", *args,
            stdout=out, stderr=asyncio.subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip
    try:
        address = await _wait_for_log(process, log, pattern, within=90)
    except BaseException:
        await _stop(process)
        raise
    return Process(name, process, log, address)


@dataclass
class LoadBalancedSet:
    upstream: FakeUpstream
    cores: list[Process]
    bridges: list[Process]
    nginx: asyncio.subprocess.Process
    prefix: Path
    #: nginx's HTTP listener (browsers, SSE, WebSocket, /v1), its gRPC listener (clients), its link listener.
    url: str
    grpc_address: str
    link_address: str
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def stub(self, address: str) -> pb_grpc.StreamGateServiceStub:
        if address not in self.channels:
            self.channels[address] = grpc.aio.insecure_channel(address)
        return pb_grpc.StreamGateServiceStub(self.channels[address])

    async def core_metrics(self, core: Process) -> pb.GetMetricsResponse:
        answer: pb.GetMetricsResponse = await self.stub(core.address).GetMetrics(pb.GetMetricsRequest(), timeout=5)
        return answer

    def nginx_log(self) -> str:
        return "\n".join(f"--- {name}\n{_tail(self.prefix / name)}" for name in ("error.log", "access.log"))


async def bridge_metric(http: aiohttp.ClientSession, bridge: Process, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels, from the bridge's own /metrics (read directly)."""
    async with http.get(f"{bridge.address}/metrics") as response:
        text = await response.text()
    total = 0.0
    for sample, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        if labels.items() <= dict(re.findall(r'(\w+)="([^"]*)"', sample)).items():
            total += float(value)
    return total


async def bridge_open_streams(http: aiohttp.ClientSession, bridge: Process, transport: str) -> int:
    """Streams of this transport ("sse", "websocket") the bridge has open now."""
    return int(await bridge_metric(http, bridge, "streamgate_bridge_open_streams", transport=transport))


async def bridge_completed_sse(http: aiohttp.ClientSession, bridge: Process) -> int:
    """SSE streams the bridge ended with a completion (the outcome label says "OK" or, later, "completed")."""
    name = "streamgate_bridge_streams_total"
    labelled = [await bridge_metric(http, bridge, name, transport="sse", outcome=o) for o in ("OK", "completed")]
    return int(sum(labelled))


async def _until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


async def _answers(http: aiohttp.ClientSession, url: str, status: int = 200) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == status
    except aiohttp.ClientError:
        return False


@contextlib.asynccontextmanager
async def load_balanced_set(
    prefix: Path, core_extra: list[str] | None = None, key: str | None = None
) -> AsyncIterator[LoadBalancedSet]:
    """Start the test upstream, two cores, two bridges (whose link goes through nginx) and nginx.

    Each bridge runs one short stream before this yields, bridge 1 first: the bridges' Relay calls are
    then open, one on each core (nginx's least_conn), as a set that has served a while has them.
    `core_extra`: more flags for both cores (e.g. --redis-url); `key`: the API key of the warm-up streams."""
    assert NGINX_INSTALLED, f"nginx is not installed ({NGINX}): scripts/setup installs Debian's"
    logs = prefix / "logs"
    await asyncio.to_thread(logs.mkdir, parents=True, exist_ok=True)
    upstream = FakeUpstream(Scenario(tokens=3))
    await upstream.start()
    http_port, grpc_port, link_port = free_port(), free_port(), free_port()
    processes: list[Process] = []
    nginx: asyncio.subprocess.Process | None = None
    lb: LoadBalancedSet | None = None
    try:
        core_args = ["core", "--grpc-port", "0", "--metrics-port", "off", "--model", "openai/fake"]
        core_args += ["--api-base", upstream.api_base, "--drain-grace", "0.5", *(core_extra or [])]
        starting = [start_streamgate(f"core-{i}", core_args, logs, r"core listening on (\S+)") for i in (1, 2)] + [
            start_streamgate(
                f"bridge-{i}",
                ["bridge", "--core", f"127.0.0.1:{link_port}", "--http-port", "0", "--drain-grace", "0.5"],
                logs,
                r"bridge listening on (\S+)",
            )
            for i in (1, 2)
        ]
        results = await asyncio.gather(*starting, return_exceptions=True)
        processes = [r for r in results if isinstance(r, Process)]
        for result in results:
            if isinstance(result, BaseException):
                raise result
        cores, bridges = processes[:2], processes[2:]

        conf = render(
            TEMPLATE.read_text(),
            {
                "STREAMGATE_HTTP_LISTEN": f"127.0.0.1:{http_port}",
                "STREAMGATE_GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
                "STREAMGATE_LINK_LISTEN": f"127.0.0.1:{link_port}",
                "STREAMGATE_BRIDGE_1": bridges[0].address.removeprefix("http://"),
                "STREAMGATE_BRIDGE_2": bridges[1].address.removeprefix("http://"),
                "STREAMGATE_CORE_1": cores[0].address,
                "STREAMGATE_CORE_2": cores[1].address,
            },
        )
        (prefix / "streamgate.conf").write_text(conf)
        (prefix / "nginx.conf").write_text(main_conf(prefix, prefix / "streamgate.conf"))
        nginx_out = (prefix / "nginx.out").open("wb")
        nginx = await asyncio.create_subprocess_exec(
            NGINX, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log"),
            stdout=nginx_out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        nginx_out.close()
        url = f"http://127.0.0.1:{http_port}"
        lb = LoadBalancedSet(
            upstream, cores, bridges, nginx, prefix, url, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{link_port}"
        )
        async with aiohttp.ClientSession() as http:

            async def nginx_up() -> bool:
                assert nginx is not None
                if nginx.returncode is not None:
                    raise AssertionError(f"nginx ended ({nginx.returncode}):\n{_tail(prefix / 'nginx.out')}")
                return await _answers(http, f"{url}/nginx/healthz")

            await _until(nginx_up, 10, "nginx answers")
            for bridge in bridges:  # the bridge reaches a core through nginx's link listener
                await _until(lambda b=bridge: _answers(http, f"{b.address}/readyz"), 30, f"{bridge.name} ready")
            warm_headers = {"Authorization": f"Bearer {key}"} if key else {}
            for bridge in bridges:
                async with http.post(
                    f"{bridge.address}/query/stream", json={"query": "warm"}, headers=warm_headers
                ) as response:
                    frames = [frame async for frame in read_events(response)]
                assert frames[-1]["metadata"].get("finish_reason") == "stop", frames[-1]
        yield lb
    finally:
        if lb is not None:
            for channel in lb.channels.values():
                await channel.close()
        if nginx is not None and nginx.returncode is None:
            nginx.send_signal(signal.SIGQUIT)
            try:
                await asyncio.wait_for(nginx.wait(), 5)
            except TimeoutError:
                await _stop(nginx)
        for process in processes:
            await _stop(process.process)
        await upstream.close()


@pytest.fixture(scope="module")
async def shared_set(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LoadBalancedSet]:
    """One set for the tests that kill nothing."""
    async with load_balanced_set(tmp_path_factory.mktemp("nginx-set")) as lb:
        yield lb


@pytest.fixture
async def own_set(tmp_path: Path) -> AsyncIterator[LoadBalancedSet]:
    """A set of its own, for a test that kills a part of it."""
    async with load_balanced_set(tmp_path / "set") as lb:
        yield lb
