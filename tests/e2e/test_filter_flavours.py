"""Issue 4, test 1: a grpcio client and grpcurl call both registration flavours through a
real Envoy running the filter; the status is OK, the response decodes, and the answer came
from inside Envoy (no byte of a registration call left the proxy)."""

from __future__ import annotations

import json
import subprocess

import grpc

from conftest import PROTO_DIR, tool
from envoy_harness import REGISTER_A, REGISTER_B, assert_vm_healthy, envoys, raw_call  # noqa: F401
from shim_harness import shim, shims, wait_until  # noqa: F401

IFACE = "org.apache.dubbo.demo.DemoService"


def test_both_flavours_are_answered_ok_inside_envoy(protos, envoys, shim):
    envoy = envoys(shim_port=shim.grpc_port)
    ch = envoy.channel()

    # grpcio, flavour A: OK with the empty ServiceMappingResponse.
    stub_a = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
    req = protos.dubbo.ServiceMappingRequest(namespace="default", applicationName="demo-provider", interfaceNames=[IFACE])
    resp, call = stub_a.registerServiceAppMapping.with_call(req, timeout=5)
    assert call.code() == grpc.StatusCode.OK
    assert isinstance(resp, protos.dubbo.ServiceMappingResponse)
    assert resp.ByteSize() == 0

    # grpcio, flavour B: OK with {success: true, message: "success"}.
    stub_b = protos.admin_grpc.ServiceNameMappingServiceStub(ch)
    req_b = protos.admin.ServiceMappingRequest(namespace="default", applicationName="admin-provider", interfaceNames=[IFACE + "B"])
    resp_b, call_b = stub_b.registerServiceAppMapping.with_call(req_b, timeout=5)
    assert call_b.code() == grpc.StatusCode.OK
    assert resp_b.success is True and resp_b.message == "success"

    # grpcurl (Go gRPC), both flavours, from the .proto files.
    for proto, service, app, expected in [
        ("dubbo/networking/v1alpha1/snp.proto", "dubbo.networking.v1alpha1.ServiceNameMappingService", "grpcurl-a", {}),
        ("v1alpha1/snp.proto", "v1alpha1.ServiceNameMappingService", "grpcurl-b", {"success": True, "message": "success"}),
    ]:
        out = subprocess.run(
            [
                tool("grpcurl"), "-plaintext", "-import-path", str(PROTO_DIR), "-proto", proto,
                "-d", json.dumps({"namespace": "default", "applicationName": app, "interfaceNames": [IFACE]}),
                envoy.target(), f"{service}/registerServiceAppMapping",
            ],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, f"grpcurl failed: {out.stderr}"
        assert json.loads(out.stdout) == expected

    # The exact bytes on the wire: the flavour's framed message and the grpc-status trailer.
    body = b"\x00" + len(req.SerializeToString()).to_bytes(4, "big") + req.SerializeToString()
    a = raw_call(envoy.target(), REGISTER_A, body)
    assert a["http"] == 200 and a["headers"]["content-type"] == "application/grpc"
    assert a["headers"]["grpc-status"] == "0"
    assert a["body"] == b"\x00\x00\x00\x00\x00"
    assert "x-snp-acked" not in a["headers"]
    b = raw_call(envoy.target(), REGISTER_B, body)
    assert b["headers"]["grpc-status"] == "0"
    assert b["body"] == b"\x00\x00\x00\x00\x0b\x08\x01\x12\x07success"

    # Every registration was queued, merged and pushed to the shim, which stored it.
    want = {("default", IFACE): {"demo-provider", "grpcurl-a", "grpcurl-b"}, ("default", IFACE + "B"): {"admin-provider"}}
    assert wait_until(lambda: shim.union_on_disk() == want), shim.union_on_disk()
    assert envoy.wait_delivered()

    # Answered inside Envoy: 6 calls went to the internal ack listener; the only requests to
    # the shim cluster were batches (the shim counted PushMappings calls only, no
    # registration call of either flavour), and the apps' upstreams saw nothing.
    stats = envoy.stats()
    assert stats.get("cluster.snp_ack.upstream_rq_total") == 6
    assert shim.push_calls("ok") >= 1
    assert stats.get("cluster.snp_shim.upstream_rq_total") == shim.push_calls() == shim.push_calls("ok")
    assert shim.metric("snp_calls_total", api="dubbo") == 0
    assert shim.metric("snp_calls_total", api="admin") == 0
    assert stats.get("cluster.app_grpc.upstream_rq_total", 0) == 0
    assert stats.get("cluster.app_http.upstream_rq_total", 0) == 0
    assert envoy.stat("snp.registrations.ok") == 6
    assert envoy.wait_stat("snp.mappings.acked", lambda v: v >= 4) >= 4
    assert_vm_healthy(envoy)


def test_a_large_call_spanning_several_data_frames_is_decoded_whole(protos, envoys, shim):
    envoy = envoys(shim_port=shim.grpc_port)
    # 1,000 interfaces (the max_interfaces default): about 40 KB, more than two HTTP/2 DATA
    # frames of 16 KiB, so the filter sees the body in several chunks.
    ifaces = [f"org.example.big.Interface{i:04d}WithALongishName" for i in range(1000)]
    req = protos.dubbo.ServiceMappingRequest(namespace="default", applicationName="big", interfaceNames=ifaces)
    assert req.ByteSize() > 2 * 16384
    stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(envoy.channel())
    _, call = stub.registerServiceAppMapping.with_call(req, timeout=10)
    assert call.code() == grpc.StatusCode.OK
    want = {("default", i): ["big"] for i in ifaces}
    # The shim acknowledges a batch only once it is on disk.
    assert envoy.wait_stat("snp.mappings.acked", lambda v: v >= len(ifaces), timeout=20) == len(ifaces)
    assert envoy.wait_delivered()
    assert shim.get_mappings(protos, "default") == want
    assert len(list(shim.data_dir.glob("default/*.yaml"))) == len(ifaces)
    assert_vm_healthy(envoy)
