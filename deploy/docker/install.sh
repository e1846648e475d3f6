#!/bin/sh
# Install streamgate's run-time environment into a new virtual environment, every file hash-checked
# against the repository's locks: the image's build stage runs this (deploy/Dockerfile), and so can a
# machine without a container engine, to check the same steps:
#
#   deploy/docker/install.sh /opt/streamgate        # then /opt/streamgate/bin/streamgate serve
#
# What it installs: pip (requirements-bootstrap.lock), then the run-time part of requirements.lock
# (streamgate[fast]'s dependencies, picked by lock_subset.py: no test or lint tools), then streamgate's own
# wheel, built by the locked setuptools with no build isolation (nothing unlocked is fetched). Only wheels.
set -eu
target=${1:?usage: deploy/docker/install.sh TARGET}
python=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cd "$root"
"$python" deploy/docker/lock_subset.py --lock requirements-bootstrap.lock --only pip > "$work/pip.lock"
"$python" deploy/docker/lock_subset.py --only setuptools > "$work/build.lock"
"$python" deploy/docker/lock_subset.py --extra fast > "$work/runtime.lock"
locked="--require-hashes --only-binary :all: --no-deps --no-cache-dir --disable-pip-version-check --quiet"

# The wheel, built from a copy of the sources (the build leaves its files beside them).
mkdir "$work/src"
cp -R pyproject.toml README.md src core bridges "$work/src/"
mkdir -p "$work/src/clients" && cp -R clients/python "$work/src/clients/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m venv "$work/build"
"$work/build/bin/python" -m pip install $locked -r "$work/pip.lock"
"$work/build/bin/python" -m pip install $locked -r "$work/build.lock"
"$work/build/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/wheels" "$work/src"

"$python" -m venv "$target"
"$target/bin/python" -m pip install $locked -r "$work/pip.lock"
"$target/bin/python" -m pip install $locked -r "$work/runtime.lock"
"$target/bin/python" -m pip install --quiet --no-deps --no-index --disable-pip-version-check "$work"/wheels/streamgate-*.whl
"$target/bin/python" -m pip check
"$target/bin/streamgate" --version
