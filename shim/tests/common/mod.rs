//! Helpers shared by the integration tests: run the shim in-process or as the built
//! binary, call it, read `/metrics`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use snp_core::{AppSet, MappingKey, Mappings};
use snp_proto::admin::service_name_mapping_service_client::ServiceNameMappingServiceClient as AdminClient;
use snp_proto::api::mapping_service_client::MappingServiceClient;
use snp_proto::dubbo::service_name_mapping_service_client::ServiceNameMappingServiceClient as DubboClient;
use snp_shim::app::{self, ShimHandle};
use snp_shim::config::Cli;
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

/// Starts an in-process shim on `dir` with gRPC on `grpc_addr`; returns once it is ready.
pub async fn start_at(dir: &Path, grpc_addr: &str, extra: &[&str]) -> ShimHandle {
    init_logs();
    let shim = app::start(args_at(dir, grpc_addr, extra))
        .await
        .expect("shim starts");
    let http = shim.http_addr;
    assert!(
        eventually_async(Duration::from_secs(10), || async move {
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

/// Polls `f` until it is true or `timeout` passes; returns whether it became true.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the async `f` until it is true or `timeout` passes.
pub async fn eventually_async<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .expect("http response in time")
        .unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sum of every sample of `name` whose labels contain all of `labels` (`k="v"` pairs),
/// as scraped from `/metrics`.
pub async fn metric(addr: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    metric_in(&body, name, labels)
}

pub fn metric_in(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name && labels.iter().all(|lv| rest.contains(lv)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum::<f64>()
        + 0.0
}

/// The shim binary, started with stderr in a file, on ephemeral ports.
pub struct Binary {
    pub child: Child,
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
            "--store=auto".to_owned(),
            format!("--data-dir={}", dir.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(log, &args)
    }

    /// Starts the binary with `--log-format=json` and exactly `args` (they must not repeat
    /// `--log-format`; give `--grpc-addr`/`--http-addr` with port 0 for free ports), stderr
    /// in `log`. Returns once it listens, with the addresses it logged. Panics if it exits
    /// first or does not listen within 20 s.
    pub fn spawn(log: &Path, args: &[String]) -> Binary {
        let err = std::fs::File::create(log).unwrap();
        #[allow(clippy::zombie_processes)] // reaped in Drop
        let mut child = Command::new(env!("CARGO_BIN_EXE_snp-shim"))
            .arg("--log-format=json")
            .args(args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn snp-shim");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("snp-shim listening")) {
                let v: serde_json::Value = serde_json::from_str(line).expect("json log line");
                let grpc = v["grpc_addr"].as_str().unwrap().parse().unwrap();
                let http = v["http_addr"].as_str().unwrap().parse().unwrap();
                return Binary {
                    child,
                    grpc,
                    http,
                    log: log.to_path_buf(),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("snp-shim {args:?} exited ({status}):\n{text}");
            }
            assert!(Instant::now() < deadline, "snp-shim did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `GET /readyz` answers 200; panics (with the log) after `within` or if
    /// the process exits.
    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("snp-shim exited ({status}):\n{}", self.log_text());
            }
            if http_get(self.http, "/readyz").await.0 == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "snp-shim not ready within {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit (without blocking the test's runtime, so its
    /// clients keep answering); returns whether it exited with 0.
    pub async fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "snp-shim did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
