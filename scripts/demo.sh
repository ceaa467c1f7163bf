#!/usr/bin/env bash
# The local demo. No cluster is needed.
#
#   1. installs what is missing (scripts/setup.sh: the wasm target, Envoy, grpcio);
#   2. builds the filter (release .wasm) and the shim;
#   3. starts the shim on its embedded store (ServiceNameMapping YAML files in a temporary
#      directory) and Envoy with the filter (envoy/envoy.yaml, on free ports);
#   4. replays a simulated rollout (scripts/demo_rollout.py): 100 replicas x 10 interfaces,
#      starting with jitter over 3 s, one registration call per interface, as grpc-java Dubbo
#      sends them;
#   5. prints a table (registrations, batches, store writes, time until every mapping was on
#      disk) and where the manifests are.
#
# The processes are stopped on exit; the data directory is kept. Exits non-zero if a call
# failed or a mapping is missing. Environment: DEMO_REPLICAS, DEMO_INTERFACES, DEMO_SPREAD
# (seconds) change the rollout.
#
# Envoy runs under func-e (`func-e run`, with ENVOY_PATH set to the wheel's Envoy, so nothing
# is downloaded) when func-e is installed (scripts/setup.sh does), else directly.
# The shim's status page is at the URL printed; `--keep` keeps everything up after the
# rollout until Ctrl-C, to look at it.
keep=0
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    *) echo "usage: scripts/demo.sh [--keep]" >&2; exit 2 ;;
  esac
done
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if [ -t 1 ]; then
  say() { printf '\033[1;36m[demo]\033[0m %s\n' "$*"; }
else
  say() { printf '[demo] %s\n' "$*"; }
fi

say "checking the tools (scripts/setup.sh installs what is missing)"
scripts/setup.sh
py="$root/.venv/bin/python"
envoy_bin="$root/.venv/bin/envoy"

say "building the filter (wasm32-wasip1, release), the status page's simulator and the shim"
scripts/build-filter.sh
PATH="$root/target/tools:$PATH" scripts/build-sim-wasm.sh
cargo build --locked -p snp-shim
target="${CARGO_TARGET_DIR:-$root/target}"
wasm="$target/wasm/snp_filter.wasm"
shim="$target/debug/snp-shim"

work="$(mktemp -d "${TMPDIR:-/tmp}/snp-demo.XXXXXX")"
data="$work/snp-data"
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ]; then
    say "failed; logs: $work/shim.log, $work/envoy.log"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Four free local ports: Envoy's listener and admin, the shim's gRPC and HTTP.
read -r apps_port admin_port grpc_port http_port < <("$py" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)

say "starting the shim: embedded store in $data"
"$shim" --store embedded --data-dir "$data" \
  --grpc-addr "127.0.0.1:$grpc_port" --http-addr "127.0.0.1:$http_port" \
  --node-name demo --log-format json >"$work/shim.log" 2>&1 &
pids+=($!)

# envoy/envoy.yaml as users run it, with the ports and the .wasm path of this run.
"$py" - "$work/envoy.yaml" "$wasm" "$apps_port" "$admin_port" "$grpc_port" <<'EOF'
import sys, yaml
out, wasm, apps, admin, shim = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
cfg = yaml.safe_load(open("envoy/envoy.yaml"))
cfg["admin"]["address"]["socket_address"]["port_value"] = admin
for l in cfg["static_resources"]["listeners"]:
    if l["name"] == "apps":
        l["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": apps}
        for f in l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]:
            if f["name"] == "snp":
                f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = wasm
for c in cfg["static_resources"]["clusters"]:
    if c["name"] == "snp_shim":
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = shim
yaml.safe_dump(cfg, open(out, "w"), sort_keys=False)
EOF

envoy_version="$("$envoy_bin" --version | grep -o '1\.[0-9]*\.[0-9]*' | head -1)"
func_e="$(command -v func-e || echo "$root/target/tools/func-e")"
if [ -x "$func_e" ]; then
  say "starting Envoy $envoy_version under func-e with the filter: 127.0.0.1:$apps_port (2 workers)"
  ENVOY_PATH="$envoy_bin" FUNC_E_STATE_HOME="$work/func-e" FUNC_E_RUNTIME_DIR="$work/func-e-run" \
    "$func_e" run -c "$work/envoy.yaml" --concurrency 2 --disable-hot-restart -l warning \
    >"$work/envoy.log" 2>&1 &
else
  say "starting Envoy $envoy_version with the filter: 127.0.0.1:$apps_port (2 workers)"
  "$envoy_bin" -c "$work/envoy.yaml" --concurrency 2 --disable-hot-restart -l warning \
    >"$work/envoy.log" 2>&1 &
fi
pids+=($!)

ready() { [ "$(curl -fsS --max-time 1 "$1" 2>/dev/null)" = "$2" ]; }
for _ in $(seq 1 300); do
  if ready "http://127.0.0.1:$admin_port/ready" LIVE && curl -fsS --max-time 1 "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1; then
    break
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { say "a process exited during startup"; exit 1; }
  done
  sleep 0.1
done
ready "http://127.0.0.1:$admin_port/ready" LIVE || { say "Envoy did not become ready"; exit 1; }

"$py" scripts/demo_rollout.py \
  --target "127.0.0.1:$apps_port" --envoy-admin "127.0.0.1:$admin_port" \
  --shim-http "127.0.0.1:$http_port" --data-dir "$data" \
  --replicas "${DEMO_REPLICAS:-100}" --interfaces "${DEMO_INTERFACES:-10}" --spread "${DEMO_SPREAD:-3}"

say "status page: http://127.0.0.1:$http_port/"
if [ "$keep" = 1 ]; then
  say "keeping the shim and Envoy up (Envoy: 127.0.0.1:$apps_port); Ctrl-C stops them"
  trap 'say "stopping"; exit 0' INT TERM
  wait "${pids[@]}" || true
fi
