//! Prometheus metrics of the shim, in the text exposition format at `/metrics`.
//!
//! One [`Metrics`] value is shared (it is cheap to clone: every family is an `Arc`).
//! Names follow Prometheus conventions: `snp_` prefix, `_total` counters, base units.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Result of a call or a write.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    /// Succeeded.
    Ok,
    /// Refused for bad input.
    Invalid,
    /// Refused by authentication.
    Unauthenticated,
    /// Refused because pending state is full.
    Overloaded,
    /// Failed (store error, timeout).
    Error,
}

/// Registration API flavour, or the batch API.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Api {
    /// `dubbo.networking.v1alpha1` registration.
    Dubbo,
    /// dubbo-admin `v1alpha1` registration.
    Admin,
    /// `snp.v1.MappingService/PushMappings`.
    Push,
}

/// Store request verb.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Verb {
    /// Read of one object.
    Get,
    /// List (cache sync).
    List,
    /// New object.
    Create,
    /// Replace with resourceVersion (union update).
    Update,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub api: Api,
    pub result: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub verb: Verb,
    pub result: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Every metric of the shim.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Registration and push calls, by API and result.
    pub calls: Family<CallLabels, Counter>,
    /// Invalid calls by reason (snp-core validation reason or framing error).
    pub invalid: Family<ReasonLabels, Counter>,
    /// `(key, app)` registrations accepted into the debouncer (one call may carry many).
    pub registrations: Counter,
    /// Store batches flushed by the debouncer, by result.
    pub batches: Family<ResultLabels, Counter>,
    /// Keys carried by flushed batches (after merging).
    pub merged_keys: Counter,
    /// Store requests by verb and result.
    pub store_writes: Family<WriteLabels, Counter>,
    /// 409 Conflicts met while writing (each was re-read and retried).
    pub conflicts: Counter,
    /// Retries of failed batches (after backoff).
    pub retries: Counter,
    /// Keys whose write was skipped because the store already held the content.
    pub noop_skips: Counter,
    /// Keys waiting in the debouncer.
    pub pending_keys: Gauge,
    /// Open WatchMappings streams.
    pub watchers: Gauge,
    /// Time from a batch leaving the debouncer to the store confirming it, in seconds.
    pub flush_seconds: Histogram,
}

impl Metrics {
    /// Registers every metric in `registry` and returns the handles.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            calls: Family::default(),
            invalid: Family::default(),
            registrations: Counter::default(),
            batches: Family::default(),
            merged_keys: Counter::default(),
            store_writes: Family::default(),
            conflicts: Counter::default(),
            retries: Counter::default(),
            noop_skips: Counter::default(),
            pending_keys: Gauge::default(),
            watchers: Gauge::default(),
            flush_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        };
        let r = registry.sub_registry_with_prefix("snp");
        r.register(
            "calls",
            "Registration and push calls by API and result",
            m.calls.clone(),
        );
        r.register(
            "invalid_calls",
            "Invalid calls by reason",
            m.invalid.clone(),
        );
        r.register(
            "registrations",
            "(namespace, interface, app) registrations accepted",
            m.registrations.clone(),
        );
        r.register(
            "batches",
            "Debounced batches written to the store, by result",
            m.batches.clone(),
        );
        r.register(
            "merged_keys",
            "Keys carried by batches after merging",
            m.merged_keys.clone(),
        );
        r.register(
            "store_writes",
            "Store requests by verb and result",
            m.store_writes.clone(),
        );
        r.register(
            "store_conflicts",
            "409 Conflicts met and resolved by re-reading",
            m.conflicts.clone(),
        );
        r.register(
            "batch_retries",
            "Retries of failed batches",
            m.retries.clone(),
        );
        r.register(
            "noop_skips",
            "Keys not written because the store already held them",
            m.noop_skips.clone(),
        );
        r.register(
            "pending_keys",
            "Keys waiting in the debouncer",
            m.pending_keys.clone(),
        );
        r.register("watchers", "Open WatchMappings streams", m.watchers.clone());
        r.register(
            "flush_duration_seconds",
            "Time from a batch leaving the debouncer to the store confirming it",
            m.flush_seconds.clone(),
        );
        m
    }

    /// Metrics registered in a throwaway registry (for tests and tools).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    /// Counts one store request.
    pub fn store_write(&self, verb: Verb, result: Outcome) {
        self.store_writes
            .get_or_create(&WriteLabels { verb, result })
            .inc();
    }
}
