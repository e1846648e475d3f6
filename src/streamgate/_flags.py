"""The `streamgate` command line's flags: every flag, its `STREAMGATE_*` variable and its default,
and the parsers of their values. `streamgate.cli` reads them into the configurations and runs."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

ENV_PREFIX = "STREAMGATE_"
#: streamgate.core.DEFAULT_MODEL, written out so that --help need not import litellm.
DEFAULT_MODEL = "streamgate/default"


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _add(parser: argparse._ActionsContainer, flag: str, kind: Callable[[str], Any], default: Any, help: str) -> None:
    """A flag whose default comes from its environment variable, then from `default`."""
    env = _env_name(flag)
    value = os.environ.get(env)
    shown = "unset" if default is None else ("none" if default == () else default)
    parser.add_argument(
        flag,
        type=kind,
        default=value if value is not None else default,
        help=f"{help} (env {env}; default {shown})",
    )


def _on_off(text: str) -> bool:
    if text.lower() in ("on", "true", "1", "yes"):
        return True
    if text.lower() in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def _link_kind(text: str) -> str:
    if text not in ("socket", "grpc"):
        raise argparse.ArgumentTypeError(f"link must be socket or grpc, got {text[:20]!r}")
    return text


def _workers(text: str | int) -> int:
    """A number of worker processes, or `auto`: one for every two CPUs this process may run on (a
    worker is a core process and a bridge; on 16 CPUs, 8 workers held as many streams as 16 at less
    CPU a token: benchmarks/README.md, "Every CPU")."""
    if isinstance(text, int):
        return text
    if text.strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)) // 2)
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes or auto, got {text[:20]!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"workers must be at least 1, got {count}")
    return count


def _optional_port(text: str) -> int | None:
    return None if text.lower() in ("", "off", "none") else int(text)


def _link_token(text: str) -> str | None:
    """A link token: a secret, so an error never repeats it."""
    if not text:
        return None
    if not (len(text) >= 16 and text.isascii() and text.isprintable()):
        raise argparse.ArgumentTypeError("the link token must be at least 16 printable ASCII characters")
    return text


def _link_flag(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the core-bridge link (Relay)")
    _add(
        group,
        "--link-token",
        _link_token,
        None,
        "shared secret of the core and its bridges: the same on both (streamgate serve makes one itself);"
        " without it the core refuses every bridge. Prefer the environment variable to the flag",
    )


def _generation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    _add(
        group,
        "--config",
        str,
        None,
        "a YAML or TOML file listing the models clients may ask for, by name, each with its litellm model,"
        " api_base, key variable, limit and fallbacks (see the README); without it, --model alone is served",
    )
    _add(
        group,
        "--model",
        str,
        None,
        "the model of a request that names none: a litellm model string, e.g. openai/gpt-4o-mini (or, with"
        f" --config, a name of its list; default its first). Unset and without --config: {DEFAULT_MODEL},"
        " the embedded model, no key needed",
    )
    _add(group, "--api-base", str, None, "upstream base URL, e.g. http://127.0.0.1:11434 for Ollama")
    _add(
        group,
        "--upstream-api-key",
        str,
        None,
        "API key for the upstream (litellm also reads OPENAI_API_KEY etc.)",
    )
    _add(group, "--max-concurrent-streams", int, 1000, "streams open at once; more are refused at once")
    _add(group, "--stream-timeout", float, 300.0, "seconds a whole stream may last")
    _add(
        group,
        "--max-answer-chars",
        int,
        4 * 1024 * 1024,
        "characters of answer one stream may produce; past it the stream ends with finish_reason 'length'",
    )
    _add(group, "--first-token-timeout", float, 60.0, "seconds to wait for the first token")
    _add(group, "--idle-timeout", float, 30.0, "seconds the upstream may stay silent between tokens")
    _add(
        group,
        "--allowed-models",
        _comma_list,
        (),
        "comma-separated models a request may name, besides --model and --fallback-models (which are always allowed)",
    )
    _add(
        group,
        "--allow-any-model",
        _on_off,
        False,
        "let a request name other models of the hosted providers (OpenAI, Anthropic, ...) or of --model's own"
        " provider, never one that names a URL or a host (on/off)",
    )
    _add(group, "--retries", int, 2, "tries of a model again when it fails before its first token")
    _add(group, "--fallback-models", _comma_list, (), "comma-separated models tried in order when the model fails")
    _add(group, "--tokens-per-second", float, 30.0, "pace of the embedded default model (0: unpaced)")
    _add(
        group,
        "--resume-grace",
        float,
        10.0,
        "seconds a resumable stream goes on while no client reads it (0: no stream is resumable)",
    )
    _add(group, "--resume-window", float, 60.0, "seconds a resumable stream's replay is kept after its end")
    _add(group, "--resume-buffer-bytes", int, 64 * 1024 * 1024, "bytes all replays may hold; oldest finished out")
    _add(group, "--preconnect", _on_off, True, "keep a spare upstream connection open ahead of new streams (on/off)")


def _core_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("core server")
    _add(group, "--host", str, "127.0.0.1", "address to listen on")
    _add(group, "--grpc-port", int, 50051, "gRPC port (0: any free port)")
    _add(group, "--metrics-port", _optional_port, 9464, "Prometheus metrics port ('off' to disable)")
    _add(group, "--drain-grace", float, 10.0, "seconds open streams may finish after SIGTERM")
    usage = parser.add_argument_group("usage ledger (one row per stream: GET /v1/usage, GetUsage)")
    _add(
        usage,
        "--ledger",
        str,
        "sqlite",
        "where each stream's usage is kept: sqlite (a file in --data-dir), a postgresql://... URL (prefer the"
        " environment variable: a URL may hold a password), or off",
    )
    _add(usage, "--data-dir", str, ".streamgate", "directory of the SQLite ledger and its spill files")
    _add(
        usage,
        "--admins",
        _comma_list,
        (),
        "comma-separated key holders (names in --api-keys-file) who may read everyone's usage; others read their own",
    )
    shared = parser.add_argument_group("state shared by several cores (per-key limits, budgets, resumable streams)")
    _add(
        shared,
        "--redis-url",
        _redis_url,
        None,
        "redis://[:PASSWORD@]HOST[:PORT][/DB]: per-key limits, budgets and resumable streams' replays shared by"
        " every core that names the same Redis (prefer the environment variable: a URL may hold a password);"
        " unset: each core counts alone",
    )
    _add(
        shared,
        "--redis-fail",
        _fail_rule,
        "open",
        "while Redis cannot be reached: open (admit under this core's own limits) or closed (refuse with"
        " UNAVAILABLE the streams a per-key limit or budget applies to)",
    )
    auth = parser.add_argument_group("authentication (off unless keys are given)")
    _add(auth, "--api-keys", str, None, "comma-separated API keys; prefer the environment variable to the flag")
    _add(auth, "--api-keys-file", str, None, "file of API keys, one 'name: key' (or 'key') per line")
    _add(auth, "--max-streams-per-key", int, 0, "streams one API key may hold open (0: no per-key limit)")


def _redis_url(text: str) -> str | None:
    """A Redis URL: it may hold a password, so an error never repeats it."""
    if not text:
        return None
    from streamgate.core.shared import check_redis_url

    try:
        check_redis_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _fail_rule(text: str) -> str:
    if text not in ("open", "closed"):
        raise argparse.ArgumentTypeError(f"expected open or closed, got {text[:20]!r}")
    return text


def _bridge_flags(parser: argparse.ArgumentParser, with_core: bool) -> None:
    group = parser.add_argument_group("bridge (HTTP: SSE, WebSocket, page)")
    if with_core:
        _add(
            group,
            "--core",
            str,
            "127.0.0.1:50051",
            "the core's gRPC address, HOST:PORT; or several cores', comma-separated (streams are spread over them)",
        )
        _add(
            group,
            "--core-link",
            str,
            None,
            "the core's --link-listen address (unix:PATH or HOST:PORT; one per --core, comma-separated): streams"
            " go over it instead of gRPC; health, models and usage stay on gRPC",
        )
        _add(group, "--host", str, "127.0.0.1", "address to listen on")
        _add(
            group,
            "--reuse-port",
            _on_off,
            False,
            "share the HTTP port with other bridge processes (SO_REUSEPORT), as serve --workers does (on/off)",
        )
        _add(
            group,
            "--spread",
            _on_off,
            True,
            "with several --core: new streams go to each core in turn (on), or to the first while it takes them,"
            " the next only when it refuses (off)",
        )
    _add(group, "--http-port", int, 8000, "HTTP port (0: any free port)")
    _add(group, "--keepalive-interval", float, 15.0, "seconds of silence before an SSE ': ping' line")
    _add(group, "--max-body-bytes", int, 1024 * 1024, "largest request body or WebSocket message")
    _add(group, "--cors-origins", _comma_list, (), "comma-separated origins allowed by CORS (none by default)")
    _add(
        group,
        "--header-timeout",
        float,
        10.0,
        "seconds a connection may take to send a request head, from when it opens or its last response"
        " ended; an idle kept-alive connection is closed after it too",
    )
    _add(group, "--body-timeout", float, 30.0, "seconds a POST body may take to arrive; a slower one gets 408")
    _add(
        group,
        "--write-stall-timeout",
        float,
        30.0,
        "seconds a write may wait on an SSE or WebSocket client that stopped reading before it is dropped",
    )
    if with_core:
        _add(group, "--drain-grace", float, 10.0, "seconds open streams may finish after SIGTERM")


def _comma_list(text: str | tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list (origins, models)."""
    if isinstance(text, tuple):
        return text
    return tuple(origin.strip() for origin in text.split(",") if origin.strip())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamgate")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamgate",
        description="Stream LLM output from any provider to any client.",
        epilog=f"Every flag can also be set by its environment variable, {ENV_PREFIX}<FLAG_NAME>.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default=os.environ.get(ENV_PREFIX + "LOOP", "auto"),
        help=f"event loop: uvloop when installed (auto), or asyncio (env {ENV_PREFIX}LOOP; default auto)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get(ENV_PREFIX + "LOG_LEVEL", "INFO"),
        help=f"logging level (env {ENV_PREFIX}LOG_LEVEL; default INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get(ENV_PREFIX + "LOG_FORMAT", "text"),
        help=f"log lines as text, or one JSON object a line (env {ENV_PREFIX}LOG_FORMAT; default text)."
        " Traces: set OTEL_EXPORTER_OTLP_ENDPOINT (OTLP/HTTP) to send each stream's spans there",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    core = commands.add_parser(
        "core",
        help="run the gRPC core alone",
        description="Run the gRPC core: the streaming service, health, reflection and Prometheus metrics.",
    )
    _generation_flags(core)
    _core_flags(core)
    core.add_argument(
        "--ready-fd",
        type=int,
        default=None,
        help="once listening, write the address as one JSON line to this file descriptor (how serve learns it)",
    )
    core.add_argument(
        "--slots-file",
        default=None,
        help="the table of limits the core workers of one server share (serve --workers makes it and sets this)",
    )
    core.add_argument("--worker", type=int, default=0, help="this core's row in --slots-file (set by serve)")
    _add(
        core,
        "--link-listen",
        str,
        None,
        "also serve the bridges' link over a plain socket, without gRPC (less CPU a message): unix:PATH"
        " (this user only) or HOST:PORT; bridges name it with --core-link (serve sets both itself)",
    )
    _link_flag(core)
    bridge = commands.add_parser(
        "bridge",
        help="run the HTTP bridge alone, in front of a running core",
        description="Run the HTTP bridge: SSE and WebSocket streams for browsers over the core's gRPC stream.",
    )
    _bridge_flags(bridge, with_core=True)
    bridge.add_argument(
        "--ready-fd",
        type=int,
        default=None,
        help="once listening, write the port as one JSON line to this file descriptor (how serve learns it)",
    )
    _link_flag(bridge)
    serve = commands.add_parser(
        "serve",
        help="run the core and the bridge together (the default model needs no key)",
        description="Run the core (a child process) and the bridge in front of it.",
    )
    _generation_flags(serve)
    _core_flags(serve)
    _bridge_flags(serve, with_core=False)
    workers = serve.add_argument_group(
        "workers (processes; the limits stay the whole server's: see the README)",
    )
    _add(
        workers,
        "--workers",
        _workers,
        1,
        "core processes and bridge processes (the bridges share the HTTP port, each links to every core);"
        " auto: one of each for every two CPUs",
    )
    _add(workers, "--core-workers", _workers, None, "core processes, if not --workers")
    _add(workers, "--bridge-workers", _workers, None, "bridge processes, if not --workers")
    _add(
        serve,
        "--link",
        _link_kind,
        "socket",
        "how the bridges reach the cores: socket (a Unix socket only this user can open) or grpc (the Relay call)",
    )
    return parser
