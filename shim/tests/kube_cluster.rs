//! The Kubernetes store with real processes: `snp-shim` binaries (`--store kubernetes`) against the real
//! API server (kube-apiserver + etcd, `support/apiserver.rs`; the shims act as the shim's
//! service account), driven over gRPC.
//!
//! * test 2: 8 shim processes take 2,000 registrations (both flavours) and converge on the
//!   exact union; the 409s they met are read from their `/metrics` and match the 409s the
//!   API server counted;
//! * test 3: a storm through a 20 s outage: nothing is lost, and the retry intervals in the
//!   shim's log grow from `--retry-base` and stop at `--retry-max` (never shorter than the
//!   backoff less its jitter; the exact window is asserted on the paused clock in `api.rs`);
//! * test 4: re-registering known mappings, on a warm shim and on a fresh process, costs
//!   zero write requests by the API server's own `apiserver_request_total`;
//! * test 6: `WatchMappings` on shim A gets shim B's write as a live event (about 0.6 s here).
//!
//! The tests share this binary's API server and test 3 stops it, so they run one at a
//! time ([`SERIAL`]). Figures go to stderr (`--nocapture` shows them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/apiserver.rs"]
mod apiserver;
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    admin, admin_req, api, dubbo, dubbo_req, http_get, mapping, metric_in, retries, show_retries,
    Binary, Retry, Step,
};
use snp_core::{naming, AppSet, MappingKey, Mappings, Rng, SplitMix64};
use snp_proto::api::mapping_event::Kind;
use snp_proto::api::{GetMappingsRequest, MappingEvent, PushMappingsRequest, WatchMappingsRequest};
use tokio::sync::{mpsc, Barrier};

use apiserver::{GROUP, OTHER_GROUP};

/// One test at a time: they share the API server, test 3 stops it, and tests 2 and 4 read
/// its request counters.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A shim process on this binary's API server: `--store kubernetes`, free ports, its log
/// in the server's directory.
fn shim(node: &str, group: &str, extra: &[&str]) -> Binary {
    let server = apiserver::server();
    let mut args = apiserver::shim_flags(group, &journal_dir(&server.dir));
    args.push(format!("--node-name={node}"));
    args.extend(extra.iter().map(|s| s.to_string()));
    Binary::spawn(&server.dir.join(format!("shim-{node}.log")), &args)
}

/// A fresh data directory for each shim process of this test binary.
fn journal_dir(base: &std::path::Path) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    base.join(format!("shim-data-{}-{n}", std::process::id()))
}

async fn scrape(shim: &Binary) -> String {
    let (status, body) = http_get(shim.http, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until no shim has anything pending and their counters (batches, store requests,
/// registrations) stood still over two scrape intervals.
async fn wait_idle(shims: &[&Binary], within: Duration) {
    let deadline = Instant::now() + within;
    let mut previous: Option<Vec<[f64; 4]>> = None;
    let mut stable = 0;
    loop {
        let mut snap = Vec::new();
        for s in shims {
            let t = scrape(s).await;
            snap.push([
                metric_in(&t, "snp_pending_keys", &[]),
                metric_in(&t, "snp_batches_total", &[]),
                metric_in(&t, "snp_store_writes_total", &[]),
                metric_in(&t, "snp_registrations_total", &[]),
            ]);
        }
        let quiet = snap.iter().all(|v| v[0] == 0.0) && previous.as_ref() == Some(&snap);
        stable = if quiet { stable + 1 } else { 0 };
        if stable >= 2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shims not idle within {within:?}: {snap:?}"
        );
        previous = Some(snap);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls the API server until `ns` holds exactly `want`; returns how long that took.
async fn wait_stored(
    client: &kube::Client,
    ns: &str,
    group: &str,
    want: &Mappings,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = apiserver::stored(client, ns, group).await;
        if &got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{ns} does not hold exactly what was registered within {within:?}:\n\
             missing {:?}\nextra {:?}",
            diff(want, &got),
            diff(&got, want),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Mappings of `a` that `b` lacks.
fn diff(a: &Mappings, b: &Mappings) -> Vec<(String, String)> {
    a.iter()
        .flat_map(|(k, apps)| apps.iter().map(move |app| (k, app)))
        .filter(|(k, app)| !b.contains(k, app))
        .map(|(k, app)| (k.to_string(), app.to_owned()))
        .collect()
}

/// Registers each (interface, application) with one call, as a Java provider does,
/// alternating the two flavours.
async fn register_all(shim: &Binary, ns: &str, regs: &[(String, String)]) {
    let mut d = dubbo(shim.grpc).await;
    let mut a = admin(shim.grpc).await;
    for (n, (iface, app)) in regs.iter().enumerate() {
        if n % 2 == 0 {
            d.register_service_app_mapping(dubbo_req(ns, app, &[iface]))
                .await
                .expect("registration acked");
        } else {
            let r = a
                .register_service_app_mapping(admin_req(ns, app, &[iface]))
                .await
                .expect("registration acked")
                .into_inner();
            assert!(r.success, "{r:?}");
        }
    }
}

/// Test 2: 8 `snp-shim` processes (one node name each) take 2,000 registrations over 50
/// interfaces through both gRPC flavours at once: apps every shim registers, apps a few
/// share, apps of one shim only. The API server ends with the exact union, one object per
/// interface. The shims met 409s (from their `/metrics`), each one the API server counted,
/// and resolved them. Short debounce windows make each shim write many small batches, so
/// the writers really collide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_shim_processes_converge_on_the_exact_union() {
    let _serial = SERIAL.lock().await;
    const SHIMS: usize = 8;
    const IFACES: usize = 50;
    let client = apiserver::client().await;
    let ns = apiserver::namespace("cluster-race");
    let iface = |i: usize| format!("com.acme.cluster.Service{i}");

    // Shim s gets 5 apps on every interface: one everybody registers, one of its own, two
    // shared with some other shims, one of its own that varies per interface.
    let mut expected = Mappings::new();
    let mut plans: Vec<Vec<(String, String)>> = Vec::new();
    for s in 0..SHIMS {
        let mut regs = Vec::new();
        for i in 0..IFACES {
            for app in apiserver::race_apps(s, i) {
                expected.insert(MappingKey::new(ns.as_str(), iface(i)), &app);
                regs.push((iface(i), app));
            }
        }
        let mut rng = SplitMix64::new(s as u64 + 7);
        for n in (1..regs.len()).rev() {
            regs.swap(n, (rng.next_u64() % (n as u64 + 1)) as usize);
        }
        plans.push(regs);
    }
    let registrations: usize = plans.iter().map(Vec::len).sum();
    assert_eq!(registrations, 2000);

    let mut shims: Vec<Binary> = (0..SHIMS)
        .map(|s| {
            shim(
                &format!("node-{s}"),
                GROUP,
                &[
                    "--debounce-first-check=5ms",
                    "--debounce-after=5ms",
                    "--debounce-max=20ms",
                    // This test drives the 409 path; the update spread, which lets the
                    // shims take turns instead, has its own test (kube_spread).
                    "--kube-update-spread=0",
                ],
            )
        })
        .collect();
    for s in &mut shims {
        s.wait_ready(Duration::from_secs(30)).await;
    }
    let before = apiserver::request_counts(&client, GROUP).await;

    // Two clients per shim, one per flavour, all released at once.
    let barrier = Arc::new(Barrier::new(SHIMS * 2));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (s, plan) in plans.into_iter().enumerate() {
        let (mut d, mut a) = (dubbo(shims[s].grpc).await, admin(shims[s].grpc).await);
        let (even, odd): (Vec<_>, Vec<_>) =
            plan.into_iter().enumerate().partition(|(n, _)| n % 2 == 0);
        let (ns1, b1) = (ns.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            b1.wait().await;
            for (_, (i, app)) in even {
                d.register_service_app_mapping(dubbo_req(&ns1, &app, &[&i]))
                    .await
                    .expect("dubbo-flavour registration acked");
            }
        }));
        let (ns2, b2) = (ns.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            b2.wait().await;
            for (_, (i, app)) in odd {
                let r = a
                    .register_service_app_mapping(admin_req(&ns2, &app, &[&i]))
                    .await
                    .expect("admin-flavour registration acked")
                    .into_inner();
                assert!(r.success && r.message == "success", "{r:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let acked_in = started.elapsed();

    let landed =
        wait_stored(&client, &ns, GROUP, &expected, Duration::from_secs(60)).await + acked_in;
    let refs: Vec<&Binary> = shims.iter().collect();
    wait_idle(&refs, Duration::from_secs(30)).await;
    let seen = apiserver::request_counts(&client, GROUP)
        .await
        .since(&before);

    // Exactly one object per interface, under the seed's name, holding the exact union.
    let objs = apiserver::objects(&client, &ns, GROUP).await;
    assert_eq!(objs.len(), IFACES, "{objs:?}");
    for (name, i, apps) in &objs {
        assert_eq!(name, &naming::seed_name(i));
        assert_eq!(
            Some(apps),
            expected.get(&MappingKey::new(ns.as_str(), i.as_str()))
        );
    }

    // What the shims saw, from their /metrics.
    let mut per_shim = Vec::new();
    let mut sum: BTreeMap<&str, f64> = BTreeMap::new();
    for s in &shims {
        let t = scrape(s).await;
        let ok_calls = metric_in(&t, "snp_calls_total", &[r#"result="ok""#]);
        assert_eq!(ok_calls, 250.0, "every call of this shim was acked");
        assert_eq!(metric_in(&t, "snp_registrations_total", &[]), 250.0);
        let figures = [
            ("conflicts", metric_in(&t, "snp_store_conflicts_total", &[])),
            (
                "create ok",
                metric_in(
                    &t,
                    "snp_store_writes_total",
                    &[r#"verb="create""#, r#"result="ok""#],
                ),
            ),
            (
                "create error",
                metric_in(
                    &t,
                    "snp_store_writes_total",
                    &[r#"verb="create""#, r#"result="error""#],
                ),
            ),
            (
                "update ok",
                metric_in(
                    &t,
                    "snp_store_writes_total",
                    &[r#"verb="update""#, r#"result="ok""#],
                ),
            ),
            (
                "update error",
                metric_in(
                    &t,
                    "snp_store_writes_total",
                    &[r#"verb="update""#, r#"result="error""#],
                ),
            ),
            (
                "get",
                metric_in(&t, "snp_store_writes_total", &[r#"verb="get""#]),
            ),
            (
                "batches ok",
                metric_in(&t, "snp_batches_total", &[r#"result="ok""#]),
            ),
            (
                "batches failed",
                metric_in(&t, "snp_batches_total", &[r#"result="error""#]),
            ),
            ("no-op keys", metric_in(&t, "snp_noop_skips_total", &[])),
        ];
        for (k, v) in figures {
            *sum.entry(k).or_default() += v;
        }
        per_shim.push(figures[0].1 as u64);
    }
    let conflicts = sum["conflicts"] as u64;
    let shim_figures: Vec<String> = sum.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let report = format!(
        "{registrations} registrations by {SHIMS} shim processes over {IFACES} interfaces \
         (acked in {acked_in:.2?}, exact union stored after {landed:.2?}); \
         API server requests: {seen}; writes {}; shims: {}; 409s per shim {per_shim:?}",
        seen.writes(),
        shim_figures.join(", "),
    );
    eprintln!("test 2 (processes): {report}");
    assert!(conflicts > 0, "8 writers met no 409: {report}");
    assert!(
        seen.get("PUT", "409") > 0,
        "no update met a stale resourceVersion: {report}"
    );
    assert_eq!(
        seen.code("409"),
        conflicts,
        "every 409 the API server sent was met, counted and resolved by a shim: {report}"
    );
    assert_eq!(seen.get("POST", "201"), IFACES as u64, "{report}");
    assert_eq!(sum["create ok"] as u64, IFACES as u64, "{report}");
    assert_eq!(
        seen.verb("PUT"),
        (sum["update ok"] + sum["update error"]) as u64,
        "{report}"
    );
    assert_eq!(seen.verb("PATCH"), 0, "never a merge patch: {report}");
    assert_eq!(sum["batches failed"], 0.0, "no batch gave up: {report}");

    // Every shim's cache converged on the union too (GetMappings answers from it).
    for s in &shims {
        let mut client = api(s.grpc).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got: Mappings = client
                .get_mappings(GetMappingsRequest {
                    namespace: ns.clone(),
                    interface_names: vec![],
                })
                .await
                .unwrap()
                .into_inner()
                .mappings
                .into_iter()
                .map(|m| {
                    (
                        MappingKey::new(m.namespace, m.interface_name),
                        m.application_names.iter().collect::<AppSet>(),
                    )
                })
                .collect();
            if got == expected {
                break;
            }
            assert!(Instant::now() < deadline, "a shim's cache did not converge");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp as tracing-subscriber writes
/// it (`2025-01-02T03:04:05.123456Z`).
fn epoch_seconds(ts: &str) -> f64 {
    let (date, time) = ts
        .strip_suffix('Z')
        .and_then(|t| t.split_once('T'))
        .unwrap_or_else(|| panic!("not an RFC 3339 UTC timestamp: {ts}"));
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64
        + format!("0.{frac}").parse::<f64>().unwrap()
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The pipeline's batch events in the shim's JSON log, with their times.
fn batch_steps(log: &str) -> Vec<(f64, Step)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let step = Step::of(v["message"].as_str()?)?;
            Some((epoch_seconds(v["timestamp"].as_str()?), step))
        })
        .collect()
}

/// Test 3: a registration storm runs while the API server is stopped for 20 s. The shim
/// acks every call, reports not ready, retries its batch with backoff (the intervals in its
/// own log grow from 2 x `--retry-base` to `--retry-max`, shortened by at most the 20 %
/// jitter, and its metrics count each failure and retry), and once the server is back it
/// writes exactly what it acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_through_a_20s_outage_backs_off_as_configured_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    const OUTAGE: Duration = Duration::from_secs(20);
    const BASE: f64 = 0.2;
    const CAP: f64 = 3.2;
    const JITTER: f64 = 0.2;
    let server = apiserver::server();
    let client = apiserver::client().await;
    let ns = apiserver::namespace("cluster-outage");
    let mut s = shim(
        "outage",
        GROUP,
        &[
            "--retry-base=200ms",
            "--retry-max=3200ms",
            "--log=info,snp_shim::pipeline=debug",
        ],
    );
    s.wait_ready(Duration::from_secs(30)).await;
    let iface = |i: usize| format!("com.acme.outage.S{i}");

    let before: Vec<(String, String)> = (0..10).map(|i| (iface(i), "before".to_owned())).collect();
    register_all(&s, &ns, &before).await;
    let mut acked = Mappings::new();
    for (i, app) in &before {
        acked.insert(MappingKey::new(ns.as_str(), i.as_str()), app);
    }
    wait_stored(&client, &ns, GROUP, &acked, Duration::from_secs(10)).await;

    // The storm: 4 clients (2 per flavour) registering without pause, on 40 interfaces
    // (the 10 known ones and 30 new), 5 apps per client.
    let stop = Arc::new(AtomicBool::new(false));
    let mut storm = Vec::new();
    for t in 0..4usize {
        let (stop, ns, addr) = (stop.clone(), ns.clone(), s.grpc);
        storm.push(tokio::spawn(async move {
            let (mut d, mut a) = (dubbo(addr).await, admin(addr).await);
            let mut done = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let i = format!("com.acme.outage.S{}", (n * 7 + t) % 40);
                let app = format!("storm-{t}-{}", n % 5);
                if t % 2 == 0 {
                    d.register_service_app_mapping(dubbo_req(&ns, &app, &[&i]))
                        .await
                        .expect("acked during the storm");
                } else {
                    a.register_service_app_mapping(admin_req(&ns, &app, &[&i]))
                        .await
                        .expect("acked during the storm");
                }
                done.push((i, app));
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let dir = server.dir.clone();
    tokio::task::spawn_blocking(move || apiserver::stop(&dir))
        .await
        .unwrap();
    let (down, down_epoch) = (Instant::now(), now_epoch());
    let (mut stayed_ready, mut saw_outage) = (true, false);
    while down.elapsed() < OUTAGE {
        stayed_ready &= http_get(s.http, "/readyz").await.0 == 200;
        saw_outage |= metric_in(&scrape(&s).await, "snp_store_ready", &[]) == 0.0;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let during = scrape(&s).await;
    // The server cannot answer before this; `start` returns a little after it answers.
    let (up, up_epoch) = (Instant::now(), now_epoch());
    let dir = server.dir.clone();
    tokio::task::spawn_blocking(move || apiserver::start(&dir))
        .await
        .unwrap();
    let ready_after = up.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut calls = 0;
    for t in storm {
        for (i, app) in t.await.unwrap() {
            acked.insert(MappingKey::new(ns.as_str(), i), &app);
            calls += 1;
        }
    }
    wait_stored(&client, &ns, GROUP, &acked, Duration::from_secs(30)).await;
    let landed = up.elapsed();
    wait_idle(&[&s], Duration::from_secs(10)).await;
    s.wait_ready(Duration::from_secs(15)).await;
    assert!(
        stayed_ready,
        "/readyz dropped during the outage: the node-local Service would lose its endpoint"
    );
    assert!(saw_outage, "snp_store_ready never showed the outage");

    // The retry schedule, from the pipeline's own log.
    let log = s.log_text();
    let steps = batch_steps(&log);
    for &(t, step) in &steps {
        assert!(
            step != Step::Written || !(down_epoch..up_epoch).contains(&t),
            "a batch was written while the server was down ({down_epoch}..{up_epoch}): {t}"
        );
    }
    // Retries dispatched after the restart began are kept apart: the shim retries as soon
    // as its store is ready again, so those may be shorter than the backoff.
    let (early, gaps): (Vec<Retry>, Vec<Retry>) = retries(&steps, BASE, CAP)
        .into_iter()
        .partition(|r| r.retried_at > up_epoch);
    let total_failures = steps.iter().filter(|(_, s)| *s == Step::Failed).count();
    let first_write_after = steps
        .iter()
        .find(|(t, s)| *s == Step::Written && *t > up_epoch)
        .map(|(t, _)| t - up_epoch);
    let text = scrape(&s).await;
    let errors = metric_in(&text, "snp_batches_total", &[r#"result="error""#]);
    let retries = metric_in(&text, "snp_batch_retries_total", &[]);
    let shown = show_retries(&gaps, JITTER);
    eprintln!(
        "test 3 (process): {calls} storm registrations (+10 before) acked, {} keys / {} \
         mappings; {total_failures} failed batches during the {OUTAGE:?} outage; retry \
         intervals {}; metrics: batches failed {errors}, retries {retries} (at the end of \
         the outage: failed {}, retries {}, pending keys {}); API server restarted \
         (ready after {ready_after:.2?}); first batch written {:.2}s after the restart \
         began, everything acked stored (checked by polling) {landed:.2?} after",
        acked.len(),
        acked.entries(),
        shown,
        metric_in(&during, "snp_batches_total", &[r#"result="error""#]),
        metric_in(&during, "snp_batch_retries_total", &[]),
        metric_in(&during, "snp_pending_keys", &[]),
        first_write_after.unwrap_or(f64::NAN),
    );

    // 0.4 + 0.8 + 1.6 + 3.2 x n: at least 7 failures fit in 20 s even without jitter.
    assert!(
        total_failures >= 7,
        "{total_failures} failures in {OUTAGE:?}"
    );
    assert_eq!(
        gaps.len() + early.len(),
        total_failures,
        "every failure was retried"
    );
    // Wall-clock gaps on a loaded machine only ever come late, so each is held to its lower
    // bound (a retry never comes before its backoff, less the jitter) and, above, to less
    // than one more doubling past --retry-max (the schedule stops growing at the cap). The
    // exact window, `expected * (1 - JITTER) ..= expected`, is asserted in virtual time by
    // `failed_batches_are_retried_on_the_configured_backoff` in `api.rs`.
    let beyond_cap = 2.0 * CAP * (1.0 - JITTER);
    for r in &early {
        assert!(
            r.gap() < beyond_cap,
            "retry after failure #{} (after the restart) came {:.3}s later, as if the \
             backoff {:.3}s had doubled again",
            r.failures,
            r.gap(),
            r.expected
        );
    }
    for r in &gaps {
        assert!(
            r.gap() >= r.expected * (1.0 - JITTER) - 0.015,
            "retry after failure #{} came before its backoff: {shown}",
            r.failures
        );
        assert!(
            r.gap() < beyond_cap,
            "retry after failure #{} came as if the backoff had doubled again past \
             --retry-max: {shown}",
            r.failures
        );
    }
    // The schedule grew to the cap and stayed there.
    assert!(
        gaps.iter().filter(|r| r.expected >= CAP).count() >= 3,
        "{shown}"
    );
    assert_eq!(
        errors as usize, total_failures,
        "one error per failed batch"
    );
    assert_eq!(retries, errors, "each failed batch was retried once more");
    // The retry due when the server came back found it: within one capped interval (plus a
    // retry if the server still warmed up).
    let first = first_write_after.expect("a batch written after the restart");
    assert!(
        first <= 2.0 * CAP + ready_after.as_secs_f64() + 0.5,
        "first write {first:.2}s after the restart"
    );
}

/// Registrations of test 4: 20 interfaces x 3 apps.
fn noop_plan() -> Vec<(String, String)> {
    let mut regs = Vec::new();
    for i in 0..20 {
        for app in ["a", "b", "c"] {
            regs.push((format!("com.acme.noop.S{i}"), app.to_owned()));
        }
    }
    regs
}

/// Test 4: once mappings are stored, registering them again causes zero write requests,
/// by the API server's own `apiserver_request_total` (POST, PUT, PATCH, APPLY, DELETE of
/// `servicenamemappings`): neither on the shim that wrote them (warm) nor on a fresh shim
/// process, whose cache starts from its watcher's list. A new app is then exactly one PUT,
/// so the count does see writes. The second CRD group keeps other traffic out of the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registering_known_mappings_costs_zero_writes_across_processes() {
    let _serial = SERIAL.lock().await;
    let client = apiserver::client().await;
    let ns = apiserver::namespace("cluster-noop");
    let regs = noop_plan();
    let mut expected = Mappings::new();
    for (i, app) in &regs {
        expected.insert(MappingKey::new(ns.as_str(), i.as_str()), app);
    }
    let mut first = shim("noop-1", OTHER_GROUP, &[]);
    first.wait_ready(Duration::from_secs(30)).await;

    let c0 = apiserver::request_counts(&client, OTHER_GROUP).await;
    register_all(&first, &ns, &regs).await;
    wait_stored(
        &client,
        &ns,
        OTHER_GROUP,
        &expected,
        Duration::from_secs(20),
    )
    .await;
    wait_idle(&[&first], Duration::from_secs(10)).await;
    let c1 = apiserver::request_counts(&client, OTHER_GROUP).await;
    let d1 = c1.since(&c0);
    assert_eq!(d1.get("POST", "201"), 20, "{d1}");

    // Again, on the same shim and on a fresh process.
    register_all(&first, &ns, &regs).await;
    let mut fresh = shim("noop-2", OTHER_GROUP, &[]);
    fresh.wait_ready(Duration::from_secs(30)).await;
    register_all(&fresh, &ns, &regs).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_in(&scrape(&fresh).await, "snp_noop_skips_total", &[]) < 20.0 {
        assert!(
            Instant::now() < deadline,
            "the fresh shim never checked its batch against the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_idle(&[&first, &fresh], Duration::from_secs(10)).await;
    let c2 = apiserver::request_counts(&client, OTHER_GROUP).await;
    let d2 = c2.since(&c1);
    let fresh_text = scrape(&fresh).await;
    let first_text = scrape(&first).await;
    let writes = |t: &str| {
        metric_in(t, "snp_store_writes_total", &[r#"verb="create""#])
            + metric_in(t, "snp_store_writes_total", &[r#"verb="update""#])
    };
    let verbs = |c: &apiserver::RequestCounts| {
        format!(
            "POST {} PUT {} PATCH {} (all mutating {})",
            c.verb("POST"),
            c.verb("PUT"),
            c.verb("PATCH"),
            c.writes()
        )
    };
    eprintln!(
        "test 4 (processes): API server apiserver_request_total for servicenamemappings: \
         before {}; after the first {} registrations {} (+{d1}); after re-registering them \
         on the same shim and on a fresh process {} (+{}); the fresh shim skipped {} keys \
         as no-ops and sent {} writes",
        verbs(&c0),
        regs.len(),
        verbs(&c1),
        verbs(&c2),
        d2,
        metric_in(&fresh_text, "snp_noop_skips_total", &[]),
        writes(&fresh_text),
    );
    assert_eq!(
        d2.writes(),
        0,
        "re-registering known mappings sent writes: {d2}"
    );
    assert_eq!(writes(&fresh_text), 0.0);
    assert_eq!(writes(&first_text), d1.writes() as f64);
    assert_eq!(apiserver::stored(&client, &ns, OTHER_GROUP).await, expected);

    // Control: one new app is one PUT, and the count sees it.
    let more = vec![("com.acme.noop.S3".to_owned(), "d".to_owned())];
    register_all(&fresh, &ns, &more).await;
    expected.insert(MappingKey::new(ns.as_str(), "com.acme.noop.S3"), "d");
    wait_stored(
        &client,
        &ns,
        OTHER_GROUP,
        &expected,
        Duration::from_secs(10),
    )
    .await;
    wait_idle(&[&first, &fresh], Duration::from_secs(10)).await;
    let d3 = apiserver::request_counts(&client, OTHER_GROUP)
        .await
        .since(&c2);
    eprintln!("test 4 (processes): one new app: +{d3}");
    assert_eq!((d3.writes(), d3.get("PUT", "200")), (1, 1), "{d3}");
}

/// Timestamps each event of a `WatchMappings` stream as it arrives.
fn timestamped(
    mut stream: tonic::Streaming<MappingEvent>,
) -> mpsc::UnboundedReceiver<(Instant, MappingEvent)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            if tx.send((Instant::now(), event)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for an `UPSERT` of `iface` that holds `app`; returns when it arrived.
async fn upsert_of(
    rx: &mut mpsc::UnboundedReceiver<(Instant, MappingEvent)>,
    iface: &str,
    app: &str,
    within: Duration,
) -> Instant {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (at, event) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no UPSERT of {iface} with {app} within {within:?}"))
            .expect("the watch stream ended");
        if event.kind == Kind::Upsert as i32
            && event
                .mappings
                .iter()
                .any(|m| m.interface_name == iface && m.application_names.iter().any(|a| a == app))
        {
            return at;
        }
    }
}

/// How long test 6 waits for an event that a watch delivers live.
const LIVE_EVENT: Duration = Duration::from_secs(5);

/// Test 6: a `WatchMappings` stream on shim A gets, as a live event, what is registered on
/// shim B (timed from the registration call, B's default debounce window included), and
/// what B confirms written with `PushMappings`. The times are printed (about 0.6 s on an
/// idle 2-core machine); the test's bound, 5 s, only rules out a missed event made good by
/// a later relist, with room for a loaded CI machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_shim_a_sees_shim_b_write_as_a_live_event() {
    let _serial = SERIAL.lock().await;
    let ns = apiserver::namespace("cluster-watch");
    let mut a = shim("watch-a", GROUP, &[]);
    let mut b = shim("watch-b", GROUP, &[]);
    a.wait_ready(Duration::from_secs(30)).await;
    b.wait_ready(Duration::from_secs(30)).await;
    let watch = |addr| {
        let ns = ns.clone();
        async move {
            let mut client = api(addr).await;
            let stream = client
                .watch_mappings(WatchMappingsRequest {
                    namespace: ns,
                    interface_names: vec![],
                })
                .await
                .expect("WatchMappings")
                .into_inner();
            let mut rx = timestamped(stream);
            let (_, first) = rx.recv().await.expect("a first event");
            assert_eq!(first.kind, Kind::Snapshot as i32);
            assert!(first.mappings.is_empty(), "{first:?}");
            (client, rx)
        }
    };
    let (_a_client, mut on_a) = watch(a.grpc).await;
    let (_b_client, mut on_b) = watch(b.grpc).await;

    let mut reg = dubbo(b.grpc).await;
    let mut rounds = Vec::new();
    for round in 0..5 {
        let iface = format!("com.acme.watch.S{round}");
        let sent = Instant::now();
        reg.register_service_app_mapping(dubbo_req(&ns, "from-b", &[&iface]))
            .await
            .unwrap();
        let written = upsert_of(&mut on_b, &iface, "from-b", LIVE_EVENT).await;
        let seen = upsert_of(&mut on_a, &iface, "from-b", LIVE_EVENT).await;
        // A's watch may even beat B's own event (B handles the API's answer first).
        let after_b =
            seen.duration_since(sent).as_secs_f64() - written.duration_since(sent).as_secs_f64();
        rounds.push((seen - sent, after_b));
    }
    // PushMappings answers once B has written it.
    let mut push = api(b.grpc).await;
    let sent = Instant::now();
    let r = push
        .push_mappings(PushMappingsRequest {
            batch_id: "watch-1".into(),
            source: "test".into(),
            mappings: vec![mapping(&ns, "com.acme.watch.S0", &["pushed"])],
            want_results: false,
        })
        .await
        .unwrap()
        .into_inner();
    let confirmed = Instant::now();
    assert_eq!(r.written, 1);
    let seen = upsert_of(&mut on_a, "com.acme.watch.S0", "pushed", LIVE_EVENT).await;

    let shown: Vec<String> = rounds
        .iter()
        .map(|(total, after_b)| format!("{total:.0?} ({:+.1}ms vs B's own event)", after_b * 1e3))
        .collect();
    eprintln!(
        "test 6 (processes): registration on B -> UPSERT on A's WatchMappings: {}; \
         PushMappings on B confirmed after {:.0?}, on A {:.0?} after the call ({:+.1}ms vs \
         the confirmation)",
        shown.join(", "),
        confirmed - sent,
        seen - sent,
        (seen.duration_since(sent).as_secs_f64() - confirmed.duration_since(sent).as_secs_f64())
            * 1e3,
    );
    for (total, _) in &rounds {
        assert!(*total < LIVE_EVENT, "{}", shown.join(", "));
    }
    assert!(seen - sent < LIVE_EVENT);
}

/// After an outage the pending batch is written as soon as the shim's watch sees the API
/// server again, not when a long retry backoff next fires.
///
/// With `--retry-base=10s` the first retry comes 16–20 s after the first failure (20 %
/// jitter) and, failing too (the server is down for 20 s), schedules the next one at
/// least 32 s later: without the readiness check nothing could land before ~49 s after
/// the stop. The server is restarted after 20 s and a real kube-apiserver is ready a few
/// seconds later; the shim then needs up to one watch backoff (5 s cap) to see it, and
/// another after the 410 Expired that its first watch gets from the restarted server's
/// fresh watch cache. So the mappings must land within 45 s of the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_does_not_wait_for_a_long_retry_backoff() {
    let _serial = SERIAL.lock().await;
    let server = apiserver::server();
    let client = apiserver::client().await;
    let ns = apiserver::namespace("cluster-recovery");
    let mut s = shim("recovery", GROUP, &["--retry-base=10s", "--retry-max=120s"]);
    s.wait_ready(Duration::from_secs(30)).await;

    let dir = server.dir.clone();
    tokio::task::spawn_blocking(move || apiserver::stop(&dir))
        .await
        .unwrap();
    let stopped = Instant::now();
    let plan: Vec<(String, String)> = (0..5)
        .map(|i| (format!("com.acme.recovery.S{i}"), "recovering".to_owned()))
        .collect();
    register_all(&s, &ns, &plan).await;
    let mut acked = Mappings::new();
    for (i, app) in &plan {
        acked.insert(MappingKey::new(ns.as_str(), i.as_str()), app);
    }
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(stopped.elapsed())).await;
    let dir = server.dir.clone();
    tokio::task::spawn_blocking(move || apiserver::start(&dir))
        .await
        .unwrap();
    let back = stopped.elapsed();
    wait_stored(&client, &ns, GROUP, &acked, Duration::from_secs(40)).await;
    let landed = stopped.elapsed();
    eprintln!(
        "recovery: mappings acked during the outage landed {landed:.2?} after the stop \
         (restarted after 20 s, ready after {back:.2?}: {:.2?} after it was ready)",
        landed.saturating_sub(back)
    );
    assert!(
        landed < Duration::from_secs(45),
        "landed {landed:.2?} after the stop: the shim waited for its backoff instead of \
         retrying when the store became ready"
    );
    let text = scrape(&s).await;
    assert!(metric_in(&text, "snp_batches_total", &[r#"result="error""#]) >= 1.0);
}
