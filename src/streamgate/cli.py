"""The `streamgate` command line: the flags (`streamgate._flags`, with their `STREAMGATE_*` variables,
read there and only there) made into each process's configuration, serve's children's command lines,
and the run."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from streamgate._flags import DEFAULT_MODEL, ENV_PREFIX, _env_name, build_parser
from streamgate._logs import configure as configure_logging

__all__ = ["DEFAULT_MODEL", "ENV_PREFIX", "build_parser", "main"]

_T = TypeVar("_T")


def _core_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    from streamgate.core import LiteLLMConfig
    from streamgate.core.auth import Keyring
    from streamgate.rpc.server import CoreServerConfig

    routes: tuple[Any, ...] = ()
    budgets: tuple[Any, ...] = ()
    model = args.model
    if args.config:
        from streamgate.core.models import load_model_list

        models = load_model_list(args.config)
        routes, budgets, model = models.routes, models.budgets, model or models.default
    config = LiteLLMConfig(
        model=model or DEFAULT_MODEL,
        routes=routes,
        budgets=budgets,
        api_base=args.api_base,
        api_key=args.upstream_api_key,
        max_concurrent_streams=args.max_concurrent_streams,
        max_answer_chars=args.max_answer_chars,
        stream_timeout=args.stream_timeout,
        first_token_timeout=args.first_token_timeout,
        idle_timeout=args.idle_timeout,
        embedded_tokens_per_second=args.tokens_per_second,
        retries=args.retries,
        fallback_models=args.fallback_models,
        max_streams_per_key=args.max_streams_per_key,
        allowed_models=args.allowed_models,
        allow_any_model=args.allow_any_model,
        resume_grace=args.resume_grace,
        resume_window=args.resume_window,
        resume_buffer_bytes=args.resume_buffer_bytes,
        preconnect=args.preconnect,
    )
    keyring = Keyring()
    if args.api_keys:
        keyring = Keyring.from_list(args.api_keys)
    if args.api_keys_file:
        keyring = Keyring(keyring.keys + Keyring.from_file(args.api_keys_file).keys)
    server = CoreServerConfig(
        host=args.host,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        drain_grace=args.drain_grace,
        keyring=keyring,
        link_token=getattr(args, "link_token", None),  # serve makes its own
        ledger=args.ledger,
        data_dir=args.data_dir,
        admins=args.admins,
        redis_url=args.redis_url,
        redis_fail=args.redis_fail,
        slots_file=getattr(args, "slots_file", None),  # serve --workers sets them for its core children
        link_listen=getattr(args, "link_listen", None),  # serve sets it for its core children
        worker=getattr(args, "worker", 0),
    )
    return config, server


def _bridge_config(args: argparse.Namespace, core: str) -> Any:
    from streamgate.bridges.config import BridgeConfig

    return BridgeConfig(
        core=core,
        host=args.host,
        http_port=args.http_port,
        keepalive_interval=args.keepalive_interval,
        max_body_bytes=args.max_body_bytes,
        cors_origins=args.cors_origins,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        write_stall_timeout=args.write_stall_timeout,
        drain_grace=args.drain_grace,
        link_token=getattr(args, "link_token", None),  # serve makes its own
        reuse_port=getattr(args, "reuse_port", False),
        spread=getattr(args, "spread", True),
        core_link=getattr(args, "core_link", None),  # serve sets its own
    )


def _core_argv(args: argparse.Namespace) -> list[str]:
    """`streamgate core` flags that reproduce this command's generation and core settings.

    The upstream key is not among them (a command line is visible to every
    user of the machine): the child inherits it through the environment.
    """
    names = (
        "config",
        "model",
        "api_base",
        "max_concurrent_streams",
        "max_answer_chars",
        "stream_timeout",
        "first_token_timeout",
        "idle_timeout",
        "retries",
        "fallback_models",
        "allowed_models",
        "allow_any_model",
        "resume_grace",
        "resume_window",
        "resume_buffer_bytes",
        "tokens_per_second",
        "host",
        "grpc_port",
        "metrics_port",
        "drain_grace",
        "data_dir",
        "admins",
        "api_keys_file",
        "max_streams_per_key",
        "preconnect",
        "redis_fail",
    )
    argv = []
    for name in names:
        value = getattr(args, name)
        if value is None and name != "metrics_port":
            continue
        if isinstance(value, tuple):
            value = ",".join(value)
        argv += [f"--{name.replace('_', '-')}", "off" if value is None else str(value)]
    return argv


def _bridge_argv(args: argparse.Namespace) -> list[str]:
    """`streamgate bridge` flags that reproduce serve's bridge settings (serve adds --core and the port)."""
    names = (
        "keepalive_interval",
        "max_body_bytes",
        "cors_origins",
        "header_timeout",
        "body_timeout",
        "write_stall_timeout",
        "drain_grace",
    )
    argv = []
    for name in names:
        value = getattr(args, name)
        if name == "drain_grace":  # as serve's own bridge: the cores' final frames (at their grace) come first
            value += 2.0
        argv += [f"--{name.replace('_', '-')}", ",".join(value) if isinstance(value, tuple) else str(value)]
    return argv


def _workers_plan(args: argparse.Namespace, config: Any, server: Any) -> Any:
    """What serve starts: --core-workers and --bridge-workers, each --workers unless set."""
    from streamgate.serve import Workers

    cores = args.core_workers or args.workers
    columns: tuple[str, ...] = ()
    budgets: tuple[str, ...] = ()
    if cores > 1:
        from streamgate.core.slots import slot_names

        model_limits = [(route.name, route.max_concurrent_streams) for route in config.routes]
        holders = [name for name, _ in server.keyring.keys]
        columns = tuple(slot_names(model_limits, holders, config.max_streams_per_key))
        budgets = tuple(budget.holder for budget in config.budgets)
    return Workers(
        cores=cores,
        bridges=args.bridge_workers or args.workers,
        bridge_argv=tuple(_bridge_argv(args)),
        slot_columns=columns,
        slot_budgets=budgets,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
    )


def _shared_bridge_metrics(args: argparse.Namespace) -> str | None:
    """With several bridges on one port, a folder (only this user's) where each keeps its figures, so
    that `/metrics` on that port, whichever bridge answers, is all of them (prometheus_client's
    multiprocess mode, which reads its variable once, when it is imported: so, here, first)."""
    if (args.bridge_workers or args.workers) < 2:
        return None
    import atexit
    import shutil
    import tempfile

    if "prometheus_client" in sys.modules:  # a change that imports it sooner must move this earlier
        raise RuntimeError("prometheus_client was imported before the bridges' shared metrics were set up")
    folder = tempfile.mkdtemp(prefix="streamgate-metrics-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # also when serve never starts
    os.environ[SHARED_METRICS_ENV] = folder
    return folder


def _end_with_serve() -> None:
    """A child of `streamgate serve` (started with --ready-fd): SIGTERM (a drain) when serve's process ends,
    however it ends, so that a serve killed with SIGKILL leaves no core or bridge behind (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # serve ended before the line above: nobody will send it
        os.kill(os.getpid(), signal.SIGTERM)


#: prometheus_client's multiprocess folder (streamgate.bridges.metrics.SHARED_ENV, which imports it).
SHARED_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005).
GIL_SWITCH_INTERVAL = 0.0005


def _run(main: Coroutine[Any, Any, _T], loop: str) -> _T:
    """Run on uvloop when it is installed (the `fast` extra) unless `--loop asyncio` says otherwise."""
    # grpc.aio hands each completed read or write from its poller thread to the event loop, and
    # that thread must take the GIL from a busy loop: by default it may wait 5 ms for it, on
    # every hop. 0.5 ms cut the time to first token and held more paced streams in the benchmark.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise ValueError("--loop uvloop needs uvloop: pip install 'streamgate[fast]'") from None
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_format not in ("text", "json"):  # from the environment: argparse checks only the flag's
        parser.error(f"{ENV_PREFIX}LOG_FORMAT must be text or json, got {args.log_format[:20]!r}")
    configure_logging(args.log_level, args.log_format)
    import streamgate._telemetry as _telemetry
    from streamgate.contract import StreamError

    try:
        if args.command in ("core", "bridge") and args.ready_fd is not None:
            _end_with_serve()
        if args.command == "core":
            from streamgate.rpc.server import run_core

            config, server = _core_configs(args)
            server = dataclasses.replace(server, tracer_provider=_telemetry.from_environment(_telemetry.CORE_SERVICE))
            _run(run_core(config, server, args.ready_fd), args.loop)
        elif args.command == "bridge":
            from streamgate.bridges.app import run_bridge

            if args.link_token is None:
                parser.error(
                    "the bridge needs the core's link token: set STREAMGATE_LINK_TOKEN (or --link-token)"
                    " to the value the core was started with"
                )
            bridge = _bridge_config(args, args.core)
            traces = _telemetry.from_environment(_telemetry.BRIDGE_SERVICE)
            _run(run_bridge(dataclasses.replace(bridge, tracer_provider=traces), args.ready_fd), args.loop)
        elif args.command == "serve":
            # A line at once: a model that needs litellm takes its core about 10 s to import it.
            logging.getLogger("streamgate.serve").info("starting the core and the bridge...")
            shared_metrics = _shared_bridge_metrics(args)  # before prometheus_client is imported
            from streamgate.serve import serve

            core_config, server_config = _core_configs(args)  # validate before starting anything
            workers = _workers_plan(args, core_config, server_config)
            secrets = ("--upstream-api-key", "--api-keys", "--ledger", "--redis-url")
            for flag in secrets:  # secrets reach the core by environment
                value = getattr(args, flag[2:].replace("-", "_"))
                if value:
                    os.environ[_env_name(flag)] = value
            _bridge_config(args, f"{args.host}:{args.grpc_port}")
            options = ["--log-level", args.log_level, "--log-format", args.log_format, "--loop", args.loop]
            traces = _telemetry.from_environment(_telemetry.BRIDGE_SERVICE)  # the core child makes its own

            def bridge_config(core: str) -> Any:
                return dataclasses.replace(_bridge_config(args, core), tracer_provider=traces)

            workers = dataclasses.replace(workers, link=args.link, bridge_metrics=shared_metrics)
            return _run(serve(options, _core_argv(args), bridge_config, workers), args.loop)
    except (ValueError, OSError) as exc:  # a bad flag value or file: say which, without a traceback
        parser.error(str(exc))
    except StreamError as exc:  # e.g. an unknown --model
        parser.error(exc.message)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
