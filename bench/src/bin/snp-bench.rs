//! `snp-bench`: runs the figures of `BENCHMARKS.md` end to end and prints each table, with
//! the ratio against its target and PASS/MISS, then a summary.
//!
//! ```sh
//! bench/run.sh                      # builds what is needed, then: snp-bench all
//! snp-bench fig1 fig4 --rounds 5    # some figures
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use snp_bench::figures::{self, Env, Verdict};
use snp_bench::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Figure {
    All,
    Fig1,
    Fig2,
    Fig3,
    Fig4,
    Fig5,
    Fig6,
    Fig7,
    Fig8,
    /// The seed server as a peer (also `seed`).
    #[value(alias = "seed")]
    Fig9,
    /// Memory through a long API server outage. Not in `all` (it takes `--outage` plus
    /// about a minute).
    Fig10,
    /// A cluster, simulated: the store's merge engine on a virtual clock, 10 to 1,000 nodes.
    Fig11,
    /// One shim, large: 100,000 keys and 1,000,000 registrations.
    Fig12,
    /// One batch per Envoy: batches per window with 1, 2 and 4 Envoy workers.
    Fig13,
}

/// Runs snp's benchmark figures and prints their tables.
#[derive(Debug, Parser)]
#[command(name = "snp-bench", version)]
struct Cli {
    /// Figures to run (default: all).
    #[arg(value_enum)]
    figures: Vec<Figure>,
    /// Repository root (default: the one this binary was built from).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Work directory for configurations, logs and data (default: a new temporary one).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Envoy binary (default: $SNP_ENVOY, else <root>/.venv/bin/envoy, else `envoy`).
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// snp-shim binary (default: <root>/target/release/snp-shim).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Envoy workers (`--concurrency`) in figures 1 and 2.
    #[arg(long, default_value_t = 2)]
    envoy_concurrency: usize,
    /// Length of one A or B round in figures 1, 2 and 4.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    round: Duration,
    /// A/B round pairs in figures 1, 2 and 4.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Small sizes and short rounds: checks the harness, not figures to publish.
    #[arg(long)]
    quick: bool,
    /// Figure 5: skip `cargo bench -p snp-core --bench offer`.
    #[arg(long)]
    no_cargo_bench: bool,
    /// Figure 7: also run 100k registrations over 10k growing keys against the API server
    /// (over 8 minutes at the shim's default client-side rate limit).
    #[arg(long)]
    kube_full: bool,
    /// Figure 10: how long the API server stays stopped (`--quick`: 60s).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    outage: Duration,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_default();
    format!(
        "{} CPUs ({cpu}), {}, load average {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        mem.split_whitespace().collect::<Vec<_>>().join(" "),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = cli
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));
    let root = root.canonicalize().unwrap_or(root);
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| root.join("target/release"));
    let envoy = cli
        .envoy
        .clone()
        .or_else(|| std::env::var_os("SNP_ENVOY").map(PathBuf::from))
        .unwrap_or_else(|| {
            let venv = root.join(".venv/bin/envoy");
            if venv.exists() {
                venv
            } else {
                PathBuf::from("envoy")
            }
        });
    let dir = match &cli.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("snp-bench-{}", std::process::id())),
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("snp-bench: create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let env = Env {
        shim: cli
            .shim
            .clone()
            .unwrap_or_else(|| root.join("target/release/snp-shim")),
        noop: exe_dir.join("snp-noop-server"),
        filter_wasm: root.join("target/wasm/snp_filter.wasm"),
        bench_wasm: root.join("target/wasm32-wasip1/release/snp_bench_wasm.wasm"),
        root,
        dir,
        envoy,
        envoy_concurrency: cli.envoy_concurrency,
        round: if cli.quick {
            Duration::from_secs(1)
        } else {
            cli.round
        },
        rounds: if cli.quick { 1 } else { cli.rounds },
        quick: cli.quick,
        cargo_bench: !cli.no_cargo_bench,
        kube_full: cli.kube_full,
        outage: cli.outage,
    };
    let mut figs = cli.figures.clone();
    if figs.is_empty() || figs.contains(&Figure::All) {
        figs = vec![
            Figure::Fig1,
            Figure::Fig2,
            Figure::Fig3,
            Figure::Fig4,
            Figure::Fig5,
            Figure::Fig6,
            Figure::Fig7,
            Figure::Fig8,
            Figure::Fig9,
            Figure::Fig11,
            Figure::Fig12,
            Figure::Fig13,
        ];
    }
    figs.sort();
    figs.dedup();
    // What the chosen figures need: the filter for 1, 2, 5 and 6, the no-op server for
    // 1, 2, 4 and 6, the offer benchmark's module for 5; the shim for all.
    let any = |of: &[Figure]| figs.iter().any(|f| of.contains(f));
    let needs = [
        (
            "snp-shim (cargo build --release -p snp-shim)",
            &env.shim,
            true,
        ),
        (
            "snp-noop-server",
            &env.noop,
            any(&[Figure::Fig1, Figure::Fig2, Figure::Fig4, Figure::Fig6]),
        ),
        (
            "the filter (scripts/build-filter.sh)",
            &env.filter_wasm,
            any(&[
                Figure::Fig1,
                Figure::Fig2,
                Figure::Fig5,
                Figure::Fig6,
                Figure::Fig13,
            ]),
        ),
        (
            "the wasm offer benchmark (cargo build --release --target wasm32-wasip1 -p snp-bench-wasm)",
            &env.bench_wasm,
            any(&[Figure::Fig5]),
        ),
    ];
    for (what, p, needed) in needs {
        if needed && !p.exists() {
            eprintln!("snp-bench: {} not found: build {what}", p.display());
            return ExitCode::FAILURE;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("snp-bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let envoy_version = std::process::Command::new(&env.envoy)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap_or("?")
                .to_owned()
        })
        .unwrap_or_else(|_| "?".into());
    println!("# snp benchmarks\n");
    println!("- machine at start: {}", machine());
    println!(
        "- envoy {} ({}), snp-shim {}, work directory {}",
        envoy_version,
        env.envoy.display(),
        env.shim.display(),
        env.dir.display()
    );
    println!(
        "- rounds: {} A/B pairs of {:?}{}",
        env.rounds,
        env.round,
        if env.quick {
            " (--quick: harness check, not figures)"
        } else {
            ""
        }
    );
    let started = std::time::Instant::now();
    let mut verdicts: Vec<Verdict> = Vec::new();
    let mut failed = Vec::new();
    for f in figs {
        let r = rt.block_on(async {
            match f {
                Figure::Fig1 => figures::fig1(&env).await,
                Figure::Fig2 => figures::fig2(&env).await,
                Figure::Fig3 => figures::fig3(&env).await,
                Figure::Fig4 => figures::fig4(&env).await,
                Figure::Fig5 => figures::fig5(&env).await,
                Figure::Fig6 => figures::fig6(&env).await,
                Figure::Fig7 => figures::fig7(&env).await,
                Figure::Fig8 => figures::fig8(&env).await,
                Figure::Fig9 => figures::fig9(&env).await,
                Figure::Fig10 => figures::fig10(&env).await,
                Figure::Fig11 => figures::fig11(&env).await,
                Figure::Fig12 => figures::fig12(&env).await,
                Figure::Fig13 => figures::fig13(&env).await,
                Figure::All => Ok(vec![]),
            }
        });
        match r {
            Ok(v) => verdicts.extend(v),
            Err(e) => {
                eprintln!("snp-bench: {f:?} failed: {e:#}");
                println!("\n**{f:?} failed**: {e:#}\n");
                failed.push(f);
            }
        }
    }
    println!("\n## Summary\n");
    println!("{}", figures::summary(&verdicts));
    println!(
        "- machine at end: {}; {:.0} s in all; logs in {}",
        machine(),
        started.elapsed().as_secs_f64(),
        env.dir.display()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
