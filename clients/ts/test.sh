#!/usr/bin/env bash
# Test the TypeScript client against a live core (needs Node.js >= 20 and npm, and the repository's
# Python environment in .venv/ and buf in node_modules/, as scripts/setup makes them). `npm test`
# generates src/gen from proto/ first (generate.sh), then compiles and runs the tests.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x ../../.venv/bin/python ]; then
  echo "clients/ts: ../../.venv/bin/python is missing: run scripts/setup first" >&2
  exit 1
fi
if [ ! -x ../../node_modules/.bin/buf ]; then
  echo "clients/ts: ../../node_modules/.bin/buf is missing: run scripts/setup first" >&2
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

rm -rf dist
npm test
