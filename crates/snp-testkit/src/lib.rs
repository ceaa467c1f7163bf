//! Test support of snp, for tests and benchmarks only (`publish = false`; the product
//! crates take it as a dev-dependency, the benchmark tool as a dependency).
//!
//! One way to do each thing the tests and the benchmarks both do:
//!
//! * [`process`]: a child process with its output in a log file, stopped by its own pid;
//!   the `snp-shim` binary on ephemeral ports ([`process::ShimBinary`]);
//! * [`apiserver`]: the real Kubernetes API server, through `scripts/k8s-apiserver.sh`;
//! * [`envoy`]: Envoy with the filter, configured from `envoy/envoy.yaml` as users run it;
//! * [`prom`]: Prometheus text through `prometheus-parse`; a metric that is absent is an
//!   error, never 0;
//! * [`http`]: an HTTP/1.1 client (hyper) for `/metrics`, `/readyz` and Envoy's admin;
//! * [`wait`]: polling until a condition holds, on tokio's clock (so paused-clock tests
//!   wait in virtual time).

pub mod apiserver;
pub mod envoy;
pub mod http;
pub mod process;
pub mod prom;
pub mod wait;
