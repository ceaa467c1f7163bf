//! Helpers shared by the shim's integration tests: run the shim in-process, or as the
//! built binary through the test kit (`snp_testkit`), call it, read `/metrics` with the
//! test kit's reader (an absent metric fails the test, it never reads as 0).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use snp_core::{AppSet, MappingKey, Mappings};
use snp_proto::admin::service_name_mapping_service_client::ServiceNameMappingServiceClient as AdminClient;
use snp_proto::api::mapping_service_client::MappingServiceClient;
use snp_proto::dubbo::service_name_mapping_service_client::ServiceNameMappingServiceClient as DubboClient;
use snp_shim::app::{self, ShimHandle};
use snp_shim::config::Cli;
use snp_testkit::process::ShimBinary;
#[allow(unused_imports)] // not every test binary polls both ways
pub use snp_testkit::wait::{eventually, eventually_async};
use tonic::transport::Channel;

/// Flags of an in-process shim on `dir`, on ephemeral ports, plus `extra`.
pub fn args(dir: &Path, extra: &[&str]) -> snp_shim::config::ServeArgs {
    args_at(dir, "127.0.0.1:0", extra)
}

/// Flags of an in-process shim on `dir`, gRPC on `grpc_addr`, plus `extra`.
pub fn args_at(dir: &Path, grpc_addr: &str, extra: &[&str]) -> snp_shim::config::ServeArgs {
    let mut argv: Vec<String> = vec![
        "snp-shim".into(),
        format!("--grpc-addr={grpc_addr}"),
        "--http-addr=127.0.0.1:0".into(),
        "--store=embedded".into(),
        format!("--data-dir={}", dir.display()),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Cli::parse_from(argv).serve
}

/// Logs of in-process shims go to the test's output (shown when a test fails).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("SNP_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .try_init();
}

/// Starts an in-process shim on `dir`.
pub async fn start(dir: &Path, extra: &[&str]) -> ShimHandle {
    start_at(dir, "127.0.0.1:0", extra).await
}

/// Starts an in-process shim for a test on tokio's paused clock. The journal is off: its
/// writer thread syncs in real time, and meanwhile the paused clock jumps to the next timer,
/// so virtual-time bounds would not hold. The journal is tested on the real binary
/// (`tests/journal.rs`).
pub async fn start_paused(dir: &Path, extra: &[&str]) -> ShimHandle {
    let mut args = vec!["--journal=false"];
    args.extend_from_slice(extra);
    start(dir, &args).await
}

/// Starts an in-process shim on `dir` with gRPC on `grpc_addr`; returns once it is ready.
pub async fn start_at(dir: &Path, grpc_addr: &str, extra: &[&str]) -> ShimHandle {
    start_args(args_at(dir, grpc_addr, extra), Duration::from_secs(10)).await
}

/// Starts an in-process shim with `args`; returns once `/readyz` answers 200, or panics
/// after `within`.
pub async fn start_args(args: snp_shim::config::ServeArgs, within: Duration) -> ShimHandle {
    init_logs();
    let shim = app::start(args).await.expect("shim starts");
    let http = shim.http_addr;
    assert!(
        eventually_async(within, || async move {
            http_get(http, "/readyz").await.0 == 200
        })
        .await,
        "the shim never became ready"
    );
    shim
}

pub fn endpoint(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(endpoint(addr))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

pub async fn dubbo(addr: SocketAddr) -> DubboClient<Channel> {
    DubboClient::new(channel(addr).await)
}

pub async fn admin(addr: SocketAddr) -> AdminClient<Channel> {
    AdminClient::new(channel(addr).await)
}

pub async fn api(addr: SocketAddr) -> MappingServiceClient<Channel> {
    MappingServiceClient::new(channel(addr).await)
}

/// `GetMappings` of `ns`: the mappings of `interfaces`, or of every interface when empty.
pub async fn lookup(
    api: &mut MappingServiceClient<Channel>,
    ns: &str,
    interfaces: &[&str],
) -> Vec<snp_proto::api::MappingState> {
    api.get_mappings(snp_proto::api::GetMappingsRequest {
        namespace: ns.into(),
        interface_names: interfaces.iter().map(|s| s.to_string()).collect(),
    })
    .await
    .expect("GetMappings")
    .into_inner()
    .mappings
}

pub fn dubbo_req(ns: &str, app: &str, ifaces: &[&str]) -> snp_proto::dubbo::ServiceMappingRequest {
    snp_proto::dubbo::ServiceMappingRequest {
        namespace: ns.into(),
        application_name: app.into(),
        interface_names: ifaces.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn admin_req(ns: &str, app: &str, ifaces: &[&str]) -> snp_proto::admin::ServiceMappingRequest {
    snp_proto::admin::ServiceMappingRequest {
        namespace: ns.into(),
        application_name: app.into(),
        interface_names: ifaces.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn mapping(ns: &str, iface: &str, apps: &[&str]) -> snp_proto::api::Mapping {
    snp_proto::api::Mapping {
        namespace: ns.into(),
        interface_name: iface.into(),
        application_names: apps.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn mappings(entries: &[(&str, &str, &[&str])]) -> Mappings {
    entries
        .iter()
        .map(|(ns, i, apps)| (MappingKey::new(*ns, *i), apps.iter().collect::<AppSet>()))
        .collect()
}

/// What the manifests under `dir` hold, read from disk.
pub fn on_disk(dir: &Path) -> Mappings {
    snp_shim::store::embedded::read_dir_mappings(dir).expect("read manifests")
}

/// A plain HTTP/1.1 GET; returns (status, body). Panics if the request fails.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    snp_testkit::http::get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e:#}"))
}

/// Sum of every sample of `name` whose labels contain all of `labels` (`k="v"` pairs),
/// as scraped from `/metrics`. Panics if no sample matches.
pub async fn metric(addr: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    metric_in(&body, name, labels)
}

/// [`metric`] on a scraped text. Panics if no sample matches.
pub fn metric_in(body: &str, name: &str, labels: &[&str]) -> f64 {
    snp_testkit::prom::sum_kv(body, name, labels).unwrap_or_else(|e| panic!("{e}"))
}

/// The shim binary, started with its output in a file, on ephemeral ports; killed when
/// dropped.
pub struct Binary {
    shim: ShimBinary,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
}

impl Binary {
    pub fn start(dir: &Path, log: &Path, extra: &[&str]) -> Binary {
        Self::start_on(dir, log, "127.0.0.1:0", extra)
    }

    pub fn start_on(dir: &Path, log: &Path, grpc_addr: &str, extra: &[&str]) -> Binary {
        let mut args = vec![
            format!("--grpc-addr={grpc_addr}"),
            "--http-addr=127.0.0.1:0".to_owned(),
            "--store=embedded".to_owned(),
            format!("--data-dir={}", dir.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(log, &args)
    }

    /// Starts the binary with `--log-format=json` and exactly `args` (see
    /// [`ShimBinary::spawn`]), output in `log`. Panics if it exits first or does not
    /// listen within 20 s.
    pub fn spawn(log: &Path, args: &[String]) -> Binary {
        let shim = ShimBinary::spawn(Path::new(env!("CARGO_BIN_EXE_snp-shim")), log, args)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Binary {
            grpc: shim.grpc,
            http: shim.http,
            log: log.to_path_buf(),
            shim,
        }
    }

    /// Waits until `GET /readyz` answers 200; panics (with the log) after `within` or if
    /// the process exits.
    pub async fn wait_ready(&mut self, within: Duration) {
        if let Err(e) = self.shim.wait_ready(within).await {
            panic!("snp-shim not ready: {e:#}\n{}", self.log_text());
        }
    }

    /// Sends SIGTERM and waits for the exit (without blocking the test's runtime, so its
    /// clients keep answering); returns whether it exited with 0.
    pub async fn terminate(&mut self) -> bool {
        self.shim
            .terminate()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn log_text(&self) -> String {
        self.shim.proc.log_text()
    }
    /// SIGKILL, and waits for the exit (a crash at this very moment).
    pub fn kill(&mut self) {
        self.shim.proc.kill();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.shim.proc.pid()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.shim.proc.kill();
    }
}

/// A batch event of the shim's pipeline log, for checks of its retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Dispatched,
    Failed,
    Written,
}

impl Step {
    /// The step a pipeline log message (target `snp_shim::pipeline`) stands for.
    pub fn of(message: &str) -> Option<Step> {
        match message {
            "writing batch" => Some(Step::Dispatched),
            "batch failed; it will be retried" => Some(Step::Failed),
            "batch written" => Some(Step::Written),
            _ => None,
        }
    }
}

/// One retry of a failed batch: the failures in a row so far, the backoff the schedule
/// gives them before jitter (`base` doubling per failure up to `cap`, from 2 x `base`), and
/// when (seconds) the failure and the retry were logged.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub failures: u32,
    pub expected: f64,
    pub failed_at: f64,
    pub retried_at: f64,
}

impl Retry {
    /// Seconds from the failure to the retry.
    pub fn gap(&self) -> f64 {
        self.retried_at - self.failed_at
    }
}

/// Each failure of `steps` (seconds, step) paired with the retry that followed it.
pub fn retries(steps: &[(f64, Step)], base: f64, cap: f64) -> Vec<Retry> {
    let mut out = Vec::new();
    let (mut failures, mut failed_at) = (0u32, None);
    for &(t, step) in steps {
        match step {
            Step::Failed => {
                failures += 1;
                failed_at = Some(t);
            }
            Step::Dispatched => {
                if let Some(f) = failed_at.take() {
                    out.push(Retry {
                        failures,
                        expected: (base * f64::from(1u32 << failures.min(16))).min(cap),
                        failed_at: f,
                        retried_at: t,
                    });
                }
            }
            Step::Written => failures = 0,
        }
    }
    out
}

/// `retries` for messages: `#k: gap (expected low..high)`, with the jitter's low end.
pub fn show_retries(retries: &[Retry], jitter: f64) -> String {
    let shown: Vec<String> = retries
        .iter()
        .map(|r| {
            format!(
                "#{}: {:.3}s (expected {:.3}..{:.3}s)",
                r.failures,
                r.gap(),
                r.expected * (1.0 - jitter),
                r.expected
            )
        })
        .collect();
    shown.join(", ")
}
