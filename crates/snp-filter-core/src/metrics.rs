//! Metrics: their names, and the mapping from filter outcomes to the host's metric ids.
//! Envoy shows proxy-wasm metrics at the admin `/stats` under the `wasmcustom.` prefix,
//! e.g. `wasmcustom.snp.registrations.ok`.

use crate::host::{Host, MetricKind};
use crate::request::{Code, Reason, Rejection};

/// Counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Calls answered OK.
    RegistrationsOk,
    /// Calls answered INVALID_ARGUMENT.
    RegistrationsInvalid,
    /// Calls answered UNIMPLEMENTED (compressed, wrong content type, not gRPC).
    RegistrationsUnimplemented,
    /// Calls answered PERMISSION_DENIED (namespace policy).
    RegistrationsDenied,
    /// Calls answered RESOURCE_EXHAUSTED (body too large, bounds reached).
    RegistrationsExhausted,
    /// Durable calls answered UNAVAILABLE after the timeout.
    RegistrationsUnavailable,
    /// Accepted calls whose namespace was rewritten to the caller's.
    RegistrationsRewritten,
    /// Durable calls held for an acknowledgement.
    RegistrationsHeld,
    /// Batches sent to the shim.
    BatchesSent,
    /// Batches the shim acknowledged.
    BatchesAcked,
    /// Batches that failed (error status, timeout, or not sent at all).
    BatchesFailed,
    /// `(key, app)` pairs the shim acknowledged.
    MappingsAcked,
    /// Mappings the shim answered REJECTED: dropped from the batch, parked, not resent.
    MappingsRejected,
    /// Calls answered FAILED_PRECONDITION (the shim refuses a mapping of theirs for good).
    RegistrationsRejected,
    /// Requests that entered the filter but are not registrations, passed untouched. Where
    /// the filter is enabled only on the registration routes (envoy/envoy.yaml, the Istio
    /// EnvoyFilter), only the routes' superset for path spellings brings such requests
    /// here: other traffic that does not enter the filter is not counted.
    RequestsPassed,
    /// `(key, app)` pairs a worker added to the Envoy-wide shared outbox (new mappings).
    SharedHanded,
    /// Pairs the sending worker took from the shared outbox that it had not seen itself
    /// (other workers' mappings merged into its batches).
    SharedTaken,
    /// Times a worker took the sending lease (first start, or after the sender died).
    SharedLeaseTaken,
    /// Shared-data writes that lost a compare-and-swap race and were retried.
    SharedConflicts,
}

impl Counter {
    /// Every counter, in definition order.
    pub const ALL: [Counter; 19] = [
        Counter::RegistrationsOk,
        Counter::RegistrationsInvalid,
        Counter::RegistrationsUnimplemented,
        Counter::RegistrationsDenied,
        Counter::RegistrationsExhausted,
        Counter::RegistrationsUnavailable,
        Counter::RegistrationsRewritten,
        Counter::RegistrationsHeld,
        Counter::BatchesSent,
        Counter::BatchesAcked,
        Counter::BatchesFailed,
        Counter::MappingsAcked,
        Counter::MappingsRejected,
        Counter::RegistrationsRejected,
        Counter::RequestsPassed,
        Counter::SharedHanded,
        Counter::SharedTaken,
        Counter::SharedLeaseTaken,
        Counter::SharedConflicts,
    ];

    /// The metric name.
    pub fn name(self) -> &'static str {
        match self {
            Self::RegistrationsOk => "snp.registrations.ok",
            Self::RegistrationsInvalid => "snp.registrations.invalid",
            Self::RegistrationsUnimplemented => "snp.registrations.unimplemented",
            Self::RegistrationsDenied => "snp.registrations.denied",
            Self::RegistrationsExhausted => "snp.registrations.exhausted",
            Self::RegistrationsUnavailable => "snp.registrations.unavailable",
            Self::RegistrationsRewritten => "snp.registrations.rewritten",
            Self::RegistrationsHeld => "snp.registrations.held",
            Self::BatchesSent => "snp.batches.sent",
            Self::BatchesAcked => "snp.batches.acked",
            Self::BatchesFailed => "snp.batches.failed",
            Self::MappingsAcked => "snp.mappings.acked",
            Self::MappingsRejected => "snp.mappings.rejected",
            Self::RegistrationsRejected => "snp.registrations.rejected",
            Self::RequestsPassed => "snp.requests.passed",
            Self::SharedHanded => "snp.shared.handed",
            Self::SharedTaken => "snp.shared.taken",
            Self::SharedLeaseTaken => "snp.shared.lease_taken",
            Self::SharedConflicts => "snp.shared.cas_conflicts",
        }
    }

    /// The `snp.registrations.*` counter of a refusal with status `code`.
    pub fn for_code(code: Code) -> Self {
        match code {
            Code::InvalidArgument => Self::RegistrationsInvalid,
            Code::Unimplemented => Self::RegistrationsUnimplemented,
            Code::PermissionDenied => Self::RegistrationsDenied,
            Code::ResourceExhausted => Self::RegistrationsExhausted,
            Code::FailedPrecondition => Self::RegistrationsRejected,
            Code::Unavailable => Self::RegistrationsUnavailable,
        }
    }
}

/// Gauges. Each worker adds its own share, so the value is the sum over workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// Keys waiting for a batch.
    PendingKeys,
    /// Replies held in durable mode.
    HeldReplies,
    /// Keys the shim rejected for good, parked (not resent until their slow probe).
    ParkedKeys,
    /// Workers that hold the sending lease (1 with the shared outbox, else 0).
    SharedSenders,
}

impl Gauge {
    /// Every gauge.
    pub const ALL: [Gauge; 4] = [
        Gauge::PendingKeys,
        Gauge::HeldReplies,
        Gauge::ParkedKeys,
        Gauge::SharedSenders,
    ];

    /// The metric name.
    pub fn name(self) -> &'static str {
        match self {
            Self::PendingKeys => "snp.pending_keys",
            Self::HeldReplies => "snp.held_replies",
            Self::ParkedKeys => "snp.parked_keys",
            Self::SharedSenders => "snp.shared.senders",
        }
    }
}

/// Name of the per-reason counter of a refusal: `snp.invalid.<reason>` for bad input,
/// `snp.rejected.<reason>` for policy and capacity outcomes.
pub fn reason_name(reason: Reason) -> String {
    if reason.is_bad_input() {
        format!("snp.invalid.{}", reason.as_str())
    } else {
        format!("snp.rejected.{}", reason.as_str())
    }
}

/// A worker's share of a gauge, turned into the increments Envoy's shared gauge takes.
#[derive(Debug, Default, Clone, Copy)]
pub struct GaugeShare(u64);

impl GaugeShare {
    /// The change to apply to the shared gauge for a new local value (0: nothing).
    pub fn update(&mut self, value: u64) -> i64 {
        let delta = i128::from(value) - i128::from(self.0);
        self.0 = value;
        i64::try_from(delta).unwrap_or(0)
    }
}

/// Metric ids, defined once per root context. A failed definition only loses the metric.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    counters: Vec<Option<u32>>,
    gauges: Vec<Option<u32>>,
    reasons: Vec<Option<u32>>,
}

impl Metrics {
    /// Defines every metric on `host`.
    pub fn define(host: &impl Host) -> Self {
        let def = |k, n: &str| host.define_metric(k, n);
        Self {
            counters: Counter::ALL
                .iter()
                .map(|c| def(MetricKind::Counter, c.name()))
                .collect(),
            gauges: Gauge::ALL
                .iter()
                .map(|g| def(MetricKind::Gauge, g.name()))
                .collect(),
            reasons: Reason::ALL
                .iter()
                .map(|r| def(MetricKind::Counter, &reason_name(*r)))
                .collect(),
        }
    }

    /// Adds `n` to counter `c`.
    pub fn add(&self, host: &impl Host, c: Counter, n: u64) {
        let id = Counter::ALL
            .iter()
            .position(|x| *x == c)
            .and_then(|i| self.counters.get(i).copied().flatten());
        if let (Some(id), Ok(n @ 1..)) = (id, i64::try_from(n)) {
            host.increment_metric(id, n);
        }
    }

    /// Adds 1 to counter `c`.
    pub fn inc(&self, host: &impl Host, c: Counter) {
        self.add(host, c, 1);
    }

    /// Counts a refusal: its status counter and its reason counter.
    pub fn rejected(&self, host: &impl Host, r: &Rejection) {
        self.inc(host, Counter::for_code(r.code));
        let id = Reason::ALL
            .iter()
            .position(|x| *x == r.reason)
            .and_then(|i| self.reasons.get(i).copied().flatten());
        if let Some(id) = id {
            host.increment_metric(id, 1);
        }
    }

    /// Moves gauge `g` by `delta` (this worker's change).
    pub fn gauge_delta(&self, host: &impl Host, g: Gauge, delta: i64) {
        let id = Gauge::ALL
            .iter()
            .position(|x| *x == g)
            .and_then(|i| self.gauges.get(i).copied().flatten());
        if let (Some(id), true) = (id, delta != 0) {
            host.increment_metric(id, delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_dotted() {
        let mut names: Vec<String> = Counter::ALL.iter().map(|c| c.name().to_owned()).collect();
        names.extend(Gauge::ALL.iter().map(|g| g.name().to_owned()));
        names.extend(Reason::ALL.iter().map(|r| reason_name(*r)));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(names.iter().all(|n| n.starts_with("snp.") && n.is_ascii()));
        assert_eq!(
            reason_name(Reason::TruncatedFrame),
            "snp.invalid.truncated_frame"
        );
        assert_eq!(
            reason_name(Reason::NamespaceMismatch),
            "snp.rejected.namespace_mismatch"
        );
    }

    #[test]
    fn gauge_shares_become_deltas() {
        let mut g = GaugeShare::default();
        assert_eq!(g.update(5), 5);
        assert_eq!(g.update(5), 0);
        assert_eq!(g.update(2), -3);
        assert_eq!(g.update(0), -2);
    }
}
