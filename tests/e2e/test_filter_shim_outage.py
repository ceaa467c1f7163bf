"""Issue 4, test 4: the shim (the real `snp-shim`, embedded store) is down for 5 s during a
storm: stopped with SIGTERM (it flushes what it acknowledged, then exits) or killed with
SIGKILL (batches in flight die unacknowledged), then started again on the same port and data
directory. Every call is answered OK (immediate mode); once the shim is back, every
acknowledged mapping is on disk and served by the shim, and none twice: exactly one manifest
per (namespace, interface), holding exactly the apps registered, each once."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter, defaultdict

import grpc
import pytest

from envoy_harness import assert_vm_healthy, envoys  # noqa: F401
from shim_harness import shims, wait_until  # noqa: F401

CLIENTS = 20
KEYS = 10
STORM_S = 9.0
DOWN_AT_S, DOWN_FOR_S = 2.0, 5.0
WORKERS = 2
SHIM_LOG = "--log=info,snp_shim::grpc::mapping=debug"  # one line per PushMappings batch taken


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_every_acknowledged_mapping_survives_a_shim_outage(protos, envoys, shims, sig):
    shim = shims(SHIM_LOG)
    envoy = envoys(
        shim_port=shim.grpc_port,
        concurrency=WORKERS,
        # Shorter backoff than the default (1 s, 2 s, 4 s ... 30 s) so the test is quick;
        # the retry path is the same.
        filter_config={"retry_base_ms": 250, "retry_max_ms": 1000, "push_timeout_ms": 2000},
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
    # Strike while the shim holds a PushMappings call: it acknowledges a batch only once
    # durable, after its own debounce window (200 ms), so a batch is in flight for a while.
    assert wait_until(lambda: shim.metric("snp_durable_waiters") >= 1, timeout=3, interval=0.01), "no batch in flight"
    before = shim.push_calls("ok")
    on_disk_before = shim.union_on_disk()
    acked0, failed0 = envoy.stat("snp.batches.acked"), envoy.stat("snp.batches.failed")
    down_at = time.monotonic()
    rc = shim.stop(sig)
    stopped_in = time.monotonic() - down_at
    assert not shim.alive()
    assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL), f"exit status {rc}"
    if sig == signal.SIGTERM:
        # Graceful: the shim wrote the batch it held and acknowledged it before exiting.
        assert envoy.wait_stat("snp.batches.acked", lambda v: v > acked0, timeout=2) > acked0, "the held batch was not acknowledged"
    else:
        # Killed: the held batch died unacknowledged; the filter counts it failed (and keeps it).
        assert envoy.wait_stat("snp.batches.failed", lambda v: v > failed0, timeout=3) > failed0, "the killed batch did not fail"
    failed_before_down = envoy.stat("snp.batches.failed")
    time.sleep(max(0.0, DOWN_FOR_S - (time.monotonic() - down_at)))
    failed_during_outage = envoy.stat("snp.batches.failed") - failed_before_down
    pending_during_outage = envoy.stat("snp.pending_keys")
    shim.start()  # same ports, same data directory
    up_at = time.monotonic()
    for t in threads:
        t.join()

    assert not failures, f"calls failed during the storm: {Counter(failures)}"
    assert before > 0, "no batch reached the shim before the outage"
    assert on_disk_before, "nothing was on disk before the outage"
    assert failed_during_outage > 0, "no batch failed while the shim was down"
    assert pending_during_outage > 0, "nothing was pending while the shim was down"

    # Once back, everything acknowledged to the apps is delivered: on disk, one manifest
    # per key (manifests() fails on two for one key), exactly the apps sent, each once.
    want = dict(sent)
    assert len(want) == KEYS
    delivered = wait_until(lambda: shim.union_on_disk() == want, timeout=30)
    delivered_after = time.monotonic() - up_at
    on_disk = shim.union_on_disk()
    assert delivered, f"missing: { {k: v - on_disk.get(k, set()) for k, v in want.items() if v - on_disk.get(k, set())} }"
    files = sorted(shim.data_dir.glob("*/*.yaml"))
    assert len(files) == KEYS, [f.name for f in files]
    for key, m in shim.manifests().items():
        apps = m["spec"]["applicationNames"]
        assert len(apps) == len(set(apps)), f"duplicate app names in {m['_file']}: {apps}"
        assert apps == sorted(want[key])
    # What was on disk before the outage is still there (the union only grows).
    assert all(v <= on_disk[k] for k, v in on_disk_before.items())
    # The restarted shim read the store back and serves all of it, not only what came after.
    served = shim.get_mappings(protos, "default")
    assert {k: set(v) for k, v in served.items()} == want
    assert all(len(v) == len(set(v)) for v in served.values()), served
    assert envoy.wait_stat("snp.pending_keys", lambda v: v == 0) == 0
    after = shim.push_calls("ok")
    assert after > 0, "the restarted shim received no batch"

    # Every batch the filter counts as acknowledged was taken by the shim (its log has one
    # line per batch, over both runs), and the shim took no batch the filter did not send.
    logged = [l for l in shim.log_lines() if l.get("message") in ("batch", "batch already in the store") and "source" in l]
    acked, sent_batches = envoy.stat("snp.batches.acked"), envoy.stat("snp.batches.sent")
    assert acked <= len(logged) <= sent_batches, (acked, len(logged), sent_batches)
    print(
        f"{sig.name}: {calls[0]} calls, {sum(len(v) for v in want.values())} mappings; shim stopped in {stopped_in:.2f}s, "
        f"down {up_at - down_at:.1f}s; batches: {before} acked before the outage, {failed_during_outage} failed during it, "
        f"{after} acked by the restarted shim; filter sent {sent_batches}, acked {acked}, shim logged {len(logged)}; "
        f"everything on disk {delivered_after:.1f}s after the restart"
    )
    assert shim.alive()
    assert_vm_healthy(envoy)
