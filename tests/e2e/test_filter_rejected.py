"""Issue 12: per-key outcomes through Envoy, the filter and the real shim (`snp-shim`,
embedded store). The shim runs with a smaller `--max-interface-len` than the filter, so one
mapping of a batch is one the shim refuses for good. The shim answers the filter's
`PushMappings` with a result per mapping: the good mapping lands, the refused one comes back
REJECTED. The filter drops it (its pending set drains, `snp.mappings.rejected` counts 1),
never resends it, and answers a later call for it with the shim's FAILED_PRECONDITION."""

from __future__ import annotations

import time

import grpc

from envoy_harness import assert_vm_healthy, envoys  # noqa: F401
from shim_harness import shims, wait_until  # noqa: F401

SHIM_MAX_INTERFACE_LEN = 64
GOOD = "org.example.Good"
LONG = "org.example." + "L" * 80  # valid for the filter (1024), too long for this shim


def test_one_rejected_mapping_does_not_hold_up_the_good_one(protos, envoys, shims):
    shim = shims(f"--max-interface-len={SHIM_MAX_INTERFACE_LEN}")
    envoy = envoys(shim_port=shim.grpc_port, concurrency=1)
    stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(envoy.channel())
    # One call, both interfaces: one batch holds both mappings.
    stub.registerServiceAppMapping(
        protos.dubbo.ServiceMappingRequest(namespace="default", applicationName="shop", interfaceNames=[GOOD, LONG]),
        timeout=10,
    )
    assert wait_until(lambda: envoy.stat("snp.mappings.rejected") >= 1, timeout=15), envoy.stats()
    assert wait_until(lambda: ("default", GOOD) in shim.union_on_disk(), timeout=15)
    assert shim.union_on_disk() == {("default", GOOD): {"shop"}}
    # The filter's pending set drains: nothing pending or in flight, the bad key parked.
    assert wait_until(lambda: envoy.stat("snp.pending_keys") == 0, timeout=10)
    assert envoy.stat("snp.batches.sent") == envoy.stat("snp.batches.acked") == 1
    assert envoy.stat("snp.mappings.rejected") == 1
    assert envoy.stat("snp.mappings.acked") == 1
    assert envoy.stat("snp.parked_keys") == 1
    assert "rejected mapping default/" + LONG in envoy.log()
    # Not resent: the shim saw one PushMappings call, answered OK with per-mapping results.
    time.sleep(2.0)
    assert shim.push_calls() == 1
    assert shim.push_calls("ok") == 1
    # A later call for the rejected key gets the shim's answer at once, in immediate mode too.
    code, details = None, ""
    try:
        stub.registerServiceAppMapping(
            protos.dubbo.ServiceMappingRequest(namespace="default", applicationName="cart", interfaceNames=[LONG]),
            timeout=10,
        )
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
    assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, details)
    # The shim's own words (it shortens the name), with its reason.
    assert "is not a valid interface name: too long (reason invalid_interface)" in details, details
    assert "org.example.LLLL" in details, details
    assert envoy.stat("snp.registrations.rejected") == 1
    assert envoy.stat("snp.mappings.rejected") == 1
    assert shim.push_calls() == 1
    assert_vm_healthy(envoy)


def test_a_key_with_more_applications_than_the_shim_takes_per_mapping_is_stored_in_pieces(protos, envoys, shims):
    # A shim that takes at most 4 applications per mapping, and a filter configured to match
    # (`max_push_apps_per_key`): one key gathers 10 applications in one batch window.
    shim = shims("--max-apps-per-key=4")
    envoy = envoys(
        shim_port=shim.grpc_port,
        concurrency=1,
        filter_config={"max_push_apps_per_key": 4, "first_check_ms": 500, "debounce_after_ms": 300},
    )
    stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(envoy.channel())
    apps = {f"app-{i}" for i in range(10)}
    for app in sorted(apps):
        stub.registerServiceAppMapping(
            protos.dubbo.ServiceMappingRequest(namespace="default", applicationName=app, interfaceNames=[GOOD]),
            timeout=10,
        )
    assert wait_until(lambda: shim.union_on_disk() == {("default", GOOD): apps}, timeout=15), shim.union_on_disk()
    assert envoy.wait_delivered(timeout=10)
    # At least three requests (4 + 4 + 2 if one batch took all), none refused for its size,
    # nothing rejected (the filter counts every mapping the shim refuses) or parked.
    sent = envoy.stat("snp.batches.sent")
    assert sent >= 3 and sent == envoy.stat("snp.batches.acked"), envoy.stats()
    assert shim.push_calls() == shim.push_calls("ok") == sent
    assert envoy.stat("snp.mappings.rejected") == 0
    assert envoy.stat("snp.parked_keys") == 0
    assert envoy.stat("snp.mappings.acked") == 10
    assert_vm_healthy(envoy)
