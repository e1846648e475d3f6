"""The package map's arrows, held by a test: which layer may import which.

    contract   <-   core (the engine)   <-   rpc (the core's gRPC server), link.server (the link's core end)
       ^                  ^
       |                  +-- library (StreamingHandler: gateway + framing, in-process)
    bridges, link.client (the link's bridge end), client (the Python client)

The bridge and the client speak the contract; they never import the engine (gateway, providers,
upstream streaming, litellm), directly or through another module. The contract imports neither
the engine nor a transport. The core has no transport code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from setuptools.discovery import find_package_path

ROOT = Path(__file__).resolve().parent.parent


def package_folders() -> dict[str, Path]:
    """Each folder the install maps → the import name of its package, from pyproject.toml's [tool.setuptools]
    with setuptools' own rule (`find_package_path`): every name `package-dir` maps, and each top-level package
    of `packages`. The deepest name first, so a folder mapped on its own is named by its own entry."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = config.get("package-dir", {})
    names = {name for name in mapping if name} | {name.partition(".")[0] for name in config["packages"]}
    ordered = sorted(names, key=lambda name: (-name.count("."), name))
    return {name: ROOT / find_package_path(name, mapping, ROOT) for name in ordered}


#: Where each package of `streamgate` is on disk: core/ is `streamgate.core`, and so on (the real files).
PACKAGES = package_folders()
ENGINE = ("streamgate.core", "streamgate.rpc", "streamgate.library", "streamgate.link.server", "litellm")


def _sources(folder: Path) -> list[Path]:
    """The Python files under `folder`, generated code left out."""
    return [file for file in folder.rglob("*.py") if not file.name.endswith(("_pb2.py", "_pb2_grpc.py"))]


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name, folder in PACKAGES.items():
        for file in _sources(folder):
            parts = list(file.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.setdefault(".".join([name, *parts]), file)
    return found


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """Every module `module` imports (at any depth of its code), relative imports resolved."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return names


def _reachable(start: str) -> dict[str, str]:
    """Modules reachable from `start` by imports → the module that imported each first."""
    seen: dict[str, str] = {start: ""}
    todo = [start]
    while todo:
        current = todo.pop()
        for name in _imports(current):
            target = next((m for m in (name, name.rpartition(".")[0]) if m in MODULES), name)
            if target not in seen:
                seen[target] = current
                if target in MODULES:
                    todo.append(target)
    return seen


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _layer(prefix: str) -> list[str]:
    return sorted(m for m in MODULES if _under(m, (prefix,)))


@pytest.mark.parametrize(
    "module",
    [
        *_layer("streamgate.bridges"),
        *_layer("streamgate.client"),
        *_layer("streamgate.contract"),
        "streamgate.link.client",
    ],
)
def test_the_bridge_the_client_and_the_contract_never_reach_the_engine(module: str) -> None:
    reached = _reachable(module)
    bad = {name: via for name, via in reached.items() if _under(name, ENGINE)}
    assert not bad, f"{module} reaches the engine: " + ", ".join(f"{n} (imported by {v})" for n, v in bad.items())


@pytest.mark.parametrize("module", _layer("streamgate.contract"))
def test_the_contract_imports_no_transport_library(module: str) -> None:
    assert not {n for n in _reachable(module) if _under(n, ("aiohttp", "streamgate.bridges", "streamgate.serve"))}


@pytest.mark.parametrize("module", _layer("streamgate.core"))
def test_the_core_has_no_transport_code(module: str) -> None:
    direct = _imports(module)
    assert not {n for n in direct if _under(n, ("grpc", "aiohttp.web", "streamgate.rpc", "streamgate.bridges"))}


def test_the_walk_sees_every_layer() -> None:
    # A guard on the test itself: an edge it cannot see proves nothing. Every file of every mapped folder
    # is a module of the walk, and edges cross each folder the install maps, both ways.
    assert {file for folder in PACKAGES.values() for file in _sources(folder)} == set(MODULES.values())
    assert {"streamgate.core", "streamgate.bridges", "streamgate.client", "streamgate"} <= set(PACKAGES)
    assert "streamgate.core.gateway" in _reachable("streamgate.rpc.servicer")  # src/ → core/
    assert "streamgate.contract._convert" in _reachable("streamgate.bridges.app")  # bridges/ → src/
    assert "streamgate.bridges.framing" in _reachable("streamgate.library")  # src/ → bridges/
    assert "streamgate.contract._status" in _reachable("streamgate.client")  # clients/python/ → src/
    assert "streamgate.client" in _reachable("streamgate.client.example")  # within clients/python/


def test_the_running_bridge_loads_no_engine() -> None:
    code = (
        "import sys, streamgate.bridges.app, streamgate.client;"
        "bad = sorted(m for m in sys.modules if m.startswith(('litellm', 'streamgate.core', 'streamgate.rpc')));"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "", out.stdout
