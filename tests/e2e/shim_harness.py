"""Runs the real `snp-shim` binary on an embedded store, for the shim's end-to-end tests.

Ports are picked free; the data directory is the test's own. `Shim.metric()` reads
`/metrics` the way Prometheus would.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import Proc, free_port, shim_binary, wait_for_port


class Shim:
    """One snp-shim process on an embedded store in `data_dir`."""

    def __init__(self, logs: Path, data_dir: Path, *args: str, name: str = "snp-shim"):
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.data_dir = data_dir
        self.proc = Proc(
            name,
            [
                shim_binary(),
                f"--grpc-addr=127.0.0.1:{self.grpc_port}",
                f"--http-addr=127.0.0.1:{self.http_port}",
                "--store=embedded",
                f"--data-dir={data_dir}",
                "--log-format=json",
                *args,
            ],
            logs,
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> "Shim":
        self.proc.start()
        wait_for_port(self.grpc_port, self.proc.proc)
        wait_for_port(self.http_port, self.proc.proc)
        return self

    def stop(self) -> int:
        return self.proc.stop()

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        status, text = self.http("/metrics")
        assert status == 200, text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
            if not m or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(4))
        return total

    def manifests(self) -> dict[tuple[str, str], dict]:
        """Every ServiceNameMapping manifest on disk, by (namespace, spec.interfaceName)."""
        out = {}
        for f in sorted(self.data_dir.glob("*/*.yaml")):
            obj = yaml.safe_load(f.read_text())
            obj["_file"] = f
            out[(obj["metadata"]["namespace"], obj["spec"]["interfaceName"])] = obj
        return out

    def log_lines(self) -> list[dict]:
        return [json.loads(l) for l in self.proc.log().splitlines() if l.startswith("{")]


@pytest.fixture
def shims(logs, tmp_path):
    """Starts shims: `shims(*flags)`; each gets its own data directory. Stopped at teardown."""
    started: list[Shim] = []

    def make(*args: str, data_dir: Path | None = None) -> Shim:
        d = data_dir or tmp_path / f"data{len(started)}"
        s = Shim(logs, d, *args, name=f"snp-shim-{len(started)}").start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
