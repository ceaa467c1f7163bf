"""Issue 12: the filter flushes what it holds when Envoy retires its VM (proxy-wasm
`on_done`). Registrations are answered OK inside Envoy and held for a long debounce window.
The listener carrying the filter comes from a file (LDS); the test replaces it with one whose
filter configuration differs, as a config update or a rollout does. Envoy drains the old
listener (`--drain-time-s 1`) and stops the old plugin: the filter sends what it holds at once
and reports `done` only once the shim has acknowledged it, so every mapping reaches the shim's
store (the real `snp-shim`, embedded store) long before the window would have ended.

Envoy's own shutdown (`/quitquitquit`, SIGTERM) also calls `on_done`, and the filter sends its
batches then, but Envoy 1.40 tears the VM down without waiting for `proxy_done`, so those calls
are usually cancelled: `test_envoy_shutdown_does_not_wait_for_the_flush` shows the attempt."""

from __future__ import annotations

import json
import os
import time
import urllib.request

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
