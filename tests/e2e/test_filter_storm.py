"""Issue 4, test 2: 50 concurrent clients send 1,000 registrations over 10 keys. The receiving
shim gets the exact union, in at most workers x windows batches, where
windows = ceil(storm duration / debounce window) + 1, from measured timestamps."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import defaultdict

import grpc

from envoy_harness import assert_vm_healthy, envoys, receiver  # noqa: F401

CLIENTS = 50
TOTAL = 1000
KEYS = 10
APPS = 5
WORKERS = 2
DEBOUNCE_MAX_S = 1.0  # the filter's default debounce_max_ms
PACE_S = 0.12  # mean pause between a client's calls, so the storm spans several windows


def test_a_storm_reaches_the_shim_as_the_exact_union_in_few_batches(protos, envoys, receiver):
    envoy = envoys(shim_port=receiver.port, concurrency=WORKERS)
    per_client = TOTAL // CLIENTS
    sent: dict[tuple, set] = defaultdict(set)
    codes: list = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)
    last_call = [0.0]  # when the last call was answered

    def client(c: int) -> None:
        # Each client is one replica of an app with its own connection (so calls spread
        # over both workers); it registers interfaces one call each, as Dubbo does.
        ch = envoy.channel(own_connection=True)
        stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
        app = f"app-{c % APPS}"
        rng = random.Random(c)
        barrier.wait()
        for i in range(per_client):
            iface = f"org.example.Service{(c + i) % KEYS}"
            req = protos.dubbo.ServiceMappingRequest(namespace="default", applicationName=app, interfaceNames=[iface])
            try:
                _, call = stub.registerServiceAppMapping.with_call(req, timeout=10)
                code = call.code()
            except grpc.RpcError as e:
                code = e.code()
            with lock:
                last_call[0] = max(last_call[0], time.monotonic())
                codes.append(code)
                if code == grpc.StatusCode.OK:
                    sent[("default", iface)].add(app)
            # Independent pauses (uniform, mean PACE_S): replicas of a rollout do not call
            # in lock step.
            time.sleep(rng.uniform(0, 2 * PACE_S))
        ch.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    storm = last_call[0] - start

    assert len(codes) == TOTAL and all(c == grpc.StatusCode.OK for c in codes), set(codes)
    assert len(sent) == KEYS
    assert receiver.wait_for(lambda r: r.union() == dict(sent), timeout=15), (receiver.union(), dict(sent))
    assert envoy.wait_stat("snp.pending_keys", lambda v: v == 0) == 0

    batches = receiver.snapshot()
    windows = math.ceil(storm / DEBOUNCE_MAX_S) + 1
    per_worker: dict[str, int] = defaultdict(int)
    for b in batches:
        per_worker[b.source] += 1
    print(f"storm {storm:.2f}s, windows {windows}, batches {len(batches)}, per worker {dict(per_worker)}")
    for b in batches:
        print(f"  {b.source[-6:]} +{b.at - start:.3f}s {sum(len(a) for _, _, a in b.mappings)} mappings")
    assert len(per_worker) <= WORKERS, per_worker
    assert all(n <= windows for n in per_worker.values()), per_worker
    assert len(batches) <= WORKERS * windows
    # The counters agree with what the shim saw.
    assert envoy.stat("snp.batches.sent") == len(batches)
    assert envoy.stat("snp.batches.acked") == len(batches)
    assert envoy.stat("snp.registrations.ok") == TOTAL
    assert envoy.stat("snp.batches.failed") == 0
    assert_vm_healthy(envoy)
