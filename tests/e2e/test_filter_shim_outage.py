"""Issue 4, test 4: the shim is down for 5 s during a storm. Every call is answered OK
(immediate mode); once the shim is back, every acknowledged mapping is delivered, and none
twice in the store."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import grpc

from envoy_harness import assert_vm_healthy, envoys, receiver  # noqa: F401

CLIENTS = 20
KEYS = 10
STORM_S = 9.0
DOWN_AT_S, DOWN_FOR_S = 2.0, 5.0
WORKERS = 2


def test_every_acknowledged_mapping_survives_a_shim_outage(protos, envoys, receiver):
    envoy = envoys(
        shim_port=receiver.port,
        concurrency=WORKERS,
        # Shorter backoff than the default (1 s, 2 s, 4 s ... 30 s) so the test is quick;
        # the retry path is the same.
        filter_config={"retry_base_ms": 250, "retry_max_ms": 1000, "push_timeout_ms": 1000},
    )
    sent: dict[tuple, set] = defaultdict(set)
    failures: list = []
    calls = [0]
    lock = threading.Lock()
    start = time.monotonic()

    def client(c: int) -> None:
        ch = envoy.channel(own_connection=True)
        stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
        i = 0
        while (elapsed := time.monotonic() - start) < STORM_S:
            # A rollout: every second a new generation of each app registers its interfaces.
            app = f"app-{c}-v{int(elapsed)}"
            iface = f"org.example.Service{i % KEYS}"
            req = protos.dubbo.ServiceMappingRequest(namespace="default", applicationName=app, interfaceNames=[iface])
            try:
                stub.registerServiceAppMapping(req, timeout=10)
                with lock:
                    sent[("default", iface)].add(app)
                    calls[0] += 1
            except grpc.RpcError as e:
                with lock:
                    failures.append(e.code())
            i += 1
            time.sleep(0.05)
        ch.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(DOWN_AT_S)
    receiver.stop()
    down_at = time.monotonic()
    seen_before = len(receiver.snapshot())
    time.sleep(DOWN_FOR_S)
    failed_during_outage = envoy.stat("snp.batches.failed")
    pending_during_outage = envoy.stat("snp.pending_keys")
    seen_during = len(receiver.snapshot())
    receiver.start()
    up_at = time.monotonic()
    for t in threads:
        t.join()

    assert not failures, f"calls failed during the storm: {Counter(failures)}"
    assert failed_during_outage > 0, "no batch failed while the shim was down"
    assert pending_during_outage > 0, "nothing was pending while the shim was down"
    assert seen_during == seen_before, "a batch arrived while the receiver was down"

    # Once back, everything acknowledged to the apps is delivered.
    assert receiver.wait_for(lambda r: r.union() == dict(sent), timeout=30), (
        f"missing: { {k: v - receiver.union().get(k, set()) for k, v in sent.items() if v - receiver.union().get(k, set())} }"
    )
    delivered_at = max(b.at for b in receiver.acked_batches())
    assert not receiver.store_has_duplicates()
    acks = receiver.acks
    dup = Counter(n for n in acks.values())
    print(
        f"{calls[0]} calls, {sum(len(v) for v in sent.values())} mappings, "
        f"{len(receiver.snapshot())} batches ({len(receiver.acked_batches())} acked), "
        f"outage {up_at - down_at:.1f}s, failed batches during it {failed_during_outage}, "
        f"acknowledged deliveries per mapping {dict(dup)}, last delivery {delivered_at - up_at:.1f}s after restart"
    )
    # A mapping is acknowledged once per sender; a second delivery only if a response was
    # lost while the receiver stopped (at-least-once), never more.
    assert max(acks.values()) <= 2, dup
    assert envoy.wait_stat("snp.pending_keys", lambda v: v == 0) == 0
    assert envoy.stat("snp.mappings.acked") == sum(acks.values())
    assert_vm_healthy(envoy)
