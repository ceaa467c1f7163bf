"""One validation, one answer: for every malformed registration call, the filter (in Envoy)
and the shim (called directly) give the same answer: the same HTTP status, the same gRPC
status and the same message. Both run `snp_core::request`.

The table is sent with curl over HTTP/2 (prior knowledge), byte for byte, and with grpcio
where a message can be sent through a real gRPC client. grpc-java's table, of what its
generated code can send (well-formed frames, valid UTF-8), is in test_grpc_java.py
(`test_bad_input_gets_one_answer_from_shim_and_filter`)."""

from __future__ import annotations

from urllib.parse import unquote

import grpc
import pytest

from envoy_harness import REGISTER_A, REGISTER_B, assert_vm_healthy, envoys, raw_call, stat_of  # noqa: F401
from shim_harness import shim, shims, wait_until  # noqa: F401
from test_filter_bad_input import GOOD, frame, pb_string

GRPC = "application/grpc"

# (name, body as sent, content-type, extra headers)
CASES = [
    ("truncated frame", frame(GOOD)[:-4], GRPC, {}),
    ("header only", b"\x00\x00\x00", GRPC, {}),
    ("empty body", b"", GRPC, {}),
    ("trailing garbage (GET)", frame(GOOD) + b"GET / HTTP/1.1\r\n", GRPC, {}),
    ("two messages", frame(GOOD) + frame(GOOD), GRPC, {}),
    ("compressed flag", frame(GOOD, flag=1), GRPC, {}),
    ("invalid frame flag", frame(GOOD, flag=7), GRPC, {}),
    ("grpc-encoding gzip", frame(GOOD), GRPC, {"grpc-encoding": "gzip"}),
    ("content-type application/json", frame(GOOD), "application/json", {}),
    ("content-type text/plain", frame(GOOD), "text/plain", {}),
    ("content-type application/grpc+json", frame(GOOD), "application/grpc+json", {}),
    ("content-type application/octet-stream", frame(GOOD), "application/octet-stream", {}),
    ("not protobuf", frame(b'{"namespace": "default"} \xff\xff'), GRPC, {}),
    ("invalid utf-8", frame(pb_string(1, b"default") + pb_string(2, b"app\xc3\x28") + pb_string(3, b"a.B")), GRPC, {}),
    ("empty application", frame(pb_string(1, b"default") + pb_string(3, b"a.B")), GRPC, {}),
    ("invalid namespace", frame(pb_string(1, b"Not_A_Namespace") + pb_string(2, b"app") + pb_string(3, b"a.B")), GRPC, {}),
    ("no interface", frame(pb_string(1, b"default") + pb_string(2, b"app")), GRPC, {}),
    ("application with a space", frame(pb_string(1, b"default") + pb_string(2, b"a pp") + pb_string(3, b"a.B")), GRPC, {}),
    ("frame announcing 16 MiB", b"\x00\x01\x00\x00\x00" + GOOD, GRPC, {}),
]

# Sent as messages by grpcio (a real client, which reads an answer sent before the whole
# body): everything well framed in CASES, plus 80 KiB of interfaces and a 10 MB message.
BIG = [
    pb_string(1, b"default") + pb_string(2, b"app") + b"".join(pb_string(3, b"org.example.I%05d" % i) for i in range(4000)),
    b"\x0a" + b"\x00" * (10 * 1000 * 1000),
]


def answer(target: str, path: str, body: bytes, ct: str, extra: dict) -> tuple:
    """(HTTP status, grpc-status, message)."""
    r = raw_call(target, path, body, headers={"content-type": ct, **extra}, allow_reset=True)
    h = r["headers"]
    if r["http"] != 200:
        return (r["http"], None, r["body"].decode(errors="replace"))
    # grpc-message is percent-encoded on the wire; Envoy and tonic escape different sets.
    return (200, h.get("grpc-status"), unquote(h.get("grpc-message", "")))


def test_filter_and_shim_answer_every_malformed_call_alike(envoys, shim):
    envoy = envoys(shim_port=shim.grpc_port)
    rows = []
    for name, body, ct, extra in CASES:
        for path in (REGISTER_A, REGISTER_B + "?x=1"):
            via_filter = answer(envoy.target(), path, body, ct, extra)
            via_shim = answer(shim.target, path, body, ct, extra)
            rows.append((name, path[-12:], via_filter, via_shim))
    print("\n" + "\n".join(f"{n:40} {p:12} filter={f} shim={s}" for n, p, f, s in rows))
    for name, path, via_filter, via_shim in rows:
        # Refused, never OK.
        assert via_filter[1] != "0" and via_shim[1] != "0", (name, path, via_filter, via_shim)
        assert via_filter == via_shim, (name, path, via_filter, via_shim)
    assert stat_of(envoy.stats(), "cluster.snp_ack.upstream_rq_total") == 0
    assert shim.union_on_disk() == {}
    assert_vm_healthy(envoy)


def test_grpcio_gets_the_same_status_from_both(protos, envoys, shim):
    """A real gRPC client (grpcio) sees the same status and message from both doors."""
    envoy = envoys(shim_port=shim.grpc_port)
    well_framed = [b for _, b, ct, extra in CASES if ct == GRPC and not extra and b[:1] == b"\x00" and len(b) > 5 and int.from_bytes(b[1:5], "big") == len(b) - 5]
    msgs = [b[5:] for b in well_framed] + BIG
    assert len(msgs) >= 8
    for m in msgs:
        got = []
        for target in (envoy.target(), shim.target):
            with grpc.insecure_channel(target) as ch:
                fn = ch.unary_unary(REGISTER_A, request_serializer=None, response_deserializer=None)
                try:
                    fn(m, timeout=5)
                    got.append((grpc.StatusCode.OK, ""))
                except grpc.RpcError as e:
                    got.append((e.code(), e.details()))
        assert got[0] == got[1], (m[:40], got)
        assert got[0][0] != grpc.StatusCode.OK


def test_http1_registrations_get_a_clear_error(envoys, shim):
    """gRPC needs HTTP/2: over HTTP/1.1 a client cannot read grpc-status (a trailer) and
    would take "200" for success. The filter refuses it (UNIMPLEMENTED, grpc-status in the
    headers, where HTTP/1.1 can read it) with a message saying so, and nothing is stored. (The shim itself speaks HTTP/2 only: an HTTP/1.1 client cannot
    open a call to it at all.)"""
    import subprocess

    envoy = envoys(shim_port=shim.grpc_port)
    body = frame(GOOD)
    for path in (REGISTER_A, REGISTER_B, REGISTER_A + "?x=1"):
        res = subprocess.run(
            ["curl", "-sS", "-i", "--http1.1", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", "-X", "POST",
             "-H", "content-type: application/grpc", "--data-binary", "@-", f"http://{envoy.target()}{path}"],
            input=body, capture_output=True, timeout=20,
        )
        assert res.returncode == 0, res.stderr
        text, _, code = res.stdout.decode(errors="replace").rpartition("\n")
        # Envoy turns the filter's local reply to a gRPC request into a trailers-only gRPC
        # answer: HTTP 200 with grpc-status in the *headers*, which an HTTP/1.1 client reads.
        head = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in text.splitlines()[1:]) if v}
        assert code == "200", (path, code, text)
        assert head.get("grpc-status") == "12", (path, text)
        assert "over HTTP/2" in unquote(head.get("grpc-message", "")), text
    assert stat_of(envoy.stats(), "cluster.snp_ack.upstream_rq_total") == 0
    assert shim.union_on_disk() == {}
    # And the shim refuses HTTP/1.1 at the connection: no answer is a success.
    res = subprocess.run(
        ["curl", "-sS", "--http1.1", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
         "-H", "content-type: application/grpc", "--data-binary", "@-", f"http://{shim.target}{REGISTER_A}"],
        input=body, capture_output=True, timeout=20,
    )
    assert res.stdout.decode() != "200" or res.returncode != 0, res
    assert shim.union_on_disk() == {}
