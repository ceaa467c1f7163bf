//! Figure 1: ack latency in the proxy. A registration answered inside Envoy by the filter,
//! against the same call routed by the same Envoy to the shim.

use anyhow::{bail, Context, Result};

use super::runs::*;
use super::setup::*;
use super::{print_table, section, Env, Verdict};
use crate::load::{Rpc, TargetKind};
use crate::procs::free_port;
use crate::stats::{fmt_dur, fmt_int, fmt_rate};
use crate::table::{verdict, Table};

/// Figure 1: a registration answered inside Envoy by the filter, against the same call
/// routed by the same Envoy to the shim. Target: p50 ratio <= 0.8.
pub async fn fig1(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 1: ack latency in the proxy");
    let shim = Shim::start(env, "fig1-shim", None, &[]).await?;
    let up = Upstreams {
        shim: port_of(&shim.grpc),
        app_grpc: free_port()?,
    };
    let w = env.envoy_concurrency;
    let mut envoy = Envoy::start(env, "fig1-envoy", Filter::On, true, w, up, None).await?;
    let mut h2 = Envoy::start(env, "fig1-envoy-ack-h2", Filter::AckH2, false, w, up, None).await?;
    let nofilter = envoy.nofilter.clone().context("no nofilter listener")?;
    println!(
        "One Envoy ({w} workers) from `envoy/envoy.yaml` with two listeners: `apps` with the snp filter (answers inside Envoy) and `apps_nofilter`, the same without the filter (the same call, routed by the same Envoy to the shim; embedded store, on the same machine). A second Envoy, configured the same (HTTP/2 on the `snp_ack` cluster, as `envoy.yaml` ships it), is a noise check: the gap between the two is this run's noise. Closed loop of registrations (flavours A and B alternating) over the calls of a 200-pod x 10-interface rollout; {} rounds of {:?} per set-up, in turn. CPU is Envoy's and the shim's together.\n",
        env.rounds, env.round
    );
    let mut verdicts = Vec::new();
    let mut t = Table::new(&[
        "concurrency",
        "set-up",
        "calls",
        "throughput",
        "p50",
        "p99",
        "p999",
        "CPU / call (Envoy + shim)",
    ]);
    let mut rt = Table::new(&[
        "concurrency",
        "p50 filter / shim",
        "p99 filter / shim",
        "throughput filter / shim",
        "target (p50)",
        "verdict",
        "second, identical Envoy: p50 / shim",
    ]);
    for (c, conns) in [(1usize, 1usize), (32, 2)] {
        let cfg = |addr: &str| {
            closed(
                vec![addr.to_owned()],
                TargetKind::Envoy,
                Rpc::Mixed,
                c,
                conns,
                env.round,
            )
        };
        let (a, b, d) = (cfg(&envoy.apps), cfg(&nofilter), cfg(&h2.apps));
        let p1 = [envoy.proc.pid(), shim.proc.pid()];
        let p2 = [h2.proc.pid(), shim.proc.pid()];
        let mut v = rotate(env, &[(&a, &p1), (&b, &p1), (&d, &p2)]).await?;
        let (fd, fb, fa) = (
            v.pop().unwrap_or_default(),
            v.pop().unwrap_or_default(),
            v.pop().unwrap_or_default(),
        );
        for (label, x) in [
            ("filter answers (ack in Envoy), envoy.yaml", &fa),
            ("routed by Envoy to the shim", &fb),
            ("second, identical Envoy: filter answers (noise check)", &fd),
        ] {
            t.row([
                c.to_string(),
                label.to_owned(),
                fmt_int(x.ok),
                fmt_rate(x.throughput()),
                fmt_dur(x.latency.p50()),
                fmt_dur(x.latency.p99()),
                fmt_dur(x.latency.p999()),
                format!("{:.1} µs", x.cpu_per_call().as_secs_f64() * 1e6),
            ]);
            if x.errors > 0 {
                bail!("figure 1: {} errors ({label})", x.errors);
            }
        }
        let p50 = ratio(secs(fa.latency.p50()), secs(fb.latency.p50()));
        let p99 = ratio(secs(fa.latency.p99()), secs(fb.latency.p99()));
        let tp = ratio(fa.throughput(), fb.throughput());
        let p50_d = ratio(secs(fd.latency.p50()), secs(fb.latency.p50()));
        rt.row([
            c.to_string(),
            format!("{p50:.2}"),
            format!("{p99:.2}"),
            format!("{tp:.2}"),
            "<= 0.80".into(),
            verdict(p50 <= 0.8).into(),
            format!("{p50_d:.2} ({})", verdict(p50_d <= 0.8)),
        ]);
        verdicts.push(Verdict::check(
            format!("1. ack latency p50, filter / shim via Envoy (concurrency {c})"),
            "<= 0.80",
            format!(
                "{p50:.2} ({} vs {})",
                fmt_dur(fa.latency.p50()),
                fmt_dur(fb.latency.p50())
            ),
            p50 <= 0.8,
        ));
        verdicts.push(Verdict::info(
            format!("1. second, identical Envoy (noise check): p50 / shim (concurrency {c})"),
            format!("{p50_d:.2} ({})", fmt_dur(fd.latency.p50())),
        ));
    }
    envoy.check_vm_healthy()?;
    h2.check_vm_healthy()?;
    print_table("", &t);
    print_table("Ratios (same run):", &rt);
    Ok(verdicts)
}
