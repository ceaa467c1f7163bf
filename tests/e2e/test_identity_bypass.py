"""Issue 13: bypass attempts against Envoy with the filter, and against the routes the
filter relies on when it is absent or disabled. Every attempt must be refused (no OK) and
must leave nothing in the store.

Paths are sent with grpcio's generic unary call, which puts the method string in `:path`
as given (no normalisation), so every variant reaches Envoy byte for byte.
"""

from __future__ import annotations

import grpc
import pytest

from envoy_harness import REGISTER_A, REGISTER_B, assert_vm_healthy, envoys, register_request, stat_of  # noqa: F401
from shim_harness import shim, shims, wait_until  # noqa: F401

NODE_NS = "shop"

# Paths that are the registration method to Envoy's `path` route match and to tonic's
# router: the filter must treat them as registrations (here: enforce the namespace).
SAME_METHOD = ["", "?x=1", "?", "?a=1&b=2"]

# A fragment in `:path`: Envoy 1.40's HTTP/2 codec refuses the request before any filter
# or route (grpcio sees INTERNAL); the filter would also cut it (`snp_proto::path`).
FRAGMENTS = ["#frag", "?x=1#frag", "#"]

# Spellings that only a normalising proxy would route to the method: refused by the filter
# with INVALID_ARGUMENT, never forwarded.
VARIANTS = [
    REGISTER_A.replace("/register", "//register", 1),
    "/" + REGISTER_A,
    REGISTER_A + "/",
    REGISTER_A.replace("/register", "/./register", 1),
    REGISTER_A.replace(".", "%2E", 1),
    REGISTER_A.replace(".", "%2e", 1),
    REGISTER_A.replace("S", "%53", 1),
    REGISTER_A.replace("register", "Register", 1),
    REGISTER_A.lower(),
    REGISTER_A + ";x=1",
    REGISTER_B.replace("/register", "//register", 1),
    REGISTER_B.upper(),
]


def call(ch: grpc.Channel, path: str, body: bytes, metadata=()) -> tuple[grpc.StatusCode, str]:
    fn = ch.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        fn(body, timeout=5, metadata=metadata)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


def test_query_strings_and_path_variants_are_enforced_or_refused(protos, envoys, shim):
    envoy = envoys(shim_port=shim.grpc_port, node_namespace=NODE_NS, filter_config={"namespace_policy": "node"})
    ch = envoy.channel()
    table = []
    for base in (REGISTER_A, REGISTER_B):
        for i, suffix in enumerate(SAME_METHOD):
            body = register_request(protos, "kube-system", "forger", [f"org.forged.Q{i}"]).SerializeToString()
            code, msg = call(ch, base + suffix, body)
            table.append((base + suffix, code, msg))
            assert code == grpc.StatusCode.PERMISSION_DENIED, (base + suffix, code, msg)
        for i, suffix in enumerate(FRAGMENTS):
            body = register_request(protos, "kube-system", "forger", [f"org.forged.F{i}"]).SerializeToString()
            code, msg = call(ch, base + suffix, body)
            table.append((base + suffix, code, msg))
            assert code != grpc.StatusCode.OK, (base + suffix, code, msg)
    for i, path in enumerate(VARIANTS):
        body = register_request(protos, "kube-system", "forger", [f"org.forged.V{i}"]).SerializeToString()
        code, msg = call(ch, path, body)
        table.append((path, code, msg))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, code, msg)
        assert "is not the exact registration path" in msg, msg
    # Positive control: the caller's own namespace, with a query string, lands.
    body = register_request(protos, NODE_NS, "shop-app", ["org.shop.Cart"]).SerializeToString()
    assert call(ch, REGISTER_A + "?x=1", body) == (grpc.StatusCode.OK, "")
    assert wait_until(lambda: (NODE_NS, "org.shop.Cart") in shim.union_on_disk())
    assert envoy.wait_delivered()
    on_disk = shim.union_on_disk()
    assert not [k for k in on_disk if k[0] == "kube-system"], on_disk
    assert not [k for k in on_disk if "forged" in k[1]], on_disk
    assert_vm_healthy(envoy)
    print("\n".join(f"{p!r:100} {c.name} {m}" for p, c, m in table))


@pytest.mark.parametrize("mode", ["absent", "disabled"])
def test_a_forged_ack_header_gets_no_ok_without_the_filter(protos, envoys, shim, mode):
    """The ack route matches filter state only the filter sets. A client that sends the old
    route's header, as the filter would have marked a call, reaches the shim's route, and
    the shim refuses a call that is not gRPC. Nothing is recorded."""
    kw = {"without_filter": True} if mode == "absent" else {
        # The filter loaded but intercepting another path: registrations pass it untouched.
        "filter_config": {"paths": [{"path": "/x.Other/method", "flavour": "dubbo"}]}
    }
    envoy = envoys(shim_port=shim.grpc_port, node_namespace=NODE_NS, **kw)
    body = register_request(protos, "kube-system", "forger", ["org.forged.Ack"]).SerializeToString()
    framed = b"\x00" + len(body).to_bytes(4, "big") + body
    from envoy_harness import raw_call

    for path in (REGISTER_A, REGISTER_B, REGISTER_A + "?x=1"):
        for ct in ("application/octet-stream", "application/grpc"):
            r = raw_call(envoy.target(), path, framed, headers={"x-snp-ack": "1", "content-type": ct}, allow_reset=True)
            # Never the ack listener's answer.
            assert "x-snp-acked" not in r["headers"], (path, ct, r)
            if ct == "application/octet-stream":
                assert r["headers"].get("grpc-status", "") != "0", (path, ct, r)
    assert stat_of(envoy.stats(), "cluster.snp_ack.upstream_rq_total") == 0
    # The application/grpc calls reached the shim, which answers them itself (and, in the
    # shipped manifests, enforces its own policy); the octet-stream ones were refused.
    on_disk = shim.union_on_disk()
    assert set(on_disk) <= {("kube-system", "org.forged.Ack")}, on_disk
    assert_vm_healthy(envoy)


def test_the_shim_refuses_path_spellings_as_the_filter_does(protos, envoys, shim):
    """Called directly, the shim gives every path variant the filter's answer (same status,
    same message) and stores nothing."""
    envoy = envoys(shim_port=shim.grpc_port)
    with grpc.insecure_channel(shim.target) as direct:
        ch = envoy.channel()
        for i, path in enumerate(VARIANTS):
            body = register_request(protos, "default", "app", [f"org.variant.V{i}"]).SerializeToString()
            via_filter = call(ch, path, body)
            via_shim = call(direct, path, body)
            assert via_shim == via_filter, (path, via_filter, via_shim)
            assert via_shim[0] == grpc.StatusCode.INVALID_ARGUMENT, (path, via_shim)
    assert shim.union_on_disk() == {}
    assert_vm_healthy(envoy)
