#!/usr/bin/env bash
# The local demo: Envoy with the filter, and the shim on the embedded store, taking a
# simulated rollout. It lands with the filter and the shim; until then it says so.
set -euo pipefail
echo "demo: not available yet. The filter and the shim are being built; run scripts/test.sh for the engine tests." >&2
exit 1
