//! `snp-load`: simulates a rollout against Envoy (through the snp filter) or straight
//! against shims, and prints throughput, latency percentiles, convergence time, batches,
//! store writes and API server requests by verb as a table.
//!
//! ```sh
//! snp-load --target shim 127.0.0.1:15051 --pods 200 --interfaces 10 --namespaces 1 \
//!     --jitter 3s --concurrency 64 --shim-metrics 127.0.0.1:15052
//! snp-load --target envoy 127.0.0.1:10000 --converge-shim 127.0.0.1:15051 \
//!     --envoy-admin 127.0.0.1:9901 --shim-metrics 127.0.0.1:15052
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use snp_bench::load::{self, LoadConfig, Rpc, TargetKind};
use snp_bench::workload::{Rollout, RolloutArgs};
use snp_bench::{parse_duration, split_list};

/// Rollout load generator for snp.
#[derive(Debug, Parser)]
#[command(name = "snp-load", version)]
struct Cli {
    /// What to send to: `envoy ADDR` or `shim ADDR[,ADDR...]` (pods are spread over several
    /// shims round-robin, as pods over nodes).
    #[arg(long, num_args = 2, value_names = ["KIND", "ADDR"], required = true)]
    target: Vec<String>,
    #[command(flatten)]
    rollout: RolloutArgs,
    /// Calls in flight at most.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections per target.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Which call: registrations of flavour a, b or mixed, or GetMappings (`get`).
    #[arg(long, value_enum, default_value_t = Rpc::Mixed)]
    rpc: Rpc,
    /// Closed loop for this long instead of one rollout (throughput mode).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// HTTP addresses of the shims' /metrics (comma-separated).
    #[arg(long, value_delimiter = ',')]
    shim_metrics: Vec<String>,
    /// Envoy admin address, for the filter's counters in /stats.
    #[arg(long)]
    envoy_admin: Option<String>,
    /// Kubeconfig of the API server the shims write to: its requests by verb are counted.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// ServiceNameMapping API group.
    #[arg(long, default_value = snp_store::crd::DEFAULT_GROUP)]
    group: String,
    /// Shim gRPC addresses to watch for convergence (default: the targets, if shims).
    #[arg(long, value_delimiter = ',')]
    converge_shim: Vec<String>,
    /// Don't measure convergence.
    #[arg(long)]
    no_converge: bool,
    /// Longest wait for convergence.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    converge_timeout: Duration,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn config(cli: Cli) -> Result<LoadConfig> {
    let kind = match cli.target[0].as_str() {
        "envoy" => TargetKind::Envoy,
        "shim" => TargetKind::Shim,
        other => bail!("--target: {other:?} is neither envoy nor shim"),
    };
    let targets = split_list(&cli.target[1]);
    let converge_shims = if cli.no_converge {
        vec![]
    } else if !cli.converge_shim.is_empty() {
        cli.converge_shim
    } else if kind == TargetKind::Shim {
        targets.clone()
    } else {
        vec![]
    };
    Ok(LoadConfig {
        kind,
        targets,
        rollout: Rollout {
            // A timed run replays the calls back to back: no start-up spread.
            jitter: if cli.duration.is_some() {
                Duration::ZERO
            } else {
                cli.rollout.jitter
            },
            ..cli.rollout.rollout("load")
        },
        concurrency: cli.concurrency,
        connections: cli.connections,
        rpc: cli.rpc,
        duration: cli.duration,
        shim_metrics: cli.shim_metrics,
        envoy_admin: cli.envoy_admin,
        kube: load::kube_target(cli.kubeconfig, &cli.group),
        converge_shims,
        converge_timeout: cli.converge_timeout,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli.threads.max(1);
    let cfg = match config(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("snp-load: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("snp-load: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(load::run(&cfg)) {
        Ok(report) => {
            let r = &cfg.rollout;
            let title = format!(
                "{} {}: {} pods x {} interfaces x {} namespaces, {} app(s), jitter {:?}, concurrency {}{}",
                match cfg.kind {
                    TargetKind::Envoy => "envoy",
                    TargetKind::Shim => "shim",
                },
                cfg.targets.join(","),
                r.pods,
                r.interfaces,
                r.namespaces,
                r.apps,
                r.jitter,
                cfg.concurrency,
                cfg.duration.map(|d| format!(", closed loop {d:?}")).unwrap_or_default(),
            );
            print!("{}", report.table(&title));
            if let Some(e) = &report.first_error {
                eprintln!("first error: {e}");
            }
            if report.error_count() > 0 || report.missing > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("snp-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
