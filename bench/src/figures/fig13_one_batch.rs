//! Figure 13: one batch per Envoy. Each Envoy worker runs its own filter VM; with the
//! filter's shared outbox (`shared_batch`, the default) one worker sends the batches of
//! all of them, without it each worker sends its own. Measured with 1, 2 and 4 workers:
//! `PushMappings` calls per burst of registrations (one debounce window), counted by the
//! shim, and Envoy's CPU per registration on both paths, alternated in one run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use snp_proto::api::mapping_service_client::MappingServiceClient;
use snp_proto::api::GetMappingsRequest;

use super::setup::*;
use super::{print_table, section, Env, Verdict};
use crate::load::{self, Rpc};
use crate::procs::cpu_time;
use crate::prom;
use crate::stats::{fmt_dur, fmt_int};
use crate::table::Table;
use crate::workload::{unique_prefix, Rollout};
use snp_testkit::http;

/// The filter's debounce windows in this figure: one burst fits in one window, on both
/// paths, however slowly this machine dials.
fn windows() -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("first_check_ms".into(), json!(1500));
    m.insert("debounce_after_ms".into(), json!(1500));
    m.insert("debounce_max_ms".into(), json!(3000));
    m
}

/// Each burst is measured over this long from its first call (sent, batched, stored).
const BURST_SPAN: Duration = Duration::from_secs(6);

/// One path's totals at one worker count.
#[derive(Debug, Default, Clone)]
struct Side {
    pushes: Vec<u64>,
    registrations: u64,
    cpu: Duration,
    workers_used: usize,
    handed: u64,
    taken: u64,
    lease_taken: u64,
    conflicts: u64,
}

impl Side {
    fn cpu_per_registration(&self) -> Duration {
        self.cpu / u32::try_from(self.registrations.max(1)).unwrap_or(u32::MAX)
    }
}

async fn push_calls(shim: &Shim) -> Result<u64> {
    let (_, text) = http::get(&shim.http, "/metrics").await?;
    let n = prom::sum(&text, "snp_calls_total", &[("api", "push")])?;
    Ok(n as u64)
}

async fn envoy_stats(envoy: &Envoy) -> Result<BTreeMap<String, u64>> {
    let (_, text) = http::get(&envoy.admin, "/stats").await?;
    Ok(prom::envoy_stats(&text))
}

fn snp_stat(stats: &BTreeMap<String, u64>, name: &str) -> Result<u64> {
    prom::envoy_stat(stats, &format!("wasmcustom.snp.{name}"))
}

/// Workers of the apps listener that accepted connections.
fn workers_used(stats: &BTreeMap<String, u64>, apps: &str) -> usize {
    let prefix = format!("listener.{}.worker_", apps.replace(':', "_"));
    stats
        .iter()
        .filter(|(k, v)| k.starts_with(&prefix) && k.ends_with(".downstream_cx_total") && **v > 0)
        .count()
}

/// Whether the shim holds every mapping of `r`.
async fn stored(shim: &Shim, r: &Rollout) -> Result<bool> {
    let ch = crate::rawgrpc::connect(&shim.grpc).await?;
    let mut client = MappingServiceClient::new(ch);
    let expected = r.expected();
    let got = client
        .get_mappings(GetMappingsRequest {
            namespace: r.namespace(0),
            interface_names: vec![],
        })
        .await
        .context("GetMappings")?
        .into_inner();
    let mut held = snp_core::Mappings::new();
    for m in got.mappings {
        for a in &m.application_names {
            held.insert(
                snp_core::MappingKey::new(m.namespace.as_str(), m.interface_name.as_str()),
                a,
            );
        }
    }
    Ok(expected.is_subset(&held))
}

/// One burst through `envoy`: a rollout of new pods, all starting at once, over many
/// connections (so over every worker); waits until the shim stores all of it.
async fn burst(
    shim: &Shim,
    envoy: &Envoy,
    size: (usize, usize, usize),
    seed: u64,
    side: &mut Side,
) -> Result<()> {
    let (pods, interfaces, apps) = size;
    let r = Rollout {
        pods,
        interfaces,
        namespaces: 1,
        apps,
        prefix: unique_prefix("fig13"),
        jitter: Duration::ZERO,
        seed,
    };
    let pushes0 = push_calls(shim).await?;
    let cpu0 = cpu_time(envoy.proc.pid())?;
    let t0 = Instant::now();
    let sent = load::send_pods(std::slice::from_ref(&envoy.apps), 32, r.pods(), Rpc::A, 32).await?;
    if sent.ok != r.registrations() as u64 {
        bail!(
            "figure 13: {} of {} registrations answered OK ({:?}: {:?})",
            sent.ok,
            r.registrations(),
            sent.errors,
            sent.first_error
        );
    }
    let deadline = t0 + BURST_SPAN + Duration::from_secs(20);
    while !stored(shim, &r).await? {
        if Instant::now() > deadline {
            bail!("figure 13: the shim does not hold every mapping of the burst");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same span on both paths, so that their idle ticks weigh alike.
    if let Some(rest) = (t0 + BURST_SPAN).checked_duration_since(Instant::now()) {
        tokio::time::sleep(rest).await;
    }
    side.cpu += cpu_time(envoy.proc.pid())?.saturating_sub(cpu0);
    side.registrations += sent.ok;
    side.pushes.push(push_calls(shim).await? - pushes0);
    Ok(())
}

/// Figure 13. Goals: 1 batch per window whatever the worker count; the shared path's
/// Envoy CPU per registration at most 1.05 times the per-worker path's.
pub async fn fig13(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 13: one batch per Envoy, whatever its worker count");
    let bursts = if env.quick { 2 } else { 4 };
    let size = if env.quick {
        (40, 5, 10)
    } else {
        (200, 10, 20)
    };
    println!(
        "Envoy with 1, 2 and 4 workers (`--concurrency`), two Envoys per worker count on one `snp-shim` (embedded store): the filter's default (`shared_batch` on: every worker adds the mappings it answers to an outbox in Envoy's shared data, the worker holding the lease sends) and `shared_batch: false` (each worker sends its own). {bursts} bursts per Envoy, alternated between the two: a rollout of {} pods x {} interfaces ({} applications, new names each burst), all starting at once over 32 connections, 32 calls in flight. The filter's windows are widened (first check and quiet period 1.5 s, at most 3 s) so that one burst is one window on both paths. `PushMappings` calls are the shim's own count; Envoy's CPU is its process's user + system time over {BURST_SPAN:?} from each burst's first call (sent, batched, stored).\n",
        size.0, size.1, size.2
    );
    let shim = Shim::start(env, "fig13-shim", None, &[]).await?;
    let up = Upstreams {
        shim: port_of(&shim.grpc),
        app_grpc: 1,
    };
    let mut results: Vec<(usize, Side, Side)> = Vec::new();
    for workers in [1usize, 2, 4] {
        let mut off = windows();
        off.insert("shared_batch".into(), json!(false));
        let mut shared_envoy = Envoy::start_with(
            env,
            &format!("fig13-shared-{workers}"),
            workers,
            up,
            windows(),
        )
        .await?;
        let mut own_envoy =
            Envoy::start_with(env, &format!("fig13-perworker-{workers}"), workers, up, off).await?;
        let (mut shared, mut own) = (Side::default(), Side::default());
        for b in 0..bursts {
            let seed = b as u64 + 1;
            if b % 2 == 0 {
                burst(&shim, &shared_envoy, size, seed, &mut shared).await?;
                burst(&shim, &own_envoy, size, seed, &mut own).await?;
            } else {
                burst(&shim, &own_envoy, size, seed, &mut own).await?;
                burst(&shim, &shared_envoy, size, seed, &mut shared).await?;
            }
        }
        for (envoy, side) in [(&mut shared_envoy, &mut shared), (&mut own_envoy, &mut own)] {
            envoy.check_vm_healthy()?;
            let s = envoy_stats(envoy).await?;
            side.workers_used = workers_used(&s, &envoy.apps);
            side.handed = snp_stat(&s, "shared.handed")?;
            side.taken = snp_stat(&s, "shared.taken")?;
            side.lease_taken = snp_stat(&s, "shared.lease_taken")?;
            side.conflicts = snp_stat(&s, "shared.cas_conflicts")?;
        }
        results.push((workers, shared, own));
    }
    let mut t = Table::new(&[
        "Envoy workers",
        "path",
        "workers that took calls",
        "PushMappings per burst",
        "registrations",
        "Envoy CPU per registration",
        "outbox: handed / taken / lease taken / CAS conflicts",
    ]);
    for (workers, shared, own) in &results {
        for (label, s) in [("shared outbox (default)", shared), ("per worker", own)] {
            t.row([
                workers.to_string(),
                label.to_owned(),
                format!("{} of {workers}", s.workers_used),
                s.pushes
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                fmt_int(s.registrations),
                fmt_dur(s.cpu_per_registration()),
                format!(
                    "{} / {} / {} / {}",
                    s.handed, s.taken, s.lease_taken, s.conflicts
                ),
            ]);
        }
    }
    print_table("", &t);
    let mut v = Vec::new();
    for (workers, shared, _) in &results {
        let worst = shared.pushes.iter().copied().max().unwrap_or(0);
        v.push(Verdict::check(
            format!("13. PushMappings per window, {workers} Envoy worker(s), shared outbox"),
            "1",
            format!(
                "{} (bursts: {})",
                worst,
                shared
                    .pushes
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            worst == 1 && shared.pushes.iter().all(|n| *n == 1),
        ));
    }
    let ratio_of = |shared: &Side, own: &Side| {
        shared.cpu.as_secs_f64()
            / shared.registrations.max(1) as f64
            / (own.cpu.as_secs_f64() / own.registrations.max(1) as f64).max(f64::MIN_POSITIVE)
    };
    for (workers, shared, own) in results.iter().take(results.len().saturating_sub(1)) {
        v.push(Verdict::info(
            format!(
                "13. Envoy CPU per registration, shared outbox / per worker ({workers} worker(s))"
            ),
            format!(
                "{:.3} ({} / {})",
                ratio_of(shared, own),
                fmt_dur(shared.cpu_per_registration()),
                fmt_dur(own.cpu_per_registration())
            ),
        ));
    }
    if let Some((workers, shared, own)) = results.last() {
        let ratio = ratio_of(shared, own);
        v.push(Verdict::check(
            format!(
                "13. Envoy CPU per registration, shared outbox / per worker ({workers} workers)"
            ),
            "<= 1.05",
            format!(
                "{ratio:.3} ({} / {})",
                fmt_dur(shared.cpu_per_registration()),
                fmt_dur(own.cpu_per_registration())
            ),
            ratio <= 1.05,
        ));
        let own_worst = own.pushes.iter().copied().max().unwrap_or(0);
        v.push(Verdict::info(
            format!("13. PushMappings per window, {workers} workers, per worker (for comparison)"),
            format!("up to {own_worst}"),
        ));
    }
    Ok(v)
}
