#!/usr/bin/env bash
# Generate src/gen (the messages and the service descriptor of streamgate.v1) from the repository's
# proto/ with buf.gen.ts.yaml: the repository's pinned buf (node_modules/.bin/buf at the root, from
# scripts/setup or `npm ci` there) and protoc-gen-es from this package's own pinned devDependencies.
# `npm run build`, `npm test` and `npm run example` run it first; src/gen is not committed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$here/../..
if [ ! -x "$here/node_modules/.bin/protoc-gen-es" ]; then
  echo "clients/ts: node_modules/.bin/protoc-gen-es is missing: run 'npm ci' in clients/ts first" >&2
  exit 1
fi
if [ ! -x "$root/node_modules/.bin/buf" ]; then
  echo "clients/ts: the repository's buf is missing: run scripts/setup (or 'npm ci' at the repository root) first" >&2
  exit 1
fi
cd "$root"
node_modules/.bin/buf generate --template buf.gen.ts.yaml
