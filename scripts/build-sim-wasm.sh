#!/usr/bin/env bash
# Builds the status page's debounce simulator: crates/snp-sim-wasm (snp-core's Debouncer)
# for wasm32-unknown-unknown, bound to JavaScript by wasm-bindgen (the CLI scripts/setup.sh
# installs, the exact version of the crate). Writes ${CARGO_TARGET_DIR:-target}/snp-sim-web/,
# which the shim's build.rs embeds: build this before the shim.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-target}"
bindgen="$(command -v wasm-bindgen || echo "$root/target/tools/wasm-bindgen")"
# Not stripped: wasm-bindgen reads the target_features section (and drops what it does not need).
CARGO_PROFILE_RELEASE_STRIP=false cargo build --locked --release --target wasm32-unknown-unknown -p snp-sim-wasm
out="$target/snp-sim-web"
mkdir -p "$out"
"$bindgen" --target web --no-typescript --out-dir "$out.tmp" \
  "$target/wasm32-unknown-unknown/release/snp_sim_wasm.wasm"
# Replace only what changed, so the shim is not rebuilt for nothing.
for f in snp_sim_wasm.js snp_sim_wasm_bg.wasm; do
  cmp -s "$out.tmp/$f" "$out/$f" 2>/dev/null || cp "$out.tmp/$f" "$out/$f"
done
rm -rf "$out.tmp"
echo "simulator: $(stat -c %s "$out/snp_sim_wasm_bg.wasm") bytes of wasm in $out" >&2
