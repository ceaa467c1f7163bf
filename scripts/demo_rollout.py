"""The demo's simulated rollout (scripts/demo.sh runs it): replicas of a Dubbo provider start with
random jitter, and each registers every interface it exports with one unary gRPC call, as
grpc-java Dubbo does. The calls go to Envoy running the snp filter. The client is grpcio, a
client this project did not write.

While the rollout runs, the script watches the shim's embedded store (one YAML manifest per
ServiceNameMapping) until every mapping is on disk. It then prints a short table from the
calls it made, Envoy's /stats and the shim's /metrics. The exit status is non-zero if a call
failed or a mapping is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import random
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "crates" / "snp-proto" / "proto"
INTERFACES = [
    "org.apache.dubbo.demo.GreetingService",
    "org.apache.dubbo.demo.OrderService",
    "org.apache.dubbo.demo.PaymentService",
    "org.apache.dubbo.demo.InventoryService",
    "org.apache.dubbo.demo.ShippingService",
    "org.apache.dubbo.demo.UserService",
    "org.apache.dubbo.demo.CartService",
    "org.apache.dubbo.demo.PricingService",
    "org.apache.dubbo.demo.ReviewService",
    "org.apache.dubbo.demo.SearchService",
]


def interface_names(n: int) -> list[str]:
    return INTERFACES[:n] if n <= len(INTERFACES) else [f"org.apache.dubbo.demo.Service{i:03d}" for i in range(n)]


def say(msg: str) -> None:
    tag = "\033[1;36m[demo]\033[0m" if sys.stdout.isatty() else "[demo]"
    print(f"{tag} {msg}", flush=True)


def load_protos():
    """Python modules generated from the project's .proto files (grpcio-tools' protoc)."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="snp-demo-protos-")
    files = [str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto")]
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        sys.exit("protoc failed on the project's .proto files")
    sys.path.insert(0, out)
    return (
        importlib.import_module("dubbo.networking.v1alpha1.snp_pb2"),
        importlib.import_module("dubbo.networking.v1alpha1.snp_pb2_grpc"),
    )


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def envoy_stats(admin: str) -> dict[str, int]:
    out = {}
    for line in http_get(f"http://{admin}/stats").splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def shim_metric(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
    return total


def mappings_on_disk(data_dir: Path) -> dict[tuple[str, str], set[str]]:
    out = {}
    for f in data_dir.glob("*/*.yaml"):
        try:
            obj = yaml.safe_load(f.read_text())
            out[(obj["metadata"]["namespace"], obj["spec"]["interfaceName"])] = set(obj["spec"].get("applicationNames") or [])
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue  # being written
    return out


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


async def rollout(args, pb, pb_grpc) -> tuple[int, list[float], list[str], float, float]:
    rng = random.Random(args.seed)
    interfaces = interface_names(args.interfaces)
    total = args.replicas * len(interfaces)
    starts = sorted(rng.uniform(0, args.spread) for _ in range(args.replicas))
    latencies: list[float] = []
    errors: list[str] = []
    answered = 0
    next_report = 0.1
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def replica(i: int, start: float) -> None:
        nonlocal answered, next_report
        await asyncio.sleep(max(0.0, t0 + start - loop.time()))
        # Each replica is its own pod: its own connection.
        async with grpc.aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = pb_grpc.ServiceNameMappingServiceStub(ch)
            for iface in interfaces:
                req = pb.ServiceMappingRequest(namespace=args.namespace, applicationName=args.app, interfaceNames=[iface])
                t = loop.time()
                try:
                    await stub.registerServiceAppMapping(req, timeout=10)
                    latencies.append(loop.time() - t)
                except grpc.aio.AioRpcError as e:
                    errors.append(f"replica {i} {iface}: {e.code().name} {e.details()}")
                answered += 1
                while answered >= next_report * total and next_report <= 1.0:
                    say(f"{answered:5d}/{total} registrations answered  ({next_report:4.0%})  t={loop.time() - t0:5.2f}s  replicas started: {sum(1 for s in starts if s <= loop.time() - t0)}/{args.replicas}")
                    next_report = round(next_report + 0.1, 1)

    want = {(args.namespace, iface) for iface in interfaces}
    on_disk_at: float | None = None

    async def watch_disk() -> None:
        nonlocal on_disk_at
        deadline = t0 + args.spread + args.timeout
        while loop.time() < deadline:
            got = mappings_on_disk(args.data_dir)
            if all(args.app in got.get(k, set()) for k in want):
                on_disk_at = loop.time() - t0
                return
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_disk())
    await asyncio.gather(*(replica(i, s) for i, s in enumerate(starts)))
    done_at = loop.time() - t0
    await watcher
    first = starts[0]
    return total, latencies, errors, done_at - first, (on_disk_at - first) if on_disk_at is not None else -1.0


def wait_settled(args) -> tuple[dict[str, int], str]:
    """Waits until the filter has nothing pending or in flight and the shim nothing pending, so
    that the counts in the table are final."""
    deadline = time.monotonic() + args.timeout
    while True:
        stats = envoy_stats(args.envoy_admin)
        metrics = http_get(f"http://{args.shim_http}/metrics")
        settled = (
            stats.get("wasmcustom.snp.pending_keys", 0) == 0
            and stats.get("wasmcustom.snp.batches.sent", 0) == stats.get("wasmcustom.snp.batches.acked", 0) + stats.get("wasmcustom.snp.batches.failed", 0)
            and shim_metric(metrics, "snp_pending_keys") == 0
            and shim_metric(metrics, "snp_batches_in_flight") == 0
        )
        if settled or time.monotonic() > deadline:
            return stats, metrics
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="Envoy's apps listener, host:port")
    ap.add_argument("--envoy-admin", required=True, help="Envoy's admin address, host:port")
    ap.add_argument("--shim-http", required=True, help="the shim's HTTP address (/metrics), host:port")
    ap.add_argument("--data-dir", required=True, type=Path, help="the shim's embedded store")
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--interfaces", type=int, default=10)
    ap.add_argument("--spread", type=float, default=3.0, help="replicas start uniformly over this many seconds")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--app", default="demo-provider")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the mappings after the rollout")
    args = ap.parse_args()

    pb, pb_grpc = load_protos()
    say(f"rollout: {args.replicas} replicas of {args.app!r} x {args.interfaces} interfaces, starting over {args.spread:g} s")
    total, latencies, errors, rollout_s, on_disk_s = asyncio.run(rollout(args, pb, pb_grpc))
    stats, metrics = wait_settled(args)

    ok = len(latencies)
    writes_create = shim_metric(metrics, "snp_store_writes_total", verb="create", result="ok")
    writes_update = shim_metric(metrics, "snp_store_writes_total", verb="update", result="ok")
    write_errors = shim_metric(metrics, "snp_store_writes_total", result="error")
    files = sorted(args.data_dir.glob("*/*.yaml"))
    lat = f"{percentile(latencies, 50) * 1000:.1f} ms / {percentile(latencies, 99) * 1000:.1f} ms" if latencies else "n/a"
    rows = [
        ("registrations in (answered OK)", f"{ok} / {total}", f"{args.replicas} replicas x {args.interfaces} interfaces, over {rollout_s:.2f} s"),
        ("call latency p50 / p99", lat, "answered inside Envoy"),
        ("batches, filter -> shim", f"{stats.get('wasmcustom.snp.batches.acked', 0)}", f"Envoy: {stats.get('wasmcustom.snp.batches.sent', 0)} sent; shim: {shim_metric(metrics, 'snp_calls_total', api='push', result='ok'):.0f} PushMappings OK"),
        ("batches, shim -> store", f"{shim_metric(metrics, 'snp_batches_total', result='ok'):.0f}", "after the shim's own debounce"),
        ("store writes", f"{writes_create + writes_update:.0f}", f"{writes_create:.0f} create, {writes_update:.0f} update, {write_errors:.0f} failed; {shim_metric(metrics, 'snp_noop_skips_total'):.0f} no-op skipped"),
        ("every mapping on disk after", f"{on_disk_s:.2f} s" if on_disk_s >= 0 else "NOT REACHED", f"from the first registration; {len(files)} manifests"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"  {name:<{w0}}  {value:>{w1}}   {note}")
    print()
    print(f"  manifests:  {args.data_dir}  (ServiceNameMapping YAML; kubectl apply -R -f loads them into a cluster)")
    print(f"  Kubernetes: {ROOT / 'deploy'}/  (shim DaemonSet, docs/deploy.md)")
    print(f"  Istio:      {ROOT / 'deploy' / 'istio'}/  (EnvoyFilter, docs/istio.md)")
    print()

    failed = False
    if errors:
        failed = True
        say(f"{len(errors)} calls failed, e.g. {errors[0]}")
    missing = [i for i in interface_names(args.interfaces) if args.app not in mappings_on_disk(args.data_dir).get((args.namespace, i), set())]
    if missing or on_disk_s < 0:
        failed = True
        say(f"mappings missing on disk after {args.timeout:g} s: {missing}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
