"""Issue 14: the known client, grpc-java with generated blocking stubs (tests/grpc-java), against
the real shim and through Envoy with the filter.

grpc-java's strictness is the point: its blocking stub fails a unary call that ends OK without
a response message, so every "OK" counted here is one grpc-java accepted, and the last test
shows such an answer is caught."""

from __future__ import annotations

import json

import pytest

from conftest import Proc, free_port, tool, wait_for_port
from envoy_harness import assert_vm_healthy, envoys  # noqa: F401
from grpc_java import assert_storm_ok, cases, storm, storm_union
from shim_harness import shim, shims, wait_until  # noqa: F401
from test_filter_namespace import pki  # noqa: F401

NS = "shop"
FAST = ("--debounce-first-check=20ms", "--debounce-after=10ms")


def on_disk(shim, namespace: str = NS) -> dict[str, set]:
    return {iface: apps for (ns, iface), apps in shim.union_on_disk().items() if ns == namespace}


def both_flavours(target: str, calls: int, **kw) -> dict[str, set]:
    """A storm of each flavour, every call checked; returns the union they registered."""
    union: dict[str, set] = {}
    for flavour in ("a", "b"):
        shape = dict(calls=calls, app_prefix=f"java-{flavour}", interface_prefix=f"org.apache.dubbo.{flavour}.Service", apps=12, interfaces=40, per_call=2)
        result = storm(target, flavour, concurrency=16, channels=8, namespace=NS, **shape, **kw)
        expected = storm_union(**{k: v for k, v in shape.items() if k != "calls"}, calls=calls)
        assert_storm_ok(result, expected)
        print(f"grpc-java storm, flavour {flavour}: {calls} calls, {result['calls_per_s']:.0f} calls/s")
        union.update(expected)
    return union


def test_storms_of_both_flavours_against_the_shim(shims):
    shim = shims(*FAST)
    want = both_flavours(shim.target, calls=600)
    # The store holds exactly the union: every app of every interface, nothing else.
    assert wait_until(lambda: on_disk(shim) == want, timeout=30), on_disk(shim)
    assert shim.union_on_disk().keys() == {(NS, i) for i in want}
    assert shim.metric("snp_calls_total", api="dubbo", result="ok") == 600
    assert shim.metric("snp_calls_total", api="admin", result="ok") == 600


def test_storms_of_both_flavours_through_envoy_with_the_filter(envoys, shims):
    shim = shims(*FAST)
    envoy = envoys(shim_port=shim.grpc_port, node_namespace=NS, filter_config={"namespace_policy": "node"})
    want = both_flavours(envoy.target(), calls=600)
    assert envoy.wait_delivered(timeout=30)
    assert wait_until(lambda: on_disk(shim) == want, timeout=30), on_disk(shim)
    assert shim.union_on_disk().keys() == {(NS, i) for i in want}
    # Every call was answered in the proxy; the shim saw merged batches only.
    assert envoy.stat("snp.registrations.ok") == 1200
    assert shim.metric("snp_calls_total", api="dubbo") == 0
    assert shim.metric("snp_calls_total", api="admin") == 0
    assert 1 <= shim.push_calls("ok") < 1200
    assert_vm_healthy(envoy)


# What grpc-java can send (its generated code writes valid UTF-8 and well-formed frames, so the
# malformed-frame rows of test_filter_bad_input.py are out of its reach), and the answer.
BAD = [
    ("empty application name", {"namespace": NS, "app": "", "interfaces": ["org.example.A"]}, "applicationName is empty"),
    ("invalid namespace", {"namespace": "Not_A_Namespace", "app": "a", "interfaces": ["org.example.A"]}, "is not a valid RFC 1123 label"),
    ("empty namespace", {"namespace": "", "app": "a", "interfaces": ["org.example.A"]}, "is not a valid RFC 1123 label"),
    ("namespace too long", {"namespace": "n" * 64, "app": "a", "interfaces": ["org.example.A"]}, "is not a valid RFC 1123 label"),
    ("application name too long", {"namespace": NS, "app": "a" * 254, "interfaces": ["org.example.A"]}, "254 bytes, more than the limit of 253"),
    ("whitespace in application name", {"namespace": NS, "app": "demo provider", "interfaces": ["org.example.A"]}, "whitespace or control"),
    ("no interfaces", {"namespace": NS, "app": "a", "interfaces": []}, "interfaceNames is empty"),
    ("empty interface name", {"namespace": NS, "app": "a", "interfaces": ["org.example.A", ""]}, "not a valid interface name: empty"),
    ("interface name too long", {"namespace": NS, "app": "a", "interfaces": ["i" * 1025]}, "not a valid interface name: too long"),
    ("bad character in interface name", {"namespace": NS, "app": "a", "interfaces": ["org.example.Bad Name"]}, "only letters, digits"),
    ("empty segment in interface name", {"namespace": NS, "app": "a", "interfaces": ["org..Bad"]}, "empty segment between dots"),
    ("too many interfaces", {"namespace": NS, "app": "a", "interfaces": [f"org.example.I{i}" for i in range(1001)]}, "1001 interfaceNames, more than the limit of 1000"),
]


@pytest.mark.parametrize("flavour", ["a", "b"])
def test_bad_input_gets_one_answer_from_shim_and_filter(envoys, shims, flavour):
    shim = shims(*FAST)
    envoy = envoys(shim_port=shim.grpc_port, node_namespace=NS)
    items = [{"flavour": flavour, **case} for _, case, _ in BAD]
    good = {"flavour": flavour, "namespace": NS, "app": "after-bad", "interfaces": ["org.example.Good"]}
    direct = cases(shim.target, items + [good])
    proxied = cases(envoy.target(), items + [good])
    for (name, _, message), d, p in zip(BAD, direct, proxied):
        assert d["code"] == "INVALID_ARGUMENT", (name, d)
        assert message in d.get("description", ""), (name, d)
        # One validation, one answer: the filter refuses it the same way.
        assert (p["code"], p.get("description")) == (d["code"], d["description"]), (name, d, p)
    # The next valid call works on both paths, and flavour B's answer is the promised one.
    for last in (direct[-1], proxied[-1]):
        assert last["code"] == "OK" and last["good"], last
        if flavour == "b":
            assert (last["success"], last["message"]) == (True, "success")
    # Nothing of the bad calls was stored.
    assert envoy.wait_delivered()
    assert wait_until(lambda: shim.union_on_disk() == {(NS, "org.example.Good"): {"after-bad"}}), shim.union_on_disk()
    assert_vm_healthy(envoy)


def test_tls_to_the_shim(shims, pki, tmp_path):  # noqa: F811
    server = pki["server"]
    shim = shims(*FAST, f"--tls-cert={server['cert']}", f"--tls-key={server['key']}", f"--tls-client-ca={server['ca']}", "--auth-scope=all")
    mtls = {"ca": pki["ca"], "cert": pki["client"]["cert"], "key": pki["client"]["key"]}
    tls_only = {"ca": pki["ca"]}

    # Mutual TLS: a storm of each flavour, every call OK.
    for flavour in ("a", "b"):
        shape = dict(app_prefix=f"tls-{flavour}", interface_prefix=f"org.example.tls.{flavour}.S", apps=5, interfaces=10)
        result = storm(shim.target, flavour, calls=100, concurrency=8, namespace=NS, tls=mtls, **shape)
        assert_storm_ok(result, storm_union(calls=100, **shape))

    # TLS without a client certificate: registrations need one (--auth-scope all).
    one = [{"flavour": f, "namespace": NS, "app": "no-cert", "interfaces": ["org.example.NoCert"]} for f in ("a", "b")]
    for r in cases(shim.target, one, tls=tls_only):
        assert r["code"] == "UNAUTHENTICATED" and "client certificate" in r["description"], r

    # Plaintext to the TLS port fails (grpc-java: an HTTP/2 error); it is not answered OK.
    for r in cases(shim.target, one):
        assert r["code"] in ("UNAVAILABLE", "INTERNAL") and not r["good"], r

    expected = {f"org.example.tls.{f}.S{i}" for f in "ab" for i in range(10)}
    assert wait_until(lambda: set(on_disk(shim)) == expected), on_disk(shim)
    assert (NS, "org.example.NoCert") not in shim.union_on_disk()


def test_an_ok_without_a_response_message_fails_in_grpc_java(logs):
    """Why the sidecar answers from a real upstream (the internal ack listener) and not with a
    route's direct_response: Envoy turns a local reply to a gRPC call into trailers-only, and
    with the filter's grpc-status 0 (set here as a header) that is status OK with no message.
    grpc-java fails such a call, so this client must report it as a failure."""
    port, admin = free_port(), free_port()
    cfg = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "direct",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "direct",
                    "codec_type": "HTTP2",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_bytes": "AAAAAAA="}},
                        "response_headers_to_add": [{"header": {"key": "grpc-status", "value": "0"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
                    }]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                },
            }]}],
        }]},
    }
    path = logs / "envoy-direct.json"
    path.write_text(json.dumps(cfg))
    envoy = Proc("envoy-direct", [tool("envoy"), "-c", path, "--disable-hot-restart", "--concurrency", "1"], logs).start()
    try:
        wait_for_port(port, envoy.proc)
        shape = dict(app_prefix="x", interface_prefix="org.example.X", apps=1, interfaces=1)
        for flavour in ("a", "b"):
            result = storm(f"127.0.0.1:{port}", flavour, calls=4, concurrency=2, namespace=NS, **shape)
            assert result["ok"] == 0 and result["sent"] == {}, result
            assert result["codes"] == {"INTERNAL": 4}, result["errors"][:1]
            assert "No value received" in result["errors"][0]["description"], result
            with pytest.raises(AssertionError):
                assert_storm_ok(result, storm_union(calls=4, **shape))
    finally:
        envoy.stop()
