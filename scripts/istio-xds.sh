#!/usr/bin/env bash
# istiod's own configuration generation for the end-to-end tests (tests/istio-xds: a Go module
# requiring istio.io/istio, release-1.31), built once and cached outside the repository so that
# a fresh clone (CI) reuses it.
#
#   scripts/istio-xds.sh build   build unless the cache holds this exact build; prints nothing
#   scripts/istio-xds.sh path    print the cached binary's path (fails if it is not built)
#
# The cache key hashes go.mod, go.sum, the Go sources, this script (the build flags) and
# `go version`. Next to the binary goes Istio's sidecar bootstrap template
# (tools/packaging/common/envoy_bootstrap.json of the same module), which istio-agent's
# pkg/bootstrap renders. The first build takes minutes (Istio and Kubernetes client code);
# Go's own build cache makes a rebuild after a source change take seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/tests/istio-xds"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/snp/istio-xds"
BUILD_FLAGS=(-mod=readonly -trimpath)

die() { echo "istio-xds: $*" >&2; exit 1; }

key() {
  {
    (cd "$SRC" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 |
      sort -z | xargs -0 sha256sum)
    sha256sum <"${BASH_SOURCE[0]}"
    echo "${BUILD_FLAGS[*]}"
    go version
  } | sha256sum | cut -c1-16
}

bin() { echo "$CACHE/$(key)/snp-istio-xds"; }

build() {
  command -v go >/dev/null || die "go not found (needs Go >= $(sed -n 's/^go //p' "$SRC/go.mod"))"
  local out dir istio
  out="$(bin)"
  dir="$(dirname "$out")"
  [[ -x "$out" && -s "$dir/envoy_bootstrap.json" ]] && return 0
  echo "istio-xds: building $out (the first build takes a few minutes)" >&2
  mkdir -p "$dir"
  (cd "$SRC" && go build "${BUILD_FLAGS[@]}" -o "$out.tmp" .)
  istio="$(cd "$SRC" && go list -mod=readonly -m -f '{{.Dir}}' istio.io/istio)"
  cp "$istio/tools/packaging/common/envoy_bootstrap.json" "$dir/envoy_bootstrap.json.tmp"
  mv "$dir/envoy_bootstrap.json.tmp" "$dir/envoy_bootstrap.json"
  mv "$out.tmp" "$out"
}

case "${1:-}" in
  build) build ;;
  path) p="$(bin)"; [[ -x "$p" ]] || die "not built: run scripts/istio-xds.sh build (scripts/test.sh does)"; echo "$p" ;;
  *) echo "usage: $0 build | path" >&2; exit 2 ;;
esac
