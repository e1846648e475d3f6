#!/usr/bin/env bash
# Fetch the pinned code-generation binaries of the Java client into clients/java/.bin, idempotently:
#   .bin/protoc                 protoc, for buf's `protoc_builtin: java` (com.google.protobuf:protoc)
#   .bin/protoc-gen-grpc-java   the gRPC stub generator (io.grpc:protoc-gen-grpc-java)
# Both are native linux-x86_64 executables published on Maven Central; Maven fetches them (through
# its local cache, ~/.m2) and this script checks their SHA-256 before installing them.
# Their versions must match the runtime in pom.xml (protobuf.version, grpc.version): checked below.
set -euo pipefail
cd "$(dirname "$0")"

PROTOBUF_VERSION=4.35.1   # protoc 35.1 (gencode) = protobuf-java 4.35.1 (runtime)
PROTOC_SHA256=d2c65c3ea5eeb59427f684ed3e0a0cd458386122fc9f1b98de946a7242b53d31
GRPC_JAVA_VERSION=1.83.1  # the newest whose linux-x86_64 plugin binary Maven Central serves here
GRPC_JAVA_SHA256=db4044e78391d5a23439143c8147f07ba5877675587b4d48f3b68fbee3893589
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

for pin in "protobuf.version>$PROTOBUF_VERSION<" "grpc.version>$GRPC_JAVA_VERSION<"; do
  grep -q "<$pin" pom.xml || { echo "setup.sh: pom.xml does not pin <$pin/...>: update both together" >&2; exit 1; }
done

fetch() { # fetch NAME GROUP:ARTIFACT:VERSION SHA256
  local name=$1 artifact=$2 sha=$3
  if [ -x ".bin/$name" ] && [ "$(sha256sum ".bin/$name" | cut -d' ' -f1)" = "$sha" ]; then
    return
  fi
  echo "setup.sh: fetching $artifact:exe:linux-x86_64 into clients/java/.bin/$name"
  local tmp
  tmp=$(mktemp -d)
  mvn -q -B "$DEPENDENCY_PLUGIN:copy" -Dartifact="$artifact:exe:linux-x86_64" -DoutputDirectory="$tmp" \
    -Dmdep.stripVersion=true -Dmdep.stripClassifier=true >/dev/null
  local file=("$tmp"/*.exe)
  local got
  got=$(sha256sum "${file[0]}" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "setup.sh: $artifact: SHA-256 $got, expected $sha" >&2
    rm -rf "$tmp"
    exit 1
  fi
  mkdir -p .bin
  install -m 0755 "${file[0]}" ".bin/$name"
  rm -rf "$tmp"
}

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "setup.sh: the pinned binaries are linux-x86_64 only" >&2; exit 1 ;;
esac
fetch protoc "com.google.protobuf:protoc:$PROTOBUF_VERSION" "$PROTOC_SHA256"
fetch protoc-gen-grpc-java "io.grpc:protoc-gen-grpc-java:$GRPC_JAVA_VERSION" "$GRPC_JAVA_SHA256"
echo "setup.sh: ready ($(.bin/protoc --version), protoc-gen-grpc-java $GRPC_JAVA_VERSION)"
