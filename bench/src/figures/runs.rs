//! Load runs shared by the figures: rollouts, closed-loop configurations, A/B rotations
//! with the servers' CPU time, and their tables.

use std::time::Duration;

use anyhow::{bail, Result};

use super::setup::Shim;
use super::Env;
use crate::kube::KubeTarget;
use crate::load::{self, LoadConfig, LoadReport, Rpc, TargetKind};
use crate::stats::{fmt_dur, fmt_int, fmt_rate, Latency};
use crate::table::Table;
use crate::workload::{unique_prefix, Rollout};

pub(crate) fn rollout(
    pods: usize,
    interfaces: usize,
    namespaces: usize,
    jitter: Duration,
    tag: &str,
) -> Rollout {
    Rollout {
        pods,
        interfaces,
        namespaces,
        apps: 1,
        prefix: unique_prefix(tag),
        jitter,
        seed: 1,
    }
}

/// A closed-loop load config with no metrics: throughput and latency only.
pub(crate) fn closed(
    targets: Vec<String>,
    kind: TargetKind,
    rpc: Rpc,
    concurrency: usize,
    connections: usize,
    d: Duration,
) -> LoadConfig {
    LoadConfig {
        kind,
        targets,
        rollout: rollout(200, 10, 1, Duration::ZERO, "ab"),
        concurrency,
        connections,
        rpc,
        duration: Some(d),
        shim_metrics: vec![],
        envoy_admin: None,
        kube: None,
        converge_shims: vec![],
        converge_timeout: Duration::from_secs(30),
    }
}

/// The sum of several closed-loop rounds of one side.
#[derive(Debug, Clone, Default)]
pub struct Agg {
    /// Calls answered OK.
    pub ok: u64,
    /// Failed calls.
    pub errors: u64,
    /// Time measured.
    pub elapsed: Duration,
    /// Latency over all rounds.
    pub latency: Latency,
    /// Throughput of each round.
    pub per_round: Vec<f64>,
    /// CPU time the measured server processes used during the rounds.
    pub cpu: Duration,
}

impl Agg {
    pub(crate) fn add(&mut self, r: &LoadReport, cpu: Duration) {
        self.ok += r.ok;
        self.errors += r.error_count();
        self.elapsed += r.elapsed;
        self.latency.merge(&r.latency);
        self.per_round.push(r.throughput());
        self.cpu += cpu;
    }

    /// Calls per second over all rounds.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Server CPU per call.
    pub fn cpu_per_call(&self) -> Duration {
        self.cpu
            .checked_div(u32::try_from(self.ok.max(1)).unwrap_or(u32::MAX))
            .unwrap_or_default()
    }

    fn row(&self, label: &str) -> Vec<String> {
        let rounds: Vec<String> = self
            .per_round
            .iter()
            .map(|r| fmt_int(r.round() as u64))
            .collect();
        vec![
            label.to_owned(),
            fmt_int(self.ok),
            fmt_int(self.errors),
            fmt_rate(self.throughput()),
            rounds.join(" / "),
            fmt_dur(self.latency.p50()),
            fmt_dur(self.latency.p99()),
            fmt_dur(self.latency.p999()),
            format!("{:.1} µs", self.cpu_per_call().as_secs_f64() * 1e6),
        ]
    }
}

pub(crate) fn ab_table(rows: &[(&str, &Agg)]) -> Table {
    let mut t = Table::new(&[
        "set-up",
        "calls",
        "errors",
        "throughput",
        "per round (/s)",
        "p50",
        "p99",
        "p999",
        "server CPU / call",
    ]);
    for (label, a) in rows {
        t.row(a.row(label));
    }
    t
}

pub(crate) fn cpu_of(pids: &[u32]) -> Duration {
    pids.iter()
        .filter_map(|p| crate::procs::cpu_time(*p).ok())
        .sum()
}

pub(crate) async fn measured(cfg: &LoadConfig, pids: &[u32]) -> Result<(LoadReport, Duration)> {
    let before = cpu_of(pids);
    let r = load::run(cfg).await?;
    Ok((r, cpu_of(pids).saturating_sub(before)))
}

/// Alternates A and B `rounds` times (A B A B ...), after a short warm-up of each.
/// `pids_a`/`pids_b`: the server processes whose CPU time is charged to each side.
pub(crate) async fn ab(
    env: &Env,
    a: &LoadConfig,
    b: &LoadConfig,
    pids_a: &[u32],
    pids_b: &[u32],
) -> Result<(Agg, Agg)> {
    let mut v = rotate(env, &[(a, pids_a), (b, pids_b)]).await?;
    let rb = v.pop().unwrap_or_default();
    let ra = v.pop().unwrap_or_default();
    Ok((ra, rb))
}

/// Runs the set-ups in turn (A B C A B C ...) `rounds` times, after a short warm-up of
/// each, charging each the CPU time of its processes.
pub(crate) async fn rotate(env: &Env, setups: &[(&LoadConfig, &[u32])]) -> Result<Vec<Agg>> {
    for (cfg, _) in setups {
        let mut warm = (*cfg).clone();
        warm.duration = Some(Duration::from_millis(500));
        load::run(&warm).await?;
    }
    let mut out = vec![Agg::default(); setups.len()];
    for _ in 0..env.rounds.max(1) {
        for (i, (cfg, pids)) in setups.iter().enumerate() {
            let (r, cpu) = measured(cfg, pids).await?;
            out[i].add(&r, cpu);
        }
    }
    Ok(out)
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A storm into one shim: the calls of rollout `r` from 64 callers over 4 connections,
/// measured until the shim holds every mapping (or `converge_timeout` passes).
pub(crate) fn storm(
    shim: &Shim,
    r: Rollout,
    kube: Option<KubeTarget>,
    converge_timeout: Duration,
) -> LoadConfig {
    LoadConfig {
        kind: TargetKind::Shim,
        targets: vec![shim.grpc.clone()],
        rollout: r,
        concurrency: 64,
        connections: 4,
        rpc: Rpc::Mixed,
        duration: None,
        shim_metrics: vec![shim.http.clone()],
        envoy_admin: None,
        kube,
        converge_shims: vec![shim.grpc.clone()],
        converge_timeout,
    }
}

/// Fails, naming `what`, if a run had failed calls or mappings that never arrived.
pub(crate) fn check_complete(what: &str, report: &LoadReport) -> Result<()> {
    if report.error_count() > 0 || report.missing > 0 {
        bail!(
            "{what} failed: {:?} {:?}, {} missing",
            report.errors,
            report.first_error,
            report.missing
        );
    }
    Ok(())
}

/// Samples the RSS of `pid` every `every` while `run` runs; returns its result and the
/// highest sample.
pub(crate) async fn sampled<T>(
    pid: u32,
    every: Duration,
    run: impl std::future::Future<Output = T>,
) -> (T, u64) {
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut peak = 0u64;
        loop {
            if let Ok(m) = crate::procs::memory(pid) {
                peak = peak.max(m.rss);
            }
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
        peak
    });
    let out = run.await;
    let _ = stop_tx.send(());
    let peak = sampler.await.unwrap_or(0);
    (out, peak)
}
