#!/usr/bin/env bash
# Builds the filter's .wasm as Envoy loads it, into the one path every consumer reads
# (envoy/envoy.yaml, the e2e tests, the demo, the benchmarks, the Istio image):
#
#   ${CARGO_TARGET_DIR:-target}/wasm/snp_filter.wasm
#
# cargo's release build for wasm32-wasip1 (opt-level "z" for the filter crates, LTO), then
# binaryen's `wasm-opt -Oz`. Prints both sizes and fails above the 400 KiB budget.
# cargo rewrites its own output on every build, so the optimized module lives apart from it;
# it is remade whenever cargo's output is newer.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
budget=409600

cargo build --locked --release --target wasm32-wasip1 -p snp-filter
raw="$target/wasm32-wasip1/release/snp_filter.wasm"
out="$target/wasm/snp_filter.wasm"
if ! command -v wasm-opt >/dev/null; then
  echo "wasm-opt not found: run scripts/setup.sh (Debian package binaryen)" >&2
  exit 1
fi
if [ ! -f "$out" ] || [ "$raw" -nt "$out" ]; then
  mkdir -p "$(dirname "$out")"
  # rustc's wasm32-wasip1 output uses these features and carries no target_features section
  # (stripped), so they are named; Envoy's V8 runs them all.
  wasm-opt -Oz --strip-debug --strip-producers \
    --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
    --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
    "$raw" -o "$out.tmp"
  mv "$out.tmp" "$out"
fi
raw_size=$(stat -c %s "$raw")
size=$(stat -c %s "$out")
echo "snp_filter.wasm: $raw_size bytes from cargo, $size bytes after wasm-opt -Oz ($out; budget $budget)"
if [ "$size" -gt "$budget" ]; then
  echo "snp_filter.wasm is over the budget of $budget bytes" >&2
  exit 1
fi
