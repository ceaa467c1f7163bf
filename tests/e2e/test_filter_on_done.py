"""Issue 12: what the filter holds when Envoy stops it, in each of Envoy 1.40's lifecycles.

* A listener/filter update (LDS here; ECDS behaves the same) retires the old plugin: Envoy
  calls `on_done`, the filter sends what it holds at once and reports `done` once the shim
  has acknowledged it, and Envoy keeps the old VM until then. Every held mapping lands.
* A sidecar restart as Istio's pilot-agent does it: `POST /drain_listeners?inboundonly&graceful`
  (sidecars; gateways drain all listeners), wait `terminationDrainDuration` (5 s by default),
  then kill Envoy with SIGKILL. No drain stops the plugin (`on_done` never runs, listeners are
  only closed), and SIGKILL runs nothing. What delivers held mappings is the filter's own
  tick: the debounce windows (at most 1 s by default) end within the drain window and the
  batches are answered before the kill. Windows longer than the drain lose what they hold,
  and the filter warns about them when configured.
* Envoy's own shutdown (`/quitquitquit`, SIGTERM) calls `on_done` and the filter sends its
  batches then, but Envoy 1.40 exits its workers' event loops at once and destroys the VMs
  about 1 ms later without waiting for `proxy_done`: the calls are never written, even on an
  open connection to the shim. `test_envoy_shutdown_does_not_wait_for_the_flush` keeps that
  on record.

The real `snp-shim` (embedded store) receives the batches."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest
import yaml

from envoy_harness import Envoy, _find, _wasm_filter
from shim_harness import shims, wait_until  # noqa: F401

WINDOW_MS = 60_000  # the filter's debounce window: far beyond the test
FILTER = {"first_check_ms": WINDOW_MS, "debounce_after_ms": WINDOW_MS, "debounce_max_ms": WINDOW_MS}


def post(envoy: Envoy, path: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{envoy.admin_port}{path}", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def with_file_lds(envoy: Envoy) -> tuple:
    """Moves the `apps` listener of `envoy`'s bootstrap into an LDS file Envoy watches."""
    cfg = yaml.safe_load(envoy.config_path.read_text())
    listeners = cfg["static_resources"]["listeners"]
    apps = _find(listeners, "apps")
    listeners.remove(apps)
    lds = envoy.logs / "lds.yaml"
    cfg["dynamic_resources"] = {"lds_config": {"path_config_source": {"path": str(lds)}, "resource_api_version": "V3"}}
    envoy.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return apps, lds


def write_lds(path, listener: dict) -> None:
    """Writes the LDS file atomically (Envoy reloads on a move into place)."""
    doc = {"resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)


def register(protos, envoy: Envoy, n: int) -> dict:
    sent = {}
    for i in range(n):
        ch = envoy.channel(own_connection=True)  # spread over both workers
        stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
        iface = f"org.example.Stop{i}"
        stub.registerServiceAppMapping(
            protos.dubbo.ServiceMappingRequest(namespace="default", applicationName=f"app-{i}", interfaceNames=[iface]),
            timeout=10,
        )
        sent[("default", iface)] = {f"app-{i}"}
        ch.close()
    return sent


def start(logs, shim, lds_listener: bool) -> tuple:
    envoy = Envoy(logs, shim_port=shim.grpc_port, concurrency=2, filter_config=FILTER, extra_args=["--drain-time-s", "1"])
    apps = lds = None
    if lds_listener:
        apps, lds = with_file_lds(envoy)
        write_lds(lds, apps)
    envoy.start()
    return envoy, apps, lds


def test_a_retired_filter_flushes_held_mappings_to_the_shim(protos, logs, shims):
    shim = shims()
    envoy, apps, lds = start(logs, shim, lds_listener=True)
    try:
        sent = register(protos, envoy, 4)
        time.sleep(0.5)
        assert envoy.stat("snp.pending_keys") == 4
        assert shim.push_calls() == 0, "held by the debounce window"
        # A new filter configuration replaces the listener; the old one drains and its
        # plugin is stopped.
        t0 = time.monotonic()
        wasm = _wasm_filter(apps)
        conf = json.loads(wasm["configuration"]["value"])
        conf["source"] = "after-update"
        wasm["configuration"]["value"] = json.dumps(conf)
        write_lds(lds, apps)
        landed = wait_until(lambda: shim.union_on_disk() == sent, timeout=30)
        took = time.monotonic() - t0
        print(f"mappings in the store {took:.2f}s after the update; PushMappings calls: {shim.push_calls()}")
        assert landed, (shim.union_on_disk(), envoy.log()[-3000:])
        assert "stopping: flushing pending mappings to the shim first" in envoy.log()
        assert envoy.alive()
    finally:
        envoy.stop()


def test_envoy_shutdown_does_not_wait_for_the_flush(protos, logs, shims):
    shim = shims()
    envoy, _, _ = start(logs, shim, lds_listener=False)
    try:
        register(protos, envoy, 2)
        time.sleep(0.5)
        assert post(envoy, "/quitquitquit") == 200
        assert wait_until(lambda: not envoy.alive(), timeout=30)
        log = envoy.log()
        # on_done runs and the filter sends its batch at once...
        assert "stopping: flushing pending mappings to the shim first" in log
        assert "sent batch" in log
        # ...but Envoy destroys the VM without waiting for `proxy_done`, so whether the
        # call got through is a race (with Envoy 1.40 it is cancelled). Reported, not assumed.
        time.sleep(1.0)
        print(f"after Envoy's shutdown the shim holds {shim.union_on_disk()}")
    finally:
        envoy.stop()


# A sidecar's drain, scaled down: pilot-agent runs Envoy with `--drain-strategy immediate`
# and waits terminationDrainDuration (5 s) before it kills Envoy.
DRAIN_S = 3
# Windows that hold each registration visibly (1.5 s) but end within the drain.
WITHIN_DRAIN = {"first_check_ms": 1500, "debounce_after_ms": 1500, "debounce_max_ms": 1500}


def sidecar_envoy(logs, shim, filter_config: dict) -> Envoy:
    args = ["--drain-time-s", str(DRAIN_S), "--drain-strategy", "immediate"]
    return Envoy(logs, shim_port=shim.grpc_port, concurrency=2, filter_config=filter_config, extra_args=args).start()


def restart_like_a_sidecar(envoy: Envoy, drain: str, sig: int) -> float:
    """pilot-agent's termination: drain, wait the drain duration, then stop Envoy with `sig`.
    Returns when the drain began (monotonic)."""
    t0 = time.monotonic()
    assert post(envoy, f"/drain_listeners?{drain}") == 200
    time.sleep(DRAIN_S + 0.5)
    envoy.proc.proc.send_signal(sig)
    assert wait_until(lambda: not envoy.alive(), timeout=30)
    return t0


@pytest.mark.parametrize(
    "drain,sig",
    [("inboundonly&graceful", signal.SIGKILL), ("graceful", signal.SIGKILL), ("graceful", signal.SIGTERM)],
    ids=["sidecar-inboundonly-sigkill", "gateway-all-sigkill", "all-sigterm"],
)
def test_a_sidecar_restart_delivers_held_mappings_during_the_drain(protos, logs, shims, drain, sig):
    shim = shims()
    envoy = sidecar_envoy(logs, shim, WITHIN_DRAIN)
    try:
        sent = register(protos, envoy, 4)
        assert envoy.wait_stat("snp.pending_keys", lambda v: v == 4, timeout=1.0) == 4, "held by the window"
        assert shim.push_calls() == 0
        restart_like_a_sidecar(envoy, drain, sig)
        log = envoy.log()
        print(f"{drain} + {signal.Signals(sig).name}: the shim stores {shim.union_on_disk()}")
        # Stored before Envoy was stopped, and not by on_done: no drain stops the plugin,
        # the filter's own tick sent the batches within the drain window.
        assert shim.union_on_disk() == sent, log[-3000:]
        assert shim.push_calls("ok") >= 1
        assert "stopping: flushing pending mappings" not in log
        assert "mappings still held then are lost" not in log, "these windows fit in a drain"
    finally:
        envoy.stop()


def test_windows_longer_than_the_drain_lose_what_they_hold_and_the_filter_warns(protos, logs, shims):
    shim = shims()
    envoy = sidecar_envoy(logs, shim, FILTER)
    try:
        # The filter says so when it is configured...
        assert "mappings still held then are lost" in envoy.log()
        register(protos, envoy, 2)
        assert envoy.wait_stat("snp.pending_keys", lambda v: v == 2, timeout=2.0) == 2
        restart_like_a_sidecar(envoy, "inboundonly&graceful", signal.SIGKILL)
        # ...and a drain does not stop the plugin: nothing was sent, SIGKILL ran nothing.
        assert "stopping: flushing pending mappings" not in envoy.log()
        assert shim.push_calls() == 0
        assert shim.union_on_disk() == {}
    finally:
        envoy.stop()
