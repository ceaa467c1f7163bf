"""Issue 14, Istio: deploy/istio/envoyfilter.yaml under istiod's own code (Istio release-1.31 as
Go modules: pilot/test/xds.NewFakeDiscoveryServer, the real config generator, EnvoyFilter
patching and ECDS generator), for a 1.31 sidecar whose node metadata and bootstrap come from
istio-agent's pkg/bootstrap and Istio's template.

Istio's proxy-only filters (istio.alpn, istio.metadata_exchange, istio.stats) are switched
off by istiod's own settings, not deleted from its output: PILOT_ENABLE_ALPN_FILTER=false and
PILOT_ENABLE_METADATA_EXCHANGE=false (istiod's feature flags), and a mesh configuration with
no default metrics provider. Upstream Envoy 1.40 has none of them.
"""

from __future__ import annotations

import copy
import json
import subprocess

import grpc
import pytest
import yaml

from conftest import ROOT, tool
from envoy_harness import REGISTER_A, VM_FAILURE_MARKERS
from grpc_java import assert_storm_ok, storm, storm_union
from istio_xds import ISTIO_SHIM_CLUSTER, ISTIO_SHIM_STAT, SHIM_AUTHORITY, IstioSidecar, analyze, explain, report
from shim_harness import shims, wait_until  # noqa: F401

ENVOYFILTER = ROOT / "deploy" / "istio" / "envoyfilter.yaml"
NAMESPACE = "shop"  # the app pod's namespace in the harness
LISTENER = "0.0.0.0_15051"
ISTIO_ONLY = ("istio.alpn", "istio.metadata_exchange", "istio.stats")


def raw_unary(ch: grpc.Channel, path: str, body: bytes) -> tuple[grpc.StatusCode, str]:
    """A unary call with `path` as given (grpcio does not normalise it) and raw bytes."""
    fn = ch.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        fn(body, timeout=10)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


def patches() -> list[dict]:
    return yaml.safe_load(ENVOYFILTER.read_text())["spec"]["configPatches"]


def mutated(tmp_path, name: str, change) -> "Path":  # noqa: F821
    doc = yaml.safe_load(ENVOYFILTER.read_text())
    change(doc["spec"]["configPatches"])
    path = tmp_path / f"envoyfilter-{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_istiod_applies_every_patch_to_a_1_31_sidecar(tmp_path):
    rep = report(tmp_path)
    print(explain(rep))
    assert len(rep["patches"]) == len(patches()) == 9
    assert rep["all_applied"], explain(rep)
    assert all(p["status"] == "applied" for p in rep["patches"]), explain(rep)

    # The filter sits directly before the router, in the chain istiod builds for the shim's
    # port, among Istio's own filters; Istio's proxy-only filters are off (see above).
    chain = rep["http_filters"][LISTENER]
    assert chain[-2:] == ["snp-filter", "envoy.filters.http.router"], chain
    assert len(chain) > 2 and not set(chain) & set(ISTIO_ONLY), chain
    # Only that listener has it.
    assert [name for name, filters in rep["http_filters"].items() if "snp-filter" in filters] == [LISTENER]
    # Every virtual host of route configuration "15051" starts with the two ack routes; the
    # Service's and allow_any then have the registration route that enables the filter; then
    # Istio's own routes.
    vhosts = rep["routes"]["15051"]
    register = {SHIM_AUTHORITY: "snp-register", "allow_any": "snp-register-passthrough"}
    assert set(register) <= set(vhosts), vhosts
    for vh, routes in vhosts.items():
        assert set(routes[:2]) == {"snp-ack-dubbo", "snp-ack-admin"}, (vh, routes)
        ours = [register[vh]] if vh in register else []
        assert routes[2 : 2 + len(ours)] == ours, (vh, routes)
        rest = routes[2 + len(ours) :]
        assert rest and not any(r.startswith("snp-") for r in rest), (vh, routes)
    # The filter is in the chain disabled; those two routes enable it, and send what it does not
    # answer where Istio's route of their virtual host does.
    lds = {l["name"]: l for l in json.loads((tmp_path / "lds.json").read_text())}
    hcm = next(f["typed_config"] for fc in lds[LISTENER]["filter_chains"] for f in fc["filters"]
               if f["typed_config"].get("@type", "").endswith(".HttpConnectionManager"))
    snp = next(f for f in hcm["http_filters"] if f["name"] == "snp-filter")
    assert snp.get("disabled") is True, snp
    rds = json.loads((tmp_path / "rds.json").read_text())["15051"]
    for vh in rds["virtual_hosts"]:
        if vh["name"] not in register:
            continue
        ours, istio = vh["routes"][2], vh["routes"][3]
        assert ours["route"]["cluster"] == istio["route"]["cluster"], (ours, istio)
        on = ours["typed_per_filter_config"]["snp-filter"]
        assert on["@type"].endswith("envoy.config.route.v3.FilterConfig") and not on.get("disabled"), on
    assert rep["ecds"] == ["snp-filter"]
    for name in ("snp_ack", "virtualOutbound", "virtualInbound", LISTENER):
        assert name in rep["listeners"], rep["listeners"]
    for name in ("snp_ack", "snp_shim", ISTIO_SHIM_CLUSTER, "PassthroughCluster", "BlackHoleCluster"):
        assert name in rep["clusters"], rep["clusters"]

    # What a real sidecar gets and the imitation missed: Istio's cluster for the Service
    # carries transport_socket_matches (mTLS to meshed endpoints).
    cds = {c["name"]: c for c in json.loads((tmp_path / "cds.json").read_text())}
    assert cds[ISTIO_SHIM_CLUSTER].get("transport_socket_matches"), cds[ISTIO_SHIM_CLUSTER]
    # The shim's token: only the name of the proxy's environment variable is in what istiod
    # serves (and so in the sidecar's /config_dump), for the filter to read in its VM.
    ecds = json.loads((tmp_path / "ecds.json").read_text())
    wasm = ecds["snp-filter"]["typed_config"]["config"]
    assert wasm["vm_config"]["environment_variables"] == {"host_env_keys": ["SNP_SHIM_TOKEN"]}, wasm["vm_config"]
    assert json.loads(wasm["configuration"]["value"])["auth_token_env"] == "SNP_SHIM_TOKEN"
    assert "key_values" not in json.dumps(ecds), "no token value is written into the configuration"
    # The ack listener is the one envoy/envoy.yaml runs.
    plain = {l["name"]: l for l in yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())["static_resources"]["listeners"]}
    assert lds["snp_ack"]["filter_chains"] == plain["snp_ack"]["filter_chains"]


def test_envoy_validates_everything_istiod_served(tmp_path):
    """LDS, CDS, RDS, ECDS and EDS in one static bootstrap (the rendered sidecar bootstrap,
    with the Wasm module converted as istio-agent does), checked by Envoy 1.40."""
    rep = report(tmp_path)
    assert rep["all_applied"], explain(rep)
    path = rep["files"]["bootstrap-static"]
    boot = json.loads(open(path).read())
    names = [l["name"] for l in boot["static_resources"]["listeners"]]
    assert LISTENER in names and "snp_ack" in names
    out = subprocess.run([tool("envoy"), "--mode", "validate", "-c", path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{out.stdout[-3000:]}{out.stderr[-3000:]}"
    assert "configuration" in (out.stdout + out.stderr) and "OK" in (out.stdout + out.stderr)


def _wrong_port(ps):
    for p in ps:
        m = p["match"]
        if "listener" in m:
            m["listener"]["portNumber"] = 15061
        if "routeConfiguration" in m:
            m["routeConfiguration"]["portNumber"] = 15061


def _misspelled_sub_filter(ps):
    ps[1]["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] = "envoy.filters.http.routr"


def _misspelled_wasm_field(ps):
    cfg = ps[0]["patch"]["value"]["typed_config"]["config"]
    cfg["allow_on_headers_stop_iteraton"] = cfg.pop("allow_on_headers_stop_iteration")


@pytest.mark.parametrize(
    "name,change,expect",
    [
        # With the filter in no listener, no listener asks for its ECDS resource (patch 1), and
        # istiod serves extension configurations only when asked.
        ("wrong-port", _wrong_port, {i: ("not_applied", None) for i in (1, 2, 3, 4, 5, 6)}),
        ("misspelled-sub-filter", _misspelled_sub_filter, {i: ("not_applied", None) for i in (1, 2)}),
        # istiod accepts the file and drops the unknown field without an error.
        ("misspelled-wasm-field", _misspelled_wasm_field, {1: ("altered", "allow_on_headers_stop_iteraton")}),
    ],
)
def test_a_mutated_copy_is_caught(tmp_path, name, change, expect):
    rep = report(tmp_path, envoyfilter=mutated(tmp_path, name, change))
    assert not rep["all_applied"], explain(rep)
    for p in rep["patches"]:
        want = expect.get(p["index"])
        if want is None:
            assert p["status"] == "applied", explain(rep)
            continue
        assert p["status"] == want[0], explain(rep)
        if want[1]:
            assert any(want[1] in problem for problem in p["problems"]), explain(rep)


def test_istioctl_analyze_has_nothing_to_report(tmp_path):
    """Istio's EnvoyFilter analyzer (what `istioctl analyze` runs) is quiet on the file, and
    warns IST0155 on a copy without the priority: a relative insert with a proxyVersion match."""
    assert analyze(ENVOYFILTER) == []
    no_priority = yaml.safe_load(ENVOYFILTER.read_text())
    del no_priority["spec"]["priority"]
    path = tmp_path / "envoyfilter-no-priority.yaml"
    path.write_text(yaml.safe_dump(no_priority, sort_keys=False))
    assert [m["code"] for m in analyze(path)] == ["IST0155"]


def test_a_sidecar_older_than_the_proxy_version_match_gets_no_patch(tmp_path):
    rep = report(tmp_path, proxy_version="1.26.4")
    assert [p["status"] for p in rep["patches"]] == ["not_applied"] * 9, explain(rep)
    assert not any(n.startswith("snp") for n in rep["listeners"] + rep["clusters"] + rep["ecds"])
    assert "snp-filter" not in rep["http_filters"][LISTENER]
    # The oldest version it matches gets them all.
    assert report(tmp_path / "1.27", proxy_version="1.27.0")["all_applied"]


def test_a_live_sidecar_fed_by_istiod_registers_both_flavours(protos, logs, shims):
    shim = shims("--debounce-first-check=20ms", "--debounce-after=10ms")
    sidecar = IstioSidecar(logs, shim.grpc_port).start()
    try:
        print("substitutions:", *sidecar.info["substitutions"], sep="\n  ")
        # The filter's configuration arrives over ECDS, its module converted by the agent.
        assert sidecar.wait_stat("extension_config_discovery.http_filter.snp-filter.config_reload", lambda v: v >= 1) >= 1

        ch = sidecar.channel()
        a = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
        b = protos.admin_grpc.ServiceNameMappingServiceStub(ch)
        resp, call = a.registerServiceAppMapping.with_call(
            protos.dubbo.ServiceMappingRequest(namespace=NAMESPACE, applicationName="demo-provider", interfaceNames=["org.apache.dubbo.demo.DemoService"]), timeout=10)
        assert call.code() == grpc.StatusCode.OK and resp.ByteSize() == 0
        resp_b = b.registerServiceAppMapping(
            protos.admin.ServiceMappingRequest(namespace=NAMESPACE, applicationName="admin-provider", interfaceNames=["org.apache.dubbo.demo.AdminService"]), timeout=10)
        assert resp_b.success is True and resp_b.message == "success"
        # namespace_policy node / on_mismatch rewrite (patch 1): the pod's namespace wins.
        a.registerServiceAppMapping(protos.dubbo.ServiceMappingRequest(namespace="mapping", applicationName="go-provider", interfaceNames=["org.apache.dubbo.demo.GoService"]), timeout=10)

        # grpc-java storms of both flavours through the sidecar.
        want = {
            "org.apache.dubbo.demo.DemoService": {"demo-provider"},
            "org.apache.dubbo.demo.AdminService": {"admin-provider"},
            "org.apache.dubbo.demo.GoService": {"go-provider"},
        }
        for flavour in ("a", "b"):
            shape = dict(app_prefix=f"istio-{flavour}", interface_prefix=f"org.apache.dubbo.istio.{flavour}.S", apps=6, interfaces=20, per_call=2)
            result = storm(sidecar.target, flavour, calls=200, concurrency=8, namespace=NAMESPACE, authority=SHIM_AUTHORITY, **shape)
            union = storm_union(calls=200, **shape)
            assert_storm_ok(result, union)
            want.update(union)

        expected = {(NAMESPACE, k): v for k, v in want.items()}
        assert wait_until(lambda: shim.union_on_disk() == expected, timeout=30), shim.union_on_disk()
        stats = sidecar.stats()
        # Every call was answered inside the sidecar (internal ack listener); none went to the
        # shim over Istio's route; the shim saw merged batches from cluster snp_shim only.
        assert stats.get("cluster.snp_ack.upstream_rq_total") == 403
        # Istio's bootstrap defers the creation of cluster stats to their first use, so an unused
        # counter is absent; the name is right (the next test sees it count).
        assert stats.get(f"{ISTIO_SHIM_STAT}.upstream_rq_total", 0) == 0
        assert stats.get("wasmcustom.snp.registrations.ok") == 403
        assert stats.get("wasmcustom.snp.registrations.rewritten") == 1
        assert stats.get("cluster.snp_shim.upstream_rq_total", 0) >= 1
        assert shim.metric("snp_calls_total", api="dubbo") == 0
        assert shim.metric("snp_calls_total", api="admin") == 0

        # Other traffic on the port does not enter the filter: a lookup takes Istio's route to
        # the shim, and the filter's counter of requests it passed stays 0.
        code, _ = raw_unary(ch, "/snp.v1.MappingService/GetMappings", b"")
        assert code != grpc.StatusCode.UNAVAILABLE, code
        stats = sidecar.stats()
        assert stats.get(f"{ISTIO_SHIM_STAT}.upstream_rq_total") == 1, stats
        assert stats.get("wasmcustom.snp.requests.passed") == 0
        # A path with the method name in another case is in the registration route's superset
        # (so is one with a `%`, but the sidecar's path normalisation decodes `%41`): it enters
        # the filter, which passes it untouched to the same destination (the shim knows no such
        # method).
        code, _ = raw_unary(ch, "/snp.v1.MappingService/RegisterServiceAppMappingLater", b"")
        assert code == grpc.StatusCode.UNIMPLEMENTED, code
        stats = sidecar.stats()
        assert stats.get("wasmcustom.snp.requests.passed") == 1
        assert stats.get(f"{ISTIO_SHIM_STAT}.upstream_rq_total") == 2
        # Spellings of the registration path are refused by the filter itself (the shim gives the
        # same answer; tests/e2e/test_identity_bypass.py), a query string is still the method.
        body = protos.dubbo.ServiceMappingRequest(namespace=NAMESPACE, applicationName="q-provider", interfaceNames=["org.apache.dubbo.demo.QService"]).SerializeToString()
        for path in [REGISTER_A.lower(), REGISTER_A + ";x=1", REGISTER_A.replace("/register", "//register", 1)]:
            code, msg = raw_unary(ch, path, body)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "is not the exact registration path" in msg, (path, code, msg)
        assert raw_unary(ch, REGISTER_A + "?x=1", body) == (grpc.StatusCode.OK, "")
        # Istio's path normalisation (BASE) decodes `%2E` before routing: the filter then sees,
        # and enforces, the registration path itself.
        assert raw_unary(ch, REGISTER_A.replace(".", "%2E", 1), body) == (grpc.StatusCode.OK, "")
        stats = sidecar.stats()
        assert stats.get("wasmcustom.snp.registrations.invalid") == 3
        assert stats.get("wasmcustom.snp.registrations.ok") == 405
        assert stats.get("cluster.snp_ack.upstream_rq_total") == 405
        assert stats.get(f"{ISTIO_SHIM_STAT}.upstream_rq_total") == 2
        want["org.apache.dubbo.demo.QService"] = {"q-provider"}
        expected = {(NAMESPACE, k): v for k, v in want.items()}
        assert wait_until(lambda: shim.union_on_disk() == expected, timeout=30), shim.union_on_disk()
        log = sidecar.envoy.log()
        for marker in VM_FAILURE_MARKERS:
            assert marker not in log, marker
    finally:
        sidecar.stop()


def test_until_the_module_arrives_registrations_go_to_the_shim(protos, logs, shims):
    """The filter slot runs its default configuration (an RBAC filter with no rules) until the
    agent has the module: registrations then take Istio's own route to the shim, which answers
    them. Once the ECDS resource arrives, the sidecar answers them itself."""
    shim = shims("--debounce-first-check=20ms", "--debounce-after=10ms")
    sidecar = IstioSidecar(logs, shim.grpc_port, hold_module=True).start()
    try:
        stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(sidecar.channel())
        early = protos.dubbo.ServiceMappingRequest(namespace=NAMESPACE, applicationName="early-provider", interfaceNames=["org.apache.dubbo.demo.DemoService"])
        _, call = stub.registerServiceAppMapping.with_call(early, timeout=10)
        assert call.code() == grpc.StatusCode.OK
        stats = sidecar.stats()
        assert stats.get("extension_config_discovery.http_filter.snp-filter.config_reload", 0) == 0
        assert stats.get(f"{ISTIO_SHIM_STAT}.upstream_rq_total") == 1
        assert stats.get("cluster.snp_ack.upstream_rq_total", 0) == 0  # absent until first use
        assert shim.metric("snp_calls_total", api="dubbo", result="ok") == 1

        sidecar.release_module()
        assert sidecar.wait_stat("extension_config_discovery.http_filter.snp-filter.config_reload", lambda v: v >= 1) >= 1
        late = protos.dubbo.ServiceMappingRequest(namespace=NAMESPACE, applicationName="late-provider", interfaceNames=["org.apache.dubbo.demo.DemoService"])
        _, call = stub.registerServiceAppMapping.with_call(late, timeout=10)
        assert call.code() == grpc.StatusCode.OK
        stats = sidecar.stats()
        assert stats.get("cluster.snp_ack.upstream_rq_total") == 1
        assert stats.get(f"{ISTIO_SHIM_STAT}.upstream_rq_total") == 1
        want = {(NAMESPACE, "org.apache.dubbo.demo.DemoService"): {"early-provider", "late-provider"}}
        assert wait_until(lambda: shim.union_on_disk() == want, timeout=30), shim.union_on_disk()
    finally:
        sidecar.stop()
