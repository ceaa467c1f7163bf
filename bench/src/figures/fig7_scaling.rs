//! Figure 7: convergence and writes as the rollout grows.

use std::time::Duration;

use anyhow::Result;

use super::runs::*;
use super::setup::*;
use super::{print_table, section, Env, Verdict};
use crate::kube::KubeTarget;
use crate::load::{self, LoadReport};
use crate::stats::{fmt_dur, fmt_int, fmt_rate};
use crate::table::Table;
use crate::workload::Rollout;

struct ScaleRow {
    store: &'static str,
    series: &'static str,
    report: LoadReport,
    writes: f64,
    batches: f64,
}

/// Figure 7: convergence and writes as the rollout grows, over a fixed set of keys and over
/// keys that grow with it.
pub async fn fig7(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 7: scaling");
    let sizes: &[usize] = if env.quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    let jitter = Duration::from_secs(3);
    // (series, registrations) -> (pods, interfaces, namespaces)
    let shape = |series: &str, regs: usize| -> (usize, usize, usize) {
        match series {
            // 100 keys: 10 namespaces x 10 interfaces; more pods.
            "fixed" => (regs / 100, 10, 10),
            // keys = registrations / 10: 10 pods x (regs / 100) interfaces x 10 namespaces.
            _ => (10, regs / 100, 10),
        }
    };
    println!(
        "Rollouts straight into one shim (default flags), one application per namespace, pods starting within {jitter:?}, 64 calls in flight. Fixed keys: 10 namespaces x 10 interfaces (100 keys), more pods. Growing keys: 10 namespaces x 10 pods, more interfaces (keys = registrations / 10). A fresh shim per run; convergence is first registration to the last mapping seen through `WatchMappings`.\n"
    );
    let mut rows: Vec<ScaleRow> = Vec::new();
    for series in ["fixed", "growing"] {
        for &regs in sizes {
            let (p, i, n) = shape(series, regs);
            let shim = Shim::start(env, &format!("fig7-shim-{series}-{regs}"), None, &[]).await?;
            let report = run_storm(&shim, rollout(p, i, n, jitter, "fig7"), None).await?;
            let s = report.shim.clone().unwrap_or_default();
            rows.push(ScaleRow {
                store: "embedded",
                series,
                writes: s.writes(),
                batches: s.batches_ok,
                report,
            });
        }
    }
    // The same against the real API server (writes are API requests; the shim's default
    // client-side limit of 20 requests/s applies).
    let api = ApiServer::start(env, "fig7-apiserver").await?;
    for series in ["fixed", "growing"] {
        for &regs in sizes {
            if series == "growing" && regs >= 100_000 && !env.kube_full {
                continue;
            }
            let (p, i, n) = shape(series, regs);
            let shim = Shim::start(
                env,
                &format!("fig7-kshim-{series}-{regs}"),
                Some(&api.shim_kubeconfig),
                &[],
            )
            .await?;
            let report =
                run_storm(&shim, rollout(p, i, n, jitter, "fig7k"), Some(api.target())).await?;
            let writes = report.api.as_ref().map_or(0, |a| a.writes()) as f64;
            let batches = report.shim.as_ref().map_or(0.0, |s| s.batches_ok);
            rows.push(ScaleRow {
                store: "API server",
                series,
                writes,
                batches,
                report,
            });
        }
    }
    let mut t = Table::new(&[
        "store",
        "keys",
        "registrations",
        "sent in",
        "throughput",
        "convergence",
        "batches",
        "writes",
        "writes / key",
        "writes / 1k registrations",
    ]);
    for r in &rows {
        let rep = &r.report;
        t.row([
            format!("{} ({})", r.store, r.series),
            fmt_int(rep.keys as u64),
            fmt_int(rep.ok),
            fmt_dur(rep.elapsed),
            fmt_rate(rep.throughput()),
            rep.converged.map_or("-".into(), fmt_dur),
            format!("{}", r.batches),
            format!("{}", r.writes),
            format!("{:.2}", r.writes / rep.keys.max(1) as f64),
            format!("{:.2}", r.writes * 1000.0 / rep.ok.max(1) as f64),
        ]);
    }
    print_table("", &t);
    if !env.kube_full {
        println!("The 100,000-registration growing-keys run against the API server (10,000 keys) is left out: at the shim's default --kube-qps 20 its 10,000 creates take over 8 minutes (`--kube-full` runs it).\n");
    }
    let mut verdicts = Vec::new();
    for store in ["embedded", "API server"] {
        let fixed: Vec<&ScaleRow> = rows
            .iter()
            .filter(|r| r.store == store && r.series == "fixed")
            .collect();
        if let (Some(first), Some(last)) = (fixed.first(), fixed.last()) {
            let growth = ratio(last.writes, first.writes);
            let regs_growth = ratio(last.report.ok as f64, first.report.ok as f64);
            verdicts.push(Verdict::check(
                format!(
                    "7. {store}: writes at {}x the registrations over the same 100 keys",
                    regs_growth.round()
                ),
                "grows with keys, not registrations (<= 1.5x)",
                format!("{growth:.2}x ({} -> {} writes)", first.writes, last.writes),
                growth <= 1.5,
            ));
        }
        let growing: Vec<&ScaleRow> = rows
            .iter()
            .filter(|r| r.store == store && r.series == "growing")
            .collect();
        if !growing.is_empty() {
            let wk: Vec<String> = growing
                .iter()
                .map(|r| format!("{:.2}", r.writes / r.report.keys.max(1) as f64))
                .collect();
            verdicts.push(Verdict::info(
                format!("7. {store}: writes per key as keys grow"),
                wk.join(" / "),
            ));
        }
    }
    Ok(verdicts)
}

async fn run_storm(shim: &Shim, r: Rollout, kube: Option<KubeTarget>) -> Result<LoadReport> {
    let report = load::run(&storm(shim, r, kube, Duration::from_secs(900))).await?;
    check_complete("storm", &report)?;
    Ok(report)
}
