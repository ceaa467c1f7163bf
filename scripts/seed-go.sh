#!/usr/bin/env bash
# The seed server's algorithm in Go (bench/seed-go): the peer the benchmarks race snp
# against. Built once and cached outside the repository, so that a fresh clone reuses it.
#
#   scripts/seed-go.sh build   build unless the cache holds this exact build; print its path
#   scripts/seed-go.sh path    print the cached binary's path (fails if it is not built)
#
# The cache key hashes go.mod, go.sum, the Go sources, this script (the build flags) and
# `go version`: ${XDG_CACHE_HOME:-$HOME/.cache}/snp/seed-go/<key>/seed-go.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/bench/seed-go"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/snp/seed-go"
BUILD_FLAGS=(-mod=readonly -trimpath -ldflags=-s\ -w)

die() { echo "seed-go: $*" >&2; exit 1; }

key() {
  {
    (cd "$SRC" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 |
      sort -z | xargs -0 sha256sum)
    sha256sum <"${BASH_SOURCE[0]}"
    echo "${BUILD_FLAGS[*]}"
    go version
  } | sha256sum | cut -c1-16
}

bin() { echo "$CACHE/$(key)/seed-go"; }

build() {
  command -v go >/dev/null || die "go not found (needs Go >= $(sed -n 's/^go //p' "$SRC/go.mod"))"
  local out
  out="$(bin)"
  [[ -x "$out" ]] && { echo "$out"; return 0; }
  echo "seed-go: building $out" >&2
  mkdir -p "$(dirname "$out")"
  (cd "$SRC" && go build "${BUILD_FLAGS[@]}" -o "$out.tmp.$$" .) || { rm -f "$out.tmp.$$"; die "go build failed"; }
  mv "$out.tmp.$$" "$out"
  echo "$out"
}

case "${1:-}" in
  build) build ;;
  path) p="$(bin)"; [[ -x "$p" ]] || die "not built: run scripts/seed-go.sh build (bench/run.sh does)"; echo "$p" ;;
  *) echo "usage: $0 build | path" >&2; exit 2 ;;
esac
