"""Runs istiod's own configuration generation (tests/istio-xds, Istio release-1.31 built from Go
modules by scripts/istio-xds.sh) for the Istio tests.

* `report(...)`: istiod generates a Dubbo app's sidecar configuration from
  deploy/istio/envoyfilter.yaml, deploy/namespace.yaml, deploy/service.yaml and the app's and
  shim's Kubernetes objects; every patch is reported by its effect in what istiod served.
* `IstioSidecar`: istiod serves a live Envoy 1.40 over ADS (delta xDS, as a 1.31 sidecar uses),
  through a stand-in for istio-agent: its xDS proxy (with the agent's own Wasm conversion) and
  its SDS server, on the agent's Unix sockets. Envoy runs the bootstrap rendered from Istio's
  own template by istio-agent's pkg/bootstrap.

Istio's proxy-only filters (istio.alpn, istio.metadata_exchange, istio.stats) exist only in
Istio's Envoy build. They are switched off by istiod's own settings, not deleted from its
output: PILOT_ENABLE_ALPN_FILTER=false, PILOT_ENABLE_METADATA_EXCHANGE=false, and a mesh
configuration without a default metrics provider (tests/istio-xds/main.go, istiod.go).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from conftest import ROOT, Proc, filter_wasm, tool, wait_for_port

SCRIPT = ROOT / "scripts" / "istio-xds.sh"
SHIM_AUTHORITY = "snp-shim.snp-system.svc.cluster.local:15051"
ISTIO_SHIM_CLUSTER = "outbound|15051||snp-shim.snp-system.svc.cluster.local"
# istiod gives its clusters an alt_stat_name: the cluster's stats carry this name.
ISTIO_SHIM_STAT = f"cluster.{ISTIO_SHIM_CLUSTER};"


def binary() -> Path:
    res = subprocess.run([str(SCRIPT), "path"], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        pytest.fail(f"istiod's harness is not built: {res.stderr.strip()} (scripts/test.sh builds it)", pytrace=False)
    return Path(res.stdout.strip())


def report(out: Path, envoyfilter: Path | None = None, proxy_version: str | None = None) -> dict:
    args = [str(binary()), "report", "--root", str(ROOT), "--out", str(out), "--wasm", str(filter_wasm())]
    if envoyfilter:
        args += ["--envoyfilter", str(envoyfilter)]
    if proxy_version:
        args += ["--proxy-version", proxy_version]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    (out / "istiod.log").write_text(res.stderr)
    assert res.returncode == 0, f"istiod harness failed: {res.stderr[-4000:]}"
    return json.loads(res.stdout)


def analyze(*files: Path) -> list[dict]:
    """What `istioctl analyze -f` reports for EnvoyFilters (Istio's own analyzer)."""
    res = subprocess.run([str(binary()), "analyze", *map(str, files)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"istio analyzer failed: {res.stderr[-4000:]}"
    return json.loads(res.stdout)


def explain(rep: dict) -> str:
    return "\n".join(f"patch {p['index']} {p['apply_to']} {p['name']}: {p['status']} {p.get('problems') or ''}" for p in rep["patches"])


class _CwdProc(Proc):
    """A Proc started in a working directory (Envoy finds the agent's SDS socket relative to it)."""

    def __init__(self, *a, cwd: Path, **kw):
        super().__init__(*a, **kw)
        self.cwd = cwd

    def start(self) -> "_CwdProc":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        return self


class IstioSidecar:
    """istiod (+ the agent's stand-in) and an Envoy sidecar it configures, for one app pod."""

    def __init__(self, logs: Path, shim_port: int, envoyfilter: Path | None = None, hold_module: bool = False):
        """`hold_module`: the agent holds the filter's ECDS resource until `release_module()`,
        as if it were still downloading the module."""
        # Unix socket paths must stay short (108 bytes): a directory of its own under /tmp.
        self.dir = Path(tempfile.mkdtemp(prefix="snp-istio-"))
        self.logs = logs
        args = [binary(), "serve", "--root", ROOT, "--dir", self.dir, "--shim-port", shim_port, "--wasm", filter_wasm()]
        if envoyfilter:
            args += ["--envoyfilter", envoyfilter]
        if hold_module:
            args += ["--hold-module", "true"]
        self.istiod = Proc("istiod", args, logs)
        self.envoy: Proc | None = None
        self.info: dict = {}

    def start(self, timeout: float = 120.0) -> "IstioSidecar":
        self.istiod.start()
        deadline = time.monotonic() + timeout
        while not self.info:
            for line in self.istiod.log().splitlines():
                if line.startswith("READY "):
                    self.info = json.loads(line[len("READY "):])
            if not self.info:
                assert self.istiod.alive(), f"istiod harness exited:\n{self.istiod.log()[-4000:]}"
                assert time.monotonic() < deadline, "istiod harness not ready"
                time.sleep(0.1)
        args = [tool("envoy"), "-c", self.info["bootstrap"], "--concurrency", "2", "--disable-hot-restart",
                "-l", "info", "--component-log-level", "wasm:debug"]
        self.envoy = _CwdProc("istio-proxy", args, self.logs, cwd=self.dir).start()
        wait_for_port(self.info["admin_port"], self.envoy.proc, timeout)
        while self.admin("/ready")[1].strip() != "LIVE":
            assert self.envoy.alive(), f"envoy exited:\n{self.envoy.log()[-4000:]}"
            assert time.monotonic() < deadline, f"envoy not ready:\n{self.envoy.log()[-4000:]}"
            time.sleep(0.1)
        wait_for_port(self.info["listener_port"], self.envoy.proc, timeout)
        return self

    def stop(self) -> None:
        if self.envoy:
            self.envoy.stop()
        self.istiod.stop()
        (self.logs / "istio-agent.log").write_text((self.dir / "agent.log").read_text() if (self.dir / "agent.log").exists() else "")

    def release_module(self) -> None:
        (self.dir / "module-ready").touch()

    def admin(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.info['admin_port']}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.admin("/stats")[1].splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def wait_stat(self, name: str, pred, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            v = self.stats().get(name)
            if v is not None and pred(v):
                return v
            if time.monotonic() > deadline:
                # Absent by the deadline fails: a renamed stat must not read as 0.
                assert v is not None, f"Envoy has no stat {name}"
                return v
            time.sleep(0.05)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.info['listener_port']}"

    def channel(self) -> grpc.Channel:
        """As the app dials the shim: the Service's name is the authority."""
        return grpc.insecure_channel(self.target, options=[("grpc.default_authority", SHIM_AUTHORITY)])
