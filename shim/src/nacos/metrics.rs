//! Metrics of the Nacos endpoint (`snp_nacos_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::model::types;

/// How a Nacos call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// Answered with success.
    Ok,
    /// A query for a config that does not exist (errorCode 300).
    NotFound,
    /// A write to group `dubbo`: accepted and discarded.
    Discarded,
    /// Refused for its content (errorCode 400).
    Invalid,
    /// Refused: not something this endpoint does (other groups, removes, unknown types).
    Refused,
    /// Pending state full (errorCode 503).
    Overloaded,
    /// Failed (shutting down, durable ack timed out).
    Error,
}

impl CallResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NotFound => "not_found",
            Self::Discarded => "discarded",
            Self::Invalid => "invalid",
            Self::Refused => "refused",
            Self::Overloaded => "overloaded",
            Self::Error => "error",
        }
    }
}

/// Labels of `snp_nacos_calls_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NacosCallLabels {
    /// Request type (the Java simple name), or `other` for types the endpoint does not know.
    pub request: &'static str,
    /// How it ended.
    pub result: &'static str,
}

/// The request types counted under their own name; others count as `other`, so a client
/// cannot grow the label set.
const KNOWN: [&str; 8] = [
    types::SERVER_CHECK,
    types::HEALTH_CHECK,
    types::CONFIG_QUERY,
    types::CONFIG_PUBLISH,
    types::CONFIG_REMOVE,
    types::CONFIG_BATCH_LISTEN,
    types::CONNECTION_SETUP,
    types::CONFIG_CHANGE_NOTIFY_RESPONSE,
];

/// The label value of a request type.
pub fn type_label(kind: &str) -> &'static str {
    KNOWN
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other")
}

/// Every metric of the Nacos endpoint.
#[derive(Debug, Clone, Default)]
pub struct NacosMetrics {
    /// Calls by request type and result.
    pub calls: Family<NacosCallLabels, Counter>,
    /// Open bi-streams (Nacos connections).
    pub connections: Gauge,
    /// Configs listened to, over all connections.
    pub listeners: Gauge,
    /// Change notifications sent.
    pub pushes: Counter,
    /// Change notifications acknowledged by the client.
    pub acks: Counter,
    /// Notifications sent again after no ack came in time.
    pub push_retries: Counter,
    /// Notifications given up on after every retry (the client's periodic full listen heals).
    pub push_failures: Counter,
    /// Tokens handed out by the login stub (`--nacos-login-addr`). A client that keeps
    /// logging in every 5 s did not get one it could use.
    pub logins: Counter,
}

impl NacosMetrics {
    /// Registers the metrics under `snp_nacos_` in `registry` (the `snp` sub-registry).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("nacos");
        r.register(
            "calls",
            "Nacos calls by request type and result",
            self.calls.clone(),
        );
        r.register(
            "connections",
            "Open Nacos connections (bi-streams)",
            self.connections.clone(),
        );
        r.register(
            "listeners",
            "Configs listened to over all Nacos connections",
            self.listeners.clone(),
        );
        r.register(
            "pushes",
            "Config change notifications sent",
            self.pushes.clone(),
        );
        r.register(
            "push_acks",
            "Config change notifications acknowledged",
            self.acks.clone(),
        );
        r.register(
            "push_retries",
            "Config change notifications sent again for want of an ack",
            self.push_retries.clone(),
        );
        r.register(
            "push_failures",
            "Config change notifications given up after every retry",
            self.push_failures.clone(),
        );
        r.register(
            "logins",
            "Tokens handed out by the Nacos login stub",
            self.logins.clone(),
        );
        // Series that dashboards and alerts expect exist from the start, at zero.
        for kind in [types::CONFIG_QUERY, types::CONFIG_PUBLISH] {
            for result in [
                CallResult::Ok,
                CallResult::Error,
                CallResult::Invalid,
                CallResult::Refused,
            ] {
                drop(self.calls.get_or_create(&NacosCallLabels {
                    request: kind,
                    result: result.as_str(),
                }));
            }
        }
    }

    /// Counts one call.
    pub fn call(&self, kind: &str, result: CallResult) {
        self.calls
            .get_or_create(&NacosCallLabels {
                request: type_label(kind),
                result: result.as_str(),
            })
            .inc();
    }
}
