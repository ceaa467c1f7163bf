"""The real snp-shim binary on an embedded store, called by clients this project did not
write: grpcio (both registration flavours, PushMappings, WatchMappings) and grpcurl.
The manifests it writes are checked as YAML, as `kubectl apply -f` would read them."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import grpc
import pytest

from conftest import tool
from shim_harness import shims  # noqa: F401  (fixture)

IFACE = "org.apache.dubbo.demo.DemoService"
FAST = ("--debounce-first-check=20ms", "--debounce-after=10ms")


def wait_until(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_grpcio_both_flavours_and_the_manifest_on_disk(protos, shims):
    shim = shims(*FAST)
    with grpc.insecure_channel(shim.target) as ch:
        a = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
        b = protos.admin_grpc.ServiceNameMappingServiceStub(ch)
        resp, call = a.registerServiceAppMapping.with_call(
            protos.dubbo.ServiceMappingRequest(namespace="default", applicationName="demo-provider", interfaceNames=[IFACE]),
            timeout=5,
        )
        assert call.code() == grpc.StatusCode.OK
        assert isinstance(resp, protos.dubbo.ServiceMappingResponse)
        assert resp.ByteSize() == 0
        resp, call = b.registerServiceAppMapping.with_call(
            protos.admin.ServiceMappingRequest(
                namespace="default", applicationName="demo-admin", interfaceNames=[IFACE, "com.acme.Outer$Inner_1"]
            ),
            timeout=5,
        )
        assert call.code() == grpc.StatusCode.OK
        assert resp.success is True and resp.message == "success"

    wait_until(lambda: len(shim.manifests()) == 2, what="two manifests")
    m = shim.manifests()
    demo = m[("default", IFACE)]
    assert demo["_file"].name == "org-apache-dubbo-demo-demoservice.yaml"
    assert demo["apiVersion"] == "extensions.istio.io/v1alpha1"
    assert demo["kind"] == "ServiceNameMapping"
    assert demo["metadata"]["name"] == "org-apache-dubbo-demo-demoservice"
    assert demo["metadata"]["namespace"] == "default"
    assert demo["metadata"]["labels"]["interface"] == IFACE
    assert "resourceVersion" not in demo["metadata"], "kubectl apply would refuse it"
    assert demo["spec"] == {"interfaceName": IFACE, "applicationNames": ["demo-admin", "demo-provider"]}
    inner = m[("default", "com.acme.Outer$Inner_1")]
    # `$` and `_` are invalid in object names and label values: hashed name, no seed label.
    assert inner["metadata"]["name"].startswith("com-acme-outer-inner-1-")
    assert "interface" not in inner["metadata"]["labels"]
    assert inner["spec"]["applicationNames"] == ["demo-admin"]
    assert shim.metric("snp_calls_total", api="dubbo", result="ok") == 1
    assert shim.metric("snp_calls_total", api="admin", result="ok") == 1


def test_grpcio_bad_input_gets_clear_errors_and_the_shim_stays_up(protos, shims):
    shim = shims(*FAST)
    with grpc.insecure_channel(shim.target) as ch:
        a = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
        req = protos.dubbo.ServiceMappingRequest
        cases = [
            (req(namespace="mapping ", applicationName="x", interfaceNames=["I"]), "not a valid RFC 1123 label"),
            (req(namespace="default", applicationName="", interfaceNames=["I"]), "applicationName is empty"),
            (req(namespace="default", applicationName="x", interfaceNames=[]), "interfaceNames is empty"),
            (req(namespace="default", applicationName="x", interfaceNames=["a b"]), "not a valid interface name"),
        ]
        for r, want in cases:
            with pytest.raises(grpc.RpcError) as e:
                a.registerServiceAppMapping(r, timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
            assert want in e.value.details()

        # Raw bytes that are not protobuf, through a generic call.
        raw = ch.unary_unary(
            "/v1alpha1.ServiceNameMappingService/registerServiceAppMapping",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as e:
            raw(b"\xff\xff\xff", timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a ServiceMappingRequest protobuf" in e.value.details()

        # A gzip-compressed call: the shim does not take compressed messages.
        with pytest.raises(grpc.RpcError) as e:
            a.registerServiceAppMapping(
                req(namespace="default", applicationName="x", interfaceNames=["I"]),
                timeout=5,
                compression=grpc.Compression.Gzip,
            )
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED, e.value

        # Still serving, and nothing bad was stored.
        a.registerServiceAppMapping(req(namespace="default", applicationName="ok", interfaceNames=["com.Ok"]), timeout=5)
    wait_until(lambda: list(shim.manifests()) == [("default", "com.Ok")], what="only the valid mapping")
    assert shim.proc.alive()
    assert shim.metric("snp_calls_total", result="invalid") == 5


def test_grpcurl_both_flavours_and_get_mappings(protos, shims):
    shim = shims(*FAST)
    grpcurl = tool("grpcurl")
    inc = str(protos.include_dir)

    def call(proto: str, method: str, body: dict) -> dict:
        out = subprocess.run(
            [grpcurl, "-plaintext", "-import-path", inc, "-proto", proto, "-d", json.dumps(body), shim.target, method],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    body = {"namespace": "default", "applicationName": "curl-a", "interfaceNames": [IFACE]}
    assert call("dubbo/networking/v1alpha1/snp.proto", "dubbo.networking.v1alpha1.ServiceNameMappingService/registerServiceAppMapping", body) == {}
    body["applicationName"] = "curl-b"
    assert call("v1alpha1/snp.proto", "v1alpha1.ServiceNameMappingService/registerServiceAppMapping", body) == {
        "success": True,
        "message": "success",
    }
    wait_until(lambda: shim.manifests().get(("default", IFACE), {}).get("spec", {}).get("applicationNames") == ["curl-a", "curl-b"])
    got = call("snp/v1/mapping.proto", "snp.v1.MappingService/GetMappings", {"namespace": "default"})
    assert len(got["mappings"]) == 1
    m = got["mappings"][0]
    assert (m["namespace"], m["interfaceName"], m["applicationNames"]) == ("default", IFACE, ["curl-a", "curl-b"])
    assert m["revision"]

    # A bad call through grpcurl: exit code and message.
    out = subprocess.run(
        [grpcurl, "-plaintext", "-import-path", inc, "-proto", "v1alpha1/snp.proto", "-d",
         json.dumps({"namespace": "Default", "applicationName": "x", "interfaceNames": ["I"]}),
         shim.target, "v1alpha1.ServiceNameMappingService/registerServiceAppMapping"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr and "RFC 1123" in out.stderr


def test_grpcio_push_mappings_and_watch(protos, shims):
    shim = shims(*FAST)
    api = protos.api
    with grpc.insecure_channel(shim.target) as ch:
        stub = protos.api_grpc.MappingServiceStub(ch)
        stream = stub.WatchMappings(api.WatchMappingsRequest(namespace="team-a"), timeout=30)
        first = next(stream)
        assert first.kind == api.MappingEvent.SNAPSHOT and len(first.mappings) == 0

        events = []

        def follow():
            for ev in stream:
                events.append((time.monotonic(), ev))
                if len(events) == 1:
                    return

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        batch = api.PushMappingsRequest(
            batch_id="node-1/7",
            source="node-1",
            mappings=[api.Mapping(namespace="team-a", interface_name="com.A", application_names=["a1", "a2"])],
        )
        resp = stub.PushMappings(batch, timeout=10)
        acked = time.monotonic()
        assert (resp.batch_id, resp.unchanged, resp.written) == ("node-1/7", 0, 1)
        # Acknowledged means durable: the manifest is on disk at this point.
        assert shim.manifests()[("team-a", "com.A")]["spec"]["applicationNames"] == ["a1", "a2"]
        t.join(timeout=5)
        assert events, "no watch event"
        at, ev = events[0]
        assert at - acked < 1.0
        assert ev.kind == api.MappingEvent.UPSERT
        assert [(m.interface_name, list(m.application_names)) for m in ev.mappings] == [("com.A", ["a1", "a2"])]
        writes = shim.metric("snp_store_writes_total")
        # Idempotent: a resend is answered from the cache and writes nothing.
        resp = stub.PushMappings(batch, timeout=10)
        assert (resp.unchanged, resp.written) == (1, 0)
        assert shim.metric("snp_store_writes_total") == writes
        stream.cancel()


def test_health_and_readiness(shims):
    shim = shims()
    wait_until(lambda: shim.http("/readyz")[0] == 200, what="ready")
    assert shim.http("/healthz") == (200, "ok\n")
    status, text = shim.http("/metrics")
    assert status == 200 and "# TYPE snp_flush_duration_seconds histogram" in text
