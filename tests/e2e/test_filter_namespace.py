"""Issue 4, test 5: namespace enforcement, reject and rewrite, for the `node` policy (Envoy
node metadata NAMESPACE) and the `peer` policy (SPIFFE ID of the client certificate, over
mTLS). One Envoy, one listener per policy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

from envoy_harness import assert_vm_healthy, envoys  # noqa: F401
from shim_harness import shim, shims, wait_until  # noqa: F401

NODE_NS = "shop"
PEER_NS = "team-a"
SPIFFE_ID = f"spiffe://cluster.local/ns/{PEER_NS}/sa/provider"


def openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


@pytest.fixture
def pki(tmp_path) -> dict:
    """A CA, a server certificate for localhost, and a client certificate carrying a SPIFFE ID."""
    d = tmp_path / "pki"
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=snp-test-ca", cwd=d)
    for name, cn, san in [("server", "localhost", "DNS:localhost,IP:127.0.0.1"), ("client", "provider", f"URI:{SPIFFE_ID}")]:
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d,
        )
    return {
        "ca": d / "ca.crt",
        "server": {"cert": d / "server.crt", "key": d / "server.key", "ca": d / "ca.crt"},
        "client": {"cert": d / "client.crt", "key": d / "client.key"},
    }


def tls_channel(envoy, listener: str, pki: dict) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki["client"]["key"].read_bytes(),
        certificate_chain=pki["client"]["cert"].read_bytes(),
    )
    return grpc.secure_channel(envoy.target(listener), creds, options=[("grpc.ssl_target_name_override", "localhost")])


def register(protos, ch, namespace: str, app: str, iface: str):
    stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
    req = protos.dubbo.ServiceMappingRequest(namespace=namespace, applicationName=app, interfaceNames=[iface])
    try:
        stub.registerServiceAppMapping(req, timeout=5)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def test_namespace_policies_reject_and_rewrite(protos, envoys, shim, pki):
    envoy = envoys(
        shim_port=shim.grpc_port,
        node_namespace=NODE_NS,
        extra_listeners={
            "node_reject": {"filter_config": {"namespace_policy": "node"}},
            "node_rewrite": {"filter_config": {"namespace_policy": "node", "on_mismatch": "rewrite"}},
            "peer_reject": {"filter_config": {"namespace_policy": "peer", "on_mismatch": "reject"}, "tls": pki["server"]},
            "peer_rewrite": {"filter_config": {"namespace_policy": "peer", "on_mismatch": "rewrite"}, "tls": pki["server"]},
        },
    )
    chans = {name: envoy.channel(name) for name in ("apps", "node_reject", "node_rewrite")}
    chans.update({name: tls_channel(envoy, name, pki) for name in ("peer_reject", "peer_rewrite")})

    # node / reject: the node's own namespace passes, another is denied.
    assert register(protos, chans["node_reject"], NODE_NS, "a", "org.example.NodeOwn") == (grpc.StatusCode.OK, "")
    code, details = register(protos, chans["node_reject"], "mapping", "a", "org.example.NodeOther")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "mapping" in details and NODE_NS in details, details

    # node / rewrite: another namespace is registered in the node's.
    assert register(protos, chans["node_rewrite"], "mapping", "b", "org.example.NodeRewritten")[0] == grpc.StatusCode.OK

    # peer / reject: the certificate's namespace passes, another is denied.
    assert register(protos, chans["peer_reject"], PEER_NS, "c", "org.example.PeerOwn") == (grpc.StatusCode.OK, "")
    code, details = register(protos, chans["peer_reject"], "default", "c", "org.example.PeerOther")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "default" in details and PEER_NS in details, details

    # peer / rewrite.
    assert register(protos, chans["peer_rewrite"], "default", "d", "org.example.PeerRewritten")[0] == grpc.StatusCode.OK

    # trust (the default listener): the request's namespace as is, even a wrong one.
    assert register(protos, chans["apps"], "mapping", "e", "org.example.Trusted")[0] == grpc.StatusCode.OK

    want = {
        (NODE_NS, "org.example.NodeOwn"): {"a"},
        (NODE_NS, "org.example.NodeRewritten"): {"b"},
        (PEER_NS, "org.example.PeerOwn"): {"c"},
        (PEER_NS, "org.example.PeerRewritten"): {"d"},
        ("mapping", "org.example.Trusted"): {"e"},
    }
    # The shim stored exactly these, each in the namespace the policy decided: nothing in
    # the namespaces that were denied or rewritten away.
    assert wait_until(lambda: shim.union_on_disk() == want), shim.union_on_disk()
    assert envoy.wait_delivered()
    assert shim.union_on_disk() == want
    assert shim.get_mappings(protos, "default") == {}
    assert envoy.stat("snp.registrations.denied") == 2
    assert envoy.stat("snp.rejected.namespace_mismatch") == 2
    assert envoy.stat("snp.registrations.rewritten") == 2
    assert envoy.stat("snp.registrations.ok") == 5
    assert_vm_healthy(envoy)


def test_node_policy_without_node_namespace_denies(protos, envoys, shim):
    envoy = envoys(shim_port=shim.grpc_port, node_namespace=None, filter_config={"namespace_policy": "node", "on_mismatch": "rewrite"})
    code, details = register(protos, envoy.channel(), "default", "a", "org.example.X")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "unknown" in details
    assert envoy.stat("snp.rejected.caller_unknown") == 1
    assert envoy.stat("snp.pending_keys") == 0  # nothing of it was queued
    assert_vm_healthy(envoy)
