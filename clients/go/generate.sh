#!/usr/bin/env bash
# Regenerate clients/go/streamgatev1 from proto/ with the pinned local plugins (buf.gen.go.yaml).
#   clients/go/generate.sh          regenerate in place
#   clients/go/generate.sh --check  fail if the committed code is stale; change nothing
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/setup.sh" >/dev/null
cd "$here/../.."
buf=node_modules/.bin/buf
[ -x "$buf" ] || buf="npx --no-install buf"

if [ "${1:-}" != "--check" ]; then
  $buf generate --template buf.gen.go.yaml
  exit 0
fi
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
$buf generate --template buf.gen.go.yaml -o "$fresh"
stale=0
for generated in $(cd "$fresh" && find . -type f); do
  if ! cmp -s "$fresh/$generated" "$generated"; then
    echo "stale: $generated" >&2
    stale=1
  fi
done
for committed in $(find clients/go/streamgatev1 -type f -name '*.go'); do
  [ -e "$fresh/$committed" ] || { echo "not generated any more: $committed" >&2; stale=1; }
done
if [ "$stale" = 1 ]; then
  echo "generate (go): the generated code is stale: run clients/go/generate.sh and commit the result" >&2
  exit 1
fi
echo "generate (go): the generated code is up to date"
