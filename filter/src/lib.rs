//! snp's proxy-wasm filter: answers service-name-mapping registrations inside Envoy,
//! debounces and merges them per worker with `snp-core`, and forwards batches to the
//! shim's `snp.v1.MappingService/PushMappings`.
//!
//! Host-agnostic modules hold every decision and are tested natively:
//! * [`config`]: the JSON configuration and its defaults;
//! * [`request`]: header checks, body decoding and validation, rejections;
//! * [`policy`]: namespace enforcement (`trust`, `node`, `peer`);
//! * [`engine`]: one worker's debouncer, batches in flight and held (durable) replies;
//! * [`metrics`]: metric names.
//!
//! `adapter` is the thin proxy-wasm layer that Envoy calls.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod adapter;
pub mod clock;
pub mod config;
pub mod engine;
pub mod json;
pub mod metrics;
pub mod policy;
pub mod request;
