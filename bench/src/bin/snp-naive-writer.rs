//! `snp-naive-writer`: the naive baseline of figure 3. Runs the same simulated rollout as
//! `snp-load`, but writes each registration to the API server itself with one
//! read-modify-write (GET, union, PUT or POST, CAS retries on 409), and prints the API
//! server's requests by verb.
//!
//! ```sh
//! snp-naive-writer --kubeconfig /tmp/kas/kubeconfig --pods 200 --interfaces 10 --mode always
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use snp_bench::naive::{self, NaiveMode};
use snp_bench::stats::{fmt_dur, fmt_int, fmt_rate};
use snp_bench::table::Table;
use snp_bench::workload::RolloutArgs;

/// One read-modify-write per registration, against a real API server.
#[derive(Debug, Parser)]
#[command(name = "snp-naive-writer", version)]
struct Cli {
    /// Kubeconfig of the API server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// ServiceNameMapping API group (the CRD must be installed).
    #[arg(long, default_value = snp_store::crd::DEFAULT_GROUP)]
    group: String,
    /// Write only when the application is missing (Dubbo, seed), or always.
    #[arg(long, value_enum, default_value_t = NaiveMode::SkipUnchanged)]
    mode: NaiveMode,
    #[command(flatten)]
    rollout: RolloutArgs,
    /// Registrations in flight at most (there is no client-side QPS limit).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rollout = cli.rollout.rollout("naive");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("snp-naive-writer: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let client = snp_bench::kube::client(&cli.kubeconfig).await?;
        naive::run(&client, &cli.group, &rollout, cli.concurrency, cli.mode).await
    });
    match result {
        Ok(r) => {
            let mut t = Table::new(&[
                format!(
                    "naive writer ({:?}): {} registrations",
                    cli.mode,
                    rollout.registrations()
                ),
                "value".into(),
            ]);
            t.row(["registrations stored".into(), fmt_int(r.ok)]);
            t.row(["registrations failed".into(), fmt_int(r.failed)]);
            t.row(["sent in".into(), fmt_dur(r.elapsed)]);
            t.row([
                "throughput".into(),
                fmt_rate(r.ok as f64 / r.elapsed.as_secs_f64().max(1e-9)),
            ]);
            t.row([
                "latency p50 / p99 / p999".into(),
                format!(
                    "{} / {} / {}",
                    fmt_dur(r.latency.p50()),
                    fmt_dur(r.latency.p99()),
                    fmt_dur(r.latency.p999())
                ),
            ]);
            t.row(["convergence".into(), fmt_dur(r.converged)]);
            t.row([
                "API server requests by verb and code".into(),
                r.api.to_string(),
            ]);
            t.row([
                "API write requests / registration".into(),
                format!(
                    "{:.4}",
                    r.api.writes() as f64 / rollout.registrations().max(1) as f64
                ),
            ]);
            t.row([
                "API requests / registration".into(),
                format!(
                    "{:.4}",
                    r.api.total() as f64 / rollout.registrations().max(1) as f64
                ),
            ]);
            print!("{t}");
            if let Some(e) = r.first_error {
                eprintln!("first error: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("snp-naive-writer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
