"""The bridge's aiohttp application: routes, CORS, health, metrics, the page, and graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import logging
import os
import signal
from collections.abc import AsyncIterator
from importlib import resources

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST

import streamgate._telemetry as _telemetry
from streamgate.contract import ErrorCode, StreamError
from streamgate.link.client import CoreClient
from streamgate.link.pool import CorePool

from . import observe, openai_api, usage
from .config import BridgeConfig
from .errors import error_response
from .sse import resume_sse, stop_stream, stream_sse
from .state import SHUTTING_DOWN, STATE, BridgeState
from .ws import stream_ws

logger = logging.getLogger("streamgate.bridges")


class _MalformedHttpAtDebug(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad header, an encoding that does not decode) at ERROR,
    with a traceback: the client's error, not ours. Those go to DEBUG, so that nobody can flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("aiohttp.server").addFilter(_MalformedHttpAtDebug())

CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "Content-Type, Authorization, Last-Event-ID"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining:
        return error_response(SHUTTING_DOWN)
    if not await state.client.ready():
        return web.json_response(
            {"status": "unavailable", "core": state.config.core}, status=503, headers={"Retry-After": "1"}
        )
    return web.json_response({"status": "ready", "core": state.config.core})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


_PAGE = resources.files(__package__).joinpath("static/index.html")


async def index(request: web.Request) -> web.Response:
    return web.Response(body=_PAGE.read_bytes(), content_type="text/html", charset="utf-8")


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    """CORS headers for configured origins only (before the headers go out, streams included)."""
    origin = request.headers.get("Origin")
    if origin and origin in request.app[STATE].config.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"


def _literal_host(host: str) -> bool:
    """An IP address or localhost: a name a page cannot re-point at this server (DNS rebinding).
    A page served under a domain name is of an origin the operator lists in --cors-origins."""
    bracketed = host.startswith("[")  # [IPv6]:port
    name = host[1 : host.find("]")] if bracketed else host.rpartition(":")[0] if ":" in host else host
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@web.middleware
async def same_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A stream for a browser page of this origin or of the `--cors-origins`, not of any other site.

    A browser sends `Origin` with every cross-origin request and every WebSocket upgrade; without
    this check any web page could open `/query/ws` on a gateway it can reach (CORS does not guard
    WebSockets) and read the answers, or start generations with a simple POST. Requests without
    `Origin` (curl, SDKs, servers) are not a browser's and pass.
    """
    origin = request.headers.get("Origin")
    if (
        origin is not None
        and request.path.startswith(("/query/", "/v1/"))
        and not (origin == f"{request.scheme}://{request.host}" and _literal_host(request.host))
        and origin not in request.app[STATE].config.cors_origins
    ):
        return (openai_api.error_response if request.path.startswith("/v1/") else error_response)(
            StreamError(
                ErrorCode.PERMISSION_DENIED,
                "a page of another origin may not use this gateway: the operator lists those allowed in --cors-origins",
            )
        )
    return await handler(request)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A path or a method the bridge does not serve is answered in the JSON error shape, like the rest."""
    answer = openai_api.error_response if request.path.startswith("/v1/") else error_response
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return answer(StreamError(ErrorCode.NOT_FOUND, f"no such endpoint: {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        error = StreamError(ErrorCode.INVALID_ARGUMENT, f"{request.method} is not allowed here; allowed: {allowed}")
        response = answer(error, status=405)
        response.headers["Allow"] = allowed
        return response


def create_app(config: BridgeConfig) -> web.Application:
    app = web.Application(
        client_max_size=config.max_body_bytes, middlewares=[observe.observe, json_errors, same_origin]
    )
    tracer = _telemetry.tracer(config.tracer_provider)

    async def core_client(app: web.Application) -> AsyncIterator[None]:
        trace = tracer is not None
        cores, links = config.cores, config.core_links
        client: CoreClient | CorePool = (
            CoreClient(
                cores[0],
                coalesce=config.coalesce,
                link_token=config.link_token,
                trace=trace,
                link=links[0] if links else None,
            )
            if len(cores) == 1
            else CorePool(
                cores,
                coalesce=config.coalesce,
                link_token=config.link_token,
                trace=trace,
                spread=config.spread,
                links=links,
            )
        )
        app[STATE] = BridgeState(config, client, tracer=tracer)
        yield
        await client.close()

    app.cleanup_ctx.append(core_client)
    app.on_response_prepare.append(_cors)
    app.on_response_prepare.append(observe.remember_response)
    app.router.add_get("/", index)
    app.router.add_post("/query/stream", stream_sse)
    app.router.add_get("/query/stream", stream_sse)
    app.router.add_get("/query/stream/{stream_id}", resume_sse)
    app.router.add_delete("/query/stream/{stream_id}", stop_stream)
    # CORS preflights of the paths a page of a --cors-origins origin calls with a body or a header.
    for path in ("/query/stream", "/query/stream/{stream_id}", "/v1/chat/completions", "/v1/models", "/v1/usage"):
        app.router.add_route("OPTIONS", path, preflight)
    app.router.add_get("/query/ws", stream_ws)
    app.router.add_post("/v1/chat/completions", openai_api.chat_completions)
    app.router.add_get("/v1/models", openai_api.list_models)
    app.router.add_get("/v1/models/{model_id:.+}", openai_api.list_models)
    app.router.add_get("/v1/usage", usage.get_usage)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


class BridgeServer:
    """The bridge on a port. `await start()`, then `await stop()` (drains)."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.app = create_app(config)
        # Cancel a handler when its client leaves, so its gRPC call is cancelled at once.
        # aiohttp's keep-alive timer runs while a connection waits for a request head: from when it opens
        # (aiohttp >= 3.14.4) and after each response, whether bytes of a head came or not. So it bounds a
        # head that never ends (one byte at a time) and an idle kept-alive connection alike.
        self._runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=5.0,
            keepalive_timeout=config.header_timeout,
        )
        self.port = 0

    @property
    def state(self) -> BridgeState:
        return self.app[STATE]

    @property
    def open_connections(self) -> int:
        """HTTP connections open now (streaming, waiting for a request, or closing)."""
        server = self._runner.server
        return len(server.connections) if server is not None else 0

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.config.host, self.config.http_port, reuse_port=self.config.reuse_port or None
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        logger.info("bridge listening on %s (core %s)", self.url, self.config.core)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new streams, let open ones finish within `grace`, end the rest with a final frame."""
        await self.state.drain(self.config.drain_grace if grace is None else grace)
        await self._runner.cleanup()
        logger.info("bridge stopped")


async def run_bridge(config: BridgeConfig, ready_fd: int | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain.

    `ready_fd`: a pipe to write `{"port": N}` to (one JSON line), then close, once the bridge listens
    (how `streamgate serve --workers N` learns that its other bridges listen).
    """
    server = BridgeServer(config)
    await server.start()
    if ready_fd is not None:
        with os.fdopen(ready_fd, "w") as pipe:
            pipe.write(json.dumps({"port": server.port}) + "\n")
    gc.freeze()  # what startup left lives as long as the process: keep full collections short
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
