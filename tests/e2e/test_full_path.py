"""Issue 5, test 7: the full path. A grpcio client calls Envoy with the snp filter, which
batches to the real shim (`snp-shim --store kubernetes`), which writes to a real Kubernetes
API server (`apiserver_harness.py`), and the ServiceNameMapping object appears. Both
registration flavours, both ack modes:

* durable: the reply is held until the shim acknowledged the batch, which it does once the
  API server confirmed the write. So the object is read (one GET, no polling) right after
  the reply, and must already be there with the call's application.
* immediate: the reply comes at once, before anything is written (checked: the object is
  not there yet), and the object appears within 5 s.

Objects are named as `snp_core::naming` says (re-implemented here from its documentation):
the seed's name `lower(interface).replace('.', '-')` for a plain interface, a sanitised
prefix and 80 bits of SHA-256 for an interface with `$`/`_`; labels `interface=<name>` (only
when it is a valid label value) and the interface hash.
"""

from __future__ import annotations

import hashlib
import re
import time

import grpc
import pytest

from apiserver_harness import apiserver  # noqa: F401  (fixture)
from envoy_harness import assert_vm_healthy, envoys  # noqa: F401
from shim_harness import shims  # noqa: F401

GROUP, VERSION, PLURAL = "extensions.istio.io", "v1alpha1", "servicenamemappings"
LABEL_HASH = "snp.dubbo.apache.org/interface-hash"
PLAIN = "org.apache.dubbo.demo.DemoService"
NESTED = "org.apache.dubbo.demo.Outer$Inner_1"  # `$` and `_`: no seed name, no seed label
ADMIN = "org.apache.dubbo.demo.AdminService"
APPEAR_WITHIN_S = 5.0


# --- snp_core::naming, from its documentation ------------------------------------------
def interface_hash(interface: str) -> str:
    return hashlib.sha256(interface.encode()).hexdigest()[:20]


def object_name(interface: str) -> str:
    seed = interface.replace(".", "-").lower()
    if len(seed) <= 253 and all(re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", part) for part in seed.split(".")):
        return seed
    prefix = ""
    for c in interface.lower():
        if len(prefix) >= 200:
            break
        if c.isascii() and (c.islower() or c.isdigit()):
            prefix += c
        elif prefix and not prefix.endswith("-"):
            prefix += "-"
    prefix = prefix.rstrip("-")
    return f"{prefix or 'snp'}-{interface_hash(interface)}"


# --- the API server's view -------------------------------------------------------------
def obj_path(namespace: str, name: str = "") -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}" + (f"/{name}" if name else "")


def get_object(apiserver, namespace: str, interface: str) -> dict | None:
    status, body = apiserver.get(obj_path(namespace, object_name(interface)))
    if status == 404:
        return None
    assert status == 200, f"GET {interface}: {status} {body}"
    return body


def apps_of(obj: dict | None) -> list | None:
    return None if obj is None else obj["spec"]["applicationNames"]


def check_object(obj: dict, namespace: str, interface: str, apps: list[str]) -> None:
    md = obj["metadata"]
    assert obj["apiVersion"] == f"{GROUP}/{VERSION}" and obj["kind"] == "ServiceNameMapping"
    assert (md["namespace"], md["name"]) == (namespace, object_name(interface))
    assert obj["spec"]["interfaceName"] == interface
    assert obj["spec"]["applicationNames"] == sorted(apps)
    labels = md.get("labels", {})
    assert labels.get(LABEL_HASH) == interface_hash(interface), labels
    if "$" in interface:
        assert "interface" not in labels, labels  # not a valid label value
    else:
        assert labels.get("interface") == interface, labels


def register(stub, request) -> tuple[object, float]:
    t0 = time.monotonic()
    resp, call = stub.registerServiceAppMapping.with_call(request, timeout=10)
    assert call.code() == grpc.StatusCode.OK
    return resp, time.monotonic() - t0


def wait_for_apps(apiserver, namespace: str, interface: str, apps: list[str], since: float) -> float:
    """Polls the API server until the object holds `apps`; seconds since `since`."""
    deadline = since + APPEAR_WITHIN_S
    while True:
        got = apps_of(get_object(apiserver, namespace, interface))
        if got == sorted(apps):
            return time.monotonic() - since
        assert time.monotonic() < deadline, f"{interface}: {got} after {APPEAR_WITHIN_S}s, want {sorted(apps)}"
        time.sleep(0.02)


@pytest.mark.parametrize("mode", ["immediate", "durable"])
def test_a_registration_through_envoy_and_the_shim_becomes_an_object(protos, apiserver, shims, envoys, mode):
    ns = f"full-path-{mode}"  # a namespace per test: the API server is shared
    apiserver.create_namespace(ns)
    # The names expected (the examples of snp_core::naming's and the shim's own tests):
    # the seed's for the plain interfaces, the hashed fallback for the nested class.
    assert object_name(PLAIN) == "org-apache-dubbo-demo-demoservice"
    assert object_name(ADMIN) == "org-apache-dubbo-demo-adminservice"
    assert re.fullmatch(r"org-apache-dubbo-demo-outer-inner-1-[0-9a-f]{20}", object_name(NESTED))
    shim = shims(kubeconfig=apiserver.kubeconfig).wait_ready()
    envoy = envoys(shim_port=shim.grpc_port, filter_config={"ack_mode": mode})
    ch = envoy.channel()
    stub_a = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
    stub_b = protos.admin_grpc.ServiceNameMappingServiceStub(ch)
    assert apiserver.get(obj_path(ns))[1]["items"] == []
    figures = {}

    # Flavour A: one call, a plain interface and a nested class (two new objects).
    req_a = protos.dubbo.ServiceMappingRequest(namespace=ns, applicationName="provider-a", interfaceNames=[PLAIN, NESTED])
    t0 = time.monotonic()
    resp, latency = register(stub_a, req_a)
    # Read at once, no polling: in durable mode the objects exist now.
    at_reply = {i: get_object(apiserver, ns, i) for i in (PLAIN, NESTED)}
    assert resp.ByteSize() == 0
    if mode == "durable":
        for i in (PLAIN, NESTED):
            assert at_reply[i] is not None, f"durable reply ({latency:.3f}s) came before {i} existed"
            check_object(at_reply[i], ns, i, ["provider-a"])
        figures["A"] = f"reply {latency * 1000:.0f} ms, objects there at the reply"
    else:
        assert at_reply == {PLAIN: None, NESTED: None}, "immediate reply came after the write: not immediate"
        appeared = max(wait_for_apps(apiserver, ns, i, ["provider-a"], t0) for i in (PLAIN, NESTED))
        figures["A"] = f"reply {latency * 1000:.0f} ms, objects after {appeared * 1000:.0f} ms"

    # Flavour B: adds an application to the plain interface (an update) and registers a
    # new interface (a create); the reply is dubbo-admin's.
    req_b = protos.admin.ServiceMappingRequest(namespace=ns, applicationName="provider-b", interfaceNames=[PLAIN, ADMIN])
    t0 = time.monotonic()
    resp, latency = register(stub_b, req_b)
    at_reply = {i: apps_of(get_object(apiserver, ns, i)) for i in (PLAIN, ADMIN)}
    assert resp.success is True and resp.message == "success"
    if mode == "durable":
        assert at_reply == {PLAIN: ["provider-a", "provider-b"], ADMIN: ["provider-b"]}, (
            f"durable reply ({latency:.3f}s) came before the write: {at_reply}"
        )
        figures["B"] = f"reply {latency * 1000:.0f} ms, objects there at the reply"
    else:
        assert at_reply == {PLAIN: ["provider-a"], ADMIN: None}, f"immediate reply came after the write: {at_reply}"
        appeared = max(
            wait_for_apps(apiserver, ns, PLAIN, ["provider-a", "provider-b"], t0),
            wait_for_apps(apiserver, ns, ADMIN, ["provider-b"], t0),
        )
        figures["B"] = f"reply {latency * 1000:.0f} ms, objects after {appeared * 1000:.0f} ms"

    # The end state, as consumers index it (by spec.interfaceName): one object each.
    want = {PLAIN: ["provider-a", "provider-b"], NESTED: ["provider-a"], ADMIN: ["provider-b"]}
    status, listing = apiserver.get(obj_path(ns))
    assert status == 200
    items = listing["items"]
    assert sorted(o["spec"]["interfaceName"] for o in items) == sorted(want)
    for o in items:
        check_object(o, ns, o["spec"]["interfaceName"], want[o["spec"]["interfaceName"]])
    # What the shim serves agrees, and it wrote each change once: 3 creates, 1 update.
    assert {k: sorted(v) for k, v in shim.get_mappings(protos, ns).items()} == {(ns, i): a for i, a in want.items()}
    assert shim.metric("snp_store_writes_total", verb="create", result="ok") == 3
    assert shim.metric("snp_store_writes_total", verb="update", result="ok") == 1
    assert shim.metric("snp_store_writes_total", result="error") == 0
    # Every registration went through the filter (no fallback route to the shim's own
    # registration API) and every batch was acknowledged.
    assert shim.metric("snp_calls_total", api="dubbo") == shim.metric("snp_calls_total", api="admin") == 0
    assert envoy.wait_delivered()
    assert shim.push_calls() == shim.push_calls("ok") == envoy.stat("snp.batches.acked") >= 2
    assert envoy.stat("snp.registrations.ok") == 2
    assert envoy.stat("snp.registrations.held") == (2 if mode == "durable" else 0)
    print(f"{mode}: flavour A: {figures['A']}; flavour B: {figures['B']}")
    assert_vm_healthy(envoy)
