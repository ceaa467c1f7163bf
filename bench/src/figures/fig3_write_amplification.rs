//! Figure 3: write amplification against a real API server: shims against naive writers.

use std::time::Duration;

use anyhow::{bail, Result};

use super::runs::*;
use super::setup::*;
use super::{print_table, section, Env, Verdict};
use crate::load::{self, LoadConfig, Rpc, TargetKind};
use crate::naive::{self, NaiveMode};
use crate::stats::{fmt_dur, fmt_int};
use crate::table::Table;

/// Figure 3: API writes per registration for a 200 x 10 rollout through 4 shims, against
/// naive writers. Target: <= 0.01.
pub async fn fig3(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 3: write amplification against a real API server");
    let (pods, ifaces) = if env.quick { (50, 4) } else { (200, 10) };
    let api = ApiServer::start(env, "fig3-apiserver").await?;
    let mut shims = Vec::new();
    for i in 0..4 {
        shims.push(
            Shim::start(
                env,
                &format!("fig3-shim-{i}"),
                Some(&api.shim_kubeconfig),
                &[],
            )
            .await?,
        );
    }
    let (c, jitter) = (64, Duration::from_secs(3));
    println!(
        "A rollout of {pods} pods x {ifaces} interfaces (one deployment: one application) in one namespace, pods starting within {jitter:?}, {c} calls in flight at most. snp: the pods are spread over 4 `snp-shim --store kubernetes` processes (default flags: seed debounce windows, --kube-qps 20). Naive: `snp-naive-writer`, the same rollout, each registration a read-modify-write against the API server (no client-side rate limit, {c} in flight). Requests are the API server's own `apiserver_request_total` for servicenamemappings.\n"
    );
    let cfg = LoadConfig {
        kind: TargetKind::Shim,
        targets: shims.iter().map(|s| s.grpc.clone()).collect(),
        rollout: rollout(pods, ifaces, 1, jitter, "fig3"),
        concurrency: c,
        connections: 1,
        rpc: Rpc::Mixed,
        duration: None,
        shim_metrics: shims.iter().map(|s| s.http.clone()).collect(),
        envoy_admin: None,
        kube: Some(api.target()),
        converge_shims: shims.iter().map(|s| s.grpc.clone()).collect(),
        converge_timeout: Duration::from_secs(60),
    };
    let snp = load::run(&cfg).await?;
    check_complete("figure 3: snp run", &snp)?;
    let client = crate::kube::client(&api.kubeconfig).await?;
    let stored = crate::kube::list_mappings(&client, &api.group, &cfg.rollout.prefix).await?;
    let expected = cfg.rollout.expected();
    let exact = stored == expected;
    print_table("snp (load generator's report):", &snp.table("snp: 4 shims"));
    let regs = cfg.rollout.registrations() as f64;
    let api_snp = snp.api.clone().unwrap_or_default();
    let mut t = Table::new(&[
        "writer",
        "registrations",
        "API write requests (2xx)",
        "write requests / registration",
        "API requests",
        "requests / registration",
        "by verb",
        "convergence",
        "registration p50 / p99",
    ]);
    let verbs = |a: &crate::prom::RequestCounts| -> String {
        a.by_verb()
            .iter()
            .map(|(v, n)| format!("{v} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    t.row([
        "snp: 4 shims".to_owned(),
        fmt_int(snp.ok),
        format!(
            "{} ({})",
            fmt_int(api_snp.writes()),
            fmt_int(api_snp.writes_ok())
        ),
        format!("{:.4}", api_snp.writes() as f64 / regs),
        fmt_int(api_snp.total()),
        format!("{:.4}", api_snp.total() as f64 / regs),
        verbs(&api_snp),
        snp.converged.map_or("-".into(), fmt_dur),
        format!(
            "{} / {}",
            fmt_dur(snp.latency.p50()),
            fmt_dur(snp.latency.p99())
        ),
    ]);
    let mut naive_rows = Vec::new();
    for mode in [NaiveMode::SkipUnchanged, NaiveMode::Always] {
        let r = rollout(pods, ifaces, 1, jitter, "naive");
        let n = naive::run(&client, &api.group, &r, c, mode).await?;
        let stored = crate::kube::list_mappings(&client, &api.group, &r.prefix).await?;
        let label = match mode {
            NaiveMode::SkipUnchanged => {
                "naive: GET, write if missing (Dubbo metadata report, seed without debounce)"
            }
            NaiveMode::Always => "naive: GET + union + PUT/POST every registration",
        };
        t.row([
            label.to_owned(),
            format!(
                "{}{}",
                fmt_int(n.ok),
                if n.failed > 0 {
                    format!(" ({} failed)", n.failed)
                } else {
                    String::new()
                }
            ),
            format!(
                "{} ({})",
                fmt_int(n.api.writes()),
                fmt_int(n.api.writes_ok())
            ),
            format!("{:.4}", n.api.writes() as f64 / regs),
            fmt_int(n.api.total()),
            format!("{:.4}", n.api.total() as f64 / regs),
            verbs(&n.api),
            fmt_dur(n.converged),
            format!(
                "{} / {}",
                fmt_dur(n.latency.p50()),
                fmt_dur(n.latency.p99())
            ),
        ]);
        naive_rows.push((mode, n, stored == r.expected()));
    }
    print_table("", &t);
    let mut codes = Table::new(&["writer", "API server requests by verb and code"]);
    codes.row(["snp: 4 shims".to_owned(), api_snp.to_string()]);
    for (mode, n, _) in &naive_rows {
        codes.row([format!("naive {mode:?}"), n.api.to_string()]);
    }
    print_table("", &codes);
    println!(
        "Stored exactly the expected union: snp {exact}{}; shim store conflicts {}, no-op skips {}.\n",
        naive_rows.iter().map(|(m, _, ok)| format!(", naive {m:?} {ok}")).collect::<String>(),
        snp.shim.as_ref().map_or(0.0, |s| s.conflicts),
        snp.shim.as_ref().map_or(0.0, |s| s.noop_skips),
    );
    if !exact {
        bail!("figure 3: the API server does not hold exactly the expected mappings");
    }
    let per = api_snp.writes() as f64 / regs;
    let mut v = vec![Verdict::check(
        "3. API write requests / registration, snp (4 shims)",
        "<= 0.01",
        format!(
            "{per:.4} ({} writes / {} registrations)",
            api_snp.writes(),
            regs
        ),
        per <= 0.01,
    )];
    for (mode, n, _) in &naive_rows {
        v.push(Verdict::info(
            format!("3. naive {mode:?}: writes / requests per registration"),
            format!(
                "{:.4} / {:.4}",
                n.api.writes() as f64 / regs,
                n.api.total() as f64 / regs
            ),
        ));
    }
    Ok(v)
}
