//! snp-shim: the node-local service-name-mapping shim, as a library so that integration
//! tests and tools can run its parts in-process.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod config;
pub mod crd;
pub mod metrics;
pub mod store;
