"""mypy (strict, as [tool.mypy] in pyproject.toml says) over every module of the package, by its installed name.

    .venv/bin/python scripts/typecheck.py [mypy options, e.g. --no-incremental]

The install maps folders to import names ([tool.setuptools.package-dir]: core/ is `streamgate.core`,
bridges/ is `streamgate.bridges`, clients/python/ is `streamgate.client`, the rest is src/). mypy has no
such table: it names a file after the folders above it (core/gateway.py would be `core.gateway`), and the
editable install's import hook is code, which mypy does not run. So this lists every file under the folders
the install maps, found with setuptools' own mapping function, under the name it installs as, and hands
the list to mypy (its `BuildSource`s, what `mypy -p` builds); an import of
`streamgate.core.gateway` from bridges/ then resolves to core/gateway.py, and errors name the real files.
Files that [tool.mypy] `exclude` names (generated code) are left to mypy's import following, as before.
"""

from __future__ import annotations

import os
import sys
import time
import tomllib
from pathlib import Path

from mypy.defaults import RECURSION_LIMIT
from mypy.fscache import FileSystemCache
from mypy.main import process_options, run_build
from mypy.modulefinder import BuildSource, matches_exclude
from mypy.options import Options
from mypy.util import FancyFormatter, count_stats
from setuptools.discovery import find_package_path

ROOT = Path(__file__).resolve().parent.parent


def package_folders() -> dict[str, Path]:
    """Each folder the install maps → the import name of its package: the top-level packages of
    [tool.setuptools] packages and every folder [tool.setuptools.package-dir] names (setuptools' own
    mapping function finds them)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools.get("package-dir", {})
    names = {name for name in mapping if name} | {name.partition(".")[0] for name in setuptools["packages"]}
    # The deepest first, so a folder mapped on its own is named by its own entry.
    ordered = sorted(names, key=lambda name: (-name.count("."), name))
    return {name: ROOT / find_package_path(name, mapping, ROOT) for name in ordered}


def sources(options: Options, fscache: FileSystemCache) -> list[BuildSource]:
    """Every module under those folders, subpackages included (listed in `packages` or not yet: the
    editable install imports them either way, and tests/test_packaging.py holds the list to the folders)."""
    found: dict[str, BuildSource] = {}
    for package, folder in package_folders().items():
        for file in sorted(folder.rglob("*.py*")):
            path = os.path.relpath(file, ROOT)
            if file.suffix not in (".py", ".pyi") or matches_exclude(path, options.exclude, fscache, False):
                continue
            if file.suffix == ".py" and file.with_suffix(".pyi").exists():
                continue  # the stub stands for it, as in mypy's own search
            parts = file.relative_to(folder).with_suffix("").parts
            module = ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])
            found.setdefault(module, BuildSource(path, module))
    return list(found.values())


def main(argv: list[str]) -> int:
    os.chdir(ROOT)
    started = time.time()
    sys.setrecursionlimit(RECURSION_LIMIT)
    fscache = FileSystemCache()
    targets, options = process_options(argv, require_targets=False, fscache=fscache)
    if targets:
        print("typecheck: it checks the whole package; pass mypy options only, no files or modules", file=sys.stderr)
        return 2
    todo = sources(options, fscache)
    _, messages, blockers = run_build(todo, options, fscache, started, sys.stdout, sys.stderr)
    formatter = FancyFormatter(sys.stdout, sys.stderr, options.hide_error_codes)
    errors, notes, files = count_stats(messages)
    if errors:
        print(formatter.format_error(errors, files, len(todo), blockers=blockers, use_color=options.color_output))
    elif notes == len(messages):
        print(formatter.format_success(len(todo), options.color_output))
    return (2 if blockers else 1) if notes < len(messages) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
