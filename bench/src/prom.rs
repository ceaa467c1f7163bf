//! The metrics the benchmarks read: Prometheus text (the shim's `/metrics`, the API
//! server's `apiserver_request_total`) through the test kit's one reader, and Envoy's admin
//! `/stats`.

pub use snp_testkit::envoy::{stat as envoy_stat, stats as envoy_stats};
pub use snp_testkit::prom::{sum, MetricError, Metrics, RequestCounts, WRITE_VERBS};
