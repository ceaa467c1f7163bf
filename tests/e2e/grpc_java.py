"""Runs the grpc-java client (tests/grpc-java, built by scripts/grpc-java.sh): the project's
protos compiled with protoc-gen-grpc-java, one blocking-stub unary call per registration, the
way a Dubbo application registers at startup.

`storm(...)` and `cases(...)` return the client's JSON. A call is OK only if grpc-java itself
accepted it: an OK status without a response message is INTERNAL in grpc-java ("No value
received for unary call"), and for flavour B an OK must carry success=true, "success".
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, tool

SCRIPT = ROOT / "scripts" / "grpc-java.sh"


def jar() -> Path:
    res = subprocess.run([str(SCRIPT), "path"], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        pytest.fail(f"the grpc-java client is not built: {res.stderr.strip()} (scripts/setup.sh builds it)", pytrace=False)
    return Path(res.stdout.strip())


def tls_args(tls: dict | None) -> list[str]:
    """--tls-ca and, for mutual TLS, --tls-cert/--tls-key; --authority for the certificate's name."""
    if not tls:
        return []
    args = ["--tls-ca", str(tls["ca"]), "--authority", tls.get("authority", "localhost")]
    if "cert" in tls:
        args += ["--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])]
    return args


def run(args: list[str], stdin: str | None = None, timeout: float = 240) -> object:
    cmd = [tool("java"), "-jar", str(jar()), *map(str, args)]
    res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"grpc-java client failed ({res.returncode}): {res.stderr[-3000:]}"
    return json.loads(res.stdout)


def storm(target: str, flavour: str, *, calls: int, concurrency: int, namespace: str, app_prefix: str,
          interface_prefix: str, apps: int = 10, interfaces: int = 50, per_call: int = 1,
          channels: int | None = None, authority: str | None = None, tls: dict | None = None) -> dict:
    args = ["storm", "--target", target, "--flavour", flavour, "--calls", calls, "--concurrency", concurrency,
            "--namespace", namespace, "--apps", apps, "--app-prefix", app_prefix, "--interfaces", interfaces,
            "--per-call", per_call, "--interface-prefix", interface_prefix]
    if channels:
        args += ["--channels", channels]
    if authority and not tls:
        args += ["--authority", authority]
    return run(args + tls_args(tls))


def storm_union(*, calls: int, app_prefix: str, interface_prefix: str, apps: int = 10, interfaces: int = 50,
                per_call: int = 1) -> dict[str, set]:
    """What a storm registers, worked out independently of the client: interface -> apps."""
    out: dict[str, set] = {}
    for i in range(calls):
        for j in range(per_call):
            out.setdefault(f"{interface_prefix}{(i * per_call + j) % interfaces}", set()).add(f"{app_prefix}-{i % apps}")
    return out


def assert_storm_ok(result: dict, union: dict[str, set]) -> None:
    """Every call OK (as grpc-java judges it), and the client registered exactly `union`."""
    assert result["codes"] == {"OK": result["calls"]}, result
    assert result["ok"] == result["calls"] and result["bad_responses"] == 0, result
    assert {k: set(v) for k, v in result["sent"].items()} == union


def cases(target: str, items: list[dict], tls: dict | None = None, token_file: Path | None = None) -> list[dict]:
    args = ["cases", "--target", target] + tls_args(tls)
    if token_file:
        args += ["--token-file", token_file]
    return run(args, stdin=json.dumps(items))
