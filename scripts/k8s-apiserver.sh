#!/usr/bin/env bash
# Build, start and stop the test Kubernetes API server (tests/k8s-apiserver):
# the upstream apiextensions-apiserver over an embedded etcd, in one process.
#
#   scripts/k8s-apiserver.sh build            build target/k8s-apiserver/snp-test-apiserver
#   scripts/k8s-apiserver.sh start DIR [PORT] start in the background; state in DIR
#   scripts/k8s-apiserver.sh stop DIR         SIGTERM it and wait
#
# DIR afterwards holds: kubeconfig, certs/{ca,client,server}.{crt,key},
# etcd/ (the data), pid, port, url, apiserver.log.
# Without PORT, start reuses DIR/port from an earlier run (so a restarted
# server keeps its URL and the old kubeconfig stays valid), else any free port.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/tests/k8s-apiserver"
BIN="$ROOT/target/k8s-apiserver/snp-test-apiserver"
READY_TIMEOUT="${K8S_APISERVER_READY_TIMEOUT:-60}"

die() { echo "k8s-apiserver: $*" >&2; exit 1; }

build() {
  command -v go >/dev/null || die "go not found (needs Go >= $(sed -n 's/^go //p' "$SRC/go.mod"))"
  # Skip even `go build` (several seconds: it re-links) when the binary is
  # newer than every source file and than this script (its build flags).
  if [[ -x "$BIN" && ! "${BASH_SOURCE[0]}" -nt "$BIN" &&
    -z "$(find "$SRC" -newer "$BIN" \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) -print -quit)" ]]; then
    return 0
  fi
  mkdir -p "$(dirname "$BIN")"
  echo "k8s-apiserver: building $BIN (first build takes a few minutes)" >&2
  # Stamp the Kubernetes version the way release builds do, so /version
  # reports e.g. v1.37.2 rather than v0.0.0-master (client version checks).
  local v pkg=k8s.io/component-base/version
  v="$(cd "$SRC" && go list -mod=readonly -m -f '{{.Version}}' k8s.io/apiserver)" # v0.37.2
  v="v1.${v#v0.}"
  local major=1 minor="${v#v1.}"; minor="${minor%%.*}"
  # -mod=readonly: go.sum is committed; a build never rewrites it.
  (cd "$SRC" && go build -mod=readonly -trimpath \
    -ldflags "-X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
    -o "$BIN.tmp" .) && mv "$BIN.tmp" "$BIN"
}

running() { [[ -f "$1/pid" ]] && kill -0 "$(cat "$1/pid")" 2>/dev/null; }

start() {
  local dir="${1:?usage: start DIR [PORT]}" port="${2:-}"
  build
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  running "$dir" && die "already running in $dir (pid $(cat "$dir/pid"))"
  [[ -z "$port" && -f "$dir/port" ]] && port="$(cat "$dir/port")"
  port="${port:-0}"

  local out="$dir/stdout" log="$dir/apiserver.log"
  : >"$out"
  # The log is appended to, so a test that restarts the server keeps the
  # history of every run.
  echo "=== $(date -u +%FT%TZ) start port=$port" >>"$log"
  # setsid: its own process group, so the caller's Ctrl-C or job control
  # does not reach it; stop it with `stop DIR`.
  setsid "$BIN" --data-dir "$dir" --cert-dir "$dir/certs" --port "$port" \
    --kubeconfig-out "$dir/kubeconfig" >"$out" 2>>"$log" </dev/null &
  local pid=$!
  echo "$pid" >"$dir/pid"

  local deadline=$((SECONDS + READY_TIMEOUT)) url=""
  while :; do
    url="$(sed -n 's/^READY //p' "$out")"
    [[ -n "$url" ]] && break
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      echo "k8s-apiserver: not ready after ${READY_TIMEOUT}s or exited; last log lines:" >&2
      tail -n 40 "$log" >&2
      rm -f "$dir/pid"
      die "start failed (full log: $log)"
    fi
    sleep 0.1
  done
  echo "${url##*:}" >"$dir/port"
  echo "$url" >"$dir/url"
  echo "$url"
}

stop() {
  local dir="${1:?usage: stop DIR}"
  running "$dir" || { rm -f "$dir/pid"; return 0; }
  local pid; pid="$(cat "$dir/pid")"
  kill -TERM "$pid"
  # Graceful shutdown takes ~1 s; give it 30 before forcing.
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/pid"; return 0; }
    sleep 0.1
  done
  echo "k8s-apiserver: pid $pid ignored SIGTERM for 30s; killing" >&2
  kill -KILL "$pid"
  rm -f "$dir/pid"
}

case "${1:-}" in
  build) build ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 build | start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
