#!/usr/bin/env bash
# Build, start and stop the Kubernetes control plane of the tests (tests/k8s-apiserver):
# the real kube-apiserver over an embedded etcd, and optionally kube-controller-manager,
# both from one Go binary (snp-k8s) that also holds kubectl.
#
#   scripts/k8s-apiserver.sh build              build (or find in the cache) snp-k8s; print its path
#   scripts/k8s-apiserver.sh start DIR [PORT]   start kube-apiserver in the background; state in DIR
#   scripts/k8s-apiserver.sh controllers DIR    start kube-controller-manager against it
#   scripts/k8s-apiserver.sh stop DIR           stop both (SIGTERM, waits)
#   scripts/k8s-apiserver.sh kubectl DIR ARGS   kubectl, as the admin unless ARGS say otherwise
#   scripts/k8s-apiserver.sh istio-crds         print the path of Istio's CRDs (istio.io/api)
#   scripts/k8s-apiserver.sh monitoring-crds    print the directory of prometheus-operator's CRDs
#
# DIR afterwards holds: kubeconfig (admin, group system:masters), shim.kubeconfig (the
# shim's service account snp-system/snp-shim), controller-manager.kubeconfig, certs/,
# etcd/ (the data), pid, port, url, apiserver.log, and with controllers
# controller-manager.{pid,log}.
#
# On a fresh DIR, start also applies deploy/namespace.yaml and deploy/rbac.yaml (as the
# admin), and the same ClusterRole for the group dubbo.apache.org (docs/deploy.md, "Another
# API group"), so the shim's identity has exactly the permissions a cluster gives it.
#
# Without PORT, start reuses DIR/port from an earlier run: a restarted server keeps its URL,
# certificates and data, every kubeconfig stays valid, and a controller manager that was
# running before the stop is started again.
#
# The binary is cached outside the repository, in
# ${XDG_CACHE_HOME:-$HOME/.cache}/snp/k8s-apiserver/<key>/snp-k8s, the key a hash of the Go
# sources, go.mod, go.sum, the build flags and `go version`: a fresh clone reuses it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/tests/k8s-apiserver"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/snp/k8s-apiserver"
READY_TIMEOUT="${K8S_APISERVER_READY_TIMEOUT:-90}"
# The controllers the tests need: namespace deletion, quota status (ResourceQuota
# admission refuses everything until the quota controller has filled it in), and each
# namespace's default ServiceAccount (pod creation needs it).
CONTROLLERS="namespace,resourcequota,serviceaccount"

# Istio's API module, the one the Istio tests' istiod is built against: its CRDs are what
# a cluster with Istio serves (deploy/istio/envoyfilter.yaml is checked against them).
ISTIO_API="istio.io/api@v1.31.0-rc.0.0.20260824154656-b943409680a7"
# The prometheus-operator release whose CRDs (PrometheusRule, PodMonitor) the dry runs of
# deploy/monitoring use.
PROMETHEUS_OPERATOR="github.com/prometheus-operator/prometheus-operator@v0.85.0"

die() { echo "k8s-apiserver: $*" >&2; exit 1; }

# The build flags are part of the cache key. -s -w: no symbol tables (smaller, faster to
# link). The version is stamped as release builds do, so /version reports v1.37.2 (kubectl
# and kube-rs check it), taken from go.mod.
build_flags() {
  local v pkg=k8s.io/component-base/version
  v="$(sed -n 's#^\tk8s.io/kubernetes \(v[0-9.]*\)$#\1#p' "$SRC/go.mod")"
  [[ -n "$v" ]] || die "no k8s.io/kubernetes version in $SRC/go.mod"
  local minor="${v#v1.}"; minor="${minor%%.*}"
  echo "-mod=readonly -trimpath -ldflags=-s -w -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
}

cache_key() {
  command -v go >/dev/null || die "go not found (needs Go >= $(sed -n 's/^go //p' "$SRC/go.mod"))"
  {
    go version
    build_flags
    (cd "$SRC" && for f in go.mod go.sum $(ls ./*.go | sort); do echo "$f"; cat "$f"; done)
  } | sha256sum | cut -c1-16
}

BIN=""
build() {
  local key flags
  key="$(cache_key)"
  BIN="$CACHE/$key/snp-k8s"
  [[ -x "$BIN" ]] && return 0
  flags="$(build_flags)"
  mkdir -p "$CACHE/$key"
  echo "k8s-apiserver: building $BIN (kube-apiserver, kube-controller-manager, kubectl; the first build takes several minutes)" >&2
  local t0=$SECONDS ldflags="${flags#*-ldflags=}"
  # -mod=readonly: go.sum is committed; a build never rewrites it.
  (cd "$SRC" && go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$BIN.tmp.$$" .) ||
    { rm -f "$BIN.tmp.$$"; die "go build failed"; }
  mv "$BIN.tmp.$$" "$BIN"
  echo "k8s-apiserver: built in $((SECONDS - t0)) s" >&2
}

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

kubectl_as_admin() {
  local dir="$1"; shift
  KUBECONFIG="$dir/kubeconfig" "$BIN" kubectl "$@"
}

# The shim's namespace, ServiceAccount, ClusterRole and binding from deploy/, and the
# same role for the second group the tests use.
install_identity() {
  local dir="$1"
  kubectl_as_admin "$dir" apply --server-side --field-manager=snp-tests \
    -f "$ROOT/deploy/namespace.yaml" -f "$ROOT/deploy/rbac.yaml" >/dev/null
  # rbac.yaml with its group replaced (the recipe of docs/deploy.md), the ClusterRole and
  # its binding renamed so that both groups are granted at once. The ServiceAccount (the
  # binding's subject) stays as it is.
  awk '/^---/ { kind = "" } /^kind: / { kind = $2 }
    (kind == "ClusterRole" || kind == "ClusterRoleBinding") && /^  name: snp-shim$/ { $0 = "  name: snp-shim-dubbo-apache-org" }
    { gsub(/extensions\.istio\.io/, "dubbo.apache.org"); print }' "$ROOT/deploy/rbac.yaml" |
    kubectl_as_admin "$dir" apply --server-side --field-manager=snp-tests -f - >/dev/null
}

# Waits until the shim's service account may create and update servicenamemappings in both
# groups. After a restart the authorizer answers from caches that fill in a moment after the
# server says it is ready; until then the shim would be refused (403) for writes it is
# allowed, so `start` returns only once RBAC answers as the cluster's policy says.
await_shim_rules() {
  local dir="$1" rules="" deadline=$((SECONDS + READY_TIMEOUT)) group ok
  while :; do
    # The CRDs may not exist yet (the tests register them), so ask for the rules, not for
    # one resource (kubectl's can-i maps a resource it cannot find to something else).
    rules="$(KUBECONFIG="$dir/shim.kubeconfig" "$BIN" kubectl auth can-i --list 2>&1)" || true
    ok=1
    for group in extensions.istio.io dubbo.apache.org; do
      grep -Eq "^servicenamemappings\.$group .*\[[a-z ]*\bcreate\b.*\bupdate\b" <<<"$rules" || ok=0
    done
    ((ok)) && return 0
    ((SECONDS >= deadline)) &&
      die "the shim's service account may not create and update servicenamemappings after applying deploy/rbac.yaml:
$rules"
    sleep 0.2
  done
}

start() {
  local dir="${1:?usage: start DIR [PORT]}" port="${2:-}"
  build
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  running "$dir/pid" && die "already running in $dir (pid $(cat "$dir/pid"))"
  [[ -z "$port" && -f "$dir/port" ]] && port="$(cat "$dir/port")"
  port="${port:-0}"

  local out="$dir/stdout" log="$dir/apiserver.log"
  : >"$out"
  # The log is appended to, so a test that restarts the server keeps the history of
  # every run.
  echo "=== $(date -u +%FT%TZ) start port=$port" >>"$log"
  # setsid: its own process group, so the caller's Ctrl-C or job control does not reach
  # it; stop it with `stop DIR`.
  setsid "$BIN" apiserver --data-dir "$dir" --port "$port" >"$out" 2>>"$log" </dev/null &
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
  if [[ ! -f "$dir/installed" ]]; then
    install_identity "$dir"
    touch "$dir/installed"
  fi
  await_shim_rules "$dir"
  [[ -f "$dir/controllers" ]] && controllers "$dir"
  echo "$url"
}

# kube-controller-manager with only the controllers the tests need. It reads the API once
# at start: a ResourceQuota on a custom resource is enforced only if its CRD existed then.
controllers() {
  local dir="${1:?usage: controllers DIR}"
  build
  dir="$(cd "$dir" && pwd)"
  running "$dir/pid" || die "no API server running in $dir"
  running "$dir/controller-manager.pid" && return 0
  local log="$dir/controller-manager.log"
  echo "=== $(date -u +%FT%TZ) start" >>"$log"
  # --use-service-account-credentials: each controller acts as its own service account
  # in kube-system, with the bootstrap RBAC roles, as kubeadm clusters run it.
  # --secure-port=0: no HTTPS endpoint of its own (nothing scrapes it here).
  setsid "$BIN" controller-manager \
    --kubeconfig="$dir/controller-manager.kubeconfig" \
    --controllers="$CONTROLLERS" \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$dir/certs/sa.key" \
    --root-ca-file="$dir/certs/ca.crt" \
    --leader-elect=false \
    --secure-port=0 \
    >>"$log" 2>&1 </dev/null &
  echo $! >"$dir/controller-manager.pid"
  touch "$dir/controllers"
  # Ready when the service-account controller has made the default ServiceAccount of the
  # default namespace (it runs once its informers have synced).
  local deadline=$((SECONDS + READY_TIMEOUT))
  until kubectl_as_admin "$dir" -n default get serviceaccount default >/dev/null 2>&1; do
    if ! running "$dir/controller-manager.pid" || ((SECONDS >= deadline)); then
      tail -n 40 "$log" >&2
      die "kube-controller-manager not ready after ${READY_TIMEOUT}s or exited (log: $log)"
    fi
    sleep 0.2
  done
}

stop_pid() {
  local file="$1" what="$2"
  running "$file" || { rm -f "$file"; return 0; }
  local pid; pid="$(cat "$file")"
  kill -TERM "$pid"
  # A graceful stop takes a few seconds; give it 40 before forcing.
  for _ in $(seq 400); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
    sleep 0.1
  done
  echo "k8s-apiserver: $what (pid $pid) ignored SIGTERM for 40s; killing" >&2
  kill -KILL "$pid"
  rm -f "$file"
}

stop() {
  local dir="${1:?usage: stop DIR}"
  stop_pid "$dir/controller-manager.pid" kube-controller-manager
  stop_pid "$dir/pid" kube-apiserver
}

istio_crds() {
  local dir
  dir="$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$ISTIO_API" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  [[ -f "$dir/kubernetes/customresourcedefinitions.gen.yaml" ]] || die "no CRDs in $ISTIO_API (dir '$dir')"
  echo "$dir/kubernetes/customresourcedefinitions.gen.yaml"
}

monitoring_crds() {
  local dir
  dir="$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$PROMETHEUS_OPERATOR" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  [[ -f "$dir/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" ]] ||
    die "no CRDs in $PROMETHEUS_OPERATOR (dir '$dir')"
  echo "$dir/example/prometheus-operator-crd"
}

case "${1:-}" in
  build) build; echo "$BIN" ;;
  start) shift; start "$@" ;;
  controllers) shift; controllers "$@" ;;
  stop) shift; stop "$@" ;;
  kubectl) shift; build; d="${1:?usage: kubectl DIR ARGS}"; shift; kubectl_as_admin "$d" "$@" ;;
  istio-crds) istio_crds ;;
  monitoring-crds) monitoring_crds ;;
  *) echo "usage: $0 build | start DIR [PORT] | controllers DIR | stop DIR | kubectl DIR ARGS | istio-crds | monitoring-crds" >&2; exit 2 ;;
esac
