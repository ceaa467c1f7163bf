//! Figure 10: memory through a long API server outage. The real shim (Kubernetes store, as
//! the shim's service account) gets a steady trickle of registrations while the real API
//! server is stopped for `--outage` (10 minutes by default): direct calls in immediate
//! mode, `PushMappings` batches (whose callers wait for the store), and direct calls to a
//! second shim in durable mode (callers wait too, and give up after their deadline), over a
//! bounded set of keys plus a few new keys. Every few seconds it samples each shim's RSS
//! and its waiters, pending keys and journal entries; then it starts the server again and
//! checks that everything acknowledged is stored.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use snp_core::{MappingKey, Mappings};
use snp_proto::api::mapping_service_client::MappingServiceClient;
use snp_proto::api::{Mapping, PushMappingsRequest};
use snp_proto::dubbo::service_name_mapping_service_client::ServiceNameMappingServiceClient;
use snp_proto::dubbo::ServiceMappingRequest;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::setup::*;
use super::{print_table, section, Env, Verdict};
use crate::kube::{client, list_mappings};
use crate::procs::memory;
use crate::table::{verdict, Table};
use crate::workload::{unique_prefix, Rollout};

/// Namespaces of the trickle.
const NAMESPACES: usize = 4;
/// Interfaces per namespace of the bounded key set.
const INTERFACES: usize = 25;
/// Applications per key of the bounded set.
const APPS: usize = 8;
/// Deadline of a waiting caller (durable calls, `PushMappings`).
const CALLER_DEADLINE: Duration = Duration::from_secs(5);
/// How long after its caller went away a shim may still count a waiter: it prunes them
/// every second (`PRUNE_EVERY` in the shim's pipeline), plus a second for the cancellation
/// to reach it and for the sample itself.
const PRUNE_LAG: Duration = Duration::from_secs(2);
/// Flat: the outage's last-minute mean RSS within this fraction of its first-minute mean.
const FLAT: f64 = 0.10;

/// What the callers were told, and how many of them wait right now.
#[derive(Default)]
struct Ledger {
    /// Mappings answered OK (immediate calls; stored `PushMappings` results; durable OKs).
    acked: Mutex<Mappings>,
    calls: AtomicU64,
    oks: AtomicU64,
    errors: AtomicU64,
    /// Callers waiting for an answer of a waiting kind (durable calls, `PushMappings`).
    waiting: AtomicI64,
    /// Highest `waiting` since the last sample.
    waiting_peak: AtomicI64,
    /// When recent waiting callers left (gave up or were answered), for [`Ledger::bound`].
    left: Mutex<VecDeque<Instant>>,
    /// Keys offered.
    keys: Mutex<HashSet<(String, String)>>,
}

impl Ledger {
    fn ack(&self, ns: &str, iface: &str, app: &str) {
        if let Ok(mut m) = self.acked.lock() {
            m.insert(MappingKey::new(ns, iface), app);
        }
    }

    fn offered(&self, ns: &str, iface: &str) {
        if let Ok(mut k) = self.keys.lock() {
            k.insert((ns.to_owned(), iface.to_owned()));
        }
    }

    fn enter(&self) {
        let now = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        self.waiting_peak.fetch_max(now, Ordering::Relaxed);
    }

    fn leave(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut left) = self.left.lock() {
            left.push_back(Instant::now());
        }
    }

    /// Callers a shim may still hold a waiter for: those waiting now, and those that left
    /// within `lag` (the shim forgets the waiter of a caller that went away at its next
    /// prune, up to [`PRUNE_LAG`] later).
    fn bound(&self, lag: Duration) -> i64 {
        let recent = self.left.lock().map_or(0, |mut left| {
            while left.front().is_some_and(|t| t.elapsed() > lag) {
                left.pop_front();
            }
            left.len()
        });
        self.waiting.load(Ordering::Relaxed) + recent as i64
    }
}

/// The key set: `(namespace, interface, application)` for call `n`; every `new_every`-th
/// call uses an interface never seen before.
fn key(prefix: &str, n: u64, new_every: u64) -> (String, String, String) {
    let ns = format!("{prefix}-{}", n as usize % NAMESPACES);
    let iface = if new_every > 0 && n.is_multiple_of(new_every) {
        format!("org.apache.dubbo.outage.New{n}")
    } else {
        format!(
            "org.apache.dubbo.outage.Service{}",
            (n as usize / NAMESPACES) % INTERFACES
        )
    };
    let app = format!("app-{}", (n as usize / 7) % APPS);
    (ns, iface, app)
}

async fn channel(addr: &str) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?)
}

/// Direct registrations at `per_sec`; `waits`: the shim answers after the store (durable
/// mode), so the caller counts as waiting and gives up after [`CALLER_DEADLINE`].
async fn direct_trickle(
    addr: String,
    prefix: String,
    per_sec: u64,
    waits: bool,
    ledger: Arc<Ledger>,
    stop: Arc<tokio::sync::Notify>,
) -> Result<()> {
    let client = ServiceNameMappingServiceClient::new(channel(&addr).await?);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_sec.max(1)));
    let mut calls = JoinSet::new();
    let stopped = stop.notified();
    tokio::pin!(stopped);
    for n in 0u64.. {
        tokio::select! {
            _ = &mut stopped => break,
            _ = tick.tick() => {}
        }
        while calls.try_join_next().is_some() {}
        let (ns, iface, app) = key(&prefix, n, 20);
        let mut c = client.clone();
        let ledger = Arc::clone(&ledger);
        calls.spawn(async move {
            ledger.calls.fetch_add(1, Ordering::Relaxed);
            ledger.offered(&ns, &iface);
            if waits {
                ledger.enter();
            }
            let mut req = tonic::Request::new(ServiceMappingRequest {
                namespace: ns.clone(),
                application_name: app.clone(),
                interface_names: vec![iface.clone()],
            });
            req.set_timeout(CALLER_DEADLINE);
            let r = c.register_service_app_mapping(req).await;
            if waits {
                ledger.leave();
            }
            match r {
                Ok(_) => {
                    ledger.oks.fetch_add(1, Ordering::Relaxed);
                    ledger.ack(&ns, &iface, &app);
                }
                Err(_) => {
                    ledger.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while calls.join_next().await.is_some() {}
    Ok(())
}

/// `PushMappings` batches of 5 mappings at `per_sec`, as a filter sends them; a mapping
/// counts as acknowledged when its result says stored.
async fn push_trickle(
    addr: String,
    prefix: String,
    per_sec: u64,
    ledger: Arc<Ledger>,
    stop: Arc<tokio::sync::Notify>,
) -> Result<()> {
    let client = MappingServiceClient::new(channel(&addr).await?);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_sec.max(1)));
    let mut calls = JoinSet::new();
    let stopped = stop.notified();
    tokio::pin!(stopped);
    for b in 0u64.. {
        tokio::select! {
            _ = &mut stopped => break,
            _ = tick.tick() => {}
        }
        while calls.try_join_next().is_some() {}
        let mappings: Vec<Mapping> = (0..5)
            .map(|i| {
                let (ns, iface, app) = key(&prefix, b * 5 + i + 3, 0);
                Mapping {
                    namespace: ns,
                    interface_name: iface,
                    application_names: vec![format!("push-{app}")],
                }
            })
            .collect();
        let mut c = client.clone();
        let ledger = Arc::clone(&ledger);
        calls.spawn(async move {
            ledger.calls.fetch_add(1, Ordering::Relaxed);
            for m in &mappings {
                ledger.offered(&m.namespace, &m.interface_name);
            }
            ledger.enter();
            let mut req = tonic::Request::new(PushMappingsRequest {
                batch_id: format!("fig10/{b}"),
                source: "fig10".into(),
                mappings: mappings.clone(),
                want_results: true,
            });
            req.set_timeout(CALLER_DEADLINE);
            let r = c.push_mappings(req).await;
            ledger.leave();
            match r {
                Ok(resp) => {
                    ledger.oks.fetch_add(1, Ordering::Relaxed);
                    for (m, res) in mappings.iter().zip(resp.into_inner().results) {
                        if res.status == snp_proto::api::mapping_result::Status::Stored as i32 {
                            for a in &m.application_names {
                                ledger.ack(&m.namespace, &m.interface_name, a);
                            }
                        }
                    }
                }
                Err(_) => {
                    ledger.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while calls.join_next().await.is_some() {}
    Ok(())
}

/// One sample of one shim.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rss: u64,
    waiters: f64,
    pending: f64,
    journal: f64,
}

async fn sample(shim: &Shim) -> Result<Sample> {
    let m = snp_testkit::http::metrics(&shim.http).await?;
    let get = |name: &str| m.sum(name, &[]).unwrap_or(0.0);
    Ok(Sample {
        rss: memory(shim.proc.pid())?.rss,
        waiters: m.sum("snp_durable_waiters", &[])?,
        pending: m.sum("snp_pending_keys", &[])?,
        journal: get("snp_journal_live_entries"),
    })
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Figure 10: memory through a long API server outage.
pub async fn fig10(env: &Env) -> Result<Vec<Verdict>> {
    let outage = if env.quick {
        Duration::from_secs(60)
    } else {
        env.outage
    };
    let every = if env.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    section(&format!(
        "Figure 10: memory through a {}-second API server outage",
        outage.as_secs()
    ));
    let api = ApiServer::start(env, "fig10-apiserver").await?;
    let admin = client(&api.kubeconfig).await?;
    let prefix = unique_prefix("outage");
    let rollout = Rollout {
        pods: 1,
        interfaces: INTERFACES,
        namespaces: NAMESPACES,
        apps: APPS,
        prefix: prefix.clone(),
        jitter: Duration::ZERO,
        seed: 1,
    };
    crate::kube::ensure_namespaces(&admin, &rollout).await?;
    let imm = Shim::start(env, "fig10-immediate", Some(&api.shim_kubeconfig), &[]).await?;
    let dur = Shim::start(
        env,
        "fig10-durable",
        Some(&api.shim_kubeconfig),
        &["--ack-mode=durable"],
    )
    .await?;
    println!(
        "Two snp-shim processes (Kubernetes store, as the shim's service account, default flags; one with --ack-mode=durable) on a real API server. Trickle: 10 direct registrations/s (immediate), 2 PushMappings batches/s of 5 mappings (their callers wait for the store), 2 direct registrations/s into the durable shim (callers wait); {NAMESPACES} namespaces x {INTERFACES} interfaces x {APPS} applications, and every 20th direct call a new interface. Waiting callers give up after {}s. 30 s with the server up, then the server is stopped (`scripts/k8s-apiserver.sh stop`) for {}s, then started again. Samples every {}s.\n",
        CALLER_DEADLINE.as_secs(),
        outage.as_secs(),
        every.as_secs()
    );
    let imm_ledger = Arc::new(Ledger::default());
    let dur_ledger = Arc::new(Ledger::default());
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut trickles = JoinSet::new();
    trickles.spawn(direct_trickle(
        imm.grpc.clone(),
        prefix.clone(),
        10,
        false,
        Arc::clone(&imm_ledger),
        Arc::clone(&stop),
    ));
    trickles.spawn(push_trickle(
        imm.grpc.clone(),
        prefix.clone(),
        2,
        Arc::clone(&imm_ledger),
        Arc::clone(&stop),
    ));
    trickles.spawn(direct_trickle(
        dur.grpc.clone(),
        prefix.clone(),
        2,
        true,
        Arc::clone(&dur_ledger),
        Arc::clone(&stop),
    ));

    let warm_up = if env.quick {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(30)
    };
    tokio::time::sleep(warm_up).await;
    api.stop()?;
    let down = Instant::now();
    let mut t = Table::new(&[
        "t (s)",
        "RSS immediate",
        "waiters",
        "pending keys",
        "journal entries",
        "RSS durable",
        "waiters",
        "pending keys",
        "callers waiting (peak)",
        "callers waiting or gone < 2 s",
    ]);
    let mut rows: Vec<(f64, Sample, Sample, i64, i64)> = Vec::new();
    while down.elapsed() < outage {
        tokio::time::sleep(every).await;
        let a = sample(&imm).await?;
        let b = sample(&dur).await?;
        let peak = imm_ledger.waiting_peak.swap(
            imm_ledger.waiting.load(Ordering::Relaxed),
            Ordering::Relaxed,
        ) + dur_ledger.waiting_peak.swap(
            dur_ledger.waiting.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let bound = imm_ledger.bound(PRUNE_LAG) + dur_ledger.bound(PRUNE_LAG);
        let secs = down.elapsed().as_secs_f64();
        rows.push((secs, a, b, peak, bound));
    }
    // Everything acknowledged before the restart must be stored after it.
    stop.notify_waiters();
    while let Some(r) = trickles.join_next().await {
        r.context("a trickle task")??;
    }
    let outage_len = down.elapsed();
    api.restart()?;
    let up = Instant::now();
    let mut want = Mappings::new();
    for l in [&imm_ledger, &dur_ledger] {
        if let Ok(m) = l.acked.lock() {
            want.union(&m);
        }
    }
    let (stored, drained) = loop {
        let got = list_mappings(&admin, &api.group, &prefix).await.ok();
        let a = sample(&imm).await?;
        let b = sample(&dur).await?;
        let all = got.as_ref().is_some_and(|g| {
            want.iter()
                .all(|(k, apps)| g.get(k).is_some_and(|s| apps.iter().all(|x| s.contains(x))))
        });
        let idle = a.pending == 0.0 && b.pending == 0.0 && a.waiters == 0.0 && b.waiters == 0.0;
        if all && idle {
            break (got.unwrap_or_default(), up.elapsed());
        }
        if up.elapsed() > Duration::from_secs(180) {
            bail!(
                "figure 10: 180 s after the restart, not everything acknowledged is stored (all stored: {all}; immediate {a:?}, durable {b:?})"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The journal forgets stored entries on its next sweep (every 30 s) at the latest.
    let journal_after = loop {
        let a = sample(&imm).await?;
        if a.journal == 0.0 || up.elapsed() > Duration::from_secs(120) {
            break a.journal;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    let stride = (rows.len() / 20).max(1);
    for (i, (secs, a, b, peak, bound)) in rows.iter().enumerate() {
        if i % stride == 0 || i + 1 == rows.len() {
            t.row([
                format!("{secs:.0}"),
                mib(a.rss as f64),
                format!("{}", a.waiters),
                format!("{}", a.pending),
                format!("{}", a.journal),
                mib(b.rss as f64),
                format!("{}", b.waiters),
                format!("{}", b.pending),
                format!("{peak}"),
                format!("{bound}"),
            ]);
        }
    }
    print_table("Samples during the outage (every few rows):", &t);

    let minute = Duration::from_secs(60).min(outage / 4).as_secs_f64();
    let first = |f: &dyn Fn(&Sample, &Sample) -> f64| {
        mean(
            &rows
                .iter()
                .filter(|r| r.0 <= minute)
                .map(|r| f(&r.1, &r.2))
                .collect::<Vec<_>>(),
        )
    };
    let last = |f: &dyn Fn(&Sample, &Sample) -> f64| {
        let end = outage_len.as_secs_f64() - minute;
        mean(
            &rows
                .iter()
                .filter(|r| r.0 > end)
                .map(|r| f(&r.1, &r.2))
                .collect::<Vec<_>>(),
        )
    };
    let rss_imm = (first(&|a, _| a.rss as f64), last(&|a, _| a.rss as f64));
    let rss_dur = (first(&|_, b| b.rss as f64), last(&|_, b| b.rss as f64));
    let max_waiters = rows
        .iter()
        .map(|r| r.1.waiters + r.2.waiters)
        .fold(0.0, f64::max);
    let max_callers = rows.iter().map(|r| r.3).max().unwrap_or(0);
    // A caller that gives up at its deadline leaves the harness's count at once; the shim
    // prunes its waiter at its next prune: compare each sample with the callers waiting
    // when it was read, plus those that left within the prune lag.
    let waiters_bounded = rows.iter().all(|r| r.1.waiters + r.2.waiters <= r.4 as f64);
    let max_bound = rows.iter().map(|r| r.4).max().unwrap_or(0);
    let pending_max = rows.iter().map(|r| r.1.pending).fold(0.0, f64::max);
    let journal_max = rows.iter().map(|r| r.1.journal).fold(0.0, f64::max);
    let keys_offered = imm_ledger.keys.lock().map_or(0, |k| k.len());
    let growth = |(a, b): (f64, f64)| if a > 0.0 { b / a - 1.0 } else { 0.0 };
    let flat_imm = growth(rss_imm).abs() <= FLAT;
    let flat_dur = growth(rss_dur).abs() <= FLAT;

    let mut s = Table::new(&["measure", "measured", "target", "verdict"]);
    s.row([
        "RSS immediate shim, outage's first minute -> last minute".into(),
        format!(
            "{} -> {} ({:+.1} %)",
            mib(rss_imm.0),
            mib(rss_imm.1),
            growth(rss_imm) * 100.0
        ),
        format!("within {:.0} %", FLAT * 100.0),
        verdict(flat_imm).into(),
    ]);
    s.row([
        "RSS durable shim, outage's first minute -> last minute".into(),
        format!(
            "{} -> {} ({:+.1} %)",
            mib(rss_dur.0),
            mib(rss_dur.1),
            growth(rss_dur) * 100.0
        ),
        format!("within {:.0} %", FLAT * 100.0),
        verdict(flat_dur).into(),
    ]);
    s.row([
        "waiters (both shims) vs callers waiting or gone within the shim's prune lag (2 s), every sample".into(),
        format!("max {max_waiters} waiters; callers: max {max_callers} waiting at once, max {max_bound} waiting or gone < 2 s"),
        "waiters <= callers in flight".into(),
        verdict(waiters_bounded).into(),
    ]);
    s.row([
        "pending keys / journal entries (immediate), max during the outage".into(),
        format!("{pending_max} / {journal_max} (keys offered to it: {keys_offered})"),
        "pending <= keys".into(),
        verdict(pending_max <= keys_offered as f64).into(),
    ]);
    let stored_all = want.iter().all(|(k, apps)| {
        stored
            .get(k)
            .is_some_and(|s| apps.iter().all(|x| s.contains(x)))
    });
    s.row([
        "acknowledged mappings stored after the restart".into(),
        format!(
            "{} of {} within {:.1} s (immediate: {} calls, {} OK; durable: {} calls, {} OK, {} errors)",
            want.entries(),
            want.entries(),
            drained.as_secs_f64(),
            imm_ledger.calls.load(Ordering::Relaxed),
            imm_ledger.oks.load(Ordering::Relaxed),
            dur_ledger.calls.load(Ordering::Relaxed),
            dur_ledger.oks.load(Ordering::Relaxed),
            dur_ledger.errors.load(Ordering::Relaxed)
        ),
        "all".into(),
        verdict(stored_all).into(),
    ]);
    s.row([
        "journal entries after the restart (immediate)".into(),
        format!("{journal_after}"),
        "0".into(),
        verdict(journal_after == 0.0).into(),
    ]);
    print_table("Verdict:", &s);
    Ok(vec![
        Verdict::check(
            "10. RSS through the outage, immediate / durable shim (last vs first minute)",
            format!("within {:.0} %", FLAT * 100.0),
            format!(
                "{:+.1} % ({} -> {}) / {:+.1} % ({} -> {})",
                growth(rss_imm) * 100.0,
                mib(rss_imm.0),
                mib(rss_imm.1),
                growth(rss_dur) * 100.0,
                mib(rss_dur.0),
                mib(rss_dur.1)
            ),
            flat_imm && flat_dur,
        ),
        Verdict::check(
            "10. waiters during the outage",
            "<= callers in flight",
            format!("max {max_waiters} (callers waiting or gone < 2 s: max {max_bound}; at once: {max_callers})"),
            waiters_bounded,
        ),
        Verdict::check(
            "10. acknowledged mappings stored after the restart",
            "all",
            format!("{} within {:.1} s", want.entries(), drained.as_secs_f64()),
            stored_all && journal_after == 0.0,
        ),
    ])
}
