//! Figure 5: the core engine's `offer`, natively (criterion) and inside Envoy's wasm VM.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::runs::*;
use super::setup::*;
use super::{print_table, section, Env, Verdict};
use crate::procs::free_port;
use crate::stats::{fmt_rate, median};
use crate::table::Table;

fn parse_cargo_bench(out: &str) -> (Option<f64>, Option<String>) {
    let summary = out
        .lines()
        .find(|l| l.starts_with("offer: "))
        .and_then(|l| l.split(" = ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok());
    let thrpt = out
        .lines()
        .find(|l| l.trim_start().starts_with("thrpt:"))
        .map(|l| l.trim().to_owned());
    (summary, thrpt)
}

/// Parses the wasm module's pass lines: (registrations, keys, nanos) per pass.
pub fn parse_wasm_passes(log: &str) -> Vec<(u64, u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let i = l.find("snp-bench-wasm offer pass=")?;
            let mut regs = None;
            let mut keys = None;
            let mut nanos = None;
            for kv in l[i..].split_whitespace() {
                match kv.split_once('=') {
                    Some(("registrations", v)) => regs = v.parse().ok(),
                    Some(("keys", v)) => keys = v.parse().ok(),
                    Some(("nanos", v)) => {
                        nanos = v
                            .trim_end_matches(|c: char| !c.is_ascii_digit())
                            .parse()
                            .ok()
                    }
                    _ => {}
                }
            }
            Some((regs?, keys?, nanos?))
        })
        .collect()
}

/// Figure 5: the core engine's `offer` throughput, native and in wasm under Envoy.
pub async fn fig5(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 5: core engine (offer)");
    let passes = 5;
    let mut t = Table::new(&[
        "build",
        "runtime",
        "registrations/s (median of passes)",
        "best pass",
        "passes",
    ]);
    let mut verdicts = Vec::new();
    // (a) criterion, bench profile (opt-level 3).
    if env.cargo_bench {
        let out = tokio::process::Command::new("cargo")
            .args([
                "bench", "-p", "snp-core", "--bench", "offer", "--", "--noplot",
            ])
            .current_dir(&env.root)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("cargo bench")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        std::fs::write(
            env.dir.join("fig5-cargo-bench.log"),
            format!("{text}\n{}", String::from_utf8_lossy(&out.stderr)),
        )?;
        let (single, thrpt) = parse_cargo_bench(&text);
        let crit = thrpt
            .as_deref()
            .and_then(|l| l.split('[').nth(1))
            .map(|inside| inside.split_whitespace().collect::<Vec<_>>())
            .and_then(|w| {
                if w.len() >= 4 {
                    Some(format!("{} {}", w[2], w[3]))
                } else {
                    None
                }
            });
        t.row([
            "`cargo bench -p snp-core --bench offer` (bench profile, opt-level 3)".to_owned(),
            "native".into(),
            crit.clone()
                .map_or("-".into(), |c| format!("{c} (criterion median)")),
            single.map_or("-".into(), |s| {
                format!("{} (first timed pass)", fmt_rate(s))
            }),
            "criterion, 10 samples".into(),
        ]);
        let rate = crit
            .as_deref()
            .and_then(|c| {
                let mut it = c.split_whitespace();
                let n: f64 = it.next()?.parse().ok()?;
                let unit = it.next()?;
                Some(match unit {
                    "Gelem/s" => n * 1e9,
                    "Melem/s" => n * 1e6,
                    "Kelem/s" => n * 1e3,
                    _ => n,
                })
            })
            .or(single);
        if let Some(r) = rate {
            verdicts.push(Verdict::check(
                "5. offer, native (criterion, opt-level 3)",
                ">= 2,000,000/s (core issue)",
                fmt_rate(r),
                r >= 2_000_000.0,
            ));
        } else {
            bail!("figure 5: could not read cargo bench's output (see fig5-cargo-bench.log)");
        }
    }
    // (b) the same workload natively in this process (release profile: opt-level "s",
    // the profile the shim ships with).
    let w = snp_bench_wasm::Workload::new();
    let mut native = Vec::new();
    for _ in 0..passes {
        let start = Instant::now();
        let (accepted, keys) = std::hint::black_box(w.run());
        let took = start.elapsed();
        if accepted != snp_bench_wasm::REGISTRATIONS || keys != snp_bench_wasm::KEYS {
            bail!("figure 5: native pass took {accepted} / {keys}");
        }
        native.push(accepted as f64 / took.as_secs_f64());
    }
    let native_med = median(&native);
    let native_best = native.iter().copied().fold(0.0, f64::max);
    t.row([
        "snp-bench (release profile, opt-level \"s\", as the shim)".to_owned(),
        "native".into(),
        fmt_rate(native_med),
        fmt_rate(native_best),
        passes.to_string(),
    ]);
    // (c) the same workload in Envoy's V8, as a singleton bootstrap wasm service.
    let up = Upstreams {
        shim: free_port()?,
        app_grpc: free_port()?,
    };
    let envoy = Envoy::start(
        env,
        "fig5-envoy-wasm",
        Filter::Off,
        false,
        1,
        up,
        Some((env.bench_wasm.display().to_string(), passes.to_string())),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut log = envoy.proc.log_text();
    while !log.contains("snp-bench-wasm offer done") {
        if Instant::now() > deadline {
            bail!(
                "figure 5: the wasm benchmark did not finish:\n{}",
                envoy.proc.log_tail(2000)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        log = envoy.proc.log_text();
    }
    drop(envoy);
    let wasm: Vec<f64> = parse_wasm_passes(&log)
        .into_iter()
        .filter(|(r, k, _)| {
            *r == snp_bench_wasm::REGISTRATIONS as u64 && *k == snp_bench_wasm::KEYS as u64
        })
        .map(|(r, _, n)| r as f64 / (n as f64 / 1e9))
        .collect();
    // Envoy starts the module's VM twice on the main thread (the base VM and the
    // singleton's own), so each start runs the passes: every pass counts.
    if wasm.len() < passes {
        bail!(
            "figure 5: {} wasm passes in the log, expected at least {passes}",
            wasm.len()
        );
    }
    let wasm_med = median(&wasm);
    let wasm_best = wasm.iter().copied().fold(0.0, f64::max);
    t.row([
        format!(
            "snp_bench_wasm.wasm ({} KiB, release profile)",
            std::fs::metadata(&env.bench_wasm)
                .map(|m| m.len() / 1024)
                .unwrap_or(0)
        ),
        "Envoy V8 (bootstrap wasm service)".into(),
        fmt_rate(wasm_med),
        fmt_rate(wasm_best),
        format!("{} (first: {})", wasm.len(), fmt_rate(wasm[0])),
    ]);
    println!(
        "1,000,000 registrations over 10,000 keys x 3 apps per pass, as in `crates/snp-core/benches/offer.rs` (the same code: `bench/wasm-offer`). The wasm figure is timed inside the module with the host clock (`proxy_get_current_time_nanoseconds`) around each pass; Envoy runs the module at start-up on its main thread, in the V8 runtime that runs the filter on each worker; it starts that VM twice (its base VM and the singleton's), and each start runs the passes.\n"
    );
    print_table("", &t);
    let r = ratio(wasm_med, native_med);
    println!("wasm / native (same workload, same profile, same run): {r:.2}\n");
    verdicts.push(Verdict::info(
        "5. offer, native (release, opt-level s)",
        fmt_rate(native_med),
    ));
    verdicts.push(Verdict::info(
        "5. offer, wasm in Envoy V8 (median pass)",
        format!("{} ({r:.2} of native)", fmt_rate(wasm_med)),
    ));
    Ok(verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_benchmarks_outputs() {
        let out = "offer: 1000000 registrations over 10000 keys x 3 apps in 0.105 s = 9523809 registrations/s (target >= 2,000,000/s)\n\
                   debouncer/offer_1m_over_10k_keys\n                        time:   [104.1 ms 105.2 ms 106.0 ms]\n                        thrpt:  [9.4 Melem/s 9.5 Melem/s 9.6 Melem/s]\n";
        let (single, thrpt) = parse_cargo_bench(out);
        assert_eq!(single, Some(9523809.0));
        assert_eq!(
            thrpt.as_deref(),
            Some("thrpt:  [9.4 Melem/s 9.5 Melem/s 9.6 Melem/s]")
        );
        let log = "[2026-01-01 00:00:00.000][1][warning][wasm] wasm log snp_bench snp_bench snp_bench: snp-bench-wasm offer pass=1 registrations=1000000 keys=10000 nanos=250000000\n\
                   other line\n";
        assert_eq!(
            parse_wasm_passes(log),
            vec![(1_000_000, 10_000, 250_000_000)]
        );
    }
}
