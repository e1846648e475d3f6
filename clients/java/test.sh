#!/usr/bin/env bash
# Test the Java client against a live core: check the pinned generator binaries (setup.sh), then
# build (which generates dev.streamgate.v1 from the repository's proto/) and run the JUnit 5 tests
# with Maven Surefire. Needs the repository's .venv (scripts/setup).
# Extra arguments go to Maven, e.g. clients/java/test.sh -Dtest=ClientTest#cancellingTheCallClosesTheUpstreamRequest
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x ../../.venv/bin/python ]; then
  echo "clients/java/test.sh: ../../.venv/bin/python is missing: run scripts/setup first" >&2
  exit 1
fi
./setup.sh
rm -rf target/surefire-reports
status=0
mvn -q -B test "$@" || status=$?
# -q hides Surefire's own summary: say what ran, from its reports (on a line of its own: Maven 3.8
# prints bare colour resets even with -q -B).
cat target/surefire-reports/TEST-*.xml 2>/dev/null | awk '
  /<testsuite / {
    for (i = 1; i <= NF; i++) if (split($i, kv, "=") == 2) { gsub(/[">]/, "", kv[2]); n[kv[1]] += kv[2] }
  }
  END { printf "\njava: %d passed, %d failed, %d skipped\n", n["tests"] - n["failures"] - n["errors"] - n["skipped"], n["failures"] + n["errors"], n["skipped"] }'
exit "$status"
