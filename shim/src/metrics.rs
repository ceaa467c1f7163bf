//! Prometheus metrics of the shim, in the text exposition format at `/metrics`.
//!
//! One [`Metrics`] value is shared (it is cheap to clone: every family is an `Arc`).
//! Names follow Prometheus conventions: `snp_` prefix, `_total` counters, base units.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use self::live::{BatchEvent, PendingAge};

/// Result of a call or a write.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Api {
    /// `dubbo.networking.v1alpha1` registration.
    Dubbo,
    /// dubbo-admin `v1alpha1` registration.
    Admin,
    /// `snp.v1.MappingService/PushMappings`.
    Push,
}

/// A credential the shim reloads when its files change.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Credential {
    /// The bearer token (`--auth-token-file`).
    Token,
    /// The TLS certificate, key and client CA (`--tls-*`).
    Tls,
}

impl Credential {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Tls => "tls",
        }
    }

    /// What it is, for logs.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Token => "bearer token",
            Self::Tls => "TLS certificate, key and client CA",
        }
    }
}

/// Labels of `snp_credential_reloads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// Which credential.
    pub credential: Credential,
    /// `ok`, or `error` (the old credential stays in use).
    pub result: Outcome,
}

/// Store request verb (the store's own; a label value with its `prometheus` feature).
pub use snp_store::Verb;

impl Outcome {
    /// The label value (lower case, as Prometheus label values usually are).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Invalid => "invalid",
            Self::Unauthenticated => "unauthenticated",
            Self::Overloaded => "overloaded",
            Self::Error => "error",
        }
    }
}

impl Api {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dubbo => "dubbo",
            Self::Admin => "admin",
            Self::Push => "push",
        }
    }
}

macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )*};
}
label_value!(Outcome, Api, Credential);

/// Labels of `snp_calls_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// Which API.
    pub api: Api,
    /// How it ended.
    pub result: Outcome,
}

/// Labels of `snp_batches_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// How it ended.
    pub result: Outcome,
}

/// Labels of `snp_store_writes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Request verb.
    pub verb: Verb,
    /// How it ended.
    pub result: Outcome,
}

/// Labels of `snp_invalid_calls_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Validation or decoding reason.
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
    /// Batches being written to the store (0 or 1 with debouncing on).
    pub batches_in_flight: Gauge,
    /// Whether the store is reachable and its cache synced right now (1) or not (0).
    /// `/readyz` stays ready through outages once synced; this shows them.
    pub store_ready: Gauge,
    /// Open WatchMappings streams.
    pub watchers: Gauge,
    /// Time from a batch leaving the debouncer to the store confirming it, in seconds.
    pub flush_seconds: Histogram,
    /// Calls waiting for their mappings to become durable (durable acks, PushMappings).
    pub durable_waiters: Gauge,
    /// The Nacos endpoint's metrics (`snp_nacos_*`).
    pub nacos: crate::nacos::metrics::NacosMetrics,
    /// Age of the oldest registration not yet in the store (`snp_oldest_pending_age_seconds`).
    pub oldest_pending: PendingAge,
    /// Every batch the pipeline completed, as it completes (the status page's timeline).
    pub batch_events: tokio::sync::broadcast::Sender<BatchEvent>,
    /// Keys parked after the store refused them for good.
    pub parked_keys: Gauge,
    /// Keys parked, by the store's reason (each key counted once per parking, not per probe).
    pub parked: Family<ReasonLabels, Counter>,
    /// Reloads of credentials whose files changed, by credential and result.
    pub credential_reloads: Family<ReloadLabels, Counter>,
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
            batches_in_flight: Gauge::default(),
            store_ready: Gauge::default(),
            watchers: Gauge::default(),
            flush_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            durable_waiters: Gauge::default(),
            nacos: Default::default(),
            oldest_pending: PendingAge::default(),
            batch_events: tokio::sync::broadcast::channel(live::BATCH_EVENTS).0,
            parked_keys: Gauge::default(),
            parked: Family::default(),
            credential_reloads: Family::default(),
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
        r.register(
            "batches_in_flight",
            "Batches being written to the store",
            m.batches_in_flight.clone(),
        );
        r.register(
            "store_ready",
            "Whether the store is reachable and its cache synced right now",
            m.store_ready.clone(),
        );
        r.register("watchers", "Open WatchMappings streams", m.watchers.clone());
        r.register(
            "flush_duration_seconds",
            "Time from a batch leaving the debouncer to the store confirming it",
            m.flush_seconds.clone(),
        );
        r.register(
            "durable_waiters",
            "Calls waiting for their mappings to become durable",
            m.durable_waiters.clone(),
        );
        m.nacos.register(r);
        r.register_collector(Box::new(m.oldest_pending.clone()));
        r.register(
            "parked_keys",
            "Keys parked because the store refuses them for good (probed again slowly)",
            m.parked_keys.clone(),
        );
        r.register(
            "keys_parked",
            "Keys parked, by the store's reason",
            m.parked.clone(),
        );
        r.register(
            "credential_reloads",
            "Reloads of the token or TLS files after they changed, by result (error: the old credential stays in use)",
            m.credential_reloads.clone(),
        );
        // Series that dashboards and alerts expect exist from the start, at zero.
        for api in [Api::Dubbo, Api::Admin, Api::Push] {
            for result in [
                Outcome::Ok,
                Outcome::Invalid,
                Outcome::Unauthenticated,
                Outcome::Overloaded,
                Outcome::Error,
            ] {
                drop(m.calls.get_or_create(&CallLabels { api, result }));
            }
        }
        for result in [Outcome::Ok, Outcome::Error] {
            drop(m.batches.get_or_create(&ResultLabels { result }));
            for verb in [Verb::Get, Verb::Create, Verb::Update] {
                drop(m.store_writes.get_or_create(&WriteLabels { verb, result }));
            }
        }
        m
    }

    /// Metrics registered in a throwaway registry (for tests and tools).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    /// Counts one call of `api` with `result`.
    pub fn call(&self, api: Api, result: Outcome) {
        self.calls.get_or_create(&CallLabels { api, result }).inc();
    }

    /// Counts one reload of `credential` (`ok`: the new files are in use).
    pub fn credential_reload(&self, credential: Credential, ok: bool) {
        let result = if ok { Outcome::Ok } else { Outcome::Error };
        self.credential_reloads
            .get_or_create(&ReloadLabels { credential, result })
            .inc();
    }

    /// Reloads of `credential` so far that succeeded (`ok`) or failed.
    pub fn credential_reloads(&self, credential: Credential, ok: bool) -> u64 {
        let result = if ok { Outcome::Ok } else { Outcome::Error };
        self.credential_reloads
            .get_or_create(&ReloadLabels { credential, result })
            .get()
    }

    /// Counts one invalid call by reason.
    pub fn invalid(&self, reason: &str) {
        self.invalid
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Publishes the outcome of batch `id` (left the debouncer at `started`) to the status
    /// page, and moves the pending age past it if it succeeded.
    pub fn batch_completed(
        &self,
        id: u64,
        started: tokio::time::Instant,
        keys: usize,
        summary: &crate::store::MergeOutcome,
        error: Option<String>,
    ) {
        let elapsed = started.elapsed();
        let started_ms = std::time::SystemTime::now()
            .checked_sub(elapsed)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let ok = error.is_none();
        if ok {
            self.oldest_pending.written(started);
        }
        // No subscriber (no status page open) is fine.
        let _ = self.batch_events.send(BatchEvent {
            id,
            started_ms,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            keys,
            created: summary.created,
            updated: summary.updated,
            unchanged: summary.unchanged,
            conflicts: summary.conflicts,
            ok,
            error,
        });
    }

    /// Counts one store request.
    pub fn store_write(&self, verb: Verb, result: Outcome) {
        self.store_writes
            .get_or_create(&WriteLabels { verb, result })
            .inc();
    }
}

/// Live views for the status page and the pending-age gauge.
mod live {
    use std::sync::{Arc, Mutex};

    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::registry::Unit;
    use serde::Serialize;
    use tokio::time::Instant;

    /// Batch events kept for subscribers that fall behind.
    pub(super) const BATCH_EVENTS: usize = 256;

    /// One batch the pipeline handed to the store, once the store answered.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct BatchEvent {
        /// The debouncer's batch id.
        pub id: u64,
        /// When the batch left the debouncer (Unix milliseconds).
        pub started_ms: u64,
        /// How long the store took (milliseconds).
        pub duration_ms: u64,
        /// Keys it carried.
        pub keys: usize,
        /// Objects created.
        pub created: usize,
        /// Objects updated.
        pub updated: usize,
        /// Keys the store already held.
        pub unchanged: usize,
        /// 409 Conflicts met.
        pub conflicts: usize,
        /// Whether every key is in the store.
        pub ok: bool,
        /// Why it failed (it is retried with backoff).
        pub error: Option<String>,
    }

    /// Since when the pipeline has held a registration that is not in the store yet.
    ///
    /// Set when the pipeline stops being idle; moved to the start of each successful
    /// batch (whatever is still pending arrived after that batch took the pending set);
    /// cleared when it is idle again. Failed batches leave it alone, so during a store
    /// outage it keeps growing. An upper bound of the oldest pending key's age, exact with
    /// debouncing on (one batch in flight, batches not split).
    #[derive(Debug, Clone, Default)]
    pub struct PendingAge(Arc<Mutex<Option<Instant>>>);

    impl PendingAge {
        /// Records whether anything is pending or in flight now.
        pub fn busy(&self, busy: bool) {
            if let Ok(mut since) = self.0.lock() {
                match (*since, busy) {
                    (None, true) => *since = Some(Instant::now()),
                    (Some(_), false) => *since = None,
                    _ => {}
                }
            }
        }

        /// Records that the batch that left the debouncer at `started` is in the store.
        pub fn written(&self, started: Instant) {
            if let Ok(mut since) = self.0.lock() {
                if let Some(s) = since.as_mut() {
                    *s = (*s).max(started);
                }
            }
        }

        /// Seconds since the oldest pending registration arrived (0 when none).
        pub fn seconds(&self) -> f64 {
            self.0
                .lock()
                .ok()
                .and_then(|s| *s)
                .map_or(0.0, |s| s.elapsed().as_secs_f64())
        }
    }

    impl Collector for PendingAge {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let gauge = ConstGauge::new(self.seconds());
            let metric = encoder.encode_descriptor(
                "oldest_pending_age",
                "Age of the oldest registration not yet in the store",
                Some(&Unit::Seconds),
                gauge.metric_type(),
            )?;
            gauge.encode(metric)
        }
    }
}

/// The stores report their requests into these metrics.
impl snp_store::Observer for Metrics {
    fn request(&self, verb: snp_store::Verb, result: snp_store::RequestResult) {
        let result = match result {
            snp_store::RequestResult::Ok => Outcome::Ok,
            snp_store::RequestResult::Rejected => Outcome::Invalid,
            snp_store::RequestResult::Failed => Outcome::Error,
        };
        self.store_write(verb, result);
    }

    fn conflict(&self) {
        self.conflicts.inc();
    }

    fn noop_skips(&self, n: u64) {
        self.noop_skips.inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_age_grows_until_idle_and_moves_past_written_batches() {
        use std::time::Duration;
        let age = PendingAge::default();
        assert_eq!(age.seconds(), 0.0);
        age.busy(true);
        std::thread::sleep(Duration::from_millis(60));
        let batch_left = tokio::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        age.busy(true);
        let before = age.seconds();
        assert!(before >= 0.08, "{before}");
        // What is still pending arrived after that batch left: the age restarts from there.
        age.written(batch_left);
        let after = age.seconds();
        assert!(
            after >= 0.02 && after <= before - 0.05,
            "{after} vs {before}"
        );
        // An older batch does not move it back.
        age.written(batch_left - Duration::from_secs(10));
        assert!(age.seconds() >= after);
        age.busy(false);
        assert_eq!(age.seconds(), 0.0);

        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.oldest_pending.busy(true);
        std::thread::sleep(Duration::from_millis(30));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("snp_oldest_pending_age_seconds "))
            .expect("the gauge is exposed")
            .parse()
            .unwrap();
        assert!(value >= 0.03, "{text}");
    }

    #[test]
    fn text_format_uses_lower_case_label_values() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.store_write(Verb::Create, Outcome::Ok);
        m.call(Api::Push, Outcome::Invalid);
        m.invalid("invalid_namespace");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"snp_store_writes_total{verb="create",result="ok"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"snp_calls_total{api="push",result="invalid"} 1"#));
        assert!(text.contains(r#"snp_invalid_calls_total{reason="invalid_namespace"} 1"#));
        assert!(text.contains("snp_flush_duration_seconds_bucket"));
    }
}
