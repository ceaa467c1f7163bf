//! Figure 4: the shim's throughput against a do-nothing server.

use anyhow::{bail, Result};

use super::runs::*;
use super::setup::*;
use super::{print_table, section, Env, Verdict};
use crate::load::{Rpc, TargetKind};
use crate::stats::fmt_rate;
use crate::table::{verdict, Table};

/// Figure 4: registrations per second straight into the shim, against the do-nothing
/// server. Target: ratio >= 0.8.
pub async fn fig4(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 4: shim throughput close to the limit");
    let shim = Shim::start(env, "fig4-shim", None, &[]).await?;
    let (noop_proc, noop) = start_noop(env, "fig4-noop").await?;
    let (c, conns) = (64, 4);
    println!(
        "Closed loop of registrations (flavours A and B alternating, the calls of a 200-pod x 10-interface rollout) straight to `snp-shim` (embedded store, default flags) and to `snp-noop-server` (same protos, same tonic stack, answers at once). Concurrency {c}, {conns} connections, load generator on the same 2 cores; {} A/B round pairs of {:?}.\n",
        env.rounds, env.round
    );
    let a = closed(
        vec![shim.grpc.clone()],
        TargetKind::Shim,
        Rpc::Mixed,
        c,
        conns,
        env.round,
    );
    let b = closed(
        vec![noop.clone()],
        TargetKind::Shim,
        Rpc::Mixed,
        c,
        conns,
        env.round,
    );
    let (fa, fb) = ab(env, &a, &b, &[shim.proc.pid()], &[noop_proc.pid()]).await?;
    if fa.errors + fb.errors > 0 {
        bail!("figure 4: {} + {} errors", fa.errors, fb.errors);
    }
    print_table(
        "",
        &ab_table(&[("snp-shim", &fa), ("snp-noop-server (upper bound)", &fb)]),
    );
    let tp = ratio(fa.throughput(), fb.throughput());
    let mut rt = Table::new(&["ratio (shim / no-op)", "measured", "target", "verdict"]);
    rt.row([
        "throughput".into(),
        format!("{tp:.3}"),
        ">= 0.80".into(),
        verdict(tp >= 0.8).to_owned(),
    ]);
    rt.row([
        "p50 latency".into(),
        format!(
            "{:.3}",
            ratio(secs(fa.latency.p50()), secs(fb.latency.p50()))
        ),
        "".into(),
        "info".into(),
    ]);
    let cpu = ratio(secs(fb.cpu_per_call()), secs(fa.cpu_per_call()));
    rt.row([
        "server CPU per call, no-op / shim (the throughput ratio if the server alone were the bottleneck)".into(),
        format!("{cpu:.3}"),
        "".into(),
        "info".into(),
    ]);
    print_table("Ratios (same run):", &rt);
    Ok(vec![
        Verdict::check(
            "4. shim registrations/s / no-op server",
            ">= 0.80",
            format!(
                "{tp:.3} ({} vs {})",
                fmt_rate(fa.throughput()),
                fmt_rate(fb.throughput())
            ),
            tp >= 0.8,
        ),
        Verdict::info(
            "4. server CPU per registration, no-op / shim",
            format!(
                "{cpu:.3} ({:.1} vs {:.1} µs)",
                fb.cpu_per_call().as_secs_f64() * 1e6,
                fa.cpu_per_call().as_secs_f64() * 1e6
            ),
        ),
    ])
}
