#!/usr/bin/env bash
# Get the Java client's code generators ready, idempotently. The Maven build itself generates the
# messages and gRPC stubs from the repository's proto/ (protobuf-maven-plugin in pom.xml) with two
# native executables from Maven Central:
#   com.google.protobuf:protoc:<protobuf.version>:exe:<os>          protoc (gencode 35.1 = 4.35.1)
#   io.grpc:protoc-gen-grpc-java:<grpc.version>:exe:<os>            the gRPC stub generator
# This script fetches them into Maven's local repository (~/.m2, where the build takes them from) and
# checks their SHA-256 against the pins below, so the build never runs a generator it was not meant to.
# Their versions must be the ones pom.xml pins (protobuf.version, grpc.version): checked below.
# After the first run neither this nor the build needs the network.
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

# Earlier setups installed copies of the generators here for buf; nothing uses them any more.
rm -rf .bin

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *)
    echo "setup.sh: the SHA-256 pins are for linux-x86_64 only: the build takes the generators for" \
      "this platform from Maven Central unchecked" >&2
    exit 0
    ;;
esac

check() { # check GROUP:ARTIFACT:VERSION SHA256: fetch (or find in ~/.m2) the linux-x86_64 exe, check it
  local artifact=$1 sha=$2 tmp got
  tmp=$(mktemp -d)
  # Copied out of ~/.m2 (fetched there first if it is missing): the very file the build will run.
  mvn -q -B "$DEPENDENCY_PLUGIN:copy" -Dartifact="$artifact:exe:linux-x86_64" -DoutputDirectory="$tmp" \
    -Dmdep.stripVersion=true -Dmdep.stripClassifier=true >/dev/null
  local file=("$tmp"/*.exe)
  got=$(sha256sum "${file[0]}" | cut -d' ' -f1)
  rm -rf "$tmp"
  if [ "$got" != "$sha" ]; then
    echo "setup.sh: $artifact:exe:linux-x86_64 in the local Maven repository has SHA-256 $got, expected $sha" >&2
    exit 1
  fi
}

check "com.google.protobuf:protoc:$PROTOBUF_VERSION" "$PROTOC_SHA256"
check "io.grpc:protoc-gen-grpc-java:$GRPC_JAVA_VERSION" "$GRPC_JAVA_SHA256"
echo "setup.sh: ready (protoc $PROTOBUF_VERSION, protoc-gen-grpc-java $GRPC_JAVA_VERSION, SHA-256 checked)"
