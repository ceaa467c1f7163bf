"""One batch per Envoy, not per worker: Envoy 1.40 with 4 workers (one filter VM each) and
registrations spread over many connections, so that several workers answer them. With the
filter's default (`shared_batch` on) every worker adds what it answers to the outbox in
Envoy's shared data and the one worker holding the lease sends it: the real shim
(`snp-shim`, embedded store) receives one `PushMappings` per window, holding every worker's
mappings. With `shared_batch` off, each worker that answered sends its own. Batches are
counted by the shim (`snp_calls_total{api="push"}`), workers by Envoy's own per-worker
listener stats."""

from __future__ import annotations

import re
import threading

import pytest

from envoy_harness import assert_vm_healthy, envoys  # noqa: F401
from shim_harness import shims, wait_until  # noqa: F401

WORKERS = 4
CALLS = 48
WINDOWS = 3
# One window holds a whole burst (the burst takes well under a second here): the windows
# are what is counted, not how fast this machine dials.
FILTER = {"first_check_ms": 1500, "debounce_after_ms": 1500, "debounce_max_ms": 6000, "retry_jitter": 0}


def workers_used(envoy, port: int) -> int:
    """Workers of the apps listener that accepted connections (Envoy's per-worker stats)."""
    pattern = re.compile(rf"^listener\.127\.0\.0\.1_{port}\.worker_(\d+)\.downstream_cx_total$")
    return sum(1 for name, v in envoy.stats().items() if pattern.match(name) and v > 0)


def burst(protos, envoy, window: int) -> dict:
    """CALLS registrations at once, each on its own connection; returns what was sent."""
    sent: dict[tuple, set] = {}
    errors: list = []
    lock = threading.Lock()
    barrier = threading.Barrier(CALLS)

    def client(i: int) -> None:
        ch = envoy.channel(own_connection=True)
        stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
        iface, app = f"org.example.W{window}S{i}", f"app-{i % 6}"
        barrier.wait()
        try:
            stub.registerServiceAppMapping(
                protos.dubbo.ServiceMappingRequest(namespace="default", applicationName=app, interfaceNames=[iface]),
                timeout=10,
            )
            with lock:
                sent[("default", iface)] = {app}
        except Exception as e:  # noqa: BLE001 - reported below
            with lock:
                errors.append(e)
        finally:
            ch.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CALLS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    return sent


@pytest.mark.parametrize("shared", [True, False], ids=["shared-default", "per-worker"])
def test_one_batch_per_window_for_the_whole_envoy(protos, envoys, shims, shared):
    shim = shims()
    config = dict(FILTER) if shared else {**FILTER, "shared_batch": False}
    envoy = envoys(shim_port=shim.grpc_port, concurrency=WORKERS, filter_config=config)
    want: dict[tuple, set] = {}
    per_window = []
    for window in range(WINDOWS):
        before = shim.push_calls()
        sent = burst(protos, envoy, window)
        want.update(sent)
        assert wait_until(lambda: shim.union_on_disk() == want, timeout=30), (shim.union_on_disk(), envoy.log()[-3000:])
        assert envoy.wait_delivered(timeout=15)
        per_window.append(shim.push_calls() - before)
    used = workers_used(envoy, envoy.port)
    stats = envoy.stats()
    print(f"shared={shared}: {used} of {WORKERS} workers took calls; PushMappings per window {per_window}; "
          + ", ".join(f"{k.split('wasmcustom.')[-1]}={v}" for k, v in sorted(stats.items()) if ".snp.shared." in k or k.endswith("snp.batches.sent")))
    assert used >= 2, "the calls must spread over several workers for this test to mean anything"
    assert shim.push_calls("ok") == shim.push_calls()
    if shared:
        assert per_window == [1] * WINDOWS, per_window
        assert envoy.stat("snp.shared.senders") == 1
        assert envoy.stat("snp.shared.handed") == CALLS * WINDOWS
        # The sender merged the other workers' mappings into its own batches.
        assert envoy.stat("snp.shared.taken") > 0
        assert envoy.stat("snp.batches.sent") == WINDOWS
    else:
        assert all(n >= 2 for n in per_window), per_window
        assert envoy.stat("snp.shared.handed") == 0
    assert shim.union_on_disk() == want
    assert_vm_healthy(envoy)
