"""Runs the real `snp-shim` binary, for the shim's and the filter's end-to-end tests.

By default on an embedded store in a data directory of the test's own; with `kubeconfig`
on the Kubernetes store (the test API server, `apiserver_harness.py`). Ports are picked
free once per `Shim`, so `restart()` brings the shim back on the same ports (and the same
data directory): Envoy's `snp_shim` cluster keeps pointing at it. `Shim.metric()` reads
`/metrics` the way Prometheus would; `get_mappings()` asks the shim over gRPC (grpcio).
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from conftest import Proc, free_port, shim_binary, wait_for_port


class Shim:
    """One snp-shim process: embedded store in `data_dir`, or Kubernetes with `kubeconfig`."""

    def __init__(self, logs: Path, data_dir: Path | None, *args: str, name: str = "snp-shim", kubeconfig: Path | None = None):
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.data_dir = data_dir
        if kubeconfig is not None:
            store = ["--store=kubernetes", f"--kubeconfig={kubeconfig}"]
            if data_dir is not None:  # the journal's directory
                store.append(f"--data-dir={data_dir}")
        else:
            assert data_dir is not None, "an embedded store needs a data directory"
            store = ["--store=embedded", f"--data-dir={data_dir}"]
        self.proc = Proc(
            name,
            [
                shim_binary(),
                f"--grpc-addr=127.0.0.1:{self.grpc_port}",
                f"--http-addr=127.0.0.1:{self.http_port}",
                *store,
                "--log-format=json",
                *args,
            ],
            logs,
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> "Shim":
        """Starts the process (again, after `stop`: same ports, same store, log appended)."""
        assert not self.proc.alive(), "the shim is already running"
        old_log = getattr(self.proc, "_log", None)
        if old_log is not None:
            old_log.close()
        self.proc.start()
        wait_for_port(self.grpc_port, self.proc.proc)
        wait_for_port(self.http_port, self.proc.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """SIGTERM (graceful: the shim flushes what it acked, then exits) or SIGKILL."""
        return self.proc.stop(sig)

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def restart(self, sig: int = signal.SIGTERM) -> "Shim":
        self.stop(sig)
        return self.start()

    def alive(self) -> bool:
        return self.proc.alive()

    def wait_ready(self, timeout: float = 30.0) -> "Shim":
        """Waits for `/readyz` 200 (the store reachable and its cache synced)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive(), f"the shim exited:\n{self.proc.log()[-3000:]}"
            if self.http("/readyz")[0] == 200:
                return self
            time.sleep(0.05)
        raise AssertionError(f"the shim was not ready after {timeout}s:\n{self.proc.log()[-3000:]}")

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`; fails if none matches."""
        status, text = self.http("/metrics")
        assert status == 200, text
        total, named, matched = 0.0, 0, 0
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
            if not m or m.group(1) != name:
                continue
            named += 1
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(4))
                matched += 1
        # The shim creates every series a test may read at start-up: an absent one is a
        # renamed metric or label, and must fail the test rather than read as 0.
        assert named, f"the shim has no metric {name}"
        assert matched, f"the shim's {name} has no sample labelled {labels}"
        return total

    def push_calls(self, result: str | None = None) -> int:
        """`PushMappings` calls this process received (`snp_calls_total{api="push"}`),
        all results or one (`ok`, `invalid`, `error`, ...). Counters restart at 0 with the process."""
        labels = {"api": "push", **({"result": result} if result else {})}
        return int(self.metric("snp_calls_total", **labels))

    def manifests(self) -> dict[tuple[str, str], dict]:
        """Every ServiceNameMapping manifest on disk, by (namespace, spec.interfaceName).
        Fails if two manifests hold the same (namespace, interface)."""
        out: dict[tuple[str, str], dict] = {}
        for f in sorted(self.data_dir.glob("*/*.yaml")):
            obj = yaml.safe_load(f.read_text())
            obj["_file"] = f
            key = (obj["metadata"]["namespace"], obj["spec"]["interfaceName"])
            assert key not in out, f"two manifests for {key}: {out[key]['_file']} and {f}"
            out[key] = obj
        return out

    def union_on_disk(self) -> dict[tuple[str, str], set]:
        """(namespace, interface) -> set of apps, from the manifests on disk."""
        return {k: set(m["spec"]["applicationNames"]) for k, m in self.manifests().items()}

    def get_mappings(self, protos, namespace: str, interfaces: list[str] | None = None) -> dict[tuple[str, str], list]:
        """GetMappings over gRPC (grpcio): (namespace, interface) -> application names, as served."""
        with grpc.insecure_channel(self.target) as ch:
            stub = protos.api_grpc.MappingServiceStub(ch)
            resp = stub.GetMappings(
                protos.api.GetMappingsRequest(namespace=namespace, interface_names=interfaces or []), timeout=5
            )
        out: dict[tuple[str, str], list] = {}
        for m in resp.mappings:
            key = (m.namespace, m.interface_name)
            assert key not in out, f"GetMappings returned {key} twice"
            out[key] = list(m.application_names)
        return out

    def log_lines(self) -> list[dict]:
        return [json.loads(l) for l in self.proc.log().splitlines() if l.startswith("{")]


def wait_until(pred, timeout: float = 15.0, interval: float = 0.05) -> bool:
    """Polls `pred` until it is true or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


@pytest.fixture
def shims(logs, tmp_path):
    """Starts shims: `shims(*flags, data_dir=None, kubeconfig=None)`; each gets its own data
    directory unless given one. Stopped at teardown."""
    started: list[Shim] = []

    def make(*args: str, data_dir: Path | None = None, kubeconfig: Path | None = None) -> Shim:
        d = data_dir or tmp_path / f"data{len(started)}"
        s = Shim(logs, d, *args, name=f"snp-shim-{len(started)}", kubeconfig=kubeconfig)
        started.append(s)
        return s.start()

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def shim(shims):
    """One started shim with its defaults (the seed's debounce windows) on an embedded store."""
    return shims()
