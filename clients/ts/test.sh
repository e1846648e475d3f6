#!/usr/bin/env bash
# Test the TypeScript client against a live core (needs Node.js >= 20 and npm, and the repository's
# Python environment in .venv/, as scripts/setup makes it).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x ../../.venv/bin/python ]; then
  echo "clients/ts: ../../.venv/bin/python is missing: run scripts/setup first" >&2
  exit 1
fi

# npm ci when node_modules is missing or was installed from another package-lock.json.
stamp=node_modules/.streamgate-lock.sha256
want=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "clients/ts: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

# The generated code is what buf makes from proto/ now (when the repository's buf is set up).
if [ -x ../../node_modules/.bin/buf ]; then
  fresh=$(mktemp -d)
  trap 'rm -rf "$fresh"' EXIT
  (cd ../.. && node_modules/.bin/buf generate --template buf.gen.ts.yaml -o "$fresh")
  if ! diff -r "$fresh/clients/ts/src/gen" src/gen >/dev/null; then
    echo "clients/ts: src/gen is stale: run 'npx buf generate --template buf.gen.ts.yaml' at the repository root" >&2
    exit 1
  fi
fi

rm -rf dist
npm test
