"""Issue 4, test 7: other gRPC and HTTP traffic through the same listener (the one with the
filter) arrives byte for byte unchanged, both ways, and is not buffered. It does not even enter
the filter: envoy.yaml enables it only on the registration routes."""

from __future__ import annotations

import http.client
import os
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

from conftest import free_port
from envoy_harness import assert_vm_healthy, envoys  # noqa: F401
from shim_harness import shim, shims  # noqa: F401

# Paths next to the registration ones must pass too: only exact registration paths are
# intercepted.
GRPC_PATHS = ["/echo.Echo/Unary", "/dubbo.networking.v1alpha1.ServiceNameMappingService/otherMethod"]


class GrpcEcho:
    """Echoes any unary call; streams echo each message as it arrives. Records what came in."""

    def __init__(self, port: int):
        self.seen: list = []  # (path, request bytes, metadata)
        echo = self

        def unary(method: str, request: bytes, context):
            echo.seen.append((method, request, dict(context.invocation_metadata())))
            context.set_trailing_metadata((("x-echo-trailer", "t-1"),))
            return request[::-1]

        def stream(request_iterator, context):
            for msg in request_iterator:
                yield msg

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):
                if details.method.endswith("/Stream"):
                    return grpc.stream_stream_rpc_method_handler(stream)
                method = details.method
                return grpc.unary_unary_rpc_method_handler(lambda req, ctx: unary(method, req, ctx))

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((Handler(),))
        self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()


class HttpEcho(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list = []
    reply = os.urandom(150_000)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        HttpEcho.seen.append((self.command, self.path, dict(self.headers), body))
        self.send_response(201)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("x-reply", "yes")
        self.send_header("content-length", str(len(HttpEcho.reply)))
        self.end_headers()
        self.wfile.write(HttpEcho.reply)

    def do_GET(self):
        HttpEcho.seen.append((self.command, self.path, dict(self.headers), b""))
        body = b"plain text \x00\x01\xff"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_other_traffic_passes_untouched(envoys, shim):
    grpc_port, http_port = free_port(), free_port()
    gecho = GrpcEcho(grpc_port)
    hserver = ThreadingHTTPServer(("127.0.0.1", http_port), HttpEcho)
    threading.Thread(target=hserver.serve_forever, daemon=True).start()
    try:
        envoy = envoys(shim_port=shim.grpc_port, app_grpc_port=grpc_port, app_http_port=http_port)
        ch = envoy.channel()

        # Unary gRPC, large random payloads (bigger than the filter's 64 KiB body limit),
        # custom metadata both ways.
        for i, path in enumerate(GRPC_PATHS):
            payload = os.urandom(200_000 + i)
            call = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
            resp, c = call.with_call(payload, timeout=10, metadata=(("x-custom", f"v{i}"), ("x-bin-bin", b"\x00\xff")))
            assert resp == payload[::-1]
            assert dict(c.trailing_metadata()).get("x-echo-trailer") == "t-1"
            got_path, got_body, got_md = gecho.seen[-1]
            assert got_path == path and got_body == payload
            assert got_md["x-custom"] == f"v{i}" and got_md["x-bin-bin"] == b"\x00\xff"
            assert "x-snp-ack" not in got_md

        # Streaming gRPC: each message is echoed before the next is sent. A filter that
        # buffered the body would deadlock here.
        outbox: list = []
        cond = threading.Condition()

        def requests():
            for i in range(5):
                msg = os.urandom(1000 + i)
                with cond:
                    outbox.append(msg)
                yield msg
                with cond:
                    assert cond.wait_for(lambda: not outbox, timeout=5), "message not echoed before the next was sent"

        stream = ch.stream_stream("/echo.Echo/Stream", request_serializer=None, response_deserializer=None)
        for reply in stream(requests(), timeout=20):
            with cond:
                assert reply == outbox.pop(0)
                cond.notify_all()

        # HTTP/1.1, binary bodies both ways, headers kept.
        conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
        body = os.urandom(300_000)
        conn.request("POST", "/upload?x=1", body=body, headers={"content-type": "application/x-thing", "x-custom": "kept"})
        r = conn.getresponse()
        assert r.status == 201 and r.getheader("x-reply") == "yes"
        assert r.read() == HttpEcho.reply
        method, path, headers, got = HttpEcho.seen[-1]
        assert (method, path, got) == ("POST", "/upload?x=1", body)
        assert headers["content-type"] == "application/x-thing" and headers["x-custom"] == "kept"
        assert "x-snp-ack" not in {k.lower() for k in headers}
        conn.request("GET", "/page")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"plain text \x00\x01\xff"
        conn.close()

        # None of it entered the filter (enabled only on the registration routes). The counter
        # is defined, and counts: a path in the routes' superset for spellings of the
        # registration path (it has a `%`) enters the filter and passes it untouched.
        stats = envoy.stats()
        assert stats["wasmcustom.snp.requests.passed"] == 0, stats
        odd = "/echo.Echo/Unary%41"
        payload = os.urandom(1000)
        resp = ch.unary_unary(odd, request_serializer=None, response_deserializer=None)(payload, timeout=10)
        assert resp == payload[::-1] and gecho.seen[-1][:2] == (odd, payload)
        assert envoy.stat("snp.requests.passed") == 1

        # The filter counted none of it and sent nothing to the shim.
        stats = envoy.stats()
        assert not any(v for k, v in stats.items() if k.startswith("wasmcustom.snp.registrations."))
        assert not any(v for k, v in stats.items() if k.startswith("wasmcustom.snp.invalid."))
        assert stats.get("cluster.snp_ack.upstream_rq_total", 0) == 0
        assert shim.metric("snp_calls_total") == 0  # no batch, no registration call
        assert shim.manifests() == {}
        assert_vm_healthy(envoy)
    finally:
        gecho.server.stop(None)
        hserver.shutdown()
