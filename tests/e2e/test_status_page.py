"""The shim's status page in a real browser (issue 15).

Debian's Chromium, driven by Playwright (PyPI) with the system browser as its executable,
opens `GET /` of a running `snp-shim` (embedded store) while a storm of registrations
(grpcio) comes in, and checks:

* the page loads with no console error, no page error and no failed request, its live feed
  connects, and the simulator's wasm loads;
* batches appear on the page's timeline while the storm is on (server-sent events);
* once the storm is written, every count the page shows equals `/metrics`, and the store's
  counts equal the manifests on disk and the mappings browser;
* a simulation run in the page (snp-core's Debouncer compiled to wasm) reports exactly what
  the native `snp-sim` binary reports for the same input: same batches, same times, byte
  for byte;
* a screenshot is kept in target/test-artifacts/status-page.png.

A second test runs the shim on the real kube-apiserver (as its service account) with its
journal, registers into a namespace that does not exist and into one that does, and checks
that the page lists the parked key with the store's reason exactly as `GET /parked` does,
that its count equals `snp_parked_keys`, and that the journal's size on the page equals the
`snp_journal_*` metrics (the parked registration stays journaled: acknowledged, not stored).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import grpc
import pytest

from apiserver_harness import apiserver  # noqa: F401  (fixture)
from conftest import TARGET, require_file
from shim_harness import shim, shims, wait_until  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
# As root in a sandbox without a network: no sandbox, no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = TARGET / "test-artifacts"


def snp_sim() -> str:
    return str(require_file(TARGET / "debug" / "snp-sim", "run `cargo build -p snp-sim` (scripts/test.sh does)"))


def native_report(rollout_json: str) -> str:
    out = subprocess.run([snp_sim()], input=rollout_json, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    require_file(__import__("pathlib").Path(CHROMIUM), "install Debian's chromium (scripts/setup.sh does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def storm(protos, target: str, stop: threading.Event, counts: dict) -> None:
    """Registrations from 4 threads: 12 applications x 15 interfaces in 3 namespaces, over
    and over (repeats are absorbed), plus a new application now and then."""

    def worker(n: int) -> None:
        with grpc.insecure_channel(target) as ch:
            stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
            round_ = 0
            while not stop.is_set():
                for app in range(12):
                    ns = f"team-{app % 3}"
                    apps = [f"app-{app}"] + ([f"late-{n}-{round_}"] if round_ % 7 == 3 and app == 0 else [])
                    for name in apps:
                        for i in range(0, 15, 5):
                            req = protos.dubbo.ServiceMappingRequest(
                                namespace=ns,
                                applicationName=name,
                                interfaceNames=[f"org.example.team{app % 3}.Service{j}" for j in range(i, i + 5)],
                            )
                            stub.registerServiceAppMapping(req, timeout=10)
                            counts[n] = counts.get(n, 0) + 1
                round_ += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(30)


def wait_count(page, selector: str, pred, timeout: float) -> int:
    """Waits until the number of elements matching `selector` satisfies `pred` (polled from
    here: the page's CSP forbids the eval that page.wait_for_function needs)."""
    assert wait_until(lambda: pred(page.locator(selector).count()), timeout, 0.1), (
        f"{selector}: {page.locator(selector).count()} elements"
    )
    return page.locator(selector).count()


def field(page, name: str) -> str:
    return page.locator(f'[data-field="{name}"]').first.inner_text().strip()


def test_status_page_live_counts_and_simulator(shim, protos, browser):
    shim.wait_ready()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}") if "/status/events" not in r.url else None)
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(f"http://127.0.0.1:{shim.http_port}/")
    page.wait_for_selector("#live.on", timeout=15000)
    page.wait_for_selector("body[data-sim-ready=true]", timeout=15000)
    assert page.locator("#errors").is_hidden(), page.locator("#errors").inner_text()
    assert field(page, "store.kind") == "embedded"
    assert field(page, "store.cache_synced") == "yes"

    # The storm, with the page open: batches show up live.
    stop, counts = threading.Event(), {}
    t = threading.Thread(target=storm, args=(protos, shim.target, stop, counts))
    t.start()
    try:
        wait_count(page, "#batch-rows tr", lambda n: n >= 2, 20)
        wait_count(page, "#changes li", lambda n: n >= 10, 20)
        time.sleep(2)
    finally:
        stop.set()
        t.join(60)
    assert sum(counts.values()) > 100, counts

    # Everything written: the page's numbers settle on /metrics and the store.
    assert wait_until(lambda: shim.metric("snp_pending_keys") == 0 and shim.metric("snp_batches_in_flight") == 0, 30)
    on_disk = shim.union_on_disk()
    expected = {
        "counters.registrations": shim.metric("snp_registrations_total"),
        "counters.batches_ok": shim.metric("snp_batches_total", result="ok"),
        "counters.batches_error": shim.metric("snp_batches_total", result="error"),
        "counters.creates": shim.metric("snp_store_writes_total", verb="create", result="ok"),
        "counters.updates": shim.metric("snp_store_writes_total", verb="update", result="ok"),
        "counters.conflicts": shim.metric("snp_store_conflicts_total"),
        "counters.noop_skips": shim.metric("snp_noop_skips_total"),
        "pending_keys": shim.metric("snp_pending_keys"),
        "batches_in_flight": shim.metric("snp_batches_in_flight"),
        "store.mappings": len(on_disk),
        "store.applications": sum(len(a) for a in on_disk.values()),
        "store.namespaces": len({ns for ns, _ in on_disk}),
    }
    assert expected["counters.creates"] == len(on_disk) == 45, expected
    assert expected["counters.batches_ok"] >= 2

    def shown():
        return {k: float(field(page, k)) for k in expected}

    settled = wait_until(lambda: shown() == {k: float(v) for k, v in expected.items()}, 10, 0.2)
    assert settled, f"page shows {shown()}, /metrics and the store say {expected}"
    assert field(page, "store.ready") == "yes"

    # The mappings browser holds exactly the store, namespace by namespace.
    for ns in sorted({ns for ns, _ in on_disk}):
        page.locator("#namespaces li", has_text=ns).click()
        want = {i: sorted(a) for (n, i), a in on_disk.items() if n == ns}
        served = {i: sorted(a) for (_, i), a in shim.get_mappings(protos, ns).items()}
        assert served == want
        wait_count(page, "#mapping-rows tr", lambda n, w=len(want): n == w, 5)
        rows = [r.locator("td").all_inner_texts() for r in page.locator("#mapping-rows tr").all()]
        assert {r[0]: sorted(r[1].split(", ")) for r in rows} == want

    # The simulator: the page's wasm run equals the native Debouncer's, exactly.
    scenarios = [
        {},  # the form's defaults: this shim's windows, 200 replicas with sidecars on 10 nodes
        {
            "replicas": "120",
            "interfaces": "15",
            "proxy": "node",
            "workers": "4",
            "nodes": "3",
            "start.pattern": "waves",
            "start.wave_size": "12",
            "start.over_ms": "6000",
            "shim.debounce_after_ms": "250",
            "outage.start_ms": "100",
            "outage.end_ms": "4000",
        },
    ]
    for n, scenario in enumerate(scenarios, start=1):
        for name, value in scenario.items():
            control = page.locator(f'#sim-form [name="{name}"]')
            if name in ("proxy", "start.pattern"):
                control.select_option(value)
            else:
                control.fill(value)
        page.click("#sim-run")
        page.wait_for_selector(f"body[data-sim-runs='{n}']", timeout=60000)
        rollout = page.locator("#sim-input").text_content()
        in_page = page.locator("#sim-raw").text_content()
        native = native_report(rollout)
        browser_report, native_parsed = json.loads(in_page), json.loads(native)
        assert [(b["start_ms"], b["end_ms"], b["keys"]) for b in browser_report["batches"]] == [
            (b["start_ms"], b["end_ms"], b["keys"]) for b in native_parsed["batches"]
        ]
        assert in_page == native, "the page's simulation differs from the native one"
        assert int(page.locator("#sim-batches").inner_text()) == len(native_parsed["batches"]) > 0
        assert native_parsed["all_stored_ms"] is not None
        if scenario.get("outage.start_ms"):
            assert native_parsed["failed_batches"] > 0, "the outage should fail batches"
            assert native_parsed["all_stored_ms"] >= 4000

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not problems, "\n".join(problems)
    page.close()


def test_status_page_shows_parked_keys_and_the_journal(apiserver, shims, protos, browser, tmp_path):
    apiserver.create_namespace("shelf")
    shim = shims(kubeconfig=apiserver.kubeconfig, data_dir=tmp_path / "journal").wait_ready()
    with grpc.insecure_channel(shim.target) as ch:
        stub = protos.dubbo_grpc.ServiceNameMappingServiceStub(ch)
        for ns, iface in [("no-such-namespace", "org.gone.Ghost"), ("shelf", "org.shelf.Books")]:
            req = protos.dubbo.ServiceMappingRequest(namespace=ns, applicationName="books", interfaceNames=[iface])
            stub.registerServiceAppMapping(req, timeout=10)

    def parked() -> list[dict]:
        status, body = shim.http("/parked")
        assert status == 200, body
        return json.loads(body)["parked"]

    assert wait_until(lambda: len(parked()) == 1, 30), parked()
    assert wait_until(lambda: shim.metric("snp_pending_keys") == 0, 30)
    [entry] = parked()
    assert (entry["namespace"], entry["interface"], entry["applications"]) == ("no-such-namespace", "org.gone.Ghost", ["books"])
    assert "not found" in entry["message"], entry

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.goto(f"http://127.0.0.1:{shim.http_port}/")
    page.wait_for_selector("#live.on", timeout=15000)
    assert field(page, "store.kind") == "kubernetes"

    # Parked keys: the page's table is /parked's list, its count snp_parked_keys.
    page.wait_for_selector("#parked:not([hidden])", timeout=10000)
    assert int(page.locator("#parked-total").inner_text()) == shim.metric("snp_parked_keys") == 1
    rows = [r.locator("td").all_inner_texts() for r in page.locator("#parked tbody tr").all()]
    assert rows == [[
        entry["namespace"], entry["interface"], "1", entry["reason"], entry["message"], str(entry["tries"]), entry["next_probe"],
    ]] or (
        # A probe may have happened between the two reads: then the page has the newer record.
        len(rows) == 1 and rows[0][:5] == [entry["namespace"], entry["interface"], "1", entry["reason"], entry["message"]]
    ), rows

    # The journal: the page's numbers are the metrics'.
    assert page.locator("#journal").is_visible()
    journal = {
        "journal.live_entries": "snp_journal_live_entries",
        "journal.segment_bytes": "snp_journal_segment_bytes",
        "journal.records": "snp_journal_records_total",
        "journal.syncs": "snp_journal_syncs_total",
        "journal.rotations": "snp_journal_rotations_total",
    }

    def shown() -> dict[str, float]:
        return {k: float(field(page, k)) for k in journal}

    def metrics() -> dict[str, float]:
        return {k: shim.metric(m) for k, m in journal.items()}

    assert wait_until(lambda: shown() == metrics(), 10, 0.2), f"page shows {shown()}, /metrics says {metrics()}"
    # The stored registration left the journal; the parked one is acknowledged and kept.
    assert shown()["journal.live_entries"] == 1
    assert shown()["journal.records"] >= 1 and shown()["journal.segment_bytes"] > 0
    assert field(page, "journal.dir").startswith(str(tmp_path / "journal")), field(page, "journal.dir")
    assert not problems, "\n".join(problems)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "status-page-parked.png"), full_page=True)
    page.close()
