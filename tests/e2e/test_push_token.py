"""The filter's token for the shim, through a real Envoy and a real shim.

envoy/envoy.yaml passes Envoy's environment variable SNP_SHIM_TOKEN to the filter's VM
(`vm_config.environment_variables.host_env_keys`), and the filter reads it (`auth_token_env`).
The shim requires the token (`--auth-token-file`). With the right token the filter's
`PushMappings` are accepted and the mapping lands; with a wrong one, or none, the shim refuses
every batch (UNAUTHENTICATED) and nothing lands. `/config_dump` of each Envoy names the
variable but never holds the token.
"""

from __future__ import annotations

import secrets

from envoy_harness import assert_vm_healthy, envoys  # noqa: F401
from shim_harness import shims, wait_until  # noqa: F401

FILTER = {"auth_token_env": "SNP_SHIM_TOKEN", "retry_base_ms": 200, "retry_max_ms": 400}


def register(protos, envoy, iface: str) -> None:
    stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(envoy.channel())
    stub.registerServiceAppMapping(
        protos.dubbo.ServiceMappingRequest(namespace="default", applicationName="shop", interfaceNames=[iface]),
        timeout=10,
    )


def test_the_token_from_envoys_environment_authenticates_batches(protos, envoys, shims, tmp_path):
    token = secrets.token_hex(24)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    shim = shims(f"--auth-token-file={token_file}")

    right = envoys(shim_port=shim.grpc_port, filter_config=FILTER, env={"SNP_SHIM_TOKEN": token}, name="right")
    wrong = envoys(shim_port=shim.grpc_port, filter_config=FILTER, env={"SNP_SHIM_TOKEN": secrets.token_hex(24)}, name="wrong")
    missing = envoys(shim_port=shim.grpc_port, filter_config=FILTER, name="missing")

    register(protos, wrong, "org.example.Wrong")
    register(protos, missing, "org.example.Missing")
    # Each refused filter has sent at least one batch (and keeps its key pending, retrying).
    assert wait_until(lambda: shim.push_calls("unauthenticated") >= 2, timeout=15), shim.push_calls()
    register(protos, right, "org.example.Right")
    assert wait_until(lambda: ("default", "org.example.Right") in shim.union_on_disk(), timeout=15)
    assert right.wait_delivered(), right.stats()
    assert shim.push_calls("ok") >= 1

    for refused in (wrong, missing):
        assert refused.stat("snp.pending_keys") == 1, (refused.name, refused.stats())
        assert refused.stat("snp.batches.acked") == 0, (refused.name, refused.stats())
    assert shim.union_on_disk() == {("default", "org.example.Right"): {"shop"}}
    assert "auth_token_env SNP_SHIM_TOKEN is unset or empty in the VM" in missing.log()

    for envoy in (right, wrong, missing):
        assert_vm_healthy(envoy)
        status, dump = envoy.admin("/config_dump")
        assert status == 200
        # The variable's name is there (the filter's configuration and host_env_keys) ...
        assert '"auth_token_env": "SNP_SHIM_TOKEN"' in dump.replace('\\"', '"'), envoy.name
        assert "SNP_SHIM_TOKEN" in dump.split("host_env_keys", 1)[1][:200], envoy.name
        # ... the token never is, nor in Envoy's log.
        assert token not in dump, envoy.name
        assert token not in envoy.log(), envoy.name
