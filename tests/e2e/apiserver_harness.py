"""The real Kubernetes API server of the tests (`tests/k8s-apiserver`: kube-apiserver over an
embedded etcd), driven by `scripts/k8s-apiserver.sh`, and spoken to with nothing but Python's
`ssl` and `http.client`, authenticated as the administrator with the client certificate the
server generated (`DIR/certs/admin.{crt,key}`, group `system:masters`).

The shims under test get `ApiServer.kubeconfig`: the shim's service account
(`snp-system/snp-shim`), whose permissions are those of `deploy/rbac.yaml` (the script applies
it), so RBAC is checked for real. Namespaces are real too: create the ones a test registers
into (`ApiServer.create_namespace`).

If the server cannot be built or started, the test fails, with the script's output and the
tail of the server's log: it never skips.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from conftest import ROOT, shim_binary

SCRIPT = ROOT / "scripts" / "k8s-apiserver.sh"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


class ApiServer:
    """One test API server with its state in `dir`."""

    def __init__(self, dir: Path):
        self.dir = dir
        # The shim's service account: what a shim under test is given.
        self.kubeconfig = dir / "shim.kubeconfig"
        # The administrator (group system:masters).
        self.admin_kubeconfig = dir / "kubeconfig"
        self.url = ""
        self._ctx: ssl.SSLContext | None = None

    # --- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 600.0) -> "ApiServer":
        """Builds it if needed (a no-op when the binary is current) and starts it; returns
        once it is ready."""
        try:
            res = subprocess.run([str(SCRIPT), "start", str(self.dir)], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"the test API server did not start within {timeout}s: {e}", pytrace=False)
        if res.returncode != 0:
            pytest.fail(
                f"the test API server did not start (exit {res.returncode}):\n{res.stdout}\n{res.stderr}\n"
                f"--- {self.dir / 'apiserver.log'} (tail) ---\n{self.log()[-4000:]}",
                pytrace=False,
            )
        self.url = res.stdout.strip().splitlines()[-1]
        assert self.url.startswith("https://127.0.0.1:"), res.stdout
        certs = self.dir / "certs"
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs / "ca.crt"))
        ctx.load_cert_chain(str(certs / "admin.crt"), str(certs / "admin.key"))
        self._ctx = ctx
        return self

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop", str(self.dir)], capture_output=True, timeout=60)

    def log(self) -> str:
        try:
            return (self.dir / "apiserver.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- requests ----------------------------------------------------------------------
    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | str]:
        """One HTTPS request; the body is sent and parsed as JSON (text if it isn't JSON)."""
        u = urlparse(self.url)
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=self._ctx, timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"accept": "application/json"}
            if data is not None:
                headers["content-type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            raw = r.read().decode(errors="replace")
            try:
                return r.status, json.loads(raw)
            except ValueError:
                return r.status, raw
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict | str]:
        return self.request("GET", path)

    def create_namespace(self, name: str) -> None:
        """Creates the Namespace `name` (an existing one is fine): the API server refuses
        objects in a namespace that does not exist."""
        status, body = self.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        assert status in (201, 409), f"creating namespace {name}: {status} {body}"

    # --- the CRD -----------------------------------------------------------------------
    def register_crd(self, crd: dict, timeout: float = 30.0) -> None:
        """Creates `crd` (or finds it already there), waits until it is Established, then
        until its custom resources can be listed (a list can answer 404, or 429 once, for a
        moment after Established)."""
        name = crd["metadata"]["name"]
        status, body = self.request("POST", CRDS, crd)
        assert status in (201, 409), f"creating CRD {name}: {status} {body}"
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.get(f"{CRDS}/{name}")
            # A fresh CRD's status can be empty, or have "conditions": null.
            conds = ((body.get("status") or {}).get("conditions") or []) if status == 200 else []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                break
            assert time.monotonic() < deadline, f"CRD {name} not Established after {timeout}s: {status} {body}"
            time.sleep(0.05)
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        version = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
        while True:
            status, body = self.get(f"/apis/{group}/{version}/{plural}")
            if status == 200:
                break
            assert time.monotonic() < deadline, f"{plural}.{group} not served after {timeout}s: {status} {body}"
            time.sleep(0.05)
        # The first write of a new kind takes this server about 2 s (seen with a dry run as
        # with a real create; every later write takes a few ms). Take that hit here, with a
        # dry run that stores nothing, so that the tests time the path, not the warm-up.
        obj = {
            "apiVersion": f"{group}/{version}",
            "kind": crd["spec"]["names"]["kind"],
            "metadata": {"generateName": "warm-up-"},
            "spec": {"interfaceName": "warm.Up", "applicationNames": ["warm-up"]},
        }
        status, body = self.request("POST", f"/apis/{group}/{version}/namespaces/default/{plural}?dryRun=All", obj)
        assert status == 201, f"dry-run create of a {plural}.{group}: {status} {body}"


def shim_crd(*args: str) -> dict:
    """The CRD as `snp-shim crd` prints it (generated from the Rust type)."""
    res = subprocess.run([str(shim_binary()), "crd", *args], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, f"snp-shim crd failed: {res.stderr}"
    return yaml.safe_load(res.stdout)


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory):
    """A started API server with the ServiceNameMapping CRD of `snp-shim crd` registered
    and Established. Stopped when the module's tests are done; a watchdog stops it too if
    the test process dies first."""
    server = ApiServer(tmp_path_factory.mktemp("k8s-apiserver"))
    watchdog = None
    try:
        server.start()
        # The watchdog: if this test process dies before the finalizer runs, it stops the server.
        watchdog = subprocess.Popen(
            ["setsid", "sh", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 0.5; done; '{SCRIPT}' stop '{server.dir}'"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        server.register_crd(shim_crd())
        yield server
    finally:
        server.stop()
        if watchdog is not None:
            watchdog.terminate()
            watchdog.wait(timeout=5)
