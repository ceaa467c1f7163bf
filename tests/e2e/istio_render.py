"""Renders the Envoy configuration that `deploy/istio/envoyfilter.yaml` amounts to in an Istio
sidecar, so that a real Envoy can run it without a cluster.

1. `istio_sidecar()` builds what istiod sends the sidecar of a Dubbo app (pod `demo-provider` in
   namespace `shop`) that calls the shim's Service: the bootstrap (from Istio's sidecar
   bootstrap template: node metadata, the internal-listener bootstrap extension) and the xDS
   resources istiod generates for the outbound HTTP port 15051. These are the listener
   `0.0.0.0_15051` with its HTTP connection manager (RDS route configuration "15051"), that route
   configuration (the Service's virtual host with Istio's `default` route, and `allow_any`), and
   the clusters `outbound|15051||snp-shim...`, `PassthroughCluster` and `BlackHoleCluster`. Istio's
   own HTTP filters that upstream Envoy lacks (`istio.metadata_exchange`, `istio.alpn`,
   `istio.stats`) are left out. Upstream equivalents of the rest (`grpc_stats`, `fault`, `cors`,
   the router) are kept, so the snp filter still lands in a chain of several filters.
2. `apply_envoyfilter()` applies each patch of the EnvoyFilter with the semantics of istiod's
   `pilot/pkg/networking/core/envoyfilter` (context and `proxy.proxyVersion` matching, listener /
   filter-chain / network-filter / sub-filter matching, route-configuration / vhost / route
   matching, and the ADD / INSERT_* operations), and counts what each patch did. A match field
   or operation it does not implement raises an error, so no patch can be skipped silently.
3. `localize()` turns the result into one Envoy bootstrap that runs on 127.0.0.1. It makes only
   the changes that stand in for what the cluster would provide, and lists them in
   `Rendered.substitutions`:
   * the dynamic resources become static ones (LDS, CDS) or inline ones (RDS);
   * the listener is bound to a local port (in a pod, iptables hands it the app's connections);
   * ECDS comes from a file (`path_config_source`) instead of `ads`;
   * istio-agent's module download becomes the built `.wasm` file (the agent rewrites the
     remote code to a local file the same way);
   * the EDS cluster and the shim's DNS name point at the test's shim.
"""

from __future__ import annotations

import copy
import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml

from conftest import ROOT, Proc, tool, wait_for_port

ENVOYFILTER_YAML = ROOT / "deploy" / "istio" / "envoyfilter.yaml"

SHIM_HOST = "snp-shim.snp-system.svc.cluster.local"
SHIM_PORT = 15051
SHIM_AUTHORITY = f"{SHIM_HOST}:{SHIM_PORT}"
SHIM_CLUSTER_IP = "10.96.51.51"
ISTIO_SHIM_CLUSTER = f"outbound|{SHIM_PORT}||{SHIM_HOST}"
OUTBOUND_LISTENER = f"0.0.0.0_{SHIM_PORT}"
ROUTE_CONFIG = str(SHIM_PORT)

HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
ADS = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
HTTP2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}

SIDECAR_OUTBOUND = "SIDECAR_OUTBOUND"


# --- 1. What istiod sends a sidecar ---------------------------------------------------------


@dataclass
class Sidecar:
    """One sidecar's configuration as Envoy receives it: the bootstrap and the xDS resources."""

    bootstrap: dict
    listeners: list[dict]  # LDS
    clusters: list[dict]  # CDS
    routes: dict[str, dict]  # RDS, by route configuration name
    extension_configs: dict[str, dict] = field(default_factory=dict)  # ECDS, by name

    @property
    def istio_version(self) -> str:
        return self.bootstrap["node"]["metadata"].get("ISTIO_VERSION", "")


def istio_sidecar(namespace: str = "shop", istio_version: str = "1.27.3", app: str = "demo-provider") -> Sidecar:
    pod = f"{app}-6d9c7b8f5-x2x9k"
    bootstrap = {
        "node": {
            "id": f"sidecar~10.244.1.17~{pod}.{namespace}~{namespace}.svc.cluster.local",
            "cluster": f"{app}.{namespace}",
            "metadata": {
                "NAMESPACE": namespace,
                "ISTIO_VERSION": istio_version,
                "CLUSTER_ID": "Kubernetes",
                "MESH_ID": "cluster.local",
                "NAME": pod,
                "WORKLOAD_NAME": app,
                "SERVICE_ACCOUNT": "default",
                "INTERCEPTION_MODE": "REDIRECT",
                "LABELS": {"app": app},
            },
        },
        # Istio's sidecar bootstrap template (tools/packaging/common/envoy_bootstrap.json) has
        # this extension unconditionally, in exactly this form.
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                    "type_url": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                    "value": {"buffer_size_kb": 64},
                },
            }
        ],
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
        "dynamic_resources": {"lds_config": ADS, "cds_config": ADS, "ads_config": {"api_type": "GRPC"}},
    }
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": f"outbound_0.0.0.0_{SHIM_PORT}",
        "rds": {"config_source": copy.deepcopy(ADS), "route_config_name": ROUTE_CONFIG},
        "use_remote_address": False,
        "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "stream_idle_timeout": "0s",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "http_filters": [
            {
                "name": "envoy.filters.http.grpc_stats",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
                    "emit_filter_state": True,
                    "stats_for_all_methods": False,
                },
            },
            {"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
            {"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    listener = {
        "name": OUTBOUND_LISTENER,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": SHIM_PORT}},
        # Reached through the virtual outbound listener 15001 (iptables), not bound itself.
        "bind_to_port": False,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [{"name": HCM, "typed_config": hcm}]}],
    }
    default_route_action = {
        "timeout": "0s",
        "retry_policy": {
            "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            "num_retries": 2,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
                }
            ],
            "host_selection_retry_max_attempts": "5",
        },
        "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
    }
    short = SHIM_HOST.removesuffix(".svc.cluster.local")
    route_config = {
        "name": ROUTE_CONFIG,
        "validate_clusters": False,
        "virtual_hosts": [
            {
                "name": SHIM_AUTHORITY,
                "domains": [d for h in (SHIM_HOST, f"{short}.svc", short, SHIM_CLUSTER_IP) for d in (h, f"{h}:{SHIM_PORT}")],
                "routes": [
                    {
                        "name": "default",
                        "match": {"prefix": "/"},
                        "route": {"cluster": ISTIO_SHIM_CLUSTER, **copy.deepcopy(default_route_action)},
                        "decorator": {"operation": f"{SHIM_AUTHORITY}/*"},
                    }
                ],
                "include_request_attempt_count": True,
            },
            {
                "name": "allow_any",
                "domains": ["*"],
                "routes": [
                    {
                        "name": "allow_any",
                        "match": {"prefix": "/"},
                        "route": {"cluster": "PassthroughCluster", "timeout": "0s", "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}},
                    }
                ],
                "include_request_attempt_count": True,
            },
        ],
    }
    clusters = [
        {
            "name": ISTIO_SHIM_CLUSTER,
            "type": "EDS",
            "eds_cluster_config": {"eds_config": copy.deepcopy(ADS), "service_name": ISTIO_SHIM_CLUSTER},
            "connect_timeout": "10s",
            "lb_policy": "LEAST_REQUEST",
            "typed_extension_protocol_options": copy.deepcopy(HTTP2),
        },
        {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s", "lb_policy": "CLUSTER_PROVIDED"},
        {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"},
    ]
    return Sidecar(bootstrap, [listener], clusters, {ROUTE_CONFIG: route_config})


# --- 2. istiod's EnvoyFilter semantics ------------------------------------------------------


def load_envoyfilters(path: Path = ENVOYFILTER_YAML) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs and all(d.get("kind") == "EnvoyFilter" for d in docs), f"{path}: only EnvoyFilter documents expected"
    return docs


@dataclass
class PatchResult:
    index: int
    apply_to: str
    operation: str
    name: str
    applied: int = 0  # how many objects it changed or added

    def __str__(self) -> str:
        return f"patch {self.index} ({self.apply_to} {self.operation} {self.name}): applied {self.applied}x"


class Unsupported(Exception):
    """A patch uses a match field or operation this renderer does not implement."""


_KNOWN_MATCH = {"context", "proxy", "listener", "routeConfiguration", "cluster"}


def _check_keys(where: str, d: dict, allowed: set[str]) -> None:
    extra = set(d) - allowed
    if extra:
        raise Unsupported(f"{where}: {sorted(extra)} not implemented by the renderer")


def _context_matches(match: dict, pctx: str) -> bool:
    ctx = match.get("context", "ANY")
    return ctx in ("ANY", pctx)


def _proxy_matches(match: dict, sidecar: Sidecar) -> bool:
    proxy = match.get("proxy")
    if not proxy:
        return True
    _check_keys("match.proxy", proxy, {"proxyVersion"})
    # istiod: regexp.MatchString (unanchored), on the proxy's ISTIO_VERSION; a proxy that
    # reports none is treated as 65535.65535.65535.
    version = sidecar.istio_version or "65535.65535.65535"
    return re.search(proxy["proxyVersion"], version) is not None


def _patch_name(value: dict) -> str:
    return str((value or {}).get("name", ""))


def _listener_match(listener: dict, lm: dict | None) -> bool:
    if not lm:
        return True
    _check_keys("match.listener", lm, {"name", "portNumber", "filterChain"})
    if lm.get("name") and lm["name"] != listener.get("name"):
        return False
    port = lm.get("portNumber", 0)
    if port:
        sock = listener.get("address", {}).get("socket_address")
        if not sock or sock.get("port_value") != port:
            return False
    return True


def _filter_chain_match(fc: dict, lm: dict | None) -> bool:
    m = (lm or {}).get("filterChain")
    if not m:
        return True
    _check_keys("match.listener.filterChain", m, {"name", "filter", "destinationPort"})
    if m.get("name") and m["name"] != fc.get("name"):
        return False
    if m.get("destinationPort"):
        dp = fc.get("filter_chain_match", {}).get("destination_port")
        if dp != m["destinationPort"]:
            return False
    return True


def _network_filter_match(flt: dict, lm: dict | None) -> bool:
    m = ((lm or {}).get("filterChain") or {}).get("filter")
    if not m:
        return True
    _check_keys("match.listener.filterChain.filter", m, {"name", "subFilter"})
    return m.get("name") == flt.get("name")


def _sub_filter_name(lm: dict | None) -> str:
    m = (((lm or {}).get("filterChain") or {}).get("filter") or {}).get("subFilter")
    if not m:
        return ""
    _check_keys("match.listener.filterChain.filter.subFilter", m, {"name"})
    return m.get("name", "")


def _apply_http_filter(listeners: list[dict], p: dict, res: PatchResult) -> None:
    lm = p["match"].get("listener")
    op = p["patch"]["operation"]
    for lis in listeners:
        if not _listener_match(lis, lm):
            continue
        for fc in lis.get("filter_chains", []):
            if not _filter_chain_match(fc, lm):
                continue
            for flt in fc.get("filters", []):
                if flt.get("name") != HCM or not _network_filter_match(flt, lm):
                    continue
                filters = flt["typed_config"]["http_filters"]
                value = copy.deepcopy(p["patch"]["value"])
                sub = _sub_filter_name(lm)
                if op == "ADD":
                    filters.append(value)
                    res.applied += 1
                elif op == "INSERT_FIRST":
                    filters.insert(0, value)
                    res.applied += 1
                elif op in ("INSERT_BEFORE", "INSERT_AFTER"):
                    if not sub:  # before: at the start; after: at the end
                        filters.insert(0 if op == "INSERT_BEFORE" else len(filters), value)
                        res.applied += 1
                        continue
                    for i, f in enumerate(filters):
                        if f.get("name") == sub:
                            filters.insert(i if op == "INSERT_BEFORE" else i + 1, value)
                            res.applied += 1
                            break
                else:
                    raise Unsupported(f"HTTP_FILTER {op}")


def _route_config_match(rc: dict, rm: dict | None) -> bool:
    if not rm:
        return True
    _check_keys("match.routeConfiguration", rm, {"portNumber", "name", "vhost"})
    # Sidecar: the port is the route configuration's name ("15051").
    port = int(rc["name"]) if rc["name"].isdigit() else 0
    if rm.get("portNumber") and rm["portNumber"] != port:
        return False
    if rm.get("name") and rm["name"] != rc["name"]:
        return False
    return True


def _vhost_match(vh: dict, rm: dict | None) -> bool:
    m = (rm or {}).get("vhost")
    if not m:
        return True
    _check_keys("match.routeConfiguration.vhost", m, {"name", "route"})
    return not m.get("name") or m["name"] == vh.get("name")


def _route_match(route: dict, rm: dict | None) -> bool:
    m = ((rm or {}).get("vhost") or {}).get("route")
    if not m:
        return True
    _check_keys("match.routeConfiguration.vhost.route", m, {"name", "action"})
    if m.get("name") and m["name"] != route.get("name"):
        return False
    action = m.get("action", "ANY")
    kinds = {"ROUTE": "route", "REDIRECT": "redirect", "DIRECT_RESPONSE": "direct_response"}
    return action == "ANY" or kinds[action] in route


def _apply_http_route(routes: dict[str, dict], p: dict, res: PatchResult) -> None:
    rm = p["match"].get("routeConfiguration")
    op = p["patch"]["operation"]
    has_route_match = bool(((rm or {}).get("vhost") or {}).get("route"))
    for rc in routes.values():
        if not _route_config_match(rc, rm):
            continue
        for vh in rc["virtual_hosts"]:
            if not _vhost_match(vh, rm):
                continue
            value = copy.deepcopy(p["patch"]["value"])
            rs = vh["routes"]
            if op == "ADD":
                rs.append(value)
                res.applied += 1
            elif op == "INSERT_FIRST":
                # istiod: without a route match, prepend; with one, prepend only if a route matches.
                if not has_route_match or any(_route_match(r, rm) for r in rs):
                    rs.insert(0, value)
                    res.applied += 1
            elif op in ("INSERT_BEFORE", "INSERT_AFTER"):
                if not has_route_match:
                    rs.insert(0 if op == "INSERT_BEFORE" else len(rs), value)
                    res.applied += 1
                    continue
                for i, r in enumerate(rs):
                    if _route_match(r, rm):
                        rs.insert(i if op == "INSERT_BEFORE" else i + 1, value)
                        res.applied += 1
                        break
            else:
                raise Unsupported(f"HTTP_ROUTE {op}")


def _requested_extension_configs(listeners: list[dict]) -> set[str]:
    names = set()
    for lis in listeners:
        for fc in lis.get("filter_chains", []):
            for flt in fc.get("filters", []):
                if flt.get("name") == HCM:
                    for hf in flt["typed_config"].get("http_filters", []):
                        if "config_discovery" in hf:
                            names.add(hf["name"])
    return names


def apply_envoyfilter(sidecar: Sidecar, envoyfilter: dict) -> list[PatchResult]:
    """Applies every patch of one EnvoyFilter to `sidecar` (in place), as istiod would for a
    sidecar proxy. Returns what each patch did, in order."""
    spec = envoyfilter["spec"]
    _check_keys("spec", spec, {"configPatches", "workloadSelector", "targetRefs", "priority"})
    if spec.get("targetRefs"):
        raise Unsupported("spec.targetRefs (waypoints/gateways) is not for sidecars")
    labels = sidecar.bootstrap["node"]["metadata"].get("LABELS", {})
    selector = (spec.get("workloadSelector") or {}).get("labels", {})
    selected = all(labels.get(k) == v for k, v in selector.items())
    results = []
    ext_adds: list[tuple[dict, PatchResult]] = []
    for i, p in enumerate(spec["configPatches"]):
        _check_keys(f"configPatches[{i}]", p, {"applyTo", "match", "patch"})
        p.setdefault("match", {})
        _check_keys(f"configPatches[{i}].match", p["match"], _KNOWN_MATCH)
        apply_to, op = p["applyTo"], p["patch"]["operation"]
        res = PatchResult(i, apply_to, op, _patch_name(p["patch"].get("value")))
        results.append(res)
        if not selected or not _proxy_matches(p["match"], sidecar):
            continue
        m = p["match"]
        if apply_to == "CLUSTER":
            if op != "ADD" or "cluster" in m:
                raise Unsupported(f"CLUSTER {op} with a cluster match")
            # istiod: a CLUSTER ADD without a context goes to sidecar outbound (and gateways).
            if _context_matches(m, SIDECAR_OUTBOUND):
                sidecar.clusters.append(copy.deepcopy(p["patch"]["value"]))
                res.applied += 1
        elif apply_to == "LISTENER":
            if op != "ADD" or "listener" in m:
                raise Unsupported(f"LISTENER {op} with a listener match")
            if _context_matches(m, SIDECAR_OUTBOUND):
                sidecar.listeners.append(copy.deepcopy(p["patch"]["value"]))
                res.applied += 1
        elif apply_to == "HTTP_FILTER":
            if _context_matches(m, SIDECAR_OUTBOUND):  # the only listener here is outbound
                _apply_http_filter(sidecar.listeners, p, res)
        elif apply_to == "HTTP_ROUTE":
            if _context_matches(m, SIDECAR_OUTBOUND):  # route configuration "15051" is outbound
                _apply_http_route(sidecar.routes, p, res)
        elif apply_to == "EXTENSION_CONFIG":
            if op != "ADD":
                raise Unsupported(f"EXTENSION_CONFIG {op} (istiod only ADDs)")
            ext_adds.append((p, res))
        else:
            raise Unsupported(f"applyTo {apply_to}")
    # istiod serves an added extension configuration only to a proxy that asks for it by
    # name (from a config_discovery in its listeners).
    wanted = _requested_extension_configs(sidecar.listeners)
    for p, res in ext_adds:
        value = p["patch"]["value"]
        if value["name"] in wanted:
            sidecar.extension_configs[value["name"]] = copy.deepcopy(value)
            res.applied += 1
    return results


# --- 3. One bootstrap that runs locally -----------------------------------------------------


@dataclass
class Rendered:
    bootstrap: dict
    ecds: dict  # the DiscoveryResponse for the ECDS file
    ecds_path: Path  # where the bootstrap expects it
    substitutions: list[str]

    def write(self, directory: Path, name: str = "istio-sidecar") -> tuple[Path, Path]:
        """Writes the bootstrap as `<directory>/<name>.yaml`, and the ECDS file where the
        bootstrap looks for it."""
        cfg = directory / f"{name}.yaml"
        self.ecds_path.write_text(yaml.safe_dump(self.ecds, sort_keys=False))
        cfg.write_text(yaml.safe_dump(self.bootstrap, sort_keys=False))
        return cfg, self.ecds_path


def ecds_response(extension_configs: dict[str, dict], version: str = "1") -> dict:
    return {
        "version_info": version,
        "resources": [{"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", **ec} for ec in extension_configs.values()],
    }


def localize(
    sidecar: Sidecar,
    *,
    wasm: Path,
    listener_port: int,
    admin_port: int,
    shim_port: int,
    ecds_path: Path,
) -> Rendered:
    """A static bootstrap equivalent to the sidecar's xDS, bound to 127.0.0.1 (see the module
    docstring for each change)."""
    sc = copy.deepcopy(sidecar)
    subs: list[str] = []
    boot = sc.bootstrap
    boot["admin"]["address"]["socket_address"]["port_value"] = admin_port
    boot.pop("dynamic_resources")
    subs.append("LDS/CDS resources as static_resources, RDS inline (no istiod)")

    for lis in sc.listeners:
        if lis["name"] == OUTBOUND_LISTENER:
            lis["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}}
            lis.pop("bind_to_port")
            subs.append(f"{OUTBOUND_LISTENER} bound to 127.0.0.1:{listener_port} (no iptables)")
        for fc in lis.get("filter_chains", []):
            for flt in fc.get("filters", []):
                if flt.get("name") != HCM:
                    continue
                hcm = flt["typed_config"]
                if "rds" in hcm:
                    hcm["route_config"] = copy.deepcopy(sc.routes[hcm.pop("rds")["route_config_name"]])
                for hf in hcm.get("http_filters", []):
                    cd = hf.get("config_discovery")
                    if cd:
                        assert "ads" in cd["config_source"], "config_discovery is expected over ADS, as istiod serves it"
                        cd["config_source"] = {"path_config_source": {"path": str(ecds_path)}, "resource_api_version": "V3"}
                        subs.append(f"ECDS {hf['name']} from {ecds_path.name} instead of ADS")

    for c in sc.clusters:
        if c["name"] == ISTIO_SHIM_CLUSTER:
            c.pop("eds_cluster_config")
            c["type"] = "STATIC"
            c["load_assignment"] = {
                "cluster_name": c["name"],
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": shim_port}}}}]}],
            }
            subs.append(f"{ISTIO_SHIM_CLUSTER}: EDS -> 127.0.0.1:{shim_port}")
        for ep in c.get("load_assignment", {}).get("endpoints", []):
            for lb in ep["lb_endpoints"]:
                sock = lb["endpoint"]["address"].get("socket_address")
                if sock and sock["address"] == SHIM_HOST:
                    assert sock["port_value"] == SHIM_PORT
                    sock.update(address="127.0.0.1", port_value=shim_port)
                    subs.append(f"cluster {c['name']}: {SHIM_AUTHORITY} -> 127.0.0.1:{shim_port} (no cluster DNS)")

    for name, ec in sc.extension_configs.items():
        code = ec["typed_config"]["config"]["vm_config"]["code"]
        uri = code["remote"]["http_uri"]["uri"]
        assert uri.startswith(("oci://", "https://", "http://")), f"istio-agent cannot fetch {uri}"
        code.clear()
        code["local"] = {"filename": str(wasm)}
        subs.append(f"ECDS {name}: {uri} -> {wasm} (what istio-agent does after the download)")

    boot["static_resources"] = {"listeners": sc.listeners, "clusters": sc.clusters}
    return Rendered(boot, ecds_response(sc.extension_configs), ecds_path, subs)


def filter_json_config(sidecar: Sidecar, name: str = "snp-filter") -> dict:
    """The filter's JSON configuration as carried by the ECDS resource."""
    return json.loads(sidecar.extension_configs[name]["typed_config"]["config"]["configuration"]["value"])


def inline_ecds(rendered: Rendered) -> dict:
    """The bootstrap with each ECDS resource written into its HTTP filter instead of fetched.
    `envoy --mode validate` parses only the bootstrap, so this is how the extension
    configuration (the Wasm filter's settings) gets validated too."""
    boot = copy.deepcopy(rendered.bootstrap)
    by_name = {r["name"]: r for r in rendered.ecds["resources"]}
    for lis in boot["static_resources"]["listeners"]:
        for fc in lis.get("filter_chains", []):
            for flt in fc.get("filters", []):
                if flt.get("name") != HCM:
                    continue
                for hf in flt["typed_config"].get("http_filters", []):
                    if hf.pop("config_discovery", None) is not None:
                        hf["typed_config"] = copy.deepcopy(by_name[hf["name"]]["typed_config"])
    return boot


# --- running it -----------------------------------------------------------------------------


class SidecarEnvoy:
    """A real Envoy running a rendered sidecar configuration."""

    def __init__(self, logs: Path, rendered: Rendered, *, listener_port: int, admin_port: int, name: str = "istio-sidecar"):
        self.logs = logs
        self.name = name
        self.port = listener_port
        self.admin_port = admin_port
        self.config_path, self.ecds_path = rendered.write(logs, name)
        self.proc: Proc | None = None

    def start(self, timeout: float = 60.0) -> "SidecarEnvoy":
        args = [tool("envoy"), "-c", self.config_path, "--concurrency", "2", "--disable-hot-restart", "-l", "info", "--component-log-level", "wasm:debug"]
        self.proc = Proc(self.name, args, self.logs).start()
        wait_for_port(self.admin_port, self.proc.proc, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"envoy exited:\n{self.proc.log()[-4000:]}")
            status, body = self.admin("/ready")
            if status == 200 and body.strip() == "LIVE":
                wait_for_port(self.port, self.proc.proc, timeout)
                return self
            time.sleep(0.1)
        raise TimeoutError(f"envoy not ready after {timeout}s:\n{self.proc.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def log(self) -> str:
        return self.proc.log() if self.proc else ""

    def admin(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def stats(self) -> dict[str, int]:
        _, body = self.admin("/stats")
        out: dict[str, int] = {}
        for line in body.splitlines():
            k, _, v = line.partition(": ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
        return out

    def wait_stat(self, name: str, pred, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            v = self.stats().get(name, 0)
            if pred(v) or time.monotonic() > deadline:
                return v
            time.sleep(0.05)

    def publish_ecds(self, rendered: Rendered) -> None:
        """Delivers the extension configuration, as istiod (through istio-agent) would: Envoy
        watches the file, and a rename makes the change atomic."""
        tmp = self.ecds_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(rendered.ecds, sort_keys=False))
        tmp.rename(self.ecds_path)

    def channel(self) -> grpc.Channel:
        """A grpcio channel as the Dubbo app has it: to the shim's Service name (the authority
        selects the virtual host), delivered to the sidecar's listener."""
        return grpc.insecure_channel(f"127.0.0.1:{self.port}", options=[("grpc.default_authority", SHIM_AUTHORITY)])
