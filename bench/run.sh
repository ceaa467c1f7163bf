#!/usr/bin/env bash
# Builds what the benchmarks need and runs every figure of BENCHMARKS.md in one run.
#
#   bench/run.sh                  # all figures (about 17 minutes on 2 cores; figures 9 and 10 take 11)
#   bench/run.sh fig1 fig4        # some figures
#   bench/run.sh --quick          # small sizes: checks the harness, not figures to publish
#   bench/run.sh fig10            # not in "all": memory through a 10-minute API server
#                                 # outage (--outage 10m; with --quick a 60 s one)
#
# Arguments go to `snp-bench` (see `target/release/snp-bench --help`). The output is
# Markdown: each figure's tables with the ratio against its target and PASS/MISS, then a
# summary. It is also written to target/bench/results.md.
# Needs: Envoy >= 1.35 (.venv/bin/envoy from scripts/setup.sh, or $SNP_ENVOY), the
# wasm32-wasip1 target, wasm-opt (binaryen), and Go for the test API server
# (scripts/k8s-apiserver.sh) and for figure 9's peer (scripts/seed-go.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

cargo build --release -p snp-shim -p snp-bench
cargo build --release --target wasm32-wasip1 -p snp-bench-wasm
scripts/build-filter.sh   # the filter as Envoy runs it: target/wasm/snp_filter.wasm (wasm-opt -Oz)
scripts/k8s-apiserver.sh build
scripts/seed-go.sh build >/dev/null   # figure 9's peer: the seed server's algorithm in Go

mkdir -p target/bench
work="$(mktemp -d "${TMPDIR:-/tmp}/snp-bench.XXXXXX")"
target/release/snp-bench --work-dir "$work" "$@" | tee target/bench/results.md
