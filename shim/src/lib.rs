//! snp-shim: the node-local service-name-mapping shim, as a library so that integration
//! tests and tools can run its parts in-process.
//!
//! * [`app`]: assembles the parts and runs them until shutdown.
//! * [`config`]: flags (each with an `SNP_*` environment twin).
//! * [`grpc`]: the registration API (both flavours) and `snp.v1.MappingService`.
//! * [`pipeline`]: the task that owns the debouncer and writes batches to the store.
//! * [`store`]: the store contract, the embedded store and the Kubernetes store (the
//!   `snp-store` crate, re-exported).
//! * [`nacos`]: the Nacos 2.x config protocol for Dubbo 3's `mapping` group.
//! * [`auth`], [`http`], [`metrics`], [`crd`]: authentication, the operations endpoint,
//!   Prometheus metrics, the custom resource type.
//! * [`status`]: the status page at `GET /` on the HTTP port.
//! * [`tls`], [`reload`]: TLS served with certificates reloaded on change, and the one file
//!   watch that reloads both them and the bearer token.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod app;
pub mod auth;
pub mod config;
pub use snp_store::crd;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod journal;
pub mod metrics;
pub mod nacos;
pub mod pipeline;
pub mod reload;
pub mod shutdown;
pub mod status;
pub mod tls;
pub use snp_store as store;
