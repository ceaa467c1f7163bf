//! snp's benchmark instruments. See `BENCHMARKS.md` at the repository root for
//! the figures and the commands that reproduce them.
//!
//! Binaries:
//! * `snp-load`: the rollout load generator ([`load`], [`workload`]);
//! * `snp-noop-server`: a do-nothing server with the same protos ([`noop`]);
//! * `snp-naive-writer`: one read-modify-write per registration ([`naive`]);
//! * `snp-bench`: the driver that runs each figure end to end and prints its table
//!   ([`figures`]).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod figures;
pub mod kube;
pub mod load;
pub mod naive;
pub mod noop;
pub mod procs;
pub mod prom;
pub mod rawgrpc;
pub mod stats;
pub mod table;
pub mod workload;

use std::time::Duration;

/// Parses a duration flag (`3s`, `250ms`).
pub fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Splits a comma-separated flag.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}
