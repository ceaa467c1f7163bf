//! The load generator: a simulated rollout ([`Rollout`]) sent to Envoy (through the filter)
//! or straight to shims, as a one-shot storm or as a closed loop for a fixed time.
//!
//! It measures, for one run: calls and errors, throughput, latency percentiles (per call,
//! HdrHistogram), the convergence time (first registration until the store holds every
//! mapping, seen through `WatchMappings` streams on the shims), and the deltas of the
//! counters that tell the cost: the shims' batches and store writes (`/metrics`), the
//! filter's batches (Envoy `/stats`) and the API server's requests by verb (its own
//! `/metrics`).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use snp_core::{MappingKey, Mappings};
use snp_proto::api::mapping_service_client::MappingServiceClient;
use snp_proto::api::WatchMappingsRequest;
use tokio::sync::{watch, Semaphore};
use tonic::transport::Channel;

use crate::kube;
use crate::kube::KubeTarget;
use crate::prom::{self, RequestCounts};
use crate::rawgrpc::{self, PATH_GET_MAPPINGS};
use crate::stats::{fmt_dur, fmt_int, fmt_rate, Latency};
use crate::table::Table;
use crate::workload::{Pod, Rollout};
use snp_testkit::http;

/// Which RPC the load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rpc {
    /// Registrations, flavour A (`dubbo.networking.v1alpha1`).
    A,
    /// Registrations, flavour B (dubbo-admin `v1alpha1`).
    B,
    /// Registrations, alternating A and B.
    Mixed,
    /// `snp.v1.MappingService/GetMappings` (non-registration traffic).
    Get,
}

impl Rpc {
    fn path(self, i: usize) -> &'static str {
        match self {
            Rpc::A => snp_proto::PATH_FLAVOUR_A,
            Rpc::B => snp_proto::PATH_FLAVOUR_B,
            Rpc::Mixed if i.is_multiple_of(2) => snp_proto::PATH_FLAVOUR_A,
            Rpc::Mixed => snp_proto::PATH_FLAVOUR_B,
            Rpc::Get => PATH_GET_MAPPINGS,
        }
    }

    fn is_registration(self) -> bool {
        self != Rpc::Get
    }
}

/// What the load goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// An Envoy listener (with or without the snp filter).
    Envoy,
    /// snp-shim gRPC ports (or any server of the same API).
    Shim,
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// What the targets are.
    pub kind: TargetKind,
    /// gRPC addresses (`host:port`); pods are spread over them round-robin.
    pub targets: Vec<String>,
    /// The rollout.
    pub rollout: Rollout,
    /// Calls in flight at most.
    pub concurrency: usize,
    /// HTTP/2 connections per target.
    pub connections: usize,
    /// What to call.
    pub rpc: Rpc,
    /// `Some`: closed loop for this long, cycling through the rollout's calls with
    /// `concurrency` workers (throughput mode, no jitter). `None`: the rollout, once.
    pub duration: Option<Duration>,
    /// HTTP addresses (`host:port`) of the shims' `/metrics`.
    pub shim_metrics: Vec<String>,
    /// Envoy admin address (`host:port`), for `/stats`.
    pub envoy_admin: Option<String>,
    /// The API server, for `apiserver_request_total` by verb.
    pub kube: Option<KubeTarget>,
    /// gRPC addresses of shims to watch for convergence (empty: not measured).
    pub converge_shims: Vec<String>,
    /// Longest wait for convergence and for the shims to go idle.
    pub converge_timeout: Duration,
}

/// Counters of the shims, summed, as deltas over a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShimCounters {
    /// `snp_batches_total{result="ok"}`.
    pub batches_ok: f64,
    /// `snp_batches_total{result="error"}`.
    pub batches_error: f64,
    /// `snp_store_writes_total{verb="create"}` (any result).
    pub creates: f64,
    /// `snp_store_writes_total{verb="update"}` (any result).
    pub updates: f64,
    /// `snp_store_writes_total{verb="get"}` (re-reads after 409s).
    pub gets: f64,
    /// `snp_store_conflicts_total`.
    pub conflicts: f64,
    /// `snp_noop_skips_total`.
    pub noop_skips: f64,
    /// `snp_registrations_total` ((key, app) entries offered).
    pub registrations: f64,
    /// `snp_calls_total{result="ok"}` (registration and push calls).
    pub calls_ok: f64,
}

impl ShimCounters {
    /// Parses one shim's `/metrics`; an error if one of the metrics is absent.
    pub fn parse(text: &str) -> Result<Self, prom::MetricError> {
        let m = prom::Metrics::parse(text)?;
        let s = |name: &str, l: &[(&str, &str)]| m.sum(name, l);
        Ok(Self {
            batches_ok: s("snp_batches_total", &[("result", "ok")])?,
            batches_error: s("snp_batches_total", &[("result", "error")])?,
            creates: s("snp_store_writes_total", &[("verb", "create")])?,
            updates: s("snp_store_writes_total", &[("verb", "update")])?,
            gets: s("snp_store_writes_total", &[("verb", "get")])?,
            conflicts: s("snp_store_conflicts_total", &[])?,
            noop_skips: s("snp_noop_skips_total", &[])?,
            registrations: s("snp_registrations_total", &[])?,
            calls_ok: s("snp_calls_total", &[("result", "ok")])?,
        })
    }

    fn add(&mut self, o: &Self) {
        self.batches_ok += o.batches_ok;
        self.batches_error += o.batches_error;
        self.creates += o.creates;
        self.updates += o.updates;
        self.gets += o.gets;
        self.conflicts += o.conflicts;
        self.noop_skips += o.noop_skips;
        self.registrations += o.registrations;
        self.calls_ok += o.calls_ok;
    }

    fn minus(&self, o: &Self) -> Self {
        Self {
            batches_ok: self.batches_ok - o.batches_ok,
            batches_error: self.batches_error - o.batches_error,
            creates: self.creates - o.creates,
            updates: self.updates - o.updates,
            gets: self.gets - o.gets,
            conflicts: self.conflicts - o.conflicts,
            noop_skips: self.noop_skips - o.noop_skips,
            registrations: self.registrations - o.registrations,
            calls_ok: self.calls_ok - o.calls_ok,
        }
    }

    /// Store writes (creates and updates).
    pub fn writes(&self) -> f64 {
        self.creates + self.updates
    }
}

/// Counters of the filter (Envoy `/stats`), as deltas over a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvoyCounters {
    /// `wasmcustom.snp.registrations.ok`.
    pub registrations_ok: u64,
    /// `wasmcustom.snp.batches.sent`.
    pub batches_sent: u64,
    /// `wasmcustom.snp.batches.acked`.
    pub batches_acked: u64,
    /// `wasmcustom.snp.batches.failed`.
    pub batches_failed: u64,
}

impl EnvoyCounters {
    /// Parses Envoy's `/stats`; an error if a counter is absent.
    pub fn parse(text: &str) -> Result<Self> {
        let s = prom::envoy_stats(text);
        let g = |k: &str| prom::envoy_stat(&s, &format!("wasmcustom.snp.{k}"));
        Ok(Self {
            registrations_ok: g("registrations.ok")?,
            batches_sent: g("batches.sent")?,
            batches_acked: g("batches.acked")?,
            batches_failed: g("batches.failed")?,
        })
    }

    fn minus(&self, o: &Self) -> Self {
        Self {
            registrations_ok: self.registrations_ok.saturating_sub(o.registrations_ok),
            batches_sent: self.batches_sent.saturating_sub(o.batches_sent),
            batches_acked: self.batches_acked.saturating_sub(o.batches_acked),
            batches_failed: self.batches_failed.saturating_sub(o.batches_failed),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Calls answered OK.
    pub ok: u64,
    /// Calls that failed, by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// The first error's message.
    pub first_error: Option<String>,
    /// From the first call sent to the last answer.
    pub elapsed: Duration,
    /// Per-call latency.
    pub latency: Latency,
    /// First registration until every mapping was seen in the store (None: not measured
    /// or not reached within the timeout; see `missing`).
    pub converged: Option<Duration>,
    /// Mappings not seen when convergence was given up (0 when converged).
    pub missing: usize,
    /// Shim counters (deltas), if shims' metrics were given.
    pub shim: Option<ShimCounters>,
    /// Filter counters (deltas), if an Envoy admin was given.
    pub envoy: Option<EnvoyCounters>,
    /// API server requests for servicenamemappings (deltas), if a kubeconfig was given.
    pub api: Option<RequestCounts>,
    /// Registrations the rollout holds (one run of it).
    pub registrations: usize,
    /// Distinct keys.
    pub keys: usize,
}

impl LoadReport {
    /// Calls per second (OK ones).
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Failed calls.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The report as a two-column table.
    pub fn table(&self, title: &str) -> Table {
        let mut t = Table::new(&[title, "value"]);
        t.row(["registrations (calls) OK".into(), fmt_int(self.ok)]);
        if self.error_count() > 0 {
            let errs: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect();
            t.row(["errors".into(), errs.join(", ")]);
        }
        t.row([
            "distinct keys / registrations in the rollout".into(),
            format!(
                "{} / {}",
                fmt_int(self.keys as u64),
                fmt_int(self.registrations as u64)
            ),
        ]);
        t.row(["sent in".into(), fmt_dur(self.elapsed)]);
        t.row(["throughput".into(), fmt_rate(self.throughput())]);
        t.row(["latency p50".into(), fmt_dur(self.latency.p50())]);
        t.row(["latency p99".into(), fmt_dur(self.latency.p99())]);
        t.row(["latency p999".into(), fmt_dur(self.latency.p999())]);
        t.row(["latency max".into(), fmt_dur(self.latency.max())]);
        match (self.converged, self.missing) {
            (Some(c), _) => t.row(["convergence".into(), fmt_dur(c)]),
            (None, 0) => t.row(["convergence", "not measured"]),
            (None, m) => t.row([
                "convergence".into(),
                format!("NOT converged: {m} mappings missing"),
            ]),
        };
        if let Some(e) = &self.envoy {
            t.row([
                "filter batches sent / acked / failed".into(),
                format!(
                    "{} / {} / {}",
                    e.batches_sent, e.batches_acked, e.batches_failed
                ),
            ]);
        }
        if let Some(s) = &self.shim {
            t.row([
                "shim batches ok / error".into(),
                format!("{} / {}", s.batches_ok, s.batches_error),
            ]);
            t.row([
                "shim store writes (create + update)".into(),
                format!("{} ({} + {})", s.writes(), s.creates, s.updates),
            ]);
            t.row([
                "shim store conflicts / no-op skips".into(),
                format!("{} / {}", s.conflicts, s.noop_skips),
            ]);
        }
        if let Some(a) = &self.api {
            let verbs: Vec<String> = a
                .by_verb()
                .iter()
                .map(|(v, n)| format!("{v} {n}"))
                .collect();
            t.row([
                "API server requests by verb".into(),
                if verbs.is_empty() {
                    "none".into()
                } else {
                    verbs.join(", ")
                },
            ]);
            t.row(["API server requests by verb and code".into(), a.to_string()]);
            t.row([
                "API write requests / registration".into(),
                format!("{:.4}", a.writes() as f64 / self.ok.max(1) as f64),
            ]);
        }
        t
    }
}

struct Snapshot {
    shim: Option<ShimCounters>,
    envoy: Option<EnvoyCounters>,
    api: Option<RequestCounts>,
}

async fn snapshot(cfg: &LoadConfig, kube: Option<&::kube::Client>) -> Result<Snapshot> {
    let shim = if cfg.shim_metrics.is_empty() {
        None
    } else {
        let mut sum = ShimCounters::default();
        for addr in &cfg.shim_metrics {
            let text = http::get_ok(addr, "/metrics").await?;
            sum.add(&ShimCounters::parse(&text).with_context(|| format!("{addr}/metrics"))?);
        }
        Some(sum)
    };
    let envoy = match &cfg.envoy_admin {
        Some(a) => Some(EnvoyCounters::parse(&http::get_ok(a, "/stats").await?)?),
        None => None,
    };
    let api = match (kube, &cfg.kube) {
        (Some(c), Some(k)) => Some(kube::request_counts(c, &k.group).await?),
        _ => None,
    };
    Ok(Snapshot { shim, envoy, api })
}

/// Waits until every shim (and the filter) has nothing pending or in flight.
async fn wait_idle(cfg: &LoadConfig, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut busy = 0.0;
        for addr in &cfg.shim_metrics {
            let text = http::get_ok(addr, "/metrics").await?;
            let m = prom::Metrics::parse(&text)?;
            busy += m.sum("snp_pending_keys", &[])?;
            busy += m.sum("snp_batches_in_flight", &[])?;
        }
        if let Some(a) = &cfg.envoy_admin {
            let s = prom::envoy_stats(&http::get_ok(a, "/stats").await?);
            busy += prom::envoy_stat(&s, "wasmcustom.snp.pending_keys")? as f64;
        }
        if busy == 0.0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("still busy after {timeout:?} ({busy} pending or in flight)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Convergence watcher: `WatchMappings` on every shim for every namespace of the rollout.
struct Converge {
    missing: watch::Receiver<usize>,
    /// When the last missing mapping was seen.
    done_at: Arc<Mutex<Option<Instant>>>,
    tasks: tokio::task::JoinSet<()>,
}

async fn start_converge(cfg: &LoadConfig) -> Result<Option<Converge>> {
    if cfg.converge_shims.is_empty() || !cfg.rpc.is_registration() {
        return Ok(None);
    }
    let expected: Mappings = cfg.rollout.expected();
    let mut remaining: HashSet<(MappingKey, String)> = HashSet::new();
    for (k, apps) in expected.iter() {
        for a in apps.iter() {
            remaining.insert((k.clone(), a.to_owned()));
        }
    }
    let (tx, rx) = watch::channel(remaining.len());
    let state = Arc::new(Mutex::new((remaining, tx)));
    let done_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ready = Vec::new();
    for addr in &cfg.converge_shims {
        // Up to 100 streams per connection (HTTP/2 servers often allow 100-200).
        let namespaces: Vec<String> = (0..cfg.rollout.namespaces)
            .map(|n| cfg.rollout.namespace(n))
            .collect();
        for chunk in namespaces.chunks(100) {
            let ch = rawgrpc::connect(addr).await?;
            for ns in chunk {
                let mut client = MappingServiceClient::new(ch.clone());
                let stream = client
                    .watch_mappings(WatchMappingsRequest {
                        namespace: ns.clone(),
                        interface_names: vec![],
                    })
                    .await
                    .with_context(|| format!("WatchMappings on {addr}"))?;
                let mut stream = stream.into_inner();
                let state = Arc::clone(&state);
                let done_at = Arc::clone(&done_at);
                let (rtx, rrx) = tokio::sync::oneshot::channel::<()>();
                ready.push(rrx);
                tasks.spawn(async move {
                    let mut rtx = Some(rtx);
                    while let Ok(Some(ev)) = stream.message().await {
                        if let Some(r) = rtx.take() {
                            let _ = r.send(());
                        }
                        let mut g = state
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let (remaining, tx) = &mut *g;
                        if remaining.is_empty() {
                            continue;
                        }
                        for m in ev.mappings {
                            let key = MappingKey::new(m.namespace, m.interface_name);
                            for app in m.application_names {
                                remaining.remove(&(key.clone(), app));
                            }
                        }
                        if remaining.is_empty() {
                            *done_at
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some(Instant::now());
                        }
                        let _ = tx.send(remaining.len());
                    }
                });
            }
        }
    }
    // Every stream has delivered its SNAPSHOT: changes from now on are seen.
    for r in ready {
        let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
    }
    Ok(Some(Converge {
        missing: rx,
        done_at,
        tasks,
    }))
}

/// Runs one load run.
pub async fn run(cfg: &LoadConfig) -> Result<LoadReport> {
    if cfg.targets.is_empty() {
        bail!("no target");
    }
    let kube_client = match &cfg.kube {
        Some(k) => Some(kube::client(&k.kubeconfig).await?),
        None => None,
    };
    if let Some(c) = &kube_client {
        kube::ensure_namespaces(c, &cfg.rollout).await?;
    }
    // Connections: `connections` per target.
    let mut channels: Vec<Vec<Channel>> = Vec::new();
    for t in &cfg.targets {
        let mut v = Vec::new();
        for _ in 0..cfg.connections.max(1) {
            v.push(rawgrpc::connect(t).await?);
        }
        channels.push(v);
    }
    let converge = start_converge(cfg).await?;
    let before = snapshot(cfg, kube_client.as_ref()).await?;

    let rpc = cfg.rpc;
    let get_body = if rpc == Rpc::Get {
        Some(get_mappings_body(&cfg.rollout))
    } else {
        None
    };
    let (ok, errors, first_error, elapsed, latency, first_sent) = match cfg.duration {
        Some(d) => {
            let calls: Arc<Vec<Bytes>> = Arc::new(match &get_body {
                Some(b) => vec![b.clone()],
                None => cfg.rollout.calls(),
            });
            closed_loop(&channels, calls, rpc, cfg.concurrency, d).await
        }
        None => {
            rollout_once(
                &channels,
                cfg.rollout.pods(),
                rpc,
                cfg.concurrency,
                get_body,
            )
            .await
        }
    };

    let mut converged = None;
    let mut missing = 0;
    if let Some(mut c) = converge {
        let deadline = tokio::time::Instant::now() + cfg.converge_timeout;
        loop {
            let m = *c.missing.borrow_and_update();
            if m == 0 {
                let at = *c
                    .done_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                converged = at.map(|at| at.saturating_duration_since(first_sent));
                break;
            }
            if tokio::time::timeout_at(deadline, c.missing.changed())
                .await
                .is_err()
            {
                missing = *c.missing.borrow();
                break;
            }
        }
        c.tasks.abort_all();
    }
    if !cfg.shim_metrics.is_empty() || cfg.envoy_admin.is_some() {
        wait_idle(cfg, cfg.converge_timeout).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let after = snapshot(cfg, kube_client.as_ref()).await?;
    Ok(LoadReport {
        ok,
        errors,
        first_error,
        elapsed,
        latency,
        converged,
        missing,
        shim: after.shim.zip(before.shim).map(|(a, b)| a.minus(&b)),
        envoy: after.envoy.zip(before.envoy).map(|(a, b)| a.minus(&b)),
        api: after.api.zip(before.api).map(|(a, b)| a.since(&b)),
        registrations: cfg.rollout.registrations(),
        keys: cfg.rollout.keys(),
    })
}

/// A `GetMappingsRequest` for the first namespace and two interfaces (figure 2's call).
pub fn get_mappings_body(r: &Rollout) -> Bytes {
    use prost::Message;
    Bytes::from(
        snp_proto::api::GetMappingsRequest {
            namespace: r.namespace(0),
            interface_names: vec![Rollout::interface(0), Rollout::interface(1)],
        }
        .encode_to_vec(),
    )
}

type Outcome = (
    u64,
    BTreeMap<String, u64>,
    Option<String>,
    Duration,
    Latency,
    Instant,
);

/// The target (of `targets`) that pod `index` registers with: pods are spread round-robin.
pub fn target_of(index: usize, targets: usize) -> usize {
    index % targets.max(1)
}

fn pick(channels: &[Vec<Channel>], n: usize) -> &Channel {
    let t = &channels[target_of(n, channels.len())];
    &t[(n / channels.len()) % t.len()]
}

async fn closed_loop(
    channels: &[Vec<Channel>],
    calls: Arc<Vec<Bytes>>,
    rpc: Rpc,
    concurrency: usize,
    d: Duration,
) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + d;
    let mut set = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let ch = pick(channels, w).clone();
        let calls = Arc::clone(&calls);
        let next = Arc::clone(&next);
        set.spawn(async move {
            let mut lat = Latency::new();
            let mut ok = 0u64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut first_error = None;
            loop {
                let t = Instant::now();
                if t >= deadline {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let body = calls[i % calls.len()].clone();
                match rawgrpc::unary(&ch, rpc.path(i), body).await {
                    Ok(_) => {
                        ok += 1;
                        lat.record(t.elapsed());
                    }
                    Err(s) => {
                        *errors.entry(format!("{:?}", s.code())).or_default() += 1;
                        first_error.get_or_insert_with(|| s.message().to_owned());
                    }
                }
            }
            (ok, errors, first_error, lat, Instant::now())
        });
    }
    let mut total = (0, BTreeMap::new(), None, Latency::new());
    let mut end = start;
    while let Some(r) = set.join_next().await {
        if let Ok((ok, errors, fe, lat, finished)) = r {
            total.0 += ok;
            for (k, v) in errors {
                *total.1.entry(k).or_default() += v;
            }
            if total.2.is_none() {
                total.2 = fe;
            }
            total.3.merge(&lat);
            end = end.max(finished);
        }
    }
    (total.0, total.1, total.2, end - start, total.3, start)
}

/// What [`send_pods`] measured.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Calls answered OK.
    pub ok: u64,
    /// Failed calls, by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// The first error's message.
    pub first_error: Option<String>,
    /// From the first call sent to the last answer.
    pub elapsed: Duration,
    /// Per-call latency.
    pub latency: Latency,
    /// When the first call was sent.
    pub first_sent: Instant,
}

/// Sends the calls of `pods` once, each pod from its start time and its calls one after the
/// other, `concurrency` in flight at most, pods spread over `targets` round-robin
/// (`connections` each): a rollout whose calls were built by the caller.
pub async fn send_pods(
    targets: &[String],
    connections: usize,
    pods: Vec<Pod>,
    rpc: Rpc,
    concurrency: usize,
) -> Result<Sent> {
    if targets.is_empty() {
        bail!("no target");
    }
    let mut channels: Vec<Vec<Channel>> = Vec::new();
    for t in targets {
        let mut v = Vec::new();
        for _ in 0..connections.max(1) {
            v.push(rawgrpc::connect(t).await?);
        }
        channels.push(v);
    }
    let (ok, errors, first_error, elapsed, latency, first_sent) =
        rollout_once(&channels, pods, rpc, concurrency, None).await;
    Ok(Sent {
        ok,
        errors,
        first_error,
        elapsed,
        latency,
        first_sent,
    })
}

async fn rollout_once(
    channels: &[Vec<Channel>],
    pods: Vec<Pod>,
    rpc: Rpc,
    concurrency: usize,
    get_body: Option<Bytes>,
) -> Outcome {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = tokio::time::Instant::now();
    let first = pods.first().map_or(Duration::ZERO, |p| p.start);
    let first_sent = Instant::now() + first;
    let mut set = tokio::task::JoinSet::new();
    for pod in pods {
        let ch = pick(channels, pod.index).clone();
        let sem = Arc::clone(&sem);
        let get_body = get_body.clone();
        set.spawn(async move {
            tokio::time::sleep_until(start + pod.start).await;
            let mut lat: Vec<u32> = Vec::with_capacity(pod.calls.len());
            let mut errors: Vec<(String, String)> = Vec::new();
            for (i, body) in pod.calls.into_iter().enumerate() {
                let Ok(_permit) = sem.acquire().await else {
                    break;
                };
                let body = get_body.clone().unwrap_or(body);
                let t = Instant::now();
                match rawgrpc::unary(&ch, rpc.path(pod.index + i), body).await {
                    Ok(_) => lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
                    Err(s) => errors.push((format!("{:?}", s.code()), s.message().to_owned())),
                }
            }
            (lat, errors, Instant::now())
        });
    }
    let mut latency = Latency::new();
    let mut ok = 0;
    let mut errors = BTreeMap::new();
    let mut first_error = None;
    let mut end = first_sent;
    while let Some(r) = set.join_next().await {
        if let Ok((lat, errs, finished)) = r {
            ok += lat.len() as u64;
            for us in lat {
                latency.record(Duration::from_micros(u64::from(us)));
            }
            for (code, msg) in errs {
                *errors.entry(code).or_default() += 1;
                first_error.get_or_insert(msg);
            }
            end = end.max(finished);
        }
    }
    (
        ok,
        errors,
        first_error,
        end.saturating_duration_since(first_sent),
        latency,
        first_sent,
    )
}

/// Where the API server is.
pub fn kube_target(kubeconfig: Option<PathBuf>, group: &str) -> Option<KubeTarget> {
    kubeconfig.map(|k| KubeTarget {
        kubeconfig: k,
        group: group.to_owned(),
    })
}
