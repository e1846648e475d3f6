#!/usr/bin/env bash
# Install the pinned Go tools into clients/go/.bin, idempotently (a tool already there at its
# pinned version is kept), and download the Go client's modules so the tests need no network.
set -euo pipefail
cd "$(dirname "$0")"

# The pinned versions; buf.gen.go.yaml uses the two plugins, tests/clients/test_grpcurl.py grpcurl, and
# tests/deploy/test_files.py helm.
tools=(
  "google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12"
  "google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2"
  "github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4"
  "helm.sh/helm/v3/cmd/helm@v3.22.0"  # lints and renders deploy/helm (tests/deploy/test_files.py)
)

if ! command -v go >/dev/null 2>&1; then
  [ -x /usr/local/go/bin/go ] || { echo "setup (go): no go on PATH nor at /usr/local/go/bin/go" >&2; exit 1; }
  export PATH="/usr/local/go/bin:$PATH"
fi

bin="$PWD/.bin"
mkdir -p "$bin"
for tool in "${tools[@]}"; do
  package=${tool%@*} version=${tool#*@}
  name=${package##*/}
  # The module version the binary was built from, as `go version -m` reads it.
  have=$(go version -m "$bin/$name" 2>/dev/null | awk '$1 == "mod" { print $3 }' || true)
  if [ "$have" != "$version" ]; then
    echo "setup (go): installing $name $version"
    flags=()
    [ "$name" = grpcurl ] && flags=(-ldflags "-X main.version=$version")  # so `grpcurl -version` tells it
    GOBIN="$bin" go install "${flags[@]}" "$tool"
  fi
done
go mod download
echo "setup (go): ready (clients/go/.bin: protoc-gen-go, protoc-gen-go-grpc, grpcurl, helm)"
