"""The filter under func-e (issue 15): `func-e run` (from the Go module proxy, installed by
scripts/setup.sh) starts the wheel's Envoy offline (ENVOY_PATH) with envoy/envoy.yaml's
filter, and one registration through it reaches the shim's store."""

from __future__ import annotations

import grpc

from conftest import Proc, tool, wait_for_port
from envoy_harness import Envoy
from shim_harness import shim, shims, wait_until  # noqa: F401


def test_filter_runs_under_func_e_and_registers(shim, protos, logs):
    shim.wait_ready()
    envoy = Envoy(logs, shim_port=shim.grpc_port, name="envoy-func-e")
    proc = Proc(
        "func-e",
        [tool("func-e"), "run", "-c", envoy.config_path, "--concurrency", "2", "--disable-hot-restart", "-l", "info"],
        logs,
        env={
            "ENVOY_PATH": tool("envoy"),
            # No network: nothing may be looked up or downloaded.
            "ENVOY_VERSIONS_URL": "http://127.0.0.1:9/unreachable.json",
            "FUNC_E_STATE_HOME": str(logs / "func-e-state"),
            "FUNC_E_RUNTIME_DIR": str(logs / "func-e-run"),
            "FUNC_E_DATA_HOME": str(logs / "func-e-data"),
        },
    ).start()
    envoy.proc = proc
    try:
        wait_for_port(envoy.admin_port, proc.proc, 60)
        assert wait_until(envoy.ready, 60), proc.log()[-3000:]
        wait_for_port(envoy.port, proc.proc, 30)
        with envoy.channel() as ch:
            stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
            _, call = stub.registerServiceAppMapping.with_call(
                protos.dubbo.ServiceMappingRequest(
                    namespace="default", applicationName="func-e-provider", interfaceNames=["org.example.FuncE"]
                ),
                timeout=10,
            )
            assert call.code() == grpc.StatusCode.OK
        assert envoy.wait_stat("snp.batches.acked", lambda v: v >= 1, 15) >= 1
        assert wait_until(lambda: shim.union_on_disk().get(("default", "org.example.FuncE")) == {"func-e-provider"}, 15)
        assert "starting:" in proc.log() and "1.40" in envoy.admin("/server_info")[1]
    finally:
        proc.stop()
    # func-e passes the stop on to Envoy: nothing listens any more.
    assert wait_until(lambda: not envoy.ready(), 10)
