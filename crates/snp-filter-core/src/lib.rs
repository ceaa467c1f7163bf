//! The logic of snp's proxy-wasm filter, host-agnostic: it answers service-name-mapping
//! registrations inside Envoy, debounces and merges them with `snp-core`, and forwards
//! batches to the shim's `snp.v1.MappingService/PushMappings`: one sender per Envoy, which
//! takes every worker's mappings from Envoy's shared data ([`shared`]).
//!
//! Everything talks to Envoy through the [`host::Host`] trait, so the whole filter runs
//! natively under a mock host in tests, and `filter/` (the `.wasm`) is only the proxy-wasm
//! implementation of that trait. One module per reason to change:
//!
//! * [`stream`]: the per-stream state machine and the response rewriting;
//! * [`root`]: configuration, the tick, batch dispatch and completion, the drain;
//! * [`request`]: header checks, body decoding and validation, rejections;
//! * [`policy`]: namespace enforcement (`trust`, `node`, `peer`);
//! * [`engine`]: one worker's debouncer, batches in flight and held (durable) replies;
//! * [`shared`]: the Envoy-wide outbox in shared data and the lease of the one sender;
//! * [`config`]: the JSON configuration (serde) and its defaults;
//! * [`metrics`]: metric names and the mapping of outcomes to them;
//! * [`clock`]: a monotonic clock from the host's wall clock;
//! * [`host`]: what the filter needs from Envoy.
//!
//! A panic kills the Envoy VM and every stream on it: `unwrap`, `expect` and `panic` are
//! denied outside tests.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod clock;
pub mod config;
pub mod engine;
pub mod host;
pub mod metrics;
pub mod policy;
/// Decoding and validation of registration calls, shared with the shim (`snp_core::request`).
pub mod request {
    pub use snp_core::request::*;
}
pub mod root;
pub mod shared;
pub mod stream;

#[cfg(test)]
mod lifecycle_tests;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod workers_tests;

pub use host::{Action, Host, SharedSetError};
pub use root::Root;
pub use stream::Stream;
