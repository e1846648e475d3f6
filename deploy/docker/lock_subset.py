"""Print the part of a hash-locked requirements file that an install needs, each entry with all its hashes.

The image installs what streamgate needs at run time, not the whole of requirements.lock (which also
locks the test and lint tools): the packages of pyproject.toml's `dependencies` (and the extras named),
and everything they pull in, found through the lock's own `# via` notes. Every line kept is the lock's
own, so `pip install --require-hashes --no-deps` checks each file against the same sha256.

    python deploy/docker/lock_subset.py --extra fast > runtime.lock      # streamgate[fast] at run time
    python deploy/docker/lock_subset.py --only setuptools > build.lock   # the build backend alone
    python deploy/docker/lock_subset.py --lock requirements-bootstrap.lock --only pip

Standard library only (it runs before anything is installed).
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import tomllib
from pathlib import Path

_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", re.MULTILINE)
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(lock: str) -> dict[str, tuple[str, set[str]]]:
    """Each pinned package: its whole entry (pin, hashes, notes) and the packages it is `via`."""
    starts = [m.start() for m in _ENTRY.finditer(lock)] + [len(lock)]
    found: dict[str, tuple[str, set[str]]] = {}
    for start, end in itertools.pairwise(starts):
        block = lock[start:end]
        name = normalize(_ENTRY.match(block).group(1))  # type: ignore[union-attr]
        notes = [line.strip().lstrip("#").strip() for line in block.splitlines() if line.strip().startswith("#")]
        via: set[str] = set()
        for note in notes:
            note = note.removeprefix("via").strip()
            if note and not note.startswith("("):
                via.add(normalize(note.split()[0]))
        found[name] = (block.rstrip() + "\n", via)
    return found


def runtime_roots(pyproject: Path, extras: list[str]) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {normalize(_NAME.match(r).group(1)) for r in requirements}  # type: ignore[union-attr]


def closure(lock: dict[str, tuple[str, set[str]]], roots: set[str]) -> set[str]:
    missing = roots - lock.keys()
    if missing:
        raise SystemExit(f"not in the lock: {sorted(missing)} (run scripts/lock)")
    needed = set(roots)
    grew = True
    while grew:
        grew = False
        for name, (_, via) in lock.items():
            if name not in needed and via & needed:
                needed.add(name)
                grew = True
    return needed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=Path("requirements.lock"))
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--extra", action="append", default=[], help="an extra of pyproject.toml to include too")
    parser.add_argument("--only", action="append", default=[], help="just these packages (no closure)")
    args = parser.parse_args()
    lock = entries(args.lock.read_text())
    if args.only:
        names = {normalize(n) for n in args.only}
        if names - lock.keys():
            raise SystemExit(f"not in the lock: {sorted(names - lock.keys())}")
    else:
        names = closure(lock, runtime_roots(args.pyproject, args.extra))
    sys.stdout.write("".join(lock[name][0] for name in sorted(names)))


if __name__ == "__main__":
    main()
