//! Smoke test of the load generator against an in-process shim (embedded store) and the
//! in-process no-op server: counts, convergence and the shim's counters are read the way
//! the figures read them. No timing is asserted (the figures are in BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use clap::Parser;
use snp_bench::load::{self, LoadConfig, Rpc, TargetKind};
use snp_bench::workload::{unique_prefix, Rollout};

fn rollout(pods: usize, interfaces: usize, namespaces: usize, jitter: Duration) -> Rollout {
    Rollout {
        pods,
        interfaces,
        namespaces,
        apps: 2,
        prefix: unique_prefix("t"),
        jitter,
        seed: 3,
    }
}

fn config(target: String, rollout: Rollout, rpc: Rpc, duration: Option<Duration>) -> LoadConfig {
    LoadConfig {
        kind: TargetKind::Shim,
        targets: vec![target],
        rollout,
        concurrency: 8,
        connections: 2,
        rpc,
        duration,
        shim_metrics: vec![],
        envoy_admin: None,
        kube: None,
        converge_shims: vec![],
        converge_timeout: Duration::from_secs(20),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_into_a_shim_converges_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let args = snp_shim::config::Cli::parse_from([
        "snp-shim".to_owned(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--http-addr=127.0.0.1:0".into(),
        "--store=embedded".into(),
        format!("--data-dir={}", dir.path().display()),
        "--log=warn".into(),
    ])
    .serve;
    let shim = snp_shim::app::start(args).await.unwrap();
    let (grpc, http) = (shim.grpc_addr.to_string(), shim.http_addr.to_string());
    for _ in 0..200 {
        if matches!(snp_testkit::http::get(&http, "/readyz").await, Ok((200, _))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let r = rollout(6, 3, 2, Duration::from_millis(300));
    let mut cfg = config(grpc.clone(), r.clone(), Rpc::Mixed, None);
    cfg.shim_metrics = vec![http.clone()];
    cfg.converge_shims = vec![grpc.clone()];
    let report = load::run(&cfg).await.unwrap();
    assert_eq!(
        report.ok, 36,
        "{:?} {:?}",
        report.errors, report.first_error
    );
    assert_eq!(report.error_count(), 0);
    assert_eq!(report.latency.count(), 36);
    assert!(report.converged.is_some(), "missing {}", report.missing);
    assert_eq!(report.missing, 0);
    let s = report.shim.clone().unwrap();
    assert_eq!(s.calls_ok, 36.0);
    // 6 keys x 2 apps, written once each at most per batch: creates are per key.
    assert_eq!(s.creates, 6.0);
    assert!(s.batches_ok >= 1.0);
    let table = report.table("smoke").to_string();
    assert!(table.contains("convergence"), "{table}");

    // Closed loop against the same shim.
    let report = load::run(&config(grpc, r, Rpc::B, Some(Duration::from_millis(200))))
        .await
        .unwrap();
    assert!(report.ok > 0);
    assert_eq!(report.error_count(), 0);
    shim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_noop_server_answers_every_call() {
    let (listener, addr) = snp_bench::noop::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(snp_bench::noop::serve(listener, async move {
        let _ = stopped.await;
    }));
    for rpc in [Rpc::A, Rpc::B, Rpc::Get] {
        let r = rollout(4, 2, 1, Duration::ZERO);
        let report = load::run(&config(addr.to_string(), r, rpc, None))
            .await
            .unwrap();
        assert_eq!(report.ok, 8, "{rpc:?}: {:?}", report.first_error);
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
