#!/usr/bin/env bash
# The whole test suite: what CI runs (.ci/run calls exactly this).
#
#   1. installs missing tools (scripts/setup.sh);
#   2. formatting and clippy with warnings denied;
#   3. the wasm32-wasip1 build of the crates that run inside Envoy, and the filter's .wasm
#      (scripts/build-filter.sh: release build, wasm-opt -Oz, size budget);
#   4. the shim binary and the Go-built Kubernetes API server the tests run against;
#   5. every Rust test (unit, property, virtual-clock, and integration tests against the
#      real API server; shim/tests/nacos_dubbo.rs runs real Dubbo 3 and nacos-client
#      programs that setup built);
#   6. the Python end-to-end tests under tests/e2e: real Envoy loading the .wasm, the real
#      shim binary, and clients this project did not write (grpcio, grpcurl);
#   7. the demo (scripts/demo.sh), so the README's first command is proven too.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

step() { printf '\n\033[1;32m==> %s\033[0m\n' "$*"; }

step "setup"
scripts/setup.sh
export PATH="$root/.venv/bin:$root/target/tools:$PATH"
# One build per checkout: incremental state only costs time and disk here.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "wasm32-wasip1 build of snp-core, snp-proto and snp-filter-core"
cargo build --locked --target wasm32-wasip1 -p snp-core -p snp-proto -p snp-filter-core

step "build: filter (.wasm, release), shim binary, test API server"
if [ -d filter ]; then
  # cargo, then wasm-opt -Oz into target/wasm/snp_filter.wasm; fails above 400 KiB.
  scripts/build-filter.sh
fi
# The status page's simulator first: the shim's build.rs embeds it.
scripts/build-sim-wasm.sh
SNP_REQUIRE_SIMULATOR=1 cargo build --locked -p snp-shim -p snp-sim
# The Go-built kube-apiserver + etcd (+ controller manager, kubectl), cached by a hash of
# its inputs; the Rust and Python tests start it themselves.
scripts/k8s-apiserver.sh build
# istiod's own config generation (Istio 1.31 as a Go module) and the grpc-java client, both
# cached outside the repository by a hash of their inputs.
time scripts/istio-xds.sh build
time scripts/grpc-java.sh build

step "cargo test"
cargo test --workspace --locked

step "end-to-end tests (pytest)"
python -m pytest -q tests/e2e

# The README's first command, end to end: it fails if any mapping of the rollout is missing.
step "demo (scripts/demo.sh)"
scripts/demo.sh
