"""Issue 4, test 2: 50 concurrent clients send 1,000 registrations over 10 keys through Envoy.
The real shim (`snp-shim`, embedded store) ends up holding the exact union, and it received at
most workers x windows batches, where windows = ceil(storm duration / debounce window) + 1,
from measured timestamps. Batches are counted by the shim itself (`/metrics`, and its log of
each batch with the sender), not by the filter."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import defaultdict
from datetime import datetime

import grpc

from envoy_harness import assert_vm_healthy, envoys  # noqa: F401
from shim_harness import shims, wait_until  # noqa: F401

CLIENTS = 50
TOTAL = 1000
KEYS = 10
APPS = 5
WORKERS = 2
DEBOUNCE_MAX_S = 1.0  # the filter's default debounce_max_ms
PACE_S = 0.12  # mean pause between a client's calls, so the storm spans several windows
# The shim logs every PushMappings batch it takes (source, batch id) at debug level.
SHIM_LOG = "--log=info,snp_shim::grpc::mapping=debug"


def batches_logged(shim) -> list[dict]:
    """PushMappings batches in the shim's log: those it merged and those it found stored already."""
    return [l for l in shim.log_lines() if l.get("message") in ("batch", "batch already in the store") and "source" in l]


def test_a_storm_reaches_the_shim_as_the_exact_union_in_few_batches(protos, envoys, shims):
    # The shim with its defaults (the seed's windows): each PushMappings is acknowledged
    # only once durable on disk, after the shim's own debounce.
    shim = shims(SHIM_LOG)
    envoy = envoys(shim_port=shim.grpc_port, concurrency=WORKERS)
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
    start_wall = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    storm = last_call[0] - start

    assert len(codes) == TOTAL and all(c == grpc.StatusCode.OK for c in codes), set(codes)
    assert len(sent) == KEYS
    want = dict(sent)
    # The exact union, durable on disk (one manifest per key) and served by the shim.
    assert wait_until(lambda: shim.union_on_disk() == want, timeout=15), (shim.union_on_disk(), want)
    # Another worker may still have a batch in flight (of mappings the shim already holds).
    assert envoy.wait_delivered()
    served = shim.get_mappings(protos, "default")
    assert {k: set(v) for k, v in served.items()} == want
    assert all(len(v) == len(set(v)) for v in served.values()), served
    for key, m in shim.manifests().items():
        assert m["spec"]["applicationNames"] == sorted(want[key]), m

    # Batches, as the shim counted them: every PushMappings call it received succeeded.
    assert wait_until(lambda: shim.push_calls("ok") == envoy.stat("snp.batches.acked"), timeout=5)
    received = shim.push_calls()
    windows = math.ceil(storm / DEBOUNCE_MAX_S) + 1
    logged = batches_logged(shim)
    per_worker: dict[str, int] = defaultdict(int)
    for b in logged:
        per_worker[b["source"]] += 1
    print(
        f"storm {storm:.2f}s, windows {windows}, bound {WORKERS * windows}; shim received {received} batches "
        f"(/metrics), per worker {dict(per_worker)}"
    )
    for b in logged:
        at = datetime.fromisoformat(b["timestamp"].replace("Z", "+00:00")).timestamp() - start_wall
        what = f"{b['keys']} keys" if "keys" in b else "already stored"
        print(f"  {b['batch']} +{at:.3f}s {what}")
    assert received == shim.push_calls("ok") > 0
    assert received == len(logged), (received, len(logged))
    assert len(per_worker) <= WORKERS, per_worker
    assert all(n <= windows for n in per_worker.values()), per_worker
    assert received <= WORKERS * windows, (received, WORKERS * windows)
    # The filter's counters agree with what the shim saw.
    assert envoy.stat("snp.batches.sent") == received
    assert envoy.stat("snp.batches.acked") == received
    assert envoy.stat("snp.registrations.ok") == TOTAL
    assert envoy.stat("snp.batches.failed") == 0
    assert shim.alive()
    assert_vm_healthy(envoy)
