//! The figures of `BENCHMARKS.md`, each run end to end by `snp-bench <figure>`: it starts
//! what the figure needs (Envoy with and without the filter, shims, the no-op server, a
//! real API server through `scripts/k8s-apiserver.sh`), drives it with the load generator
//! in this process, prints the figure's tables, and returns its verdicts.
//!
//! Comparisons are ratios of two set-ups measured in the same run, alternated A/B/A/B
//! (`rounds` times, `round` each) so that drift of a noisy machine hits both sides alike.
//!
//! One module per figure ([`fig1_ack_latency`] ... [`fig13_one_batch`]); what they share is
//! here (the work environment, verdicts, printing), in [`setup`] (the processes a figure
//! starts) and in [`runs`] (load runs, A/B rotations and their tables).

use std::path::PathBuf;
use std::time::Duration;

use crate::table::{verdict, Table};

pub mod fig10_outage;
pub mod fig11_cluster;
pub mod fig12_large;
pub mod fig13_one_batch;
pub mod fig1_ack_latency;
pub mod fig2_other_traffic;
pub mod fig3_write_amplification;
pub mod fig4_shim_throughput;
pub mod fig5_core_engine;
pub mod fig6_footprint;
pub mod fig7_scaling;
pub mod fig8_journal;
pub mod fig9_seed_peer;
pub mod runs;
pub mod setup;

pub use fig10_outage::fig10;
pub use fig11_cluster::fig11;
pub use fig12_large::fig12;
pub use fig13_one_batch::fig13;
pub use fig1_ack_latency::fig1;
pub use fig2_other_traffic::fig2;
pub use fig3_write_amplification::fig3;
pub use fig4_shim_throughput::fig4;
pub use fig5_core_engine::fig5;
pub use fig6_footprint::fig6;
pub use fig7_scaling::fig7;
pub use fig8_journal::fig8;
pub use fig9_seed_peer::fig9;
pub use setup::{ApiServer, Envoy, Filter, Shim, Upstreams};

/// Where everything is, and how long to measure.
#[derive(Debug, Clone)]
pub struct Env {
    /// Repository root.
    pub root: PathBuf,
    /// Work directory: configurations, logs, data.
    pub dir: PathBuf,
    /// Envoy binary.
    pub envoy: PathBuf,
    /// `snp-shim` binary (release build).
    pub shim: PathBuf,
    /// `snp-noop-server` binary.
    pub noop: PathBuf,
    /// The filter's `.wasm`.
    pub filter_wasm: PathBuf,
    /// The offer benchmark module's `.wasm` (figure 5).
    pub bench_wasm: PathBuf,
    /// Envoy `--concurrency` (workers) of figures 1 and 2.
    pub envoy_concurrency: usize,
    /// Length of one A or B round of the throughput figures.
    pub round: Duration,
    /// A/B round pairs.
    pub rounds: usize,
    /// Smaller sizes (a smoke run of the harness, not figures to publish).
    pub quick: bool,
    /// Figure 5: also run `cargo bench -p snp-core --bench offer`.
    pub cargo_bench: bool,
    /// Figure 7: also the 100k growing-keys run against the API server.
    pub kube_full: bool,
    /// Figure 9: how long the API server is stopped.
    pub outage: Duration,
}

/// One checked (or reported) measure of a figure.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Figure number and measure.
    pub measure: String,
    /// The target, as text.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// `None`: reported, no target.
    pub pass: Option<bool>,
}

impl Verdict {
    fn check(
        measure: impl Into<String>,
        target: impl Into<String>,
        measured: impl Into<String>,
        pass: bool,
    ) -> Self {
        Self {
            measure: measure.into(),
            target: target.into(),
            measured: measured.into(),
            pass: Some(pass),
        }
    }

    fn info(measure: impl Into<String>, measured: impl Into<String>) -> Self {
        Self {
            measure: measure.into(),
            target: "(none)".into(),
            measured: measured.into(),
            pass: None,
        }
    }
}

/// The summary table of verdicts.
pub fn summary(verdicts: &[Verdict]) -> Table {
    let mut t = Table::new(&["measure", "target", "measured", "verdict"]);
    for v in verdicts {
        t.row([
            v.measure.clone(),
            v.target.clone(),
            v.measured.clone(),
            v.pass.map_or("info", verdict).to_owned(),
        ]);
    }
    t
}

fn section(title: &str) {
    println!("\n## {title}\n");
}

fn print_table(caption: &str, t: &Table) {
    if !caption.is_empty() {
        println!("{caption}\n");
    }
    println!("{t}");
}
