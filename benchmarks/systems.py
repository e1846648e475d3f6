"""The systems compared, each started as its own processes against one fake upstream.

- `streamgate`: `streamgate core` (gRPC, litellm) and `streamgate bridge` (SSE), two processes; with
  `--workers N` (N > 1), `streamgate serve --workers N` (N cores, N bridges on one port) instead;
- `raw-grpc`, `raw-sse`: servers that make the tokens themselves (benchmarks/raw_servers.py), the
  floor of each transport;
- `litellm-proxy`: LiteLLM's own proxy (`litellm --config`), the gateway users would pick instead,
  read through its OpenAI-compatible `POST /v1/chat/completions` with `stream: true`;
- `litellm-proxy-rust`: the same proxy with `LITELLM_RUST=true` (its packaged Rust bridge), in the steady
  phase only (benchmarks/README.md says what the switch does and does not move to native code).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import secrets
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import procs, sgload
from benchmarks.load import Target
from benchmarks.procs import Server

BIN = Path(sys.executable).parent
PYTHON = sys.executable
PROMPT = [{"role": "user", "content": "go"}]


@dataclass(frozen=True)
class Pace:
    """What the upstream (or a raw server) sends for each request."""

    tokens: int
    delay: float = 0.0
    first_token_delay: float = 0.0

    def argv(self) -> list[str]:
        delays = ["--delay", str(self.delay), "--first-token-delay", str(self.first_token_delay)]
        return ["--tokens", str(self.tokens), *delays]


@dataclass
class Upstream:
    """The fake OpenAI-compatible upstream (streamgate.testing.upstream) and its counters."""

    server: Server
    session: aiohttp.ClientSession

    @property
    def api_base(self) -> str:
        return self.server.address

    @property
    def target(self) -> Target:
        """A client that reads the upstream directly: its own time to first token."""
        return openai_target(f"{self.api_base}/chat/completions", "fake", {})

    async def counters(self) -> dict[str, int]:
        url = self.api_base.removesuffix("/v1") + "/counters"
        async with self.session.get(url) as response:
            counters: dict[str, int] = await response.json()
            return counters


#: The command line of a server process by its role (upstream, core, bridge), from its arguments:
#: the plain command by default; benchmarks.trace runs each through its hooks instead.
Launch = Callable[[str, list[str]], list[str]]


def plain(role: str, args: list[str]) -> list[str]:
    if role == "upstream":
        return [PYTHON, "-m", "streamgate.testing.upstream", *args]
    return [*_command("streamgate", "streamgate.cli"), *args]


async def start_upstream(
    pace: Pace, session: aiohttp.ClientSession, port: int, launch: Launch = plain, go: Path | None = None
) -> Upstream:
    """The upstream on `port`: restarted there with each new pace, the gateways in front keep its URL.
    `go`: sgload's (benchmarks.sgload) rather than streamgate.testing.upstream."""
    if go is not None:
        argv = sgload.upstream_argv(go, port, pace)
        return Upstream(await procs.start("upstream", argv, r"upstream listening on (\S+)"), session)
    argv = launch("upstream", ["--port", str(port), *pace.argv()])
    return Upstream(await procs.start("upstream", argv, r"upstream listening on (\S+)"), session)


@dataclass
class Deployment:
    """One system running: how clients reach it, and its server processes (whose CPU and memory count)."""

    system: str
    target: Target
    servers: dict[str, Server]
    uses_upstream: bool

    def cpu(self) -> dict[str, float]:
        return {name: server.cpu() for name, server in self.servers.items()}

    def rss(self) -> dict[str, int]:
        return {name: server.rss() for name, server in self.servers.items()}

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers.values()))


def openai_target(url: str, model: str, headers: dict[str, str]) -> Target:
    body: dict[str, Any] = {"model": model, "messages": PROMPT, "stream": True}
    return Target("sse", url, body, headers, dialect="openai")


def _command(name: str, module: str) -> list[str]:
    script = BIN / name
    return [str(script)] if script.exists() else [PYTHON, "-m", module]


async def _started(servers: dict[str, Server], start: Awaitable[Server]) -> Server:
    """Start one more server of a deployment; stop the ones already started if it fails."""
    try:
        return await start
    except BaseException:
        for server in servers.values():
            await server.stop()
        raise


#: The core-bridge link's shared secret (`Relay`): the core refuses a bridge without it, and a bridge
#: will not start without it. Read from the environment by both; kept out of argv (visible in `ps`).
LINK_TOKEN_ENV = "STREAMGATE_LINK_TOKEN"


@dataclass
class Role:
    """The processes of one role under `streamgate serve --workers N`, read as one server: its core
    children (`core`), or its bridges (`bridge`: serve's own process and its bridge children)."""

    name: str
    serve: Server

    @property
    def pid(self) -> int:
        return self.serve.pid

    @property
    def address(self) -> str:
        return self.serve.address

    def members(self) -> list[int]:
        found = []
        for pid in procs.process_tree(self.serve.pid):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    is_core = b"core" in cmdline.read().split(b"\0")
                if is_core == (self.name == "core"):
                    found.append(pid)
        return found

    def cpu(self) -> float:
        total = 0
        for pid in self.members():
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / procs.TICKS

    def rss(self) -> int:
        total = 0
        for pid in self.members():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * procs.PAGE
        return total

    def tail(self) -> str:
        return self.serve.tail()

    async def stop(self) -> None:
        if self.name == "bridge":  # serve stops its children
            await self.serve.stop(grace=15.0)


async def _deploy_workers(
    pace: Pace, upstream: Upstream, workers: int, bridges: int, launch: Launch, link: str = "socket"
) -> Deployment:
    """`streamgate serve --core-workers N --bridge-workers M`: N core processes, M bridges sharing one HTTP port."""
    argv = launch(
        "serve",
        [
            "--log-level",
            "INFO",
            "serve",
            *("--core-workers", str(workers), "--bridge-workers", str(bridges), "--link", link),
            *("--model", "openai/fake", "--api-base", upstream.api_base, "--upstream-api-key", "x"),
            *("--metrics-port", "off", "--max-concurrent-streams", "100000", "--grpc-port", "0", "--http-port", "0"),
        ],
    )
    serve = await procs.start("serve", argv, r"serving on (\S+) with", timeout=180)
    servers: dict[str, Any] = {"core": Role("core", serve), "bridge": Role("bridge", serve)}
    body = {"query": "go", "model": "openai/fake"}
    target = Target("sse", f"{serve.address}/query/stream", body, dialect="streamgate")
    return Deployment("streamgate", target, servers, uses_upstream=True)


async def deploy_streamgate(
    pace: Pace,
    upstream: Upstream,
    workdir: Path,
    launch: Launch = plain,
    workers: int = 1,
    bridges: int = 0,
    link: str = "socket",
) -> Deployment:
    """Core and bridge as two processes, linked by a token made for this deployment (as `streamgate serve` does)
    over a Unix socket (`link="grpc"`: the gRPC `Relay` call); `workers` > 1 (or `bridges` > 1): `streamgate
    serve` with that many core processes and bridges (default as many)."""
    if workers > 1 or bridges > 1:
        return await _deploy_workers(pace, upstream, workers, bridges or workers, launch, link)
    socket = ["--link-listen", f"unix:{workdir}/streamgate-link.sock"] if link == "socket" else []
    options = ["--log-level", "INFO"]
    env: dict[str, str | None] = {LINK_TOKEN_ENV: secrets.token_urlsafe(32)}
    core_argv = launch(
        "core",
        [
            *options,
            "core",
            *("--model", "openai/fake", "--api-base", upstream.api_base, "--upstream-api-key", "x"),
            *("--metrics-port", "off", "--max-concurrent-streams", "10000", "--grpc-port", "0"),
            *socket,
        ],
    )
    servers: dict[str, Server] = {}
    servers["core"] = await _started(servers, procs.start("core", core_argv, r"core listening on (\S+)", env=env))
    core_link = ["--core-link", socket[1]] if socket else []
    core = ["--core", servers["core"].address, *core_link]
    bridge_argv = launch("bridge", [*options, "bridge", *core, "--http-port", "0"])
    bridge = procs.start("bridge", bridge_argv, r"bridge listening on (\S+)", env=env)
    servers["bridge"] = await _started(servers, bridge)
    body = {"query": "go", "model": "openai/fake"}
    target = Target("sse", f"{servers['bridge'].address}/query/stream", body, dialect="streamgate")
    return Deployment("streamgate", target, servers, uses_upstream=True)


async def deploy_raw_grpc(pace: Pace, upstream: Upstream, workdir: Path) -> Deployment:
    argv = [PYTHON, "-m", "benchmarks.raw_servers", "grpc", *pace.argv()]
    server = await procs.start("raw-grpc", argv, r"raw grpc listening on (\S+)")
    return Deployment("raw-grpc", Target("grpc", server.address), {"server": server}, uses_upstream=False)


async def deploy_raw_sse(pace: Pace, upstream: Upstream, workdir: Path) -> Deployment:
    argv = [PYTHON, "-m", "benchmarks.raw_servers", "sse", *pace.argv()]
    server = await procs.start("raw-sse", argv, r"raw sse listening on (\S+)")
    target = Target("sse", f"{server.address}/query/stream", {"query": "go"}, dialect="streamgate")
    return Deployment("raw-sse", target, {"server": server}, uses_upstream=False)


def proxy_config(api_base: str, master_key: str) -> dict[str, Any]:
    """One model, `fake`, on the upstream; a master key (the proxy refuses to start without one); no database."""
    return {
        "model_list": [
            {"model_name": "fake", "litellm_params": {"model": "openai/fake", "api_base": api_base, "api_key": "x"}}
        ],
        "litellm_settings": {"telemetry": False, "set_verbose": False},
        "general_settings": {"master_key": master_key, "disable_spend_logs": True, "disable_error_logs": True},
    }


async def deploy_litellm_proxy(
    pace: Pace, upstream: Upstream, workdir: Path, key: str = "litellm-proxy", extra_env: dict[str, str] | None = None
) -> Deployment:
    """The LiteLLM proxy as system `key` (its config file named after it), `extra_env` added to its environment
    (without it, LITELLM_RUST is unset: the plain proxy does not inherit the switch from ours)."""
    master_key = "sk-" + secrets.token_hex(24)
    config = workdir / f"{key}.yaml"
    config.write_text(json.dumps(proxy_config(upstream.api_base, master_key), indent=2))  # JSON is YAML
    port = procs.free_port()
    argv = [*_command("litellm", "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "1"]
    env: dict[str, str | None] = {"DATABASE_URL": None, "STORE_MODEL_IN_DB": "False", "DISABLE_ADMIN_UI": "True"}
    env["LITELLM_RUST"] = None
    env.update(extra_env or {})
    server = await procs.start(key, argv, r"Uvicorn running on (\S+)", env=env, timeout=240)
    target = openai_target(
        f"http://127.0.0.1:{port}/v1/chat/completions", "fake", {"Authorization": f"Bearer {master_key}"}
    )
    return Deployment(key, target, {"proxy": server}, uses_upstream=True)


Deploy = Callable[[Pace, Upstream, Path], Awaitable[Deployment]]


@dataclass(frozen=True)
class System:
    key: str
    title: str
    deploy: Deploy
    #: Gateways read the upstream and stay up while it is restarted with each pace; raw servers make
    #: the tokens themselves and are restarted with each pace instead.
    uses_upstream: bool
    #: The phases (benchmarks.run.PHASES) that deploy and measure it; None: every phase.
    phases: tuple[str, ...] | None = None

    def runs_in(self, phase: str) -> bool:
        return self.phases is None or phase in self.phases


STREAMGATE = System("streamgate", "streamgate", deploy_streamgate, True)
RAW_GRPC = System("raw-grpc", "raw gRPC", deploy_raw_grpc, False)
RAW_SSE = System("raw-sse", "raw SSE", deploy_raw_sse, False)
LITELLM_PROXY = System("litellm-proxy", "LiteLLM proxy", deploy_litellm_proxy, True)
#: The proxy with its Rust bridge switched on: slow to start, and the other shapes already show the proxy,
#: so only in the steady shape (issue 17's), where it is the peer beside the plain proxy.
LITELLM_PROXY_RUST = System(
    "litellm-proxy-rust",
    "LiteLLM proxy, LITELLM_RUST=true",
    functools.partial(deploy_litellm_proxy, key="litellm-proxy-rust", extra_env={"LITELLM_RUST": "true"}),
    True,
    phases=("steady",),
)
ALL = (STREAMGATE, RAW_GRPC, RAW_SSE, LITELLM_PROXY, LITELLM_PROXY_RUST)
#: The peers (the LiteLLM proxy in its variants): measured at their own, lower steady steps, and needing
#: the proxy's dependencies (benchmarks.proxy_install).
PEERS = (LITELLM_PROXY, LITELLM_PROXY_RUST)


def streamgate_with(workers: int, link: str = "socket") -> System:
    """The streamgate system with `workers` core and bridge processes (1: the plain two processes), its
    bridge linked to its core over `link` (socket or grpc)."""
    if workers == 1 and link == "socket":
        return STREAMGATE
    return replace(STREAMGATE, deploy=functools.partial(deploy_streamgate, workers=workers, link=link))
