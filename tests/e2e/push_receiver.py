"""A small gRPC receiver of the shim's `snp.v1.MappingService/PushMappings`, for filter tests.

It is a real gRPC server (grpcio, stubs generated from the project's .proto files) that the
filter's callouts reach through Envoy's `snp_shim` cluster. It records every batch with the
time it arrived and what it answered, keeps a union "store" like the shim's, and can be
stopped, started again on the same port, made to fail, or made slow.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from concurrent import futures
from dataclasses import dataclass, field

import grpc


@dataclass
class Received:
    at: float  # time.monotonic() of arrival
    done_at: float  # time.monotonic() of the answer
    batch_id: str
    source: str
    mappings: list  # [(namespace, interface, [apps])]
    metadata: dict
    answered: str  # "ok" | "fail" | "slow"


@dataclass
class PushReceiver:
    protos: object
    port: int
    mode: str = "ok"  # "ok": acknowledge; "fail": answer UNAVAILABLE; "slow": sleep `delay` first
    delay: float = 0.0
    batches: list = field(default_factory=list)
    store: dict = field(default_factory=lambda: defaultdict(list))  # (ns, iface) -> [apps], union
    acks: Counter = field(default_factory=Counter)  # (ns, iface, app) -> acknowledged deliveries

    def __post_init__(self):
        self._lock = threading.Lock()
        self._server = None

    # --- control -----------------------------------------------------------------------
    def start(self) -> "PushReceiver":
        api, api_grpc = self.protos.api, self.protos.api_grpc
        receiver = self

        class Servicer(api_grpc.MappingServiceServicer):
            def PushMappings(self, request, context):
                return receiver._push(request, context)

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        api_grpc.add_MappingServiceServicer_to_server(Servicer(), server)
        bound = server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert bound == self.port, f"could not bind 127.0.0.1:{self.port}"
        server.start()
        self._server = server
        self._api = api
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    # --- the service -------------------------------------------------------------------
    def _push(self, request, context):
        mode = self.mode
        arrived = time.monotonic()
        if mode == "slow":
            time.sleep(self.delay)
        mappings = [(m.namespace, m.interface_name, list(m.application_names)) for m in request.mappings]
        rec = Received(
            at=arrived,
            done_at=time.monotonic(),
            batch_id=request.batch_id,
            source=request.source,
            mappings=mappings,
            metadata=dict(context.invocation_metadata()),
            answered="fail" if mode == "fail" else "ok",
        )
        with self._lock:
            self.batches.append(rec)
            if mode != "fail":
                for ns, iface, apps in mappings:
                    stored = self.store[(ns, iface)]
                    for app in apps:
                        self.acks[(ns, iface, app)] += 1
                        if app not in stored:
                            stored.append(app)
        if mode == "fail":
            context.abort(grpc.StatusCode.UNAVAILABLE, "test receiver: failing on purpose")
        n = sum(len(apps) for _, _, apps in mappings)
        return self._api.PushMappingsResponse(batch_id=request.batch_id, unchanged=0, written=n)

    # --- views -------------------------------------------------------------------------
    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.batches)

    def acked_batches(self) -> list[Received]:
        return [b for b in self.snapshot() if b.answered == "ok"]

    def union(self) -> dict:
        """(namespace, interface) -> set of apps, over every acknowledged batch."""
        with self._lock:
            return {k: set(v) for k, v in self.store.items()}

    def store_has_duplicates(self) -> bool:
        with self._lock:
            return any(len(v) != len(set(v)) for v in self.store.values())

    def wait_for(self, predicate, timeout: float = 15.0, interval: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(interval)
        return predicate(self)
