"""Issue 4, test 6: durable ack mode. The reply is held until the shim has acknowledged the
batch carrying the call's mapping, then released; when the shim is down it times out with
UNAVAILABLE and the mapping stays pending until the shim is back."""

from __future__ import annotations

import threading
import time

import grpc

from envoy_harness import assert_vm_healthy, envoys, receiver  # noqa: F401

TIMEOUT_S = 3.0
SHIM_DELAY_S = 1.0


def call(stub, msg, timeout=10):
    t0 = time.monotonic()
    try:
        resp, c = stub.registerServiceAppMapping.with_call(msg, timeout=timeout)
        return c.code(), resp, time.monotonic() - t0, time.monotonic()
    except grpc.RpcError as e:
        return e.code(), e.details(), time.monotonic() - t0, time.monotonic()


def test_durable_replies_are_held_released_and_time_out(protos, envoys, receiver):
    envoy = envoys(
        shim_port=receiver.port,
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

    # 1. Held, then released: the shim takes 1 s to acknowledge; the reply waits for it.
    receiver.mode, receiver.delay = "slow", SHIM_DELAY_S
    req = protos.admin.ServiceMappingRequest(namespace="default", applicationName="held", interfaceNames=["org.example.Held"])
    result = {}
    t = threading.Thread(target=lambda: result.update(r=call(stub_b, req)))
    t.start()
    held_gauge = envoy.wait_stat("snp.held_replies", lambda v: v == 1, timeout=2)
    assert held_gauge == 1, "the reply is not held"
    assert "r" not in result, "the reply came before the shim acknowledged"
    t.join()
    code, resp, latency, replied_at = result["r"]
    assert code == grpc.StatusCode.OK, resp
    assert resp.success is True and resp.message == "success"
    acked = receiver.acked_batches()
    assert acked and ("default", "org.example.Held", ["held"]) in acked[0].mappings
    # The reply came only after the shim's (delayed) answer.
    assert latency >= SHIM_DELAY_S + 0.2 - 0.05, latency
    assert replied_at >= acked[0].done_at
    assert latency < TIMEOUT_S
    assert envoy.stat("snp.registrations.held") == 1
    assert envoy.wait_stat("snp.held_replies", lambda v: v == 0) == 0

    # 2. Already acknowledged: answered at once, no new batch.
    receiver.mode = "ok"
    batches = len(receiver.snapshot())
    code, _, latency, _ = call(stub_b, req)
    assert code == grpc.StatusCode.OK and latency < 0.5, latency
    assert envoy.stat("snp.registrations.held") == 1

    # 3. Shim down: UNAVAILABLE after the timeout, and the mapping stays pending.
    receiver.stop()
    msg = protos.dubbo.ServiceMappingRequest(namespace="default", applicationName="late", interfaceNames=["org.example.Late"])
    code, details, latency, _ = call(stub_a, msg)
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert "pending" in details
    assert TIMEOUT_S - 0.1 <= latency < TIMEOUT_S + 1.0, latency
    assert envoy.stat("snp.registrations.unavailable") == 1
    assert envoy.stat("snp.rejected.not_acknowledged") == 1
    assert envoy.stat("snp.pending_keys") == 1
    assert envoy.stat("snp.batches.failed") >= 1
    assert len(receiver.snapshot()) == batches

    # A caller that gives up (deadline) frees its held reply at once, not at the timeout;
    # its mapping stays pending too.
    gone = protos.dubbo.ServiceMappingRequest(namespace="default", applicationName="gone", interfaceNames=["org.example.Gone"])
    code, _, latency, _ = call(stub_a, gone, timeout=0.5)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert envoy.wait_stat("snp.held_replies", lambda v: v == 0, timeout=1.0) == 0
    assert envoy.stat("snp.registrations.unavailable") == 1

    # ... and is delivered once the shim is back; the apps' next call is then answered at once.
    receiver.start()
    assert receiver.wait_for(
        lambda r: r.union().get(("default", "org.example.Late")) == {"late"}
        and r.union().get(("default", "org.example.Gone")) == {"gone"},
        timeout=10,
    )
    assert envoy.wait_stat("snp.pending_keys", lambda v: v == 0) == 0
    code, _, latency, _ = call(stub_a, msg)
    assert code == grpc.StatusCode.OK and latency < 0.5, latency
    assert_vm_healthy(envoy)
