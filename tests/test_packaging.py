"""The install maps the folders the design names to one package, `streamgate` (pyproject.toml's
[tool.setuptools]): core/ is `streamgate.core`, bridges/ `streamgate.bridges`, clients/python/
`streamgate.client`, src/streamgate the rest. These hold the editable install and the wheel to that map."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.test_layers import PACKAGES, ROOT

LISTED: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def _folders() -> dict[str, Path]:
    """Every package on disk, data folders included (as setuptools counts them) → its folder."""
    found: dict[str, Path] = {}
    for name, root in PACKAGES.items():
        for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
            parts = folder.relative_to(root).parts
            if "__pycache__" not in parts:
                found.setdefault(".".join([name, *parts]), folder)
    return found


def test_every_folder_is_a_listed_package() -> None:
    # `packages` is a list (find cannot name a package after a folder it maps): a folder missing from it
    # still imports in the editable install, but the wheel leaves it out.
    missing = sorted(set(_folders()) - set(LISTED))
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
    assert not sorted(set(LISTED) - set(_folders())), "listed in [tool.setuptools] packages, but no such folder"


def test_the_installed_package_is_the_real_folders() -> None:
    spec = importlib.util.find_spec("streamgate")
    if spec is None or not Path(spec.origin or "").is_relative_to(ROOT):
        pytest.skip("streamgate is not installed from this checkout in editable mode")
    for name, folder in _folders().items():
        spec = importlib.util.find_spec(name)
        assert spec is not None, name
        assert [Path(p) for p in spec.submodule_search_locations or ()] == [folder], name


@pytest.mark.timeout(180)
def test_the_wheel_ships_every_module_and_file_and_runs(tmp_path: Path) -> None:
    # Built from a copy (the build writes build/ and *.egg-info next to the sources), installed into a
    # folder of its own, and run from there with the environment's dependencies.
    source = tmp_path / "source"
    source.mkdir()
    for entry in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / entry, source / entry)
    for folder in PACKAGES.values():
        shutil.copytree(folder, source / folder.relative_to(ROOT), ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(source), "-w", str(tmp_path)]
    subprocess.run(build, check=True, capture_output=True, timeout=150)
    (wheel,) = tmp_path.glob("streamgate-*.whl")

    expected = {
        Path("streamgate", *name.split(".")[1:], file.name).as_posix()
        for name, folder in _folders().items()
        for file in folder.iterdir()
        if file.is_file() and (file.suffix in (".py", ".pyi") or file.name == "py.typed" or name.endswith(".static"))
    }
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert expected - shipped == set()
    assert {"streamgate/bridges/static/index.html", "streamgate/py.typed", "streamgate/client/__init__.py"} <= shipped
    assert not {n for n in shipped if not n.startswith(("streamgate/", "streamgate-"))}

    target = tmp_path / "installed"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-t", str(target), str(wheel)], check=True, timeout=60)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = """if True:
        from importlib import resources
        import streamgate.bridges.app, streamgate.client, streamgate.core.gateway as gateway
        page = resources.files(streamgate.bridges.app.__package__).joinpath("static/index.html").is_file()
        print(gateway.__file__, streamgate.bridges.app.__file__, streamgate.client.__file__, page)
    """
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    *files, page = out.stdout.split()
    assert all(Path(f).is_relative_to(target) for f in files) and page == "True", out.stdout
    version = subprocess.run([target / "bin" / "streamgate", "--version"], env=env, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("streamgate "), version
