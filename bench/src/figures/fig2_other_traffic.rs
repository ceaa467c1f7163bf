//! Figure 2: the filter's cost for other traffic through the same Envoy.

use std::time::Duration;

use anyhow::{bail, Result};

use super::runs::*;
use super::setup::*;
use super::{print_table, section, Env, Verdict};
use crate::load::{self, Rpc, TargetKind};
use crate::procs::free_port;
use crate::table::{verdict, Table};

/// Figure 2: non-registration gRPC through Envoy with the filter as shipped (enabled only on
/// the registration routes) and without it, and the filter on every stream as an alternative.
/// Targets: throughput ratio >= 0.99, p99 ratio <= 1.05, Envoy CPU per call ratio <= 1.05.
pub async fn fig2(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 2: cost for other traffic");
    let (_noop, noop_addr) = start_noop(env, "fig2-noop").await?;
    let up = Upstreams {
        shim: free_port()?,
        app_grpc: port_of(&noop_addr),
    };
    let w = env.envoy_concurrency;
    let mut with = Envoy::start(env, "fig2-envoy-filter", Filter::On, false, w, up, None).await?;
    let mut without =
        Envoy::start(env, "fig2-envoy-plain", Filter::Off, false, w, up, None).await?;
    let mut everywhere = Envoy::start(
        env,
        "fig2-envoy-filter-everywhere",
        Filter::Everywhere,
        false,
        w,
        up,
        None,
    )
    .await?;
    let (c, conns) = (32, 4);
    println!(
        "Envoys ({w} workers each) from `envoy/envoy.yaml`: with the snp filter as shipped (`disabled: true` in the chain, enabled by a per-route `FilterConfig` on the registration routes only), without it, and (the alternative, what `envoy.yaml` did before) with the filter run on every stream. All route `snp.v1.MappingService/GetMappings` (not a registration) to the same no-op upstream. Closed loop, concurrency {c}, {conns} connections; {} rounds of {:?} per set-up, in turn.\n",
        env.rounds, env.round
    );
    let cfg = |addr: &str| {
        closed(
            vec![addr.to_owned()],
            TargetKind::Envoy,
            Rpc::Get,
            c,
            conns,
            env.round,
        )
    };
    let (a, b, d) = (cfg(&with.apps), cfg(&without.apps), cfg(&everywhere.apps));
    let (pa, pb, pd) = (
        [with.proc.pid()],
        [without.proc.pid()],
        [everywhere.proc.pid()],
    );
    let mut v = rotate(env, &[(&a, &pa), (&b, &pb), (&d, &pd)]).await?;
    let (fd, fb, fa) = (
        v.pop().unwrap_or_default(),
        v.pop().unwrap_or_default(),
        v.pop().unwrap_or_default(),
    );
    // The route-scoped filter still answers registrations.
    let before = crate::load::EnvoyCounters::parse(
        &snp_testkit::http::get_ok(&with.admin, "/stats").await?,
    )?;
    let reg = load::run(&closed(
        vec![with.apps.clone()],
        TargetKind::Envoy,
        Rpc::Mixed,
        4,
        1,
        Duration::from_millis(300),
    ))
    .await?;
    let after = crate::load::EnvoyCounters::parse(
        &snp_testkit::http::get_ok(&with.admin, "/stats").await?,
    )?;
    let scoped_answers = after
        .registrations_ok
        .saturating_sub(before.registrations_ok);
    if reg.error_count() > 0 || scoped_answers != reg.ok {
        bail!(
            "figure 2: the shipped filter answered {scoped_answers} of {} registrations ({:?})",
            reg.ok,
            reg.first_error
        );
    }
    for e in [&mut with, &mut without, &mut everywhere] {
        e.check_vm_healthy()?;
    }
    if fa.errors + fb.errors + fd.errors > 0 {
        bail!(
            "figure 2: {} + {} + {} errors",
            fa.errors,
            fb.errors,
            fd.errors
        );
    }
    print_table(
        "",
        &ab_table(&[
            (
                "Envoy with the snp filter (envoy.yaml: registration routes only)",
                &fa,
            ),
            ("Envoy without it", &fb),
            ("alternative: filter on every stream (before)", &fd),
        ]),
    );
    println!(
        "The shipped Envoy answered all {} registrations sent to it afterwards in its filter (`snp.registrations.ok`).\n",
        reg.ok
    );
    let tp = ratio(fa.throughput(), fb.throughput());
    let p99 = ratio(secs(fa.latency.p99()), secs(fb.latency.p99()));
    let p50 = ratio(secs(fa.latency.p50()), secs(fb.latency.p50()));
    let cpu = ratio(secs(fa.cpu_per_call()), secs(fb.cpu_per_call()));
    let tp_d = ratio(fd.throughput(), fb.throughput());
    let p99_d = ratio(secs(fd.latency.p99()), secs(fb.latency.p99()));
    let cpu_d = ratio(secs(fd.cpu_per_call()), secs(fb.cpu_per_call()));
    let mut rt = Table::new(&[
        "ratio to Envoy without the filter",
        "with filter (envoy.yaml)",
        "target",
        "verdict",
        "alternative: on every stream",
    ]);
    rt.row([
        "throughput".into(),
        format!("{tp:.3}"),
        ">= 0.99".into(),
        verdict(tp >= 0.99).to_owned(),
        format!("{tp_d:.3} ({})", verdict(tp_d >= 0.99)),
    ]);
    rt.row([
        "p99".into(),
        format!("{p99:.3}"),
        "<= 1.05".into(),
        verdict(p99 <= 1.05).to_owned(),
        format!("{p99_d:.3} ({})", verdict(p99_d <= 1.05)),
    ]);
    rt.row([
        "Envoy CPU per call".into(),
        format!("{cpu:.3}"),
        "<= 1.05".into(),
        verdict(cpu <= 1.05).to_owned(),
        format!("{cpu_d:.3} ({})", verdict(cpu_d <= 1.05)),
    ]);
    rt.row([
        "p50".into(),
        format!("{p50:.3}"),
        "".into(),
        "info".into(),
        format!(
            "{:.3}",
            ratio(secs(fd.latency.p50()), secs(fb.latency.p50()))
        ),
    ]);
    print_table("Ratios (same run):", &rt);
    Ok(vec![
        Verdict::check(
            "2. other traffic: throughput with / without filter",
            ">= 0.99",
            format!("{tp:.3}"),
            tp >= 0.99,
        ),
        Verdict::check(
            "2. other traffic: p99 with / without filter",
            "<= 1.05",
            format!("{p99:.3}"),
            p99 <= 1.05,
        ),
        Verdict::check(
            "2. other traffic: Envoy CPU per call with / without filter",
            "<= 1.05",
            format!(
                "{cpu:.3} ({:.1} vs {:.1} µs)",
                fa.cpu_per_call().as_secs_f64() * 1e6,
                fb.cpu_per_call().as_secs_f64() * 1e6
            ),
            cpu <= 1.05,
        ),
        Verdict::info(
            "2. alternative, filter on every stream: throughput / p99 / CPU ratios",
            format!("{tp_d:.3} / {p99_d:.3} / {cpu_d:.3}"),
        ),
    ])
}
