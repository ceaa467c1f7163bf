#!/usr/bin/env bash
# The grpc-java client of the end-to-end tests (tests/grpc-java): built with Maven from
# Maven Central, cached outside the repository so that a fresh clone (CI) reuses it.
#
#   scripts/grpc-java.sh build   build the jar unless the cache holds it; prints nothing
#   scripts/grpc-java.sh path    print the cached jar's path (fails if it is not built)
#
# The cache key hashes every input of the jar: the pom, the Java sources, the .proto files
# the stubs are generated from, this script, and the java and mvn versions. Maven's own
# downloads live in ~/.m2 as usual; once they are there the build runs offline (-o).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/tests/grpc-java"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/snp/grpc-java"

die() { echo "grpc-java: $*" >&2; exit 1; }

key() {
  {
    (cd "$ROOT" && find tests/grpc-java/pom.xml tests/grpc-java/src crates/snp-proto/proto \
      -type f \( -name '*.xml' -o -name '*.java' -o -name '*.proto' \) -print0 |
      sort -z | xargs -0 sha256sum)
    sha256sum <"${BASH_SOURCE[0]}"
    java -version 2>&1
    mvn -v 2>/dev/null | head -1
  } | sha256sum | cut -c1-16
}

jar() { echo "$CACHE/$(key)/snp-grpc-java.jar"; }

build() {
  command -v java >/dev/null || die "java not found (needs a JDK >= 17)"
  command -v mvn >/dev/null || die "mvn not found"
  local out; out="$(jar)"
  [[ -s "$out" ]] && return 0
  echo "grpc-java: building $out (the first build downloads grpc-java and protoc from Maven Central)" >&2
  # Offline when ~/.m2 already has everything; online otherwise.
  (cd "$SRC" && { mvn -B -q -o package >/dev/null 2>&1 || mvn -B -q package; }) >&2
  mkdir -p "$(dirname "$out")"
  cp "$SRC/target/snp-grpc-java.jar" "$out.tmp" && mv "$out.tmp" "$out"
}

case "${1:-}" in
  build) build ;;
  path) p="$(jar)"; [[ -s "$p" ]] || die "not built: run scripts/grpc-java.sh build (scripts/setup.sh does)"; echo "$p" ;;
  *) echo "usage: $0 build | path" >&2; exit 2 ;;
esac
