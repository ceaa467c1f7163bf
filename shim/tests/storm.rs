//! A rollout storm: 10,000 registrations over 100 keys, from concurrent tonic clients of
//! both flavours, against the shim on the embedded store with the seed's debounce windows.
//!
//! Checks the exact union on disk, and that the store writes counted by `/metrics` stay
//! within keys x flush windows (and within the number of distinct (key, app) pairs).

mod common;

use std::time::{Duration, Instant};

use common::*;
use snp_core::{AppSet, MappingKey, Mappings};

const REGISTRATIONS: usize = 10_000;
const KEYS: usize = 100;
const APPS: usize = 5;
const CLIENTS: usize = 8;
const CONCURRENCY: usize = 64;

fn registration(i: usize) -> (String, String, String) {
    let k = i % KEYS;
    let ns = if k.is_multiple_of(2) {
        "default"
    } else {
        "storm"
    };
    let iface = format!("org.example.storm.Service{k}");
    // New applications join throughout the storm (a rolling deploy of five versions), so
    // later windows carry updates, not only repeats.
    let app = format!("provider-{}", i * APPS / REGISTRATIONS);
    (ns.to_owned(), iface, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_10000_registrations_gives_the_exact_union_in_few_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = start(tmp.path(), &[]).await;

    let mut expected = Mappings::new();
    for i in 0..REGISTRATIONS {
        let (ns, iface, app) = registration(i);
        expected.insert(MappingKey::new(ns, iface), &app);
    }
    assert_eq!(expected.len(), KEYS);
    assert_eq!(expected.entries(), KEYS * APPS);

    let mut dubbo_clients = Vec::new();
    let mut admin_clients = Vec::new();
    for _ in 0..CLIENTS / 2 {
        dubbo_clients.push(dubbo(shim.grpc_addr).await);
        admin_clients.push(admin(shim.grpc_addr).await);
    }
    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..REGISTRATIONS {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (ns, iface, app) = registration(i);
        let c = (i / 2) % (CLIENTS / 2);
        if i.is_multiple_of(2) {
            let mut client = dubbo_clients[c].clone();
            tasks.spawn(async move {
                let r = client
                    .register_service_app_mapping(dubbo_req(&ns, &app, &[&iface]))
                    .await;
                drop(permit);
                r.map(|_| ())
            });
        } else {
            let mut client = admin_clients[c].clone();
            tasks.spawn(async move {
                let r = client
                    .register_service_app_mapping(admin_req(&ns, &app, &[&iface]))
                    .await;
                drop(permit);
                let resp = r?.into_inner();
                assert!(resp.success && resp.message == "success");
                Ok(())
            });
        }
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        r.unwrap().expect("registration accepted");
        ok += 1;
    }
    let sent_in = started.elapsed();
    assert_eq!(ok, REGISTRATIONS);

    let converged = eventually(Duration::from_secs(15), || on_disk(tmp.path()) == expected).await;
    let converge_time = started.elapsed();
    assert!(converged, "disk never held the exact union");
    // Let any last batch finish, then read the counters from /metrics.
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            metric(shim.http_addr, "snp_pending_keys", &[]).await == 0.0
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http = shim.http_addr;
    let writes = metric(
        http,
        "snp_store_writes_total",
        &[r#"verb="create""#, r#"result="ok""#],
    )
    .await
        + metric(
            http,
            "snp_store_writes_total",
            &[r#"verb="update""#, r#"result="ok""#],
        )
        .await;
    let failed_writes = metric(http, "snp_store_writes_total", &[r#"result="error""#]).await;
    let batches = metric(http, "snp_batches_total", &[r#"result="ok""#]).await;
    let failed_batches = metric(http, "snp_batches_total", &[r#"result="error""#]).await;
    let registrations = metric(http, "snp_registrations_total", &[]).await;
    let calls_ok = metric(http, "snp_calls_total", &[r#"result="ok""#]).await;
    eprintln!(
        "storm: {REGISTRATIONS} registrations over {KEYS} keys x {APPS} apps; sent in {sent_in:?}, \
         converged on disk after {converge_time:?}; batches {batches}, store writes {writes} \
         (creates {}, updates {})",
        metric(http, "snp_store_writes_total", &[r#"verb="create""#]).await,
        metric(http, "snp_store_writes_total", &[r#"verb="update""#]).await,
    );
    assert_eq!(calls_ok, REGISTRATIONS as f64);
    assert_eq!(registrations, REGISTRATIONS as f64);
    assert_eq!(failed_writes + failed_batches, 0.0);
    assert!(batches >= 1.0);
    // Every key was created exactly once.
    assert_eq!(
        metric(http, "snp_store_writes_total", &[r#"verb="create""#]).await,
        KEYS as f64
    );
    // The bound of the issue: at most one write per key per flush window...
    assert!(
        writes <= KEYS as f64 * batches,
        "{writes} writes > {KEYS} keys x {batches} batches"
    );
    // ...and, union being monotonic, at most one per distinct (key, app) pair.
    assert!(writes <= (KEYS * APPS) as f64, "{writes} writes");
    // The windows really merged: far fewer batches than registrations (one batch per
    // first-check window at most: 200 ms).
    let windows_bound = (converge_time.as_millis() as f64 / 200.0).ceil() + 1.0;
    assert!(
        batches <= windows_bound,
        "{batches} batches in {converge_time:?}"
    );

    // Every manifest names itself after the seed's rule and parses as the cluster holds it.
    let files = snp_shim::store::embedded::read_dir_files(tmp.path()).unwrap();
    assert_eq!(files.len(), KEYS);
    let f = &files[&MappingKey::new("default", "org.example.storm.Service0")];
    assert!(
        f.ends_with("default/org-example-storm-service0.yaml"),
        "{}",
        f.display()
    );
    let text = std::fs::read_to_string(f).unwrap();
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(v["kind"].as_str(), Some("ServiceNameMapping"));
    let apps: AppSet = v["spec"]["applicationNames"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(apps.len(), APPS);

    let report = shim.stop().await.unwrap();
    assert!(report.drained);
}
