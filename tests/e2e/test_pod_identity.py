"""Namespace attribution at the shim, on a real kube-apiserver with the Pod API.

Pods on the shim's node get loopback addresses (status.podIP 127.0.0.x, set through the
status subresource); the test client binds its socket to such an address (curl
--interface), so the shim sees the call coming from that pod. Under the shipped policy
(`pod`, `reject`): a call from 127.0.0.2 (a pod in `shop`) claiming `kube-system` is
denied, the same call claiming `shop` lands, and a call from an address that is no pod's
is denied.

Runs on the real kube-apiserver (tests/k8s-apiserver), acting as the shim's service account;
no scheduler or kubelet runs, so the test sets each pod's status itself.
"""

from __future__ import annotations

import json
import socket
import urllib.parse

from apiserver_harness import apiserver  # noqa: F401  (fixture)
from envoy_harness import REGISTER_A, raw_call
from shim_harness import shims, wait_until  # noqa: F401
from test_filter_bad_input import frame, pb_string

NODE = "node-a"


def body(ns: str, app: str, iface: str) -> bytes:
    return frame(pb_string(1, ns.encode()) + pb_string(2, app.encode()) + pb_string(3, iface.encode()))


def make_pod(api, ns: str, name: str, ip: str, node: str = NODE) -> None:
    status, _ = api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    assert status in (201, 409), status
    # No service-account controller runs here: the pod's `default` account is made by hand.
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}}
    status, _ = api.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", sa)
    assert status in (201, 409), status
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": node, "serviceAccountName": "default", "containers": [{"name": "app", "image": "app:1"}]},
    }
    status, created = api.request("POST", f"/api/v1/namespaces/{ns}/pods", pod)
    assert status == 201, (status, created)
    created["status"] = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    status, updated = api.request("PUT", f"/api/v1/namespaces/{ns}/pods/{name}/status", created)
    assert status == 200, (status, updated)


def stored(api, ns: str) -> set[str]:
    """The interface names stored in namespace `ns`."""
    status, listing = api.get(f"/apis/extensions.istio.io/v1alpha1/namespaces/{ns}/servicenamemappings")
    assert status == 200, listing
    return {i["spec"]["interfaceName"] for i in listing["items"]}


def test_a_pod_may_register_in_its_own_namespace_only(apiserver, shims):
    status, resources = apiserver.get("/api/v1")
    served = {r["name"] for r in resources.get("resources", [])} if isinstance(resources, dict) else set()
    assert status == 200 and "pods" in served, (
        "this API server does not serve Pods; the test needs the kube-apiserver harness (branch k8s)"
    )
    make_pod(apiserver, "shop", "cart", "127.0.0.2")
    make_pod(apiserver, "other", "elsewhere", "127.0.0.3", node="node-b")
    shim = shims("--namespace-policy=pod", "--on-mismatch=reject", f"--node-name={NODE}", kubeconfig=apiserver.kubeconfig).wait_ready()

    def call(src: str, ns: str, iface: str):
        r = raw_call(shim.target, REGISTER_A, body(ns, "cart", iface), interface=src)
        return r["headers"].get("grpc-status"), r["headers"].get("grpc-message", "")

    # The reflector may need a moment after the shim is ready: wait for the own-namespace call.
    assert wait_until(lambda: call("127.0.0.2", "shop", "org.shop.Cart")[0] == "0", timeout=30)
    code, msg = call("127.0.0.2", "kube-system", "org.forged.Evil")
    assert code == "7", (code, msg)
    # A pod of another node, and an address that is no pod's (the node itself, host network).
    for src in ("127.0.0.3", "127.0.0.1"):
        code, msg = call(src, "shop", "org.forged.Other")
        assert code == "7", (src, code, msg)

    # The accepted call is written after the debounce window; the refused ones never are
    # (they were answered before it, so they would have been in the same batch).
    assert wait_until(lambda: stored(apiserver, "shop") == {"org.shop.Cart"}, timeout=30), stored(apiserver, "shop")
    assert stored(apiserver, "kube-system") == set()
    assert stored(apiserver, "shop") == {"org.shop.Cart"}


def pb_message(field: int, value: bytes) -> bytes:
    return pb_string(field, value)


def pb_fields(buf: bytes) -> dict[int, bytes]:
    """The length-delimited fields of a protobuf message (enough for Nacos's Payload)."""
    out, i = {}, 0
    while i < len(buf):
        key, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        assert key & 7 == 2, f"unexpected wire type in {buf!r}"
        n, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        out[key >> 3] = buf[i : i + n]
        i += n
    return out


def nacos_publish(target: str, src: str, tenant: str, data_id: str, app: str) -> dict:
    """A Nacos 2.x ConfigPublishRequest for group `mapping`, as nacos-client sends it
    (Payload{metadata{type}, body Any{value: JSON}}), from source address `src`."""
    req = {"requestId": "1", "headers": {}, "dataId": data_id, "group": "mapping", "tenant": tenant,
           "content": app, "casMd5": "", "additionMap": {}}
    payload = pb_message(2, pb_string(3, b"ConfigPublishRequest")) + pb_message(3, pb_string(2, json.dumps(req).encode()))
    r = raw_call(target, "/Request/request", frame(payload), interface=src)
    assert r["headers"].get("grpc-status") == "0", r
    body = r["body"][5:]
    return json.loads(pb_fields(pb_fields(body)[3])[2])


def test_a_nacos_publish_lands_in_the_callers_namespace_only(apiserver, shims):
    """The Nacos endpoint under `--nacos-identity=pod`: the default tenant writes into the
    caller pod's namespace, a tenant naming another namespace is refused (errorCode 400,
    never 403, which Dubbo would re-throw), and so is an address that is no pod's."""
    make_pod(apiserver, "shelf", "books", "127.0.0.4")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shim = shims(
        "--namespace-policy=pod", "--on-mismatch=reject", f"--node-name={NODE}",
        "--nacos", f"--nacos-addr=127.0.0.1:{port}", "--nacos-identity=pod",
        kubeconfig=apiserver.kubeconfig,
    ).wait_ready()
    target = f"127.0.0.1:{port}"
    # The reflector may need a moment after the shim is ready.
    assert wait_until(lambda: nacos_publish(target, "127.0.0.4", "", "org.shelf.NacosBooks", "cart").get("resultCode") == 200, timeout=30)
    forged = nacos_publish(target, "127.0.0.4", "kube-system", "org.forged.NacosEvil", "cart")
    assert (forged.get("resultCode"), forged.get("errorCode")) == (500, 400), forged
    assert "not the caller's namespace" in forged.get("message", ""), forged
    stranger = nacos_publish(target, "127.0.0.1", "", "org.forged.NacosHost", "cart")
    assert stranger.get("errorCode") == 400 and "no pod on this node" in stranger.get("message", ""), stranger

    assert wait_until(lambda: "org.shelf.NacosBooks" in stored(apiserver, "shelf"), timeout=30), stored(apiserver, "shelf")
    assert stored(apiserver, "kube-system") == set()
    assert "org.forged.NacosHost" not in stored(apiserver, "default")


PUSH = "/snp.v1.MappingService/PushMappings"


def push(protos, target: str, src: str, mappings: list[tuple[str, str]], token: str | None = None):
    """A PushMappings batch (want_results) from source address `src`, with a bearer token or
    none, as a sidecar's or a gateway's filter sends it. Returns (grpc-status, message,
    [(status name, reason)] per mapping)."""
    req = protos.api.PushMappingsRequest(
        batch_id=f"b-{src}-{len(mappings)}-{token is not None}",
        source="test",
        want_results=True,
        mappings=[protos.api.Mapping(namespace=ns, interface_name=i, application_names=["cart"]) for ns, i in mappings],
    )
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    r = raw_call(target, PUSH, frame(req.SerializeToString()), headers=headers, interface=src)
    code, msg = r["headers"].get("grpc-status"), urllib.parse.unquote(r["headers"].get("grpc-message", ""))
    if code != "0":
        return code, msg, []
    resp = protos.api.PushMappingsResponse.FromString(r["body"][5:])
    names = protos.api.MappingResult.Status.Name
    return code, msg, [(names(x.status), x.reason) for x in resp.results]


def test_a_sidecars_batch_carries_its_pods_namespace_only(apiserver, shims, protos, tmp_path):
    """`--push-namespace-policy pod` with a token, as deploy/ ships it: a batch without a token
    (a sidecar's) is checked by the pod at its source address, mapping by mapping: the ones in
    that pod's namespace are stored, the others are REJECTED (namespace_denied) and never
    written. A batch from an address that is no pod's gets every mapping rejected. The token
    holder (a gateway, a node proxy) may push for any namespace; a wrong token is refused."""
    make_pod(apiserver, "till", "pos", "127.0.0.6")
    status, _ = apiserver.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mall"}})
    assert status in (201, 409), status
    token = tmp_path / "token"
    token.write_text("gw-s3cret\n")
    shim = shims(
        "--push-namespace-policy=pod", f"--auth-token-file={token}", f"--node-name={NODE}",
        "--ack-timeout=3s", kubeconfig=apiserver.kubeconfig,
    ).wait_ready()
    t = shim.target

    # The reflector may need a moment after the shim is ready: wait for the pod's own mapping.
    assert wait_until(lambda: push(protos, t, "127.0.0.6", [("till", "org.till.Pos")])[2] == [("STORED", "")], timeout=30)
    code, _, results = push(protos, t, "127.0.0.6", [("till", "org.till.Drawer"), ("mall", "org.forged.Sidecar"), ("kube-system", "org.forged.Sys")])
    assert code == "0"
    assert results == [("STORED", ""), ("REJECTED", "namespace_denied"), ("REJECTED", "namespace_denied")], results
    # Host network (the node's address) and another node's pod: no namespace at all.
    for src in ("127.0.0.1", "127.0.0.3"):
        code, _, results = push(protos, t, src, [("till", "org.forged.Host")])
        assert (code, results) == ("0", [("REJECTED", "namespace_denied")]), (src, code, results)
    # The token holder: any namespace, from any address.
    code, _, results = push(protos, t, "127.0.0.1", [("mall", "org.mall.Gateway"), ("till", "org.till.Gateway")], token="gw-s3cret")
    assert (code, results) == ("0", [("STORED", ""), ("STORED", "")]), (code, results)
    # A wrong token is refused as a whole, even from a pod: presenting one is a claim.
    for src in ("127.0.0.6", "127.0.0.1"):
        code, msg, _ = push(protos, t, src, [("till", "org.forged.Wrong")], token="nope")
        assert (code, msg) == ("16", "invalid bearer token"), (src, code, msg)

    assert stored(apiserver, "till") == {"org.till.Pos", "org.till.Drawer", "org.till.Gateway"}
    assert stored(apiserver, "mall") == {"org.mall.Gateway"}
    assert stored(apiserver, "kube-system") == set()
    assert shim.metric("snp_invalid_calls_total", reason="namespace_denied") == 4
