//! Figure 9: the peer users run today. The seed server's algorithm (`bench/seed-go`, built
//! by `scripts/seed-go.sh`) and snp's shim take the same rollout against the same real API
//! server, with 1 and with 8 writers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use prost::Message;
use snp_core::{naming, MappingKey, Mappings};
use snp_testkit::process::{free_port, local, wait_tcp, Proc};

use super::runs::{ratio, rollout};
use super::setup::{ApiServer, Shim};
use super::{print_table, section, Env, Verdict};
use crate::load::{self, Rpc};
use crate::prom::RequestCounts;
use crate::stats::{fmt_dur, fmt_int};
use crate::table::Table;
use crate::workload::{Pod, Rollout};

/// The rollout's interfaces: names as Dubbo services have them. The last four are ones the
/// seed cannot store: an object name with `_`, a name and label with `$` (a nested
/// interface), and two label values over 63 characters.
pub const INTERFACES: [&str; 20] = [
    "org.apache.dubbo.samples.api.GreetingService",
    "org.apache.dubbo.demo.DemoService",
    "com.example.order.api.OrderService",
    "com.example.order.api.OrderQueryService",
    "com.example.payment.api.PaymentService",
    "com.example.payment.api.RefundService",
    "com.example.user.api.UserService",
    "com.example.user.api.AddressService",
    "com.example.inventory.api.StockService",
    "com.example.inventory.api.WarehouseService",
    "com.example.cart.api.CartService",
    "com.example.coupon.api.CouponService",
    "com.example.notify.api.SmsService",
    "com.example.notify.api.MailService",
    "com.example.search.api.ProductSearchService",
    "com.example.risk.api.RiskControlService",
    "com.example.order_center.api.OrderAuditService",
    "com.example.payment.api.PaymentFacade$Callback",
    "org.apache.dubbo.samples.governance.api.ConsumerRoutingConfigurationService",
    "com.example.logistics.fulfillment.api.CrossBorderShipmentTrackingQueryService",
];

/// Applications per namespace: four deployments export the same interfaces (pod `p` runs
/// `bench-app-{p % 4}`), so objects are written more than once and writers can collide.
const APPS: usize = 4;

/// Whether the seed can store `interface` at all: its object name
/// (`lower(interface)`, `.` -> `-`) and its `interface` label value must both be valid.
pub fn seed_can_store(interface: &str) -> bool {
    naming::is_valid_object_name(&naming::seed_name(interface))
        && naming::is_valid_label_value(interface)
}

/// The rollout's pods with their calls naming [`INTERFACES`] (call `i` of a pod registers
/// interface `i`).
fn pods(r: &Rollout) -> Result<Vec<Pod>> {
    let mut pods = r.pods();
    for pod in &mut pods {
        for (i, call) in pod.calls.iter_mut().enumerate() {
            let mut req = snp_proto::dubbo::ServiceMappingRequest::decode(call.clone())?;
            req.interface_names = vec![INTERFACES[i % INTERFACES.len()].to_owned()];
            *call = Bytes::from(req.encode_to_vec());
        }
    }
    Ok(pods)
}

/// What the rollout must leave in the store.
fn expected(r: &Rollout) -> Mappings {
    let mut m = Mappings::new();
    for n in 0..r.namespaces {
        for i in 0..r.interfaces {
            for p in 0..r.pods.min(r.apps.max(1)) {
                m.insert(
                    MappingKey::new(r.namespace(n), INTERFACES[i % INTERFACES.len()]),
                    &r.app(p),
                );
            }
        }
    }
    m
}

/// The fewest API requests any set of `writers` writers could make to store every mapping
/// of the rollout, given which applications each writer learns (the pods it serves, spread
/// round-robin as [`load::send_pods`] does) and however long it waits before writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Floor {
    /// One create per object.
    creates: u64,
    /// Updates forced because no single writer knows every application of an object: per
    /// key, the fewest writers whose applications together cover the key's, less the
    /// creator.
    updates: u64,
    /// Each writer's start-up LIST and its WATCH.
    list_watch: u64,
}

impl Floor {
    fn total(&self) -> u64 {
        self.creates + self.updates + self.list_watch
    }
}

/// The fewest of `sets` (bit masks of applications) whose union is `all`; `None` if they
/// never cover it. Exact: tries every combination of the distinct sets, smallest first.
fn min_cover(sets: &[u64], all: u64) -> Option<u32> {
    let mut distinct: Vec<u64> = sets.iter().copied().filter(|s| *s != 0).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() > 20 {
        return None;
    }
    (0u64..1 << distinct.len())
        .filter(|pick| {
            let union = (0..distinct.len())
                .filter(|i| pick & (1 << i) != 0)
                .fold(0, |u, i| u | distinct[i]);
            union & all == all
        })
        .map(u64::count_ones)
        .min()
}

/// [`Floor`] of rollout `r` through `writers` writers, from the calls its pods make.
fn floor(r: &Rollout, writers: usize) -> Result<Floor> {
    // Per key: the application bit mask each writer learns.
    let mut apps: Vec<String> = Vec::new();
    let mut known: std::collections::BTreeMap<MappingKey, Vec<u64>> = Default::default();
    for pod in pods(r)? {
        let w = load::target_of(pod.index, writers);
        for call in &pod.calls {
            let req = snp_proto::dubbo::ServiceMappingRequest::decode(call.clone())?;
            let a = match apps.iter().position(|a| *a == req.application_name) {
                Some(a) => a,
                None => {
                    apps.push(req.application_name.clone());
                    apps.len() - 1
                }
            };
            if a >= 64 {
                bail!("the floor counts at most 64 applications");
            }
            for i in &req.interface_names {
                let sets = known
                    .entry(MappingKey::new(req.namespace.as_str(), i.as_str()))
                    .or_insert_with(|| vec![0; writers]);
                sets[w] |= 1 << a;
            }
        }
    }
    let mut f = Floor {
        creates: 0,
        updates: 0,
        list_watch: 2 * writers as u64,
    };
    for (key, sets) in &known {
        let all = sets.iter().fold(0, |u, s| u | s);
        let n = min_cover(sets, all).with_context(|| format!("no cover of {key}"))?;
        f.creates += 1;
        f.updates += u64::from(n.saturating_sub(1));
    }
    Ok(f)
}

/// Mappings of `want` that `have` holds.
fn held(want: &Mappings, have: &Mappings) -> usize {
    want.iter()
        .map(|(k, apps)| apps.iter().filter(|a| have.contains(k, a)).count())
        .sum()
}

/// The writers of one side.
enum Writers {
    Seed(Vec<Proc>),
    Snp(Vec<Shim>),
}

/// The seed's own counters, summed over its replicas (`STATS` lines at exit).
#[derive(Debug, Default, Clone)]
struct SeedStats {
    pushes: u64,
    tries: u64,
    failed: u64,
    dropped: u64,
}

impl SeedStats {
    fn parse(log: &str) -> Option<Self> {
        let line = log.lines().rev().find(|l| l.starts_with("STATS "))?;
        let mut s = Self::default();
        for kv in line.split_whitespace().skip(1) {
            let (k, v) = kv.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "pushes" => s.pushes = v,
                "tries" => s.tries = v,
                "failed" => s.failed = v,
                "dropped" => s.dropped = v,
                _ => {}
            }
        }
        Some(s)
    }
}

/// One side's run.
struct Run {
    side: &'static str,
    writers: usize,
    /// Pods start within this window.
    jitter: Duration,
    registrations: u64,
    call_errors: u64,
    api: RequestCounts,
    expected: usize,
    stored: usize,
    /// Mappings of interfaces the seed can store that are not stored.
    lost: usize,
    /// Mappings of interfaces the seed cannot store that are not stored.
    unstorable: usize,
    /// First registration until every mapping was seen stored.
    all_stored: Option<Duration>,
    /// First registration until every mapping the seed can store was seen stored.
    storable_stored: Option<Duration>,
    seed: Option<SeedStats>,
    /// The fewest requests any writers could make for this rollout.
    floor: Floor,
}

/// What the poller saw: when each target was first reached.
#[derive(Default)]
struct Seen {
    all: Option<Instant>,
    storable: Option<Instant>,
}

/// The store poller of one run.
struct Poller {
    client: kube::Client,
    group: String,
    prefix: String,
    want: Mappings,
    storable: Mappings,
    lists: Arc<AtomicU64>,
    seen: Arc<Mutex<Seen>>,
}

/// Lists the namespaces' mappings every 100 ms until `stop`, noting when every expected
/// mapping, and every one the seed can store, was first there. Counts its LIST requests
/// (the figure takes them out of the API server's count).
fn spawn_poller(
    p: Poller,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let Poller {
        client,
        group,
        prefix,
        want,
        storable,
        lists,
        seen,
    } = p;
    tokio::spawn(async move {
        loop {
            if *stop.borrow() {
                return;
            }
            lists.fetch_add(1, Ordering::Relaxed);
            if let Ok(have) = crate::kube::list_mappings(&client, &group, &prefix).await {
                let now = Instant::now();
                let mut s = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if s.storable.is_none() && held(&storable, &have) == storable.entries() {
                    s.storable = Some(now);
                }
                if s.all.is_none() && held(&want, &have) == want.entries() {
                    s.all = Some(now);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// `apiserver_request_total` for the group, without the poller's LISTs.
async fn writers_requests(
    client: &kube::Client,
    group: &str,
    before: &RequestCounts,
    lists: u64,
) -> Result<RequestCounts> {
    let mut d = crate::kube::request_counts(client, group)
        .await?
        .since(before);
    let key = ("LIST".to_owned(), "200".to_owned());
    if let Some(n) = d.0.get_mut(&key) {
        *n = n.saturating_sub(lists);
        if *n == 0 {
            d.0.remove(&key);
        }
    }
    Ok(d)
}

async fn start_seeds(
    env: &Env,
    bin: &std::path::Path,
    api: &ApiServer,
    n: usize,
    tag: &str,
) -> Result<(Vec<Proc>, Vec<String>)> {
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let addr = local(free_port()?);
        let mut p = Proc::spawn(
            &format!("fig9-{tag}-seed-{i}"),
            bin,
            &[
                format!("--grpc-addr={addr}"),
                format!("--kubeconfig={}", api.shim_kubeconfig.display()),
                format!("--group={}", api.group),
            ],
            &env.dir,
            &env.root,
        )?;
        wait_tcp(&mut p, &addr, Duration::from_secs(10)).await?;
        procs.push(p);
        addrs.push(addr);
    }
    Ok((procs, addrs))
}

/// Requests other than LIST and WATCH (the poller's LISTs would make a steady count look
/// busy; a WATCH is counted only when it ends).
fn busy_count(c: &RequestCounts) -> u64 {
    c.total() - c.verb("LIST") - c.verb("WATCH")
}

/// Runs the rollout through `n` writers of one side and measures it. The API server's
/// count runs from before the writers start until after they have stopped, so it holds
/// everything they asked, start-up LISTs and WATCHes included.
async fn run_side(
    env: &Env,
    api: &ApiServer,
    seed_bin: &std::path::Path,
    side: &'static str,
    n: usize,
    pods_per_ns: usize,
    jitter: Duration,
) -> Result<Run> {
    let tag = format!("{side}{n}j{}", jitter.as_secs());
    let mut r = rollout(
        pods_per_ns,
        INTERFACES.len(),
        1,
        jitter,
        &format!("f9{tag}"),
    );
    r.apps = APPS;
    let want = expected(&r);
    let floor = floor(&r, n)?;
    let mut storable = Mappings::new();
    for (k, apps) in want.iter() {
        if seed_can_store(&k.interface) {
            for a in apps.iter() {
                storable.insert(k.clone(), a);
            }
        }
    }
    let client = crate::kube::client(&api.kubeconfig).await?;
    crate::kube::ensure_namespaces(&client, &r).await?;
    let before = crate::kube::request_counts(&client, &api.group).await?;
    let (writers, targets) = if side == "seed" {
        let (p, a) = start_seeds(env, seed_bin, api, n, &tag).await?;
        (Writers::Seed(p), a)
    } else {
        let mut shims = Vec::new();
        for i in 0..n {
            shims.push(
                Shim::start(
                    env,
                    &format!("fig9-{tag}-shim-{i}"),
                    Some(&api.shim_kubeconfig),
                    &[],
                )
                .await?,
            );
        }
        let t = shims.iter().map(|s| s.grpc.clone()).collect();
        (Writers::Snp(shims), t)
    };
    let lists = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poller = spawn_poller(
        Poller {
            client: client.clone(),
            group: api.group.clone(),
            prefix: r.prefix.clone(),
            want: want.clone(),
            storable: storable.clone(),
            lists: Arc::clone(&lists),
            seen: Arc::clone(&seen),
        },
        stop_rx,
    );
    let sent = load::send_pods(&targets, 1, pods(&r)?, Rpc::A, 64).await?;
    // Until the writers are done: every mapping stored and no GET/POST/PUT for 2 s, or
    // none for 6 s (the seed's last push starts at most a second after the last call), or
    // 180 s.
    let started_wait = Instant::now();
    let mut last = busy_count(&crate::kube::request_counts(&client, &api.group).await?);
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = busy_count(&crate::kube::request_counts(&client, &api.group).await?);
        let all = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .all
            .is_some();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        let quiet = quiet_since.elapsed();
        if (all && quiet >= Duration::from_secs(2))
            || quiet >= Duration::from_secs(6)
            || started_wait.elapsed() > Duration::from_secs(180)
        {
            break;
        }
    }
    let _ = stop_tx.send(true);
    let _ = poller.await;
    let have = crate::kube::list_mappings(&client, &api.group, &r.prefix).await?;
    lists.fetch_add(1, Ordering::Relaxed);
    let stored = held(&want, &have);
    let stored_storable = held(&storable, &have);
    let seed = match writers {
        Writers::Seed(mut procs) => {
            let mut sum = SeedStats::default();
            for p in &mut procs {
                p.terminate(Duration::from_secs(30)).await?;
                let s = SeedStats::parse(&p.log_text())
                    .with_context(|| format!("no STATS line in {}", p.log.display()))?;
                sum.pushes += s.pushes;
                sum.tries += s.tries;
                sum.failed += s.failed;
                sum.dropped += s.dropped;
            }
            Some(sum)
        }
        Writers::Snp(mut shims) => {
            for s in &mut shims {
                s.proc.terminate(Duration::from_secs(30)).await?;
            }
            None
        }
    };
    // The API server counts a request when it has answered it; WATCHes end with the
    // writers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api_counts =
        writers_requests(&client, &api.group, &before, lists.load(Ordering::Relaxed)).await?;
    let s = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(sent.first_sent));
    Ok(Run {
        side,
        writers: n,
        jitter,
        registrations: sent.ok,
        call_errors: sent.errors.values().sum(),
        api: api_counts,
        expected: want.entries(),
        stored,
        lost: storable.entries() - stored_storable,
        unstorable: (want.entries() - storable.entries()) - (stored - stored_storable),
        all_stored: since(s.all),
        storable_stored: since(s.storable),
        seed,
        floor,
    })
}

/// Figure 9: API requests, 409s, lost and unstorable mappings, and the time until every
/// mapping is stored, for the seed's algorithm and for snp, with 1 and 8 writers.
pub async fn fig9(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 9: the seed server as a peer, on the same API server");
    let pods_per_ns = if env.quick { 40 } else { 200 };
    let out = tokio::process::Command::new(env.root.join("scripts/seed-go.sh"))
        .arg("build")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("run scripts/seed-go.sh build")?;
    if !out.status.success() {
        bail!(
            "scripts/seed-go.sh build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let seed_bin = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let unstorable: Vec<&str> = INTERFACES
        .iter()
        .copied()
        .filter(|i| !seed_can_store(i))
        .collect();
    println!(
        "A rollout of {pods_per_ns} pods x {} interfaces in one namespace, {APPS} applications (pod p runs bench-app-{{p % {APPS}}}), pods starting within 3 s (figure 3's rollout; also within 30 s, for information), each registering its interfaces one call at a time, 64 calls in flight, pods spread round-robin over the writers (flavour A, the seed's RPC). Seed: `bench/seed-go` (the seed server's algorithm: 200 ms / 100 ms quiet / 1 s max debounce, one push in flight, Get then Create or Update, 3 tries then dropped; client-go at istiod's 80 requests/s, burst 160), as the shim's service account. snp: `snp-shim --store kubernetes`, default flags. Both against one real kube-apiserver, each run in fresh namespaces. Requests are the API server's `apiserver_request_total` for servicenamemappings, without the figure's own LISTs (it lists every 100 ms to time the stores). The floor is the fewest requests any set of writers could make to store every mapping, whatever it waits for: a POST per object, the PUTs forced because each writer only learns the applications of the pods it serves (per object, the fewest writers whose applications cover the object's, less the creator), and each writer's start-up LIST and WATCH; computed from the rollout's calls. The seed cannot store {} of the interfaces: {}.\n",
        INTERFACES.len(),
        unstorable.len(),
        unstorable.join(", "),
    );
    let api = ApiServer::start(env, "fig9-apiserver").await?;
    // The verdicts are on the 3 s rollout (figure 3's). The seed pays per debounce window
    // and snp per change of a key, so a rollout spread over 30 s is shown too (info).
    let jitters: &[u64] = if env.quick { &[3] } else { &[3, 30] };
    let mut runs = Vec::new();
    for &j in jitters {
        for n in [1usize, 8] {
            for side in ["seed", "snp"] {
                runs.push(
                    run_side(
                        env,
                        &api,
                        &seed_bin,
                        side,
                        n,
                        pods_per_ns,
                        Duration::from_secs(j),
                    )
                    .await?,
                );
            }
        }
    }
    let label = |r: &Run| format!("{} x {}, {} s", r.writers, r.side, r.jitter.as_secs());
    let mut t = Table::new(&[
        "writers, rollout",
        "registrations (failed calls)",
        "API requests",
        "requests / registration",
        "by verb",
        "409s",
        "stored / expected mappings",
        "lost",
        "not stored: interfaces the seed cannot store",
        "every mapping stored after",
        "every mapping the seed can store, stored after",
        "seed's own count: pushes / tries / failed / keys dropped",
    ]);
    for r in &runs {
        let regs = r.registrations.max(1) as f64;
        t.row([
            label(r),
            format!("{} ({})", fmt_int(r.registrations), r.call_errors),
            fmt_int(r.api.total()),
            format!("{:.4}", r.api.total() as f64 / regs),
            r.api
                .by_verb()
                .iter()
                .map(|(v, n)| format!("{v} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            fmt_int(r.api.code("409")),
            format!("{} / {}", r.stored, r.expected),
            r.lost.to_string(),
            r.unstorable.to_string(),
            r.all_stored.map_or("never".into(), fmt_dur),
            r.storable_stored.map_or("never".into(), fmt_dur),
            r.seed.as_ref().map_or("-".into(), |s| {
                format!("{} / {} / {} / {}", s.pushes, s.tries, s.failed, s.dropped)
            }),
        ]);
    }
    print_table("", &t);
    let mut codes = Table::new(&["writers, rollout", "API server requests by verb and code"]);
    for r in &runs {
        codes.row([label(r), r.api.to_string()]);
    }
    print_table("", &codes);

    let mut verdicts = Vec::new();
    let mut ratios = Table::new(&[
        "writers, rollout",
        "snp / seed API requests",
        "floor: fewest requests any writers could make (POST + PUT + LIST/WATCH)",
        "floor / seed",
        "snp / floor",
        "goal",
        "verdict",
    ]);
    for &j in jitters {
        for n in [1usize, 8] {
            let get = |side: &str| {
                runs.iter()
                    .find(|r| r.writers == n && r.side == side && r.jitter.as_secs() == j)
            };
            let (Some(seed), Some(snp)) = (get("seed"), get("snp")) else {
                continue;
            };
            let q = ratio(snp.api.total() as f64, seed.api.total() as f64);
            let measured = format!("{q:.4} ({} / {})", snp.api.total(), seed.api.total());
            let checked = j == 3;
            let f = snp.floor;
            ratios.row([
                format!("{n}, {j} s"),
                measured.clone(),
                format!(
                    "{} ({} + {} + {})",
                    f.total(),
                    f.creates,
                    f.updates,
                    f.list_watch
                ),
                format!("{:.4}", ratio(f.total() as f64, seed.api.total() as f64)),
                format!("{:.2}", ratio(snp.api.total() as f64, f.total() as f64)),
                if checked { "<= 0.05" } else { "(none)" }.into(),
                if checked {
                    crate::table::verdict(q <= 0.05)
                } else {
                    "info"
                }
                .to_owned(),
            ]);
            verdicts.push(Verdict::info(
                format!("9. floor / seed API requests, {n} writer(s), {j} s rollout"),
                format!(
                    "{:.4} ({} / {}); snp / floor {:.2}",
                    ratio(f.total() as f64, seed.api.total() as f64),
                    f.total(),
                    seed.api.total(),
                    ratio(snp.api.total() as f64, f.total() as f64)
                ),
            ));
            if !checked {
                verdicts.push(Verdict::info(
                    format!("9. API requests, snp / seed, {n} writer(s), {j} s rollout"),
                    measured,
                ));
                continue;
            }
            verdicts.push(Verdict::check(
                format!("9. API requests, snp / seed, {n} writer(s)"),
                "<= 0.05",
                measured,
                q <= 0.05,
            ));
            verdicts.push(Verdict::check(
                format!("9. mappings lost or not stored by snp, {n} writer(s)"),
                "0",
                format!("{} of {}", snp.expected - snp.stored, snp.expected),
                snp.stored == snp.expected,
            ));
            verdicts.push(Verdict::info(
                format!("9. seed, {n} writer(s): lost / cannot store / 409s"),
                format!(
                    "{} / {} of {} mappings / {}",
                    seed.lost,
                    seed.unstorable,
                    seed.expected,
                    seed.api.code("409")
                ),
            ));
            verdicts.push(Verdict::info(
                format!("9. every mapping stored after, {n} writer(s): snp / seed"),
                format!(
                    "{} / {} (every mapping the seed can store: {})",
                    snp.all_stored.map_or("never".into(), fmt_dur),
                    seed.all_stored.map_or("never".into(), fmt_dur),
                    seed.storable_stored.map_or("never".into(), fmt_dur),
                ),
            ));
        }
    }
    print_table("", &ratios);
    Ok(verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use snp_core::validate::{validate_interface, Field, Limits};

    #[test]
    fn four_interfaces_the_seed_cannot_store_all_valid_for_snp() {
        let bad: Vec<&str> = INTERFACES
            .iter()
            .copied()
            .filter(|i| !seed_can_store(i))
            .collect();
        assert_eq!(bad, INTERFACES[16..].to_vec());
        assert!(!naming::is_valid_object_name(&naming::seed_name(
            INTERFACES[16]
        )));
        assert!(naming::is_valid_label_value(INTERFACES[16]));
        assert!(!naming::is_valid_label_value(INTERFACES[17]));
        assert!(INTERFACES[18].len() > 63 && INTERFACES[19].len() > 63);
        for i in INTERFACES {
            validate_interface(i, Field::InterfaceName(0), &Limits::default()).unwrap();
        }
    }

    #[test]
    fn min_cover_is_exact() {
        assert_eq!(min_cover(&[0b01, 0b10, 0b11], 0b11), Some(1));
        assert_eq!(min_cover(&[0b001, 0b010, 0b100, 0b011], 0b111), Some(2));
        assert_eq!(min_cover(&[0b001, 0b010], 0b111), None);
        assert_eq!(min_cover(&[0, 0b1, 0b1], 0b1), Some(1));
    }

    #[test]
    fn pods_register_the_named_interfaces() {
        let mut r = rollout(8, INTERFACES.len(), 1, Duration::ZERO, "t");
        r.apps = APPS;
        let pods = pods(&r).unwrap();
        assert_eq!(pods.len(), 8);
        for pod in &pods {
            for (i, c) in pod.calls.iter().enumerate() {
                let req = snp_proto::dubbo::ServiceMappingRequest::decode(c.clone()).unwrap();
                assert_eq!(req.interface_names, vec![INTERFACES[i].to_owned()]);
            }
        }
        let e = expected(&r);
        assert_eq!(e.len(), 20);
        // One writer learns every application: one POST per object.
        let one = floor(&r, 1).unwrap();
        assert_eq!((one.creates, one.updates, one.list_watch), (20, 0, 2));
        // Eight writers, round-robin: writer w serves pods w, w + 8, ..., all running
        // application w % 4, so every object needs four writers: a POST and three PUTs.
        let eight = floor(&r, 8).unwrap();
        assert_eq!(
            (eight.creates, eight.updates, eight.list_watch),
            (20, 60, 16)
        );
        assert_eq!(eight.total(), 96);
        // Two writers: pods of applications 0 and 2 on one, 1 and 3 on the other.
        assert_eq!(floor(&r, 2).unwrap().updates, 20);
        assert_eq!(e.entries(), 80);
        assert_eq!(
            SeedStats::parse("x\nSTATS calls=3 pushes=2 tries=9 failed=4 dropped=1\n")
                .map(|s| (s.pushes, s.tries, s.failed, s.dropped)),
            Some((2, 9, 4, 1))
        );
    }
}
