//! Figure 6: footprint: `.wasm` size, Envoy's memory with and without the filter, the
//! shim's memory idle and during a storm.

use std::time::Duration;

use anyhow::{bail, Result};

use super::runs::*;
use super::setup::*;
use super::{print_table, section, Env, Verdict};
use crate::load::{self, Rpc, TargetKind};
use crate::stats::{fmt_int, fmt_mib, fmt_rate};
use crate::table::Table;

/// Figure 6: footprint: `.wasm` size, Envoy RSS with and without the filter per worker,
/// shim RSS idle and during a storm.
pub async fn fig6(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 6: footprint");
    let mut verdicts = Vec::new();
    let wasm_size = std::fs::metadata(&env.filter_wasm)?.len();
    println!(
        "`{}`: {} bytes ({:.0} KiB).\n",
        env.filter_wasm
            .strip_prefix(&env.root)
            .unwrap_or(&env.filter_wasm)
            .display(),
        fmt_int(wasm_size),
        wasm_size as f64 / 1024.0
    );
    verdicts.push(Verdict::info(
        "6. snp_filter.wasm size",
        format!(
            "{:.0} KiB ({} bytes)",
            wasm_size as f64 / 1024.0,
            fmt_int(wasm_size)
        ),
    ));

    let shim = Shim::start(env, "fig6-shim", None, &[]).await?;
    let (_noop, noop) = start_noop(env, "fig6-noop").await?;
    let up = Upstreams {
        shim: port_of(&shim.grpc),
        app_grpc: port_of(&noop),
    };
    let mut t = Table::new(&[
        "workers",
        "Envoy RSS without filter",
        "with filter",
        "difference",
        "difference / workers",
    ]);
    let workers: &[usize] = if env.quick { &[1, 2] } else { &[1, 2, 4] };
    let mut per_worker = Vec::new();
    for &w in workers {
        let mut rss = [0u64; 2];
        for (i, filter) in [false, true].into_iter().enumerate() {
            let mut e = Envoy::start(
                env,
                &format!("fig6-envoy-{w}-{}", if filter { "filter" } else { "plain" }),
                if filter { Filter::On } else { Filter::Off },
                false,
                w,
                up,
                None,
            )
            .await?;
            // The same warm-up traffic on both: registrations and other gRPC, over enough
            // connections to reach every worker.
            for rpc in [Rpc::Mixed, Rpc::Get] {
                let cfg = closed(
                    vec![e.apps.clone()],
                    TargetKind::Envoy,
                    rpc,
                    8,
                    2 * w,
                    Duration::from_millis(700),
                );
                let r = load::run(&cfg).await?;
                if r.error_count() > 0 {
                    bail!(
                        "figure 6: warm-up errors {:?}: {:?}",
                        r.errors,
                        r.first_error
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            e.check_vm_healthy()?;
            rss[i] = crate::procs::memory(e.proc.pid())?.rss;
        }
        let diff = rss[1] as i64 - rss[0] as i64;
        let pw = diff as f64 / w as f64;
        per_worker.push(pw);
        t.row([
            w.to_string(),
            fmt_mib(rss[0]),
            fmt_mib(rss[1]),
            format!("{:+.1} MiB", diff as f64 / 1048576.0),
            format!("{:+.1} MiB", pw / 1048576.0),
        ]);
    }
    println!("Envoy from `envoy/envoy.yaml`, with and without the snp filter in the chain, same `--concurrency`; `VmRSS` from `/proc/<pid>/status` after 1.4 s of registrations and other gRPC through every worker.\n");
    print_table("", &t);
    // difference = fixed + per_worker x workers, least squares over the worker counts.
    let xs: Vec<f64> = workers.iter().map(|w| *w as f64).collect();
    let ys: Vec<f64> = per_worker.iter().zip(&xs).map(|(p, x)| p * x).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { f64::NAN };
    let fixed = my - slope * mx;
    println!(
        "Least-squares fit of the difference over the worker counts: {:+.1} MiB fixed (V8 and the filter's base VM) and {:+.1} MiB per worker (each worker has its own VM).\n",
        fixed / 1048576.0,
        slope / 1048576.0
    );
    verdicts.push(Verdict::info(
        "6. Envoy RSS with - without filter",
        format!(
            "{:+.1} MiB fixed, {:+.1} MiB per worker",
            fixed / 1048576.0,
            slope / 1048576.0
        ),
    ));

    // Shim: idle, then a storm.
    drop(shim);
    let shim = Shim::start(env, "fig6-shim-storm", None, &[]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = crate::procs::memory(shim.proc.pid())?;
    let noop_mem = crate::procs::memory(_noop.pid())?;
    let (pods, ifaces, ns) = if env.quick {
        (20, 10, 10)
    } else {
        (100, 20, 50)
    };
    let r = rollout(pods, ifaces, ns, Duration::from_secs(3), "fig6");
    let regs = r.registrations();
    let keys = r.keys();
    let cfg = storm(&shim, r, None, Duration::from_secs(120));
    let pid = shim.proc.pid();
    let (report, peak) = sampled(pid, Duration::from_millis(20), load::run(&cfg)).await;
    let report = report?;
    let after = crate::procs::memory(shim.proc.pid())?;
    check_complete("figure 6: storm", &report)?;
    let mut st = Table::new(&["process", "state", "VmRSS", "VmHWM (peak)"]);
    st.row([
        "snp-shim (embedded store)".to_owned(),
        "idle, after start".into(),
        fmt_mib(idle.rss),
        fmt_mib(idle.hwm),
    ]);
    st.row([
        "snp-shim (embedded store)".to_owned(),
        format!(
            "storm: {} registrations, {} keys, {}",
            fmt_int(regs as u64),
            fmt_int(keys as u64),
            fmt_rate(report.throughput())
        ),
        format!("{} (highest sample, every 20 ms)", fmt_mib(peak)),
        fmt_mib(after.hwm),
    ]);
    st.row([
        "snp-shim (embedded store)".to_owned(),
        "after the storm".into(),
        fmt_mib(after.rss),
        fmt_mib(after.hwm),
    ]);
    st.row([
        "snp-noop-server (reference)".to_owned(),
        "idle".into(),
        fmt_mib(noop_mem.rss),
        fmt_mib(noop_mem.hwm),
    ]);
    print_table("", &st);
    verdicts.push(Verdict::info(
        "6. shim RSS idle / storm peak",
        format!("{} / {}", fmt_mib(idle.rss), fmt_mib(after.hwm.max(peak))),
    ));
    Ok(verdicts)
}
