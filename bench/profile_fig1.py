#!/usr/bin/env python3
"""Figure 1's profile by ablation (BENCHMARKS.md): Envoy CPU per call for the figure-1 load
under configurations derived from envoy/envoy.yaml that each remove one part of the filter path.

    bench/profile_fig1.py ROUNDS SECONDS CONCURRENCY CONNECTIONS SNP_LOAD [DESIGNS_JSON]

e.g. `bench/profile_fig1.py 3 2s 1 1 target/release/snp-load`, with a shim serving gRPC on
127.0.0.1:27051 (`snp-shim --grpc-addr 127.0.0.1:27051 --store embedded --data-dir DIR`).
DESIGNS_JSON adds Envoys to compare: {"label": {"wasm": PATH, "envoy_yaml": PATH}}. Envoy is
$SNP_ENVOY or `envoy` on PATH; ports 27000-27030 and 27901-27920 must be free.
"""
import copy, json, os, shutil, subprocess, sys, tempfile, time, yaml, re
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E = os.environ.get("SNP_ENVOY") or shutil.which("envoy")
work = tempfile.mkdtemp(prefix="snp-profile-fig1.")
rounds, secs, conc, conns, load = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
extra = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
TICK = os.sysconf("SC_CLK_TCK")
SHIM = 27051

def base(admin, wasm=f"{root}/target/wasm/snp_filter.wasm", envoy_yaml=f"{root}/envoy/envoy.yaml"):
    cfg = yaml.safe_load(open(envoy_yaml))
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin
    ls = cfg["static_resources"]["listeners"]
    apps = next(l for l in ls if l["name"] == "apps")
    snp = next(f for f in apps["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] if f["name"] == "snp")
    snp["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = wasm
    for c in cfg["static_resources"]["clusters"]:
        if c["name"] == "snp_shim":
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = SHIM
    return cfg, ls, apps

def variant(ls, apps, name, port, mode):
    l = copy.deepcopy(apps)
    l["name"] = name
    l["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    h = l["filter_chains"][0]["filters"][0]["typed_config"]
    h["stat_prefix"] = name
    if mode in ("nofilter", "ackonly"):
        h["http_filters"] = [f for f in h["http_filters"] if f["name"] != "snp"]
    if mode == "ackonly":
        for r in h["route_config"]["virtual_hosts"][0]["routes"]:
            if r["route"].get("cluster") == "snp_shim":
                r["route"]["cluster"] = "snp_ack"
    if mode == "pass":
        snp = next(f for f in h["http_filters"] if f["name"] == "snp")
        c = snp["typed_config"]["config"]
        c["configuration"]["value"] = json.dumps({"shim_cluster": "snp_shim", "paths": [{"path": "/x.Other/method", "flavour": "dubbo"}]})
        c["name"] = c["root_id"] = "snp_pass"
    ls.append(l)

setups = []  # (label, envoy index, port)
envoys = []
cfg, ls, apps = base(27901)
apps["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 27000}
variant(ls, apps, "apps_nofilter", 27001, "nofilter")
variant(ls, apps, "apps_ackonly", 27002, "ackonly")
variant(ls, apps, "apps_pass", 27003, "pass")
envoys.append(cfg)
setups += [("filter answers (shipped)", 0, 27000), ("routed to the shim, no filter", 0, 27001),
           ("no filter, routed to the ack listener", 0, 27002), ("filter entered, passes, to the shim", 0, 27003)]
for i, (label, spec) in enumerate(extra.items()):
    cfg, ls, apps = base(27911 + i, spec.get("wasm", f"{root}/target/wasm/snp_filter.wasm"), spec.get("envoy_yaml", f"{root}/envoy/envoy.yaml"))
    port = 27020 + i
    apps["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    envoys.append(cfg)
    setups.append((label, len(envoys) - 1, port))

procs = []
for i, cfg in enumerate(envoys):
    p = f"{work}/ab-{i}.json"
    json.dump(cfg, open(p, "w"))
    procs.append(subprocess.Popen([E, "-c", p, "--concurrency", "2", "--disable-hot-restart", "-l", "warn", "--base-id", str(100 + i)],
                                  cwd=root, stdout=open(f"{work}/ab-{i}.log", "w"), stderr=subprocess.STDOUT))
time.sleep(6)

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK

res = {s[0]: {"calls": 0, "cpu": 0.0, "p50": []} for s in setups}
for r in range(rounds):
    for label, ei, port in setups:
        pid = procs[ei].pid
        c0 = cpu(pid)
        out = subprocess.run([load, "--target", "envoy", f"127.0.0.1:{port}", "--rpc", "mixed", "--concurrency", str(conc),
                              "--connections", str(conns), "--duration", secs, "--prefix", f"ab{r}{port}"], capture_output=True, text=True).stdout
        c1 = cpu(pid)
        m = re.search(r"registrations \(calls\) OK\s*\|\s*([\d,]+)", out)
        ok = int(m.group(1).replace(",", "")) if m else 0
        err = 0
        em = re.search(r"\|\s*errors\s*\|([^|]*)\|", out)
        if em:
            err = sum(int(x.replace(",", "")) for x in re.findall(r"x([\d,]+)", em.group(1)))
        p50 = re.search(r"latency p50\s*\|\s*([\d.]+ \S+)", out)
        res[label]["calls"] += ok + err
        res[label]["cpu"] += c1 - c0
        res[label]["p50"].append(p50.group(1) if p50 else "?")
        res[label]["last"] = out
for p in procs:
    p.terminate()
print(f"| set-up | calls | Envoy CPU / call | p50 per round |")
print(f"| --- | --- | --- | --- |")
for label, _, _ in setups:
    x = res[label]
    print(f"| {label} | {x['calls']:,} | {1e6 * x['cpu'] / max(x['calls'], 1):.1f} µs | {' / '.join(x['p50'])} |")
json.dump({k: {kk: vv for kk, vv in v.items() if kk != 'last'} for k, v in res.items()}, open(f"{work}/result.json", "w"))
