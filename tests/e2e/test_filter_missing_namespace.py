"""Issue 12: per-key outcomes through Envoy, the filter and the shim on the real Kubernetes
API server (`apiserver_harness.py`), with a namespace that really does not exist.

One batch of the filter holds a mapping for a namespace nobody created and one for a healthy
namespace. The API server refuses the first (404, namespace not found) and stores the
second. The healthy mapping is stored within one batch window; the bad one is parked at the
shim with its reason (`GET /parked`); the filter drops it (its pending set drains, its stats
count the rejected mapping, it parks the key); a later call for the bad key is answered
FAILED_PRECONDITION at once, with the same words through Envoy as at the shim's own door."""

from __future__ import annotations

import json
import time

import grpc

from apiserver_harness import apiserver  # noqa: F401  (fixture)
from envoy_harness import assert_vm_healthy, envoys  # noqa: F401
from shim_harness import shims, wait_until  # noqa: F401
from test_full_path import apps_of, get_object

GOOD_NS = "perkey-good"
GHOST_NS = "perkey-ghost"  # never created
IFACE = "org.example.Orders"
# The filter's and the shim's default windows: the first check 200 ms after a burst, a
# batch once it is quiet for 100 ms or 1 s old. One batch window each, and the write.
ONE_WINDOW_S = 3.0


def call(stub, protos, ns: str, app: str) -> tuple[grpc.StatusCode, str]:
    try:
        stub.registerServiceAppMapping(
            protos.dubbo.ServiceMappingRequest(namespace=ns, applicationName=app, interfaceNames=[IFACE]), timeout=10
        )
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def test_a_missing_namespace_is_parked_and_the_healthy_mapping_of_its_batch_is_stored(protos, apiserver, shims, envoys):
    apiserver.create_namespace(GOOD_NS)
    status, _ = apiserver.get(f"/api/v1/namespaces/{GHOST_NS}")
    assert status == 404, "the ghost namespace must not exist"
    shim = shims(kubeconfig=apiserver.kubeconfig).wait_ready()
    # One worker: both calls land in the same debouncer, so one batch carries both.
    envoy = envoys(shim_port=shim.grpc_port, concurrency=1)
    stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(envoy.channel())

    t0 = time.monotonic()
    assert call(stub, protos, GHOST_NS, "orders") == (grpc.StatusCode.OK, "")  # immediate mode
    assert call(stub, protos, GOOD_NS, "orders") == (grpc.StatusCode.OK, "")
    assert wait_until(lambda: apps_of(get_object(apiserver, GOOD_NS, IFACE)) == ["orders"], timeout=10)
    took = time.monotonic() - t0
    print(f"healthy mapping stored {took:.2f}s after the calls")
    assert took < ONE_WINDOW_S, f"the healthy key waited {took:.2f}s"
    assert wait_until(lambda: envoy.stat("snp.mappings.rejected") == 1, timeout=10), envoy.stats()
    # One batch held both mappings, and the shim answered it with a result for each.
    assert envoy.stat("snp.batches.sent") == envoy.stat("snp.batches.acked") == 1
    assert shim.push_calls() == shim.push_calls("ok") == 1

    # Parked at the shim, with the API server's reason.
    status, body = shim.http("/parked")
    assert status == 200, body
    parked = json.loads(body)["parked"]
    assert [(p["namespace"], p["interface"], p["reason"]) for p in parked] == [(GHOST_NS, IFACE, "namespace_not_found")], parked
    assert parked[0]["applications"] == ["orders"], parked
    assert shim.metric("snp_parked_keys") == 1
    assert get_object(apiserver, GHOST_NS, IFACE) is None

    # The filter's pending set drains: the good key acknowledged, the bad one dropped and
    # parked on the filter's side too (probed again only on the slow schedule).
    assert envoy.wait_delivered(timeout=5)
    assert envoy.stat("snp.pending_keys") == 0
    assert envoy.stat("snp.parked_keys") == 1
    assert envoy.stat("snp.mappings.acked") == 1
    log = envoy.log()
    assert f"the shim rejected mapping {GHOST_NS}/{IFACE} (namespace_not_found)" in log, log[-3000:]
    time.sleep(1.5)
    assert shim.push_calls() == 1, "the rejected mapping is not resent"

    # A later call for the bad key: FAILED_PRECONDITION at once, the same answer at both doors.
    via_envoy = call(stub, protos, GHOST_NS, "cart")
    with grpc.insecure_channel(shim.target) as ch:
        direct = call(protos.dubbo_grpc.ServiceNameMappingServiceStub(ch), protos, GHOST_NS, "cart")
    assert via_envoy[0] == direct[0] == grpc.StatusCode.FAILED_PRECONDITION, (via_envoy, direct)
    assert via_envoy[1] == direct[1], (via_envoy, direct)
    assert "reason namespace_not_found" in direct[1], direct
    assert envoy.stat("snp.registrations.rejected") == 1
    assert_vm_healthy(envoy)
