"""Issue 4, test 6: durable ack mode, against the real shim (`snp-shim`, embedded store). The
shim acknowledges a PushMappings batch only once it is durable on disk; run with a 1 s first
debounce check, it takes honestly that long. The filter holds the reply until then and
releases it; when the shim is down the reply times out with UNAVAILABLE, and the mapping
stays pending until the shim is back (same port, same data directory)."""

from __future__ import annotations

import threading
import time

import grpc

from envoy_harness import assert_vm_healthy, envoys  # noqa: F401
from shim_harness import shims, wait_until  # noqa: F401

TIMEOUT_S = 3.0  # the filter's durable_timeout_ms
SHIM_DELAY_S = 1.0  # the shim's first debounce check: how long it takes to acknowledge a batch
FILTER_FIRST_CHECK_S = 0.2  # the filter's own first check (default first_check_ms)
# A held reply cannot come sooner than this; a reply before it was not held (an order, not a
# wall-clock window that a loaded machine could miss).
HELD_AT_LEAST_S = SHIM_DELAY_S + FILTER_FIRST_CHECK_S - 0.05


def call(stub, msg, timeout=10, after=None):
    """(code, response or details, latency, reply time, what `after()` returned right after the reply)."""
    t0 = time.monotonic()
    try:
        resp, c = stub.registerServiceAppMapping.with_call(msg, timeout=timeout)
        code, out = c.code(), resp
    except grpc.RpcError as e:
        code, out = e.code(), e.details()
    replied = time.monotonic()
    seen = after() if after else None
    return code, out, replied - t0, replied, seen


def test_durable_replies_are_held_released_and_time_out(protos, envoys, shims):
    shim = shims(f"--debounce-first-check={int(SHIM_DELAY_S * 1000)}ms")
    envoy = envoys(
        shim_port=shim.grpc_port,
        filter_config={
            "ack_mode": "durable",
            "durable_timeout_ms": int(TIMEOUT_S * 1000),
            "retry_base_ms": 250,
            "retry_max_ms": 1000,
            "push_timeout_ms": 2000,
        },
    )
    ch = envoy.channel()
    stub_a = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
    stub_b = protos.admin_grpc.ServiceNameMappingServiceStub(ch)
    held_key = ("default", "org.example.Held")

    # 1. Held, then released: the reply waits for the shim's acknowledgement, which the shim
    #    gives only once the manifest is on disk.
    req = protos.admin.ServiceMappingRequest(namespace="default", applicationName="held", interfaceNames=["org.example.Held"])
    result = {}
    t = threading.Thread(target=lambda: result.update(r=call(stub_b, req, after=lambda: shim.union_on_disk().get(held_key))))
    t0 = time.monotonic()
    t.start()
    assert envoy.wait_stat("snp.held_replies", lambda v: v == 1, timeout=2) == 1, "the reply is not held"
    # The batch reached the shim, which holds the call until the mapping is durable.
    assert wait_until(lambda: shim.metric("snp_durable_waiters") == 1, timeout=2), "the shim holds no PushMappings"
    assert "r" not in result, "the reply came before the shim acknowledged"
    assert held_key not in shim.union_on_disk(), "already on disk: the shim was not slow"
    assert envoy.stat("snp.batches.acked") == 0
    t.join()
    code, resp, latency, replied_at, on_disk_at_reply = result["r"]
    assert code == grpc.StatusCode.OK, resp
    assert resp.success is True and resp.message == "success"
    # At the moment of the reply, the mapping was durable.
    assert on_disk_at_reply == {"held"}
    assert shim.push_calls("ok") == 1 and shim.push_calls() == 1
    assert envoy.stat("snp.batches.acked") == 1
    # The reply came only after the shim's (honestly slow) acknowledgement.
    assert latency >= HELD_AT_LEAST_S, latency
    assert latency < TIMEOUT_S
    assert envoy.stat("snp.registrations.held") == 1
    assert envoy.wait_stat("snp.held_replies", lambda v: v == 0) == 0
    print(f"held reply: {latency:.3f}s (shim first check {SHIM_DELAY_S}s, filter first check {FILTER_FIRST_CHECK_S}s)")

    # 2. Already acknowledged: answered at once, no new batch.
    code, _, latency, _, _ = call(stub_b, req)
    assert code == grpc.StatusCode.OK and latency < HELD_AT_LEAST_S, latency
    assert envoy.stat("snp.registrations.held") == 1
    assert shim.push_calls() == 1

    # 3. Shim down: UNAVAILABLE after the timeout, and the mapping stays pending.
    assert shim.stop() == 0
    msg = protos.dubbo.ServiceMappingRequest(namespace="default", applicationName="late", interfaceNames=["org.example.Late"])
    code, details, latency, _, _ = call(stub_a, msg)
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert "pending" in details
    assert TIMEOUT_S - 0.1 <= latency < TIMEOUT_S + 1.0, latency
    assert envoy.stat("snp.registrations.unavailable") == 1
    assert envoy.stat("snp.rejected.not_acknowledged") == 1
    assert envoy.stat("snp.pending_keys") == 1
    assert envoy.stat("snp.batches.failed") >= 1
    print(f"shim down: UNAVAILABLE after {latency:.3f}s (durable_timeout_ms {int(TIMEOUT_S * 1000)})")

    # A caller that gives up (deadline) frees its held reply at once, not at the timeout;
    # its mapping stays pending too.
    gone = protos.dubbo.ServiceMappingRequest(namespace="default", applicationName="gone", interfaceNames=["org.example.Gone"])
    code, _, latency, _, _ = call(stub_a, gone, timeout=0.5)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert envoy.wait_stat("snp.held_replies", lambda v: v == 0, timeout=1.0) == 0
    assert envoy.stat("snp.registrations.unavailable") == 1
    assert envoy.wait_stat("snp.pending_keys", lambda v: v == 2, timeout=1.0) == 2
    assert {k[1] for k in shim.union_on_disk()} == {"org.example.Held"}

    # ... and both are delivered once the shim is back; the apps' next call is then
    # answered at once.
    shim.start()
    restarted = time.monotonic()
    want = {held_key: {"held"}, ("default", "org.example.Late"): {"late"}, ("default", "org.example.Gone"): {"gone"}}
    assert wait_until(lambda: shim.union_on_disk() == want, timeout=15), shim.union_on_disk()
    print(f"pending mappings on disk {time.monotonic() - restarted:.2f}s after the shim restarted")
    assert {k: set(v) for k, v in shim.get_mappings(protos, "default").items()} == want
    assert envoy.wait_stat("snp.pending_keys", lambda v: v == 0) == 0
    code, _, latency, _, _ = call(stub_a, msg)
    assert code == grpc.StatusCode.OK and latency < HELD_AT_LEAST_S, latency
    assert_vm_healthy(envoy)
