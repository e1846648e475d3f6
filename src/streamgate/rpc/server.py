"""Run the core: the gRPC service with health, reflection and Prometheus metrics, and a graceful drain."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

import streamgate._telemetry as _telemetry
from streamgate.core import Gateway, LiteLLMConfig
from streamgate.core.auth import Keyring
from streamgate.core.ledger import ledger_kind, open_ledger
from streamgate.core.shared import FailRule, SharedConfig, check_redis_url
from streamgate.link._wire import server_ping_policy
from streamgate.link.server import LinkServicer
from streamgate.link.v1 import link_pb2_grpc as link_grpc
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

from .malformed import MalformedRequests
from .servicer import StreamGateServicer

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

logger = logging.getLogger("streamgate.rpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StreamGateService"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CoreServerConfig:
    host: str = "127.0.0.1"
    #: 0 picks a free port.
    grpc_port: int = 50051
    #: Prometheus exposition port; None turns it off, 0 picks a free port.
    metrics_port: int | None = 9464
    #: Seconds open streams may go on after SIGTERM before they are ended.
    drain_grace: float = 10.0
    #: API keys; empty: no authentication.
    keyring: Keyring = field(default_factory=Keyring)
    #: The secret a bridge's `Relay` call must carry (STREAMGATE_LINK_TOKEN); None: Relay is refused.
    link_token: str | None = field(default=None, repr=False)
    #: The usage ledger: "off", "sqlite" (in `data_dir`) or a postgresql:// URL (`streamgate.core.ledger`).
    ledger: str = field(default="off", repr=False)  # a URL may hold a password
    #: Where the SQLite ledger and its spill files live.
    data_dir: str = ".streamgate"
    #: Key holders who may read everyone's usage (the others read their own).
    admins: tuple[str, ...] = ()
    #: Per-key limits, budgets and replays shared by every core through Redis (`streamgate.core.shared`):
    #: a redis:// URL (it may hold a password: never logged), or None: each core counts alone.
    redis_url: str | None = field(default=None, repr=False)
    #: While Redis cannot be reached, the admissions it would decide: "open" (under this core's own
    #: limits) or "closed" (UNAVAILABLE).
    redis_fail: FailRule = "open"
    #: The table of limits shared by every core worker of one `streamgate serve --workers N`
    #: (`streamgate.core.slots`), and this worker's row in it; None: this core counts alone.
    slots_file: str | None = None
    worker: int = 0
    #: Where bridges may also reach the link over a plain socket, without gRPC (`streamgate.link._stream`):
    #: `unix:PATH` or `HOST:PORT`; None: only the gRPC `Relay` call.
    link_listen: str | None = None
    #: Where each stream's spans go (`streamgate._telemetry`); None: traces off.
    tracer_provider: TracerProvider | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.grpc_port <= 65535:
            raise ValueError(f"grpc_port must be 0-65535, got {self.grpc_port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be 0-65535, got {self.metrics_port}")
        if not (self.drain_grace >= 0 and math.isfinite(self.drain_grace)):
            raise ValueError(f"drain_grace must be a non-negative number of seconds, got {self.drain_grace}")
        if self.link_token is not None and not (
            len(self.link_token) >= 16 and self.link_token.isascii() and self.link_token.isprintable()
        ):
            raise ValueError("link_token must be at least 16 printable ASCII characters")  # never the value
        ledger_kind(self.ledger)  # a bad --ledger fails at start-up, never with its value (a password)
        if self.redis_url is not None:
            check_redis_url(self.redis_url)  # never with its value either
        if self.redis_fail not in ("open", "closed"):
            raise ValueError(f"redis_fail must be open or closed, got {self.redis_fail[:20]!r}")


class CoreServer:
    """The core's gRPC server. `await start()`, then `await stop()` (drains)."""

    def __init__(self, config: LiteLLMConfig, server_config: CoreServerConfig | None = None) -> None:
        self.config = config
        self.server_config = server_config or CoreServerConfig()
        # Here, not at the module's top: `streamgate serve` validates the core's flags with this module's
        # CoreServerConfig in its own process (the bridge's), which must not load litellm (~160 MiB, 4 s).
        from streamgate.core.provider import LiteLLMProvider

        self.gateway = Gateway(LiteLLMProvider(config))
        self.gateway.tracer = _telemetry.tracer(self.server_config.tracer_provider)
        self.servicer = StreamGateServicer(self.gateway, self.server_config.keyring, self.server_config.admins)
        self.link = LinkServicer(self.gateway, self.server_config.keyring, self.server_config.link_token)
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.metrics_port: int | None = None
        #: Where bridges reach the link over a plain socket (`link_listen`, its port chosen); None: not served.
        self.link_address: str | None = None
        self._link_server: asyncio.Server | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_http: WSGIServer | None = None

    @property
    def address(self) -> str:
        return f"{self.server_config.host}:{self.port}"

    async def start(self) -> None:
        sc = self.server_config
        server = grpc.aio.server(
            interceptors=[MalformedRequests()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                *server_ping_policy(),  # the bridges' link pings (a link idle for minutes must live)
            ],
        )
        pb_grpc.add_StreamGateServiceServicer_to_server(self.servicer, server)
        link_grpc.add_LinkServiceServicer_to_server(self.link, server)  # internal: not in reflection
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        await self.gateway.provider.warm_up()
        self.gateway.ledger = await open_ledger(sc.ledger, sc.data_dir)
        if sc.redis_url is not None:  # before the budgets load: the shared book is the one loaded
            from streamgate.core.shared import share

            await share(self.gateway, SharedConfig(sc.redis_url, sc.redis_fail))
        if sc.slots_file is not None:  # before the budgets load too: the shared cells are filled from it
            self._attach_slots(sc.slots_file, sc.worker)
        await self.gateway.budgets.load(self.gateway.ledger)  # the ledger is the truth: a restart forgets nothing
        if self.gateway.budgets and sc.ledger == "off":
            logger.warning("budgets are counted in memory only: with --ledger off, a restart forgets what was spent")
        unknown = [h for h in self.gateway.budgets.holders if h not in {name for name, _ in sc.keyring.keys}]
        if unknown:
            logger.warning("budgets name key holders that no API key has (they never apply): %s", ", ".join(unknown))
        self.port = server.add_insecure_port(f"{sc.host}:{sc.grpc_port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {sc.host}:{sc.grpc_port}")
        await server.start()
        self._server = server
        if sc.link_listen is not None:
            self._link_server, self.link_address = await self.link.listen(sc.link_listen)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if sc.metrics_port is not None:
            http, _ = start_http_server(sc.metrics_port, sc.host, registry=self.gateway.metrics.registry)
            self._metrics_http = http
            self.metrics_port = http.server_port
        logger.info(
            "core listening on %s (model %s, metrics on %s, ledger %s)",
            self.address,
            self.config.model,
            self.metrics_port,
            self.gateway.ledger.location,
        )

    def _attach_slots(self, path: str, worker: int) -> None:
        from streamgate.core.slots import SlotBudgetBook, SlotTable

        table = self.gateway.slots = SlotTable(path, worker)
        if self.gateway.budgets and self.gateway.shared is None:  # with Redis, its book is the shared one
            self.gateway.budgets = SlotBudgetBook(self.config.budgets, table)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new streams, let open ones finish within `grace`, end the rest with UNAVAILABLE."""
        grace = self.server_config.drain_grace if grace is None else grace
        await self.health.enter_graceful_shutdown()
        await self.gateway.drain(grace)
        self.link.close()  # their streams have ended: let the calls end too, not wait for stop()
        if self._server is not None:
            await self._server.stop(1.0)
        if self._link_server is not None:
            await self.link.stop_listening(self._link_server, 1.0)
        await self.gateway.provider.close()
        if self.gateway.shared is not None:  # after the drain: releases, costs and replays written
            await self.gateway.shared.close()
        await self.gateway.ledger.aclose()  # after the drain: every stream's row is queued; written or spilled
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        logger.info("core stopped")

    async def wait_for_termination(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


async def run_core(config: LiteLLMConfig, server_config: CoreServerConfig, ready_fd: int | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain.

    `ready_fd`: a pipe to write `{"address": "HOST:PORT", "metrics_port": N}` to (one JSON line),
    then close, once the server listens (how `streamgate serve` learns where its core is).
    """
    server = CoreServer(config, server_config)
    await server.start()
    if ready_fd is not None:
        ready = {"address": server.address, "metrics_port": server.metrics_port, "link": server.link_address}
        with os.fdopen(ready_fd, "w") as pipe:
            pipe.write(json.dumps(ready) + "\n")
    # litellm leaves about 380,000 objects behind its import; a full collection walks them all
    # (about 150 ms on this machine), often enough under load to stall every stream. They live as
    # long as the process: move them out of the collector's sight.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("draining: %d open stream(s)", server.gateway.active_streams)
    await server.stop()
