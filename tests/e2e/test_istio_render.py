"""Issue 6, Istio: the EnvoyFilter in deploy/istio/ applied to what istiod generates for a Dubbo
app's sidecar (tests/e2e/istio_render.py), checked by `envoy --mode validate`, and run in a
real Envoy with the built filter and a real shim behind the rendered clusters.

What a cluster would add (istiod, iptables, DNS, istio-agent's download) is replaced by the
substitutions listed in istio_render.localize. Everything else is the patches' own output.
"""

from __future__ import annotations

import copy
import subprocess
import time

import grpc
import pytest
import yaml

from conftest import ROOT, filter_wasm, free_port, tool
from envoy_harness import REGISTER_A, REGISTER_B, VM_FAILURE_MARKERS, raw_call
from istio_render import (
    ISTIO_SHIM_CLUSTER,
    OUTBOUND_LISTENER,
    ROUTE_CONFIG,
    SHIM_AUTHORITY,
    Rendered,
    SidecarEnvoy,
    apply_envoyfilter,
    filter_json_config,
    inline_ecds,
    istio_sidecar,
    load_envoyfilters,
    localize,
)
from shim_harness import shims  # noqa: F401

IFACE_A = "org.apache.dubbo.demo.DemoService"
IFACE_B = "org.apache.dubbo.demo.AdminService"
IFACE_C = "org.apache.dubbo.demo.GoService"
NAMESPACE = "shop"  # the sidecar's pod namespace (node metadata NAMESPACE)


def patched(istio_version: str = "1.27.3"):
    sc = istio_sidecar(namespace=NAMESPACE, istio_version=istio_version)
    results = [r for ef in load_envoyfilters() for r in apply_envoyfilter(sc, ef)]
    return sc, results


def render(logs, shim_port: int):
    sc, _ = patched()
    listener_port, admin_port = free_port(), free_port()
    rendered = localize(
        sc,
        wasm=filter_wasm(),
        listener_port=listener_port,
        admin_port=admin_port,
        shim_port=shim_port,
        ecds_path=logs / "istio-sidecar-ecds.yaml",
    )
    return rendered, listener_port, admin_port


def hcm_of(listener: dict) -> dict:
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def by_name(items: list[dict], name: str) -> dict:
    found = [i for i in items if i.get("name") == name]
    assert len(found) == 1, f"{name}: {len(found)} found"
    return found[0]


def assert_no_vm_failure(envoy: SidecarEnvoy) -> None:
    log = envoy.log()
    for marker in VM_FAILURE_MARKERS:
        assert marker not in log, f"wasm VM failure in the envoy log ({marker!r})"


def test_every_patch_applies_and_the_rendered_config_validates(logs):
    sc, results = patched()
    report = "\n".join(map(str, results))
    # Every patch in the file took effect: none was silently ignored.
    assert results and all(r.applied >= 1 for r in results), report
    doc = load_envoyfilters()
    assert len(results) == sum(len(ef["spec"]["configPatches"]) for ef in doc)

    # The filter sits just before the router of the outbound listener for the shim's port.
    names = [f["name"] for f in hcm_of(by_name(sc.listeners, OUTBOUND_LISTENER))["http_filters"]]
    assert names[-2:] == ["snp-filter", "envoy.filters.http.router"], names
    assert names.count("snp-filter") == 1
    # It is fetched over ECDS, with a pass-through default until the module is there.
    slot = by_name(hcm_of(by_name(sc.listeners, OUTBOUND_LISTENER))["http_filters"], "snp-filter")["config_discovery"]
    assert slot["apply_default_config_without_warming"] is True
    assert slot["default_config"] == {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"}
    # The extension configuration holds the setting WasmPlugin cannot express.
    wasm = sc.extension_configs["snp-filter"]["typed_config"]["config"]
    assert wasm["allow_on_headers_stop_iteration"] is True
    conf = filter_json_config(sc)
    assert conf["namespace_policy"] == "node" and conf["on_mismatch"] == "rewrite"
    assert by_name(sc.clusters, conf["shim_cluster"])["type"] == "STRICT_DNS"

    # Every virtual host of route configuration "15051" starts with the two ack routes; Istio's
    # own routes follow unchanged.
    for vh in sc.routes[ROUTE_CONFIG]["virtual_hosts"]:
        assert {r["name"] for r in vh["routes"][:2]} == {"snp-ack-dubbo", "snp-ack-admin"}, vh["name"]
        assert [r["name"] for r in vh["routes"][2:]] in (["default"], ["allow_any"])

    # The Istio patches and envoy/envoy.yaml answer the same way: the same ack listener, and
    # ack routes with the same match and cluster.
    plain = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())["static_resources"]
    assert by_name(sc.listeners, "snp_ack") == by_name(plain["listeners"], "snp_ack")
    assert by_name(sc.clusters, "snp_ack") == by_name(plain["clusters"], "snp_ack")
    plain_ack = [r for r in hcm_of(by_name(plain["listeners"], "apps"))["route_config"]["virtual_hosts"][0]["routes"] if r.get("route", {}).get("cluster") == "snp_ack"]
    istio_ack = sc.routes[ROUTE_CONFIG]["virtual_hosts"][0]["routes"][:2]
    key = lambda r: (r["match"]["path"], yaml.safe_dump(r["match"]["filter_state"]), r["route"]["cluster"])  # noqa: E731
    assert sorted(map(key, istio_ack)) == sorted(map(key, plain_ack))

    # Envoy accepts the result: as delivered (ECDS from a file), and with the extension
    # configuration inlined, so that the Wasm settings are parsed as well.
    rendered = localize(sc, wasm=filter_wasm(), listener_port=free_port(), admin_port=free_port(), shim_port=free_port(), ecds_path=logs / "istio-sidecar-ecds.yaml")
    cfg, _ = rendered.write(logs)
    inlined = logs / "istio-sidecar-inline.yaml"
    inlined.write_text(yaml.safe_dump(inline_ecds(rendered), sort_keys=False))
    for path in (cfg, inlined):
        out = subprocess.run([tool("envoy"), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{path.name}: {out.stdout[-2000:]}{out.stderr[-2000:]}"
        assert "OK" in out.stdout + out.stderr


def test_sidecars_older_than_istio_1_27_get_no_patch():
    pristine = istio_sidecar(namespace=NAMESPACE, istio_version="1.26.4")
    sc, results = patched("1.26.4")
    assert all(r.applied == 0 for r in results), "\n".join(map(str, results))
    assert (sc.listeners, sc.clusters, sc.routes, sc.extension_configs) == (pristine.listeners, pristine.clusters, pristine.routes, {})
    for version in ("1.27.0", "1.28.1", "1.31.0-distroless"):
        _, results = patched(version)
        assert all(r.applied >= 1 for r in results), version


def test_registrations_in_the_rendered_sidecar(protos, logs, shims):
    shim = shims()
    rendered, listener_port, admin_port = render(logs, shim.grpc_port)
    envoy = SidecarEnvoy(logs, rendered, listener_port=listener_port, admin_port=admin_port).start()
    try:
        ch = envoy.channel()
        a = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
        b = protos.admin_grpc.ServiceNameMappingServiceStub(ch)

        # Flavour A (grpc-java Dubbo): OK with the empty ServiceMappingResponse.
        req = protos.dubbo.ServiceMappingRequest(namespace=NAMESPACE, applicationName="demo-provider", interfaceNames=[IFACE_A])
        resp, call = a.registerServiceAppMapping.with_call(req, timeout=5)
        assert call.code() == grpc.StatusCode.OK
        assert isinstance(resp, protos.dubbo.ServiceMappingResponse) and resp.ByteSize() == 0

        # Flavour B (dubbo-admin): OK with {success: true, message: "success"}.
        req_b = protos.admin.ServiceMappingRequest(namespace=NAMESPACE, applicationName="admin-provider", interfaceNames=[IFACE_B])
        resp_b, call_b = b.registerServiceAppMapping.with_call(req_b, timeout=5)
        assert call_b.code() == grpc.StatusCode.OK
        assert resp_b.success is True and resp_b.message == "success"

        # The Go client that sends namespace "mapping": registered in the pod's own namespace.
        req_c = protos.dubbo.ServiceMappingRequest(namespace="mapping", applicationName="go-provider", interfaceNames=[IFACE_C])
        _, call_c = a.registerServiceAppMapping.with_call(req_c, timeout=5)
        assert call_c.code() == grpc.StatusCode.OK

        # A bad call gets a clear error and changes nothing.
        bad = protos.dubbo.ServiceMappingRequest(namespace=NAMESPACE, applicationName="", interfaceNames=["org.example.Bad"])
        with pytest.raises(grpc.RpcError) as err:
            a.registerServiceAppMapping(bad, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "applicationName" in err.value.details()

        # The exact bytes: the flavour's framed message and the trailer, from inside the sidecar.
        msg = protos.dubbo.ServiceMappingRequest(namespace=NAMESPACE, applicationName="curl-provider", interfaceNames=[IFACE_A]).SerializeToString()
        raw = raw_call(f"127.0.0.1:{listener_port}", REGISTER_A, b"\x00" + len(msg).to_bytes(4, "big") + msg, headers={"host": SHIM_AUTHORITY})
        assert raw["http"] == 200 and raw["headers"]["grpc-status"] == "0"
        assert raw["headers"]["content-type"] == "application/grpc"
        assert raw["body"] == b"\x00\x00\x00\x00\x00"
        assert "x-snp-acked" not in raw["headers"]

        # The batches reach the real shim through the rendered snp_shim cluster, and the shim
        # writes them to its store.
        want = {
            (NAMESPACE, IFACE_A): {"demo-provider", "curl-provider"},
            (NAMESPACE, IFACE_B): {"admin-provider"},
            (NAMESPACE, IFACE_C): {"go-provider"},
        }
        deadline = time.monotonic() + 15
        while True:
            got = {k: set(v["spec"]["applicationNames"]) for k, v in shim.manifests().items()}
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert got == want

        stats = envoy.stats()
        # Four calls were answered inside the sidecar, by the internal ack listener; no
        # registration went to the shim over Istio's own route.
        assert stats.get("cluster.snp_ack.upstream_rq_total") == 4
        assert stats.get(f"cluster.{ISTIO_SHIM_CLUSTER}.upstream_rq_total", 0) == 0
        assert stats.get("wasmcustom.snp.registrations.ok") == 4
        assert stats.get("wasmcustom.snp.registrations.invalid") == 1
        assert stats.get("wasmcustom.snp.registrations.rewritten") == 1
        acked = envoy.wait_stat("wasmcustom.snp.batches.acked", lambda v: v >= 1)
        assert acked >= 1
        assert stats.get("cluster.snp_shim.upstream_rq_total", 0) >= 1
        # The shim saw batches only.
        assert shim.metric("snp_calls_total", api="push", result="ok") == envoy.stats()["wasmcustom.snp.batches.acked"]
        assert shim.metric("snp_calls_total", api="dubbo") == 0
        assert shim.metric("snp_calls_total", api="admin") == 0
        assert_no_vm_failure(envoy)
    finally:
        envoy.stop()


def test_until_the_module_arrives_registrations_go_to_the_shim(protos, logs, shims):
    """The filter slot runs its default configuration (a pass-through) until the extension
    configuration arrives: registrations then reach the shim over Istio's route, and the shim
    answers them. Once the configuration is there, the sidecar answers them itself."""
    shim = shims()
    rendered, listener_port, admin_port = render(logs, shim.grpc_port)
    waiting = Rendered(rendered.bootstrap, {"version_info": "0", "resources": []}, rendered.ecds_path, rendered.substitutions)
    envoy = SidecarEnvoy(logs, waiting, listener_port=listener_port, admin_port=admin_port).start()
    try:
        stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(envoy.channel())
        early = protos.dubbo.ServiceMappingRequest(namespace=NAMESPACE, applicationName="early-provider", interfaceNames=[IFACE_A])
        _, call = stub.registerServiceAppMapping.with_call(early, timeout=5)
        assert call.code() == grpc.StatusCode.OK
        stats = envoy.stats()
        assert stats.get(f"cluster.{ISTIO_SHIM_CLUSTER}.upstream_rq_total") == 1
        assert stats.get("cluster.snp_ack.upstream_rq_total", 0) == 0
        assert shim.metric("snp_calls_total", api="dubbo", result="ok") == 1

        envoy.publish_ecds(rendered)
        assert envoy.wait_stat("extension_config_discovery.http_filter.snp-filter.config_reload", lambda v: v >= 1) >= 1
        late = protos.dubbo.ServiceMappingRequest(namespace=NAMESPACE, applicationName="late-provider", interfaceNames=[IFACE_A])
        _, call = stub.registerServiceAppMapping.with_call(late, timeout=5)
        assert call.code() == grpc.StatusCode.OK
        stats = envoy.stats()
        assert stats.get("cluster.snp_ack.upstream_rq_total") == 1
        assert stats.get(f"cluster.{ISTIO_SHIM_CLUSTER}.upstream_rq_total") == 1

        deadline = time.monotonic() + 15
        while set(shim.manifests().get((NAMESPACE, IFACE_A), {}).get("spec", {}).get("applicationNames", [])) != {"early-provider", "late-provider"}:
            assert time.monotonic() < deadline, shim.manifests()
            time.sleep(0.05)
        assert_no_vm_failure(envoy)
    finally:
        envoy.stop()


def test_a_route_direct_response_cannot_stand_in_for_the_ack_listener(protos, logs, shims):
    """Why patches 4 and 5 exist: with the ack routes answering by direct_response (no internal
    listener), Envoy sends a local reply, which for a gRPC request is trailers-only, even though
    the filter rewrote content-type. The client gets no response message: grpc-java fails such
    a unary call, and flavour B's {success: true} is lost."""
    shim = shims()
    rendered, listener_port, admin_port = render(logs, shim.grpc_port)
    boot = copy.deepcopy(rendered.bootstrap)
    ack = by_name(boot["static_resources"]["listeners"], "snp_ack")
    ack_route = hcm_of(ack)["route_config"]["virtual_hosts"][0]["routes"][0]
    outbound = by_name(boot["static_resources"]["listeners"], OUTBOUND_LISTENER)
    for vh in hcm_of(outbound)["route_config"]["virtual_hosts"]:
        for r in vh["routes"][:2]:
            assert r.pop("route")["cluster"] == "snp_ack"
            r["direct_response"] = copy.deepcopy(ack_route["direct_response"])
            r["response_headers_to_add"] = copy.deepcopy(ack_route["response_headers_to_add"])
    variant = Rendered(boot, rendered.ecds, rendered.ecds_path, rendered.substitutions)
    envoy = SidecarEnvoy(logs, variant, listener_port=listener_port, admin_port=admin_port, name="istio-sidecar-direct-response").start()
    try:
        msg = protos.dubbo.ServiceMappingRequest(namespace=NAMESPACE, applicationName="x", interfaceNames=[IFACE_A]).SerializeToString()
        for path in (REGISTER_A, REGISTER_B):
            raw = raw_call(f"127.0.0.1:{listener_port}", path, b"\x00" + len(msg).to_bytes(4, "big") + msg, headers={"host": SHIM_AUTHORITY})
            assert raw["headers"].get("grpc-status") == "0"
            assert raw["body"] == b"", "a route direct_response now carries a body for gRPC: the internal listener may be unnecessary"
            # The body became grpc-message instead.
            assert raw["headers"].get("grpc-message") == "%00%00%00%00%00"
        assert envoy.stats().get("cluster.snp_ack.upstream_rq_total", 0) == 0
    finally:
        envoy.stop()
