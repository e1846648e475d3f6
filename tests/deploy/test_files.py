"""The deploy files agree with each other and with the code, checked without a container engine: the
compose file fills the nginx config it mounts with its own services, the image installs exactly what
streamgate needs at run time, the image's health check answers, and the Helm chart renders (where helm is)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from packaging.requirements import Requirement

from streamgate.bridges.app import BridgeServer
from tests.conftest import BridgeFactory
from tests.deploy.conftest import PLACEHOLDERS, ROOT, free_port

DEPLOY = ROOT / "deploy"


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return compose


def _seconds(duration: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)s", duration)
    assert found, duration
    return float(found.group(1))


def test_compose_fills_every_placeholder_of_the_nginx_config_with_its_own_services() -> None:
    services = _compose()["services"]
    nginx = services["nginx"]
    env = nginx["environment"]
    assert {name for name in env if name.startswith("STREAMGATE_")} == set(PLACEHOLDERS)
    assert all(re.search(env["NGINX_ENVSUBST_FILTER"], name) for name in PLACEHOLDERS)
    assert "./nginx/streamgate.conf:/etc/nginx/templates/streamgate.conf.template:ro" in nginx["volumes"]
    assert "./nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]

    def role_of(address: str, role: str, port_variable: str) -> None:
        host, port = address.split(":")
        service = services[host]
        assert service["command"][0] == role, (host, service["command"])
        assert service["environment"][port_variable] == port

    for n in (1, 2):
        role_of(env[f"STREAMGATE_BRIDGE_{n}"], "bridge", "STREAMGATE_HTTP_PORT")
        role_of(env[f"STREAMGATE_CORE_{n}"], "core", "STREAMGATE_GRPC_PORT")
    link = f"nginx:{env['STREAMGATE_LINK_LISTEN']}"
    bridges = [s for s in services.values() if s.get("command", [""])[0] == "bridge"]
    assert bridges and all(s["command"][1:] == ["--core", link] for s in bridges), "bridges reach cores via nginx"
    published = [str(p).rsplit(":", 1)[-1] for p in nginx["ports"]]
    assert env["STREAMGATE_LINK_LISTEN"] not in published, "the bridges' link stays on the backend network"
    for name, service in services.items():  # a stop gives the drain (10 s by default) its time
        if service.get("command", [""])[0] in ("core", "bridge"):
            assert _seconds(service["stop_grace_period"]) > 10, name
            assert "STREAMGATE_LINK_TOKEN" in service["environment"], name


def _lock_subset() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_subset", DEPLOY / "docker" / "lock_subset.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _installed_closure(extras: tuple[str, ...]) -> set[str]:
    """What streamgate[extras] needs on this Python, by the installed packages' own metadata."""
    lock_subset = _lock_subset()
    needed: set[str] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [("streamgate", extras)]
    while todo:
        name, wanted = todo.pop()
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({"extra": extra}) for extra in (*wanted, "")
            ):
                continue
            dependency = lock_subset.normalize(requirement.name)
            if dependency not in needed:
                needed.add(dependency)
                todo.append((dependency, tuple(requirement.extras)))
    return needed


def test_the_image_installs_what_streamgate_needs_at_run_time_and_no_test_tools() -> None:
    lock_subset = _lock_subset()
    lock = lock_subset.entries((ROOT / "requirements.lock").read_text())
    picked = lock_subset.closure(lock, lock_subset.runtime_roots(ROOT / "pyproject.toml", ["fast"]))

    missing = _installed_closure(("fast",)) - picked
    assert not missing, f"needed at run time, left out of the image: {sorted(missing)}"
    assert not picked & {"pytest", "mypy", "ruff", "playwright", "hypothesis", "grpcio-tools", "fastapi"}
    for name in picked:  # `pip install --require-hashes` takes each entry as the lock has it
        assert "--hash=sha256:" in lock[name][0], name


def test_the_dockerfile_copies_only_files_that_exist() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE), "runs as the unprivileged user"
    assert 'CMD ["serve"]' in dockerfile  # the embedded model, no key: serve's default


def _healthcheck(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "docker" / "healthcheck.py"), *args],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_the_image_health_check_answers_for_a_bridge_and_a_core(make_bridge: BridgeFactory) -> None:
    import asyncio

    bridge: BridgeServer = await make_bridge()
    core_port = bridge.config.core.rsplit(":", 1)[1]
    closed = str(free_port())
    http_ok, grpc_ok, http_down, grpc_down = await asyncio.gather(
        asyncio.to_thread(_healthcheck, STREAMGATE_HTTP_PORT=str(bridge.port)),
        asyncio.to_thread(_healthcheck, "grpc", STREAMGATE_GRPC_PORT=core_port),
        asyncio.to_thread(_healthcheck, STREAMGATE_HTTP_PORT=closed),
        asyncio.to_thread(_healthcheck, "grpc", STREAMGATE_GRPC_PORT=closed),
    )
    assert (http_ok.returncode, grpc_ok.returncode) == (0, 0), (http_ok.stderr, grpc_ok.stderr)
    assert (http_down.returncode, grpc_down.returncode) == (1, 1)
    assert "unhealthy" in http_down.stderr and "unhealthy" in grpc_down.stderr


#: scripts/setup installs the pinned helm from the Go module proxy (clients/go/setup.sh).
PINNED_HELM = DEPLOY.parent / "clients" / "go" / ".bin" / "helm"
HELM = os.environ.get("STREAMGATE_HELM") or (str(PINNED_HELM) if PINNED_HELM.exists() else shutil.which("helm"))
CHART = DEPLOY / "helm" / "streamgate"


def _helm(*args: str) -> str:
    assert HELM is not None, "no helm: run scripts/setup (it installs the pinned helm into clients/go/.bin)"
    result = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_helm_chart_lints_and_renders_probes_drain_and_the_link(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "ingress": {"enabled": True},
                "grpcIngress": {"enabled": True},
                "core": {"config": {"models": {"assistant": {"model": "streamgate/default"}}},
                         "ledger": {"secretRef": {"name": "ledger", "key": "url"}}},
                "bridge": {"corsOrigins": ["https://chat.example.com"]},
            }
        )
    )  # fmt: skip
    _helm("lint", str(CHART), "--kube-version", "1.30.0")
    _helm("lint", str(CHART), "--kube-version", "1.30.0", "-f", str(values))
    docs = [
        d
        for d in yaml.safe_load_all(_helm("template", "sg", str(CHART), "--kube-version", "1.30.0", "-f", str(values)))
        if d
    ]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    core = by_kind[("Deployment", "sg-streamgate-core")]["spec"]["template"]["spec"]
    bridge = by_kind[("Deployment", "sg-streamgate-bridge")]["spec"]["template"]["spec"]
    (core_container,), (bridge_container,) = core["containers"], bridge["containers"]
    assert core_container["readinessProbe"]["grpc"]["port"] == 50051
    assert bridge_container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for spec, container in ((core, core_container), (bridge, bridge_container)):
        env = {e["name"]: e.get("value") for e in container["env"]}
        sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        assert spec["terminationGracePeriodSeconds"] > sleep + float(env["STREAMGATE_DRAIN_GRACE"])
        assert container["securityContext"]["readOnlyRootFilesystem"] and spec["securityContext"]["runAsNonRoot"]
        assert container["resources"]["requests"]["memory"]
    bridge_env = {e["name"]: e.get("value") for e in bridge_container["env"]}
    assert bridge_env["STREAMGATE_CORE"] == "sg-streamgate-core:50051"
    assert by_kind[("Service", "sg-streamgate-core")]["spec"]["ports"][0]["port"] == 50051
    assert bridge_env["STREAMGATE_CORS_ORIGINS"] == "https://chat.example.com"
    assert by_kind[("ConfigMap", "sg-streamgate-core")]["data"]["streamgate.yaml"].startswith("models:")
    grpc_paths = [p["path"] for p in by_kind[("Ingress", "sg-streamgate-grpc")]["spec"]["rules"][0]["http"]["paths"]]
    assert not [p for p in grpc_paths if "link" in p], "the bridges' link is not routed from outside"
    annotations = by_kind[("Ingress", "sg-streamgate")]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_the_envoy_config_keeps_what_streams_need() -> None:
    """Envoy is not installable here (deploy/envoy/envoy.yaml says so): its file is checked for the
    settings a stream needs, the ones nginx's are tested for by running it."""
    envoy = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())
    resources = envoy["static_resources"]
    managers = {
        listener["name"]: listener["filter_chains"][0]["filters"][0]["typed_config"]
        for listener in resources["listeners"]
    }
    assert set(managers) == {"http", "grpc", "link"}
    assert managers["http"]["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    assert managers["grpc"]["codec_type"] == managers["link"]["codec_type"] == "HTTP2"
    for name, manager in managers.items():
        for host in manager["route_config"]["virtual_hosts"]:
            for route in host["routes"]:
                action = route.get("route")
                if action is None:
                    continue
                assert action["timeout"] == "0s", (name, route)  # a stream outlives any route timeout
                retry = action.get("retry_policy", {}).get("retry_on", "")
                assert "5xx" not in retry and "reset" not in retry, (name, retry)  # never a stream sent twice
    clusters = {cluster["name"]: cluster for cluster in resources["clusters"]}
    options = clusters["cores"]["typed_extension_protocol_options"]
    assert "http2_protocol_options" in next(iter(options.values()))["explicit_http_config"]
    assert clusters["bridges"]["health_checks"][0]["http_health_check"]["path"] == "/readyz"
    assert "grpc_health_check" in clusters["cores"]["health_checks"][0]
