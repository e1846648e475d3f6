#!/usr/bin/env bash
# Set up the Go tools, then vet and test the Go client against a live core
# (.venv/bin/python -m streamgate.testing.live; run scripts/setup first for .venv).
# Regenerates nothing. Extra arguments go to `go test` (e.g. -v, -run Cancel).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/setup.sh"
command -v go >/dev/null 2>&1 || export PATH="/usr/local/go/bin:$PATH"
cd "$here"
go vet ./...
# -count=1: the tests talk to a live core, so a cached pass proves nothing.
go test -count=1 "$@" ./...
