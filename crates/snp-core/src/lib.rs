//! The sans-io engine of snp, shared by the proxy-wasm filter and the native shim.
//!
//! Nothing here does I/O, reads a clock or needs an async runtime: callers pass `now` in
//! and act on what the state machines hand back. The same code therefore runs inside an
//! Envoy wasm VM (driven by `on_tick`), inside tokio (driven by timers), and in tests on a
//! virtual clock.
//!
//! * [`model`]: mapping keys and union-merged application sets.
//! * [`debounce`]: the registration debouncer (the seed server's quiet/max windows).
//! * [`backoff`]: Nacos-style exponential backoff with injected jitter.
//! * [`schedule`]: the Nacos client's subscription refresh schedule.
//! * [`validate`]: input validation with typed, human-readable errors.
//! * [`naming`]: Kubernetes object names and labels for an interface.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod backoff;
pub mod debounce;
pub mod model;
pub mod naming;
pub mod request;
pub mod schedule;
pub mod time;
pub mod validate;

pub use backoff::{Backoff, Rng, SplitMix64};
pub use debounce::{
    Batch, BatchId, Completed, DebounceConfig, Debouncer, KeyResult, OfferError, OfferSummary,
    Offered, Parked,
};
pub use model::{AppSet, MappingKey, Mappings};
pub use schedule::{Notification, RefreshResult, ScheduleConfig, Scheduler};
pub use time::Instant;
pub use validate::{Limits, Registration, ValidationError};
