"""Issue 4, test 3: every class of bad input gets its documented gRPC status (the table in
envoy/README.md), Envoy stays up (admin /ready), the next valid call works, and a bad call
changes nothing else (nothing of it reaches the shim)."""

from __future__ import annotations

import grpc
import pytest

from conftest import free_port
from envoy_harness import REGISTER_A, REGISTER_B, assert_vm_healthy, envoys, raw_call  # noqa: F401
from shim_harness import shim, shims, wait_until  # noqa: F401


def frame(msg: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(msg).to_bytes(4, "big") + msg


def pb_string(field: int, value: bytes) -> bytes:
    """A protobuf length-delimited field, by hand (to put invalid UTF-8 in a string)."""
    key = bytes([(field << 3) | 2])
    n, out = len(value), b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            break
    return key + out + value


GOOD = pb_string(1, b"default") + pb_string(2, b"demo-provider") + pb_string(3, b"org.example.Good")

# (name, how it is sent, body or message, expected gRPC status, metric reason)
#   "raw":  the exact HTTP/2 body, sent with curl (for malformed frames)
#   "grpc": a message framed by grpcio (raw bytes, no serializer)
CASES = [
    ("truncated frame", "raw", GOOD and frame(GOOD)[:-4], grpc.StatusCode.INVALID_ARGUMENT, "truncated_frame"),
    ("header only", "raw", b"\x00\x00\x00", grpc.StatusCode.INVALID_ARGUMENT, "truncated_frame"),
    ("non-protobuf body", "grpc", b'{"namespace": "default"} \xff\xff', grpc.StatusCode.INVALID_ARGUMENT, "not_protobuf"),
    ("trailing bytes", "raw", frame(GOOD) + b"\x00\x01", grpc.StatusCode.INVALID_ARGUMENT, "trailing_bytes"),
    ("invalid utf-8", "grpc", pb_string(1, b"default") + pb_string(2, b"app\xc3\x28") + pb_string(3, b"a.B"), grpc.StatusCode.INVALID_ARGUMENT, "invalid_utf8"),
    ("empty application name", "grpc", pb_string(1, b"default") + pb_string(3, b"a.B"), grpc.StatusCode.INVALID_ARGUMENT, "empty_application"),
    ("invalid namespace", "grpc", pb_string(1, b"Not_A_Namespace") + pb_string(2, b"app") + pb_string(3, b"a.B"), grpc.StatusCode.INVALID_ARGUMENT, "invalid_namespace"),
    ("compressed flag", "raw", frame(GOOD, flag=1), grpc.StatusCode.UNIMPLEMENTED, "compressed"),
    ("grpc-encoding gzip", "gzip", GOOD, grpc.StatusCode.UNIMPLEMENTED, "compressed"),
    ("oversized body", "grpc", pb_string(1, b"default") + pb_string(2, b"app") + b"".join(pb_string(3, b"org.example.I%05d" % i) for i in range(4000)), grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large"),
]


def send(envoy, kind: str, payload: bytes, path: str = REGISTER_A):
    """Returns (status code, message)."""
    if kind == "raw":
        r = raw_call(envoy.target(), path, payload)
        assert r["http"] == 200, r
        code = int(r["headers"]["grpc-status"])
        status = next(s for s in grpc.StatusCode if s.value[0] == code)
        return status, r["headers"].get("grpc-message", "")
    ch = envoy.channel()
    call = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
    try:
        kw = {"compression": grpc.Compression.Gzip} if kind == "gzip" else {}
        call(payload, timeout=5, **kw)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()
    finally:
        ch.close()


@pytest.mark.parametrize("flavour_path", [REGISTER_A, REGISTER_B], ids=["flavour-a", "flavour-b"])
def test_each_bad_input_class_gets_its_status_and_changes_nothing(envoys, shim, flavour_path):
    envoy = envoys(shim_port=shim.grpc_port)
    counts: dict[str, int] = {}
    for i, (name, kind, payload, want, reason) in enumerate(CASES):
        code, message = send(envoy, kind, payload, flavour_path)
        assert code == want, f"{name}: got {code} {message!r}"
        assert message, f"{name}: the status carries no message"
        counts[reason] = counts.get(reason, 0) + 1
        assert envoy.stat(f"snp.invalid.{reason}") == counts[reason], f"{name}: snp.invalid.{reason}"
        # Envoy stays up and the next valid call works.
        assert_vm_healthy(envoy)
        ok_msg = pb_string(1, b"default") + pb_string(2, b"after-bad") + pb_string(3, b"org.example.After%d" % i)
        assert send(envoy, "grpc", ok_msg, flavour_path)[0] == grpc.StatusCode.OK, f"valid call after {name}"

    # Nothing of the bad calls reached the shim (the real one): it stored exactly the valid
    # calls' mappings, and refused nothing (every batch it got was valid).
    want = {("default", f"org.example.After{i}"): {"after-bad"} for i in range(len(CASES))}
    assert wait_until(lambda: shim.union_on_disk() == want), shim.union_on_disk()
    assert envoy.wait_delivered()
    assert shim.push_calls() == shim.push_calls("ok") == envoy.stat("snp.batches.acked") > 0
    assert shim.metric("snp_calls_total", result="invalid") == 0
    assert envoy.stat("snp.registrations.ok") == len(CASES)
    assert envoy.stat("snp.registrations.invalid") == sum(1 for c in CASES if c[3] == grpc.StatusCode.INVALID_ARGUMENT)
    assert envoy.stat("snp.registrations.unimplemented") == 2
    assert envoy.stat("snp.registrations.exhausted") == 1
    # Invalid calls never reached the ack route: only the valid ones did.
    assert envoy.stats().get("cluster.snp_ack.upstream_rq_total") == len(CASES)
    assert_vm_healthy(envoy)


def test_non_grpc_requests_to_a_registration_path_get_415(envoys, shim):
    import urllib.request

    envoy = envoys(shim_port=shim.grpc_port)
    req = urllib.request.Request(f"http://{envoy.target()}{REGISTER_A}", data=b"hello", headers={"content-type": "text/plain"})
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("expected HTTP 415")
    except urllib.error.HTTPError as e:
        assert e.code == 415
        assert b"gRPC" in e.read()
    assert envoy.stat("snp.invalid.not_grpc") == 1
    # The refused request went nowhere: not to the shim, by either API.
    assert shim.metric("snp_calls_total") == 0
    assert_vm_healthy(envoy)


def test_a_missing_shim_cluster_fails_batches_but_not_the_vm(envoys, shim):
    # A wrong shim_cluster: every callout is refused by Envoy. The calls are still answered,
    # the batches count as failed and are retried, and the VM stays up.
    # The real `snp_shim` cluster points at a running shim; the filter is told another name.
    envoy = envoys(shim_port=shim.grpc_port, filter_config={"shim_cluster": "no_such_cluster", "retry_base_ms": 100, "retry_max_ms": 200})
    ok_msg = pb_string(1, b"default") + pb_string(2, b"app") + pb_string(3, b"org.example.Lost")
    assert send(envoy, "grpc", ok_msg)[0] == grpc.StatusCode.OK
    assert envoy.wait_stat("snp.batches.failed", lambda v: v >= 2, timeout=5) >= 2
    assert envoy.stat("snp.batches.sent") == 0
    assert envoy.stat("snp.pending_keys") == 1
    assert shim.metric("snp_calls_total") == 0
    assert shim.manifests() == {}
    assert_vm_healthy(envoy)


def test_a_configuration_with_an_unknown_key_is_refused(logs):
    from envoy_harness import Envoy

    envoy = Envoy(logs, shim_port=free_port(), filter_config={"namspace_policy": "node"}, name="envoy-badconf")
    try:
        with pytest.raises((RuntimeError, TimeoutError)):
            envoy.start(timeout=30)
        assert "unknown field `namspace_policy`" in envoy.log()
        assert not envoy.alive(), "Envoy must refuse a configuration it can't honour"
    finally:
        envoy.stop()
