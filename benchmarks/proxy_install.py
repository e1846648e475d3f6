"""Install the LiteLLM proxy's dependencies into this venv on demand (a benchmark-only extra).

`pip install "litellm[proxy]==<installed litellm>"` first. Some registries lag behind litellm's own
release (its `proxy` extra pins `litellm-proxy`, `litellm-proxy-extras` and `litellm-enterprise` at
exact versions they may not carry yet), so when that fails the extra's requirements are installed
one by one instead: the proxy's code ships inside the `litellm` wheel, an exact pin that cannot be
met is relaxed to the package name, and one that still cannot be installed is skipped. Every
package already installed is held at its version (a constraints file from `pip freeze`), so the
gateway under test runs on the same libraries with or without the extra.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution, requires, version
from pathlib import Path

from packaging.requirements import Requirement

PROBE = "import litellm.proxy.proxy_server"
#: Code that ships inside the litellm wheel: not needed as a package.
BUNDLED = {"litellm-proxy"}


@dataclass(frozen=True)
class ProxyAvailability:
    ok: bool
    reason: str


def _pip(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _importable() -> tuple[bool, str]:
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180, check=False)
    lines = (probe.stderr or "").strip().splitlines()
    return probe.returncode == 0, lines[-1] if lines else ""


def _constraints(folder: Path) -> Path:
    """Every installed distribution pinned at its version (editable and direct-URL ones left out)."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    path = folder / "constraints.txt"
    path.write_text("\n".join(line for line in frozen if "==" in line and " @ " not in line) + "\n")
    return path


def _missing_proxy_requirements() -> list[Requirement]:
    """The `proxy` extra's requirements that are neither installed nor bundled with litellm."""
    missing = []
    for text in requires("litellm") or []:
        req = Requirement(text)
        if req.marker is None or not req.marker.evaluate({"extra": "proxy"}) or req.marker.evaluate({"extra": ""}):
            continue
        if req.name in BUNDLED:
            continue
        try:
            distribution(req.name)
        except PackageNotFoundError:
            missing.append(req)
    return missing


def _install_one_by_one(constraints: Path) -> list[str]:
    """Install each missing requirement; relax an unmet exact pin; return what could not be installed."""
    skipped = []
    for req in _missing_proxy_requirements():
        spec = f"{req.name}{req.specifier}"
        if _pip("-c", str(constraints), spec).returncode == 0:
            continue
        if any(s.operator == "==" for s in req.specifier) and _pip("-c", str(constraints), req.name).returncode == 0:
            continue
        skipped.append(spec)
    return skipped


def ensure_litellm_proxy() -> ProxyAvailability:
    """Make `litellm --config ...` runnable here, or say why it cannot be."""
    if not _missing_proxy_requirements():  # all there: spare the import probe (seconds)
        return ProxyAvailability(True, "installed")
    ok, error = _importable()
    if ok:
        return ProxyAvailability(True, "already installed")
    print(f"installing the LiteLLM proxy's dependencies (missing: {error}) ...", file=sys.stderr, flush=True)
    try:
        with tempfile.TemporaryDirectory() as folder:
            constraints = _constraints(Path(folder))
            full = _pip("-c", str(constraints), f"litellm[proxy]=={version('litellm')}")
            skipped = [] if full.returncode == 0 else _install_one_by_one(constraints)
    except (subprocess.SubprocessError, OSError) as exc:
        return ProxyAvailability(False, f"pip failed: {exc}")
    ok, error = _importable()
    if ok:
        note = f"installed; skipped {', '.join(skipped)}" if skipped else "installed"
        return ProxyAvailability(True, note)
    return ProxyAvailability(False, f"cannot import the proxy after installing: {error}")


if __name__ == "__main__":
    print(ensure_litellm_proxy())
