"""`streamgate core` as a user runs it: a real process, flags and STREAMGATE_* variables, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import fields

import grpc
import pytest

from streamgate import cli
from streamgate.core import LiteLLMConfig
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import collect, process_env, wait_for_line

STREAMGATE = [sys.executable, "-m", "streamgate.cli"]


def test_help_documents_every_flag_and_its_variable() -> None:
    out = subprocess.run([*STREAMGATE, "core", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in (
        "--model",
        "--api-base",
        "--grpc-port",
        "--host",
        "--max-concurrent-streams",
        "--stream-timeout",
        "--first-token-timeout",
        "--idle-timeout",
        "--metrics-port",
        "--drain-grace",
    ):
        assert flag in out
        assert cli._env_name(flag) in out


def test_version_and_list_defaults_read_as_a_person_would_write_them() -> None:
    version = subprocess.run([*STREAMGATE, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("streamgate ") and version.split()[1][0].isdigit()
    out = " ".join(subprocess.run([*STREAMGATE, "core", "--help"], capture_output=True, text=True).stdout.split())
    assert "STREAMGATE_ALLOWED_MODELS; default none)" in out
    assert "default ()" not in out


def test_help_defaults_match_the_config_defaults() -> None:
    defaults = {f.name: f.default for f in fields(LiteLLMConfig)}
    assert defaults["model"] == cli.DEFAULT_MODEL
    parser = cli.build_parser()
    args = parser.parse_args(["core"])
    assert args.max_concurrent_streams == defaults["max_concurrent_streams"]
    assert args.stream_timeout == defaults["stream_timeout"]
    assert args.first_token_timeout == defaults["first_token_timeout"]
    assert args.idle_timeout == defaults["idle_timeout"]
    assert args.tokens_per_second == defaults["embedded_tokens_per_second"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["core", "--max-concurrent-streams", "0"], "max_concurrent_streams must be at least 1"),
        (["core", "--stream-timeout", "-1"], "stream_timeout must be a positive number"),
        (["core", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    ],
)
def test_bad_flag_values_get_a_clear_error(argv: list[str], message: str) -> None:
    done = subprocess.run([*STREAMGATE, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
async def core_process() -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    env = process_env(STREAMGATE_TOKENS_PER_SECOND="20", STREAMGATE_DRAIN_GRACE="0.5")
    process = await asyncio.create_subprocess_exec(*STREAMGATE, "core", env=env, stderr=subprocess.PIPE)
    assert process.stderr is not None
    address = await wait_for_line(process.stderr, r"core listening on (\S+)")
    yield process, address
    if process.returncode is None:
        process.kill()
        await process.wait()


async def test_the_core_streams_the_default_model_and_drains_on_sigterm(
    core_process: tuple[asyncio.subprocess.Process, str],
) -> None:
    process, address = core_process
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        quick = await collect(stub, pb.GenerateRequest(query="Hello", parameters=pb.GenerationParameters(max_tokens=5)))
        assert quick.completion.text.startswith("Hello!")

        long = asyncio.create_task(collect(stub, pb.GenerateRequest(query="Tell me about streaming")))
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        result = await long

    assert result.code == grpc.StatusCode.UNAVAILABLE
    assert result.error.message == "the server is shutting down"
    assert result.error.partial_text == "".join(result.chunks) != ""
    async with asyncio.timeout(10):
        assert await process.wait() == 0


def test_list_flags_and_variables_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMGATE_FALLBACK_MODELS", "openai/b,openai/c")
    args = cli.build_parser().parse_args(["core", "--allowed-models", "openai/a, openai/b", "--retries", "0"])

    config, server = cli._core_configs(args)

    assert config.allowed_models == ("openai/a", "openai/b")
    assert config.fallback_models == ("openai/b", "openai/c")
    assert config.retries == 0
    assert not server.keyring.enabled


def test_bridge_flags_reach_the_bridge_config() -> None:
    args = cli.build_parser().parse_args(
        ["bridge", "--core", "10.0.0.1:7000", "--cors-origins", "https://a.example,https://b.example"]
    )

    config = cli._bridge_config(args, args.core)

    assert config.core == "10.0.0.1:7000"
    assert config.cors_origins == ("https://a.example", "https://b.example")


def test_preconnect_flag_variable_and_the_serve_child(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = cli.build_parser()
    assert cli._core_configs(parser.parse_args(["core"]))[0].preconnect is True
    assert cli._core_configs(parser.parse_args(["core", "--preconnect", "off"]))[0].preconnect is False
    monkeypatch.setenv("STREAMGATE_PRECONNECT", "off")
    serve = cli.build_parser().parse_args(["serve"])
    # `serve` starts the core as a child with these flags: the setting must reach it.
    child = cli.build_parser().parse_args(["core", *cli._core_argv(serve)])
    assert cli._core_configs(child)[0].preconnect is False
    with pytest.raises(SystemExit):
        parser.parse_args(["core", "--preconnect", "maybe"])


def test_serves_own_process_the_bridge_never_loads_litellm() -> None:
    """`streamgate serve` checks the core's flags in its own process, the bridge's: that must not import
    litellm (about 160 MiB and 4 s), which only the core child needs."""
    probe = (
        "import sys; from streamgate import cli; cli._core_configs(cli.build_parser().parse_args(['serve']));"
        " import streamgate.bridges.app; print('litellm' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
