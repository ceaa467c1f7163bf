//! Test 3: the Kubernetes store through an API server outage. Its own test binary (and
//! so its own API server): stopping the server would break the other tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/apiserver.rs"]
mod apiserver;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{dubbo, dubbo_req, http_get, metric, Binary};
use kube::api::{DynamicObject, PostParams};
use serde_json::json;
use snp_core::{MappingKey, Mappings};
use snp_shim::crd;
use snp_shim::metrics::Metrics;
use snp_shim::store::kube::KubeStore;
use snp_shim::store::{Change, Store, StoreError};

const OUTAGE: Duration = Duration::from_secs(20);

/// The real `snp-shim` binary on the test API server (see [`common::Binary`]), its journal
/// next to its log.
fn start_shim(log: &Path) -> Binary {
    let mut args = apiserver::shim_flags(apiserver::GROUP, &log.with_extension("data"));
    args.extend([
        "--node-name=outage-node".to_owned(),
        // The debouncer's own retry schedule is tested elsewhere; keep the retry after
        // the outage short.
        "--retry-max=2s".to_owned(),
    ]);
    Binary::spawn(log, &args)
}

/// One registration call, as a Java provider makes it; returns whether it was acked.
async fn register(shim: &Binary, ns: &str, app: &str, iface: &str) -> bool {
    dubbo(shim.grpc)
        .await
        .register_service_app_mapping(dubbo_req(ns, app, &[iface]))
        .await
        .is_ok()
}

/// The `snp_store_ready` gauge: whether the shim's store is reachable right now. Panics
/// if the gauge is absent.
async fn store_ready(shim: &Binary) -> bool {
    metric(shim.http, "snp_store_ready", &[]).await == 1.0
}

/// What the API server holds in `ns`, read with a fresh client.
async fn stored(ns: &str) -> Mappings {
    apiserver::stored(&apiserver::client().await, ns, apiserver::GROUP).await
}

/// Polls the API server until `ns` holds (at least) `want`.
async fn wait_stored(ns: &str, want: &Mappings, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = stored(ns).await;
        if want.is_subset(&got) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "not stored within {within:?}: want {want:?}, got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The API server stops for 20 s while merges keep coming: each merge fails with
/// `Unavailable` (nothing panics, nothing hangs), readiness drops; after the restart the
/// accumulated batch lands, readiness returns, and the watch has reconnected: a change
/// made by someone else arrives again.
///
/// The real `snp-shim` binary runs through the same outage: it acks every registration
/// at once, reports not ready while the API server is gone, and writes everything it
/// acked once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_recovers_from_an_api_server_outage() {
    let server = apiserver::server();
    let ns = apiserver::namespace("outage");
    let metrics = Metrics::unregistered();
    let store = KubeStore::connect(apiserver::store_config("outage", apiserver::GROUP), metrics)
        .await
        .expect("connect");
    assert!(store.is_ready());
    let key = |i: usize| MappingKey::new(ns.as_str(), format!("com.acme.outage.S{i}"));

    let bin_ns = apiserver::namespace("outage-bin");
    let mut shim = start_shim(&server.dir.join("snp-shim.log"));
    let mut acked = Mappings::new();
    shim.wait_ready(Duration::from_secs(30)).await;
    for i in 0..5 {
        let iface = format!("com.acme.bin.S{i}");
        assert!(register(&shim, &bin_ns, "before", &iface).await);
        acked.insert(MappingKey::new(bin_ns.as_str(), iface), "before");
    }
    wait_stored(&bin_ns, &acked, Duration::from_secs(10)).await;

    let mut first = Mappings::new();
    for i in 0..10 {
        first.insert(key(i), "before");
    }
    assert_eq!(store.merge(&first).await.unwrap().created, 10);

    // Outage: what a debouncer would keep pending, merged as it fails.
    apiserver::stop(&server.dir);
    let down = Instant::now();
    let mut pending = Mappings::new();
    let (mut failures, mut round, mut saw_unready) = (0, 0, false);
    let (mut shim_stayed_ready, mut shim_saw_outage) = (true, false);
    while down.elapsed() < OUTAGE {
        round += 1;
        // New keys and new apps on known keys.
        pending.insert(key(round % 10), &format!("during-{round}"));
        pending.insert(key(100 + round), "during");
        let t = Instant::now();
        match tokio::time::timeout(Duration::from_secs(20), store.merge(&pending)).await {
            Ok(Err(StoreError::Unavailable(e))) => {
                failures += 1;
                if failures == 1 {
                    eprintln!("merge during the outage: {e}");
                }
            }
            Ok(other) => panic!("merge during the outage: {other:?}"),
            Err(_) => panic!("merge hung during the outage"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(16),
            "a failing merge took {:?}",
            t.elapsed()
        );
        saw_unready |= !store.is_ready();
        // The shim acks at once (the seed's behaviour) and keeps what it acked.
        let iface = format!("com.acme.bin.S{}", round % 7);
        let app = format!("during-{round}");
        assert!(
            register(&shim, &bin_ns, &app, &iface).await,
            "the shim refused a registration during the outage"
        );
        acked.insert(MappingKey::new(bin_ns.as_str(), iface), &app);
        shim_stayed_ready &= http_get(shim.http, "/readyz").await.0 == 200;
        shim_saw_outage |= !store_ready(&shim).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(failures >= 10, "{failures}");
    assert!(saw_unready, "the store stayed ready without an API server");
    // Readiness latches after the first sync: the node-local Service must keep its only
    // endpoint, the shim buffers. The gauge shows the outage.
    assert!(
        shim_stayed_ready,
        "/readyz dropped during the outage: the node would lose its only endpoint"
    );
    assert!(shim_saw_outage, "snp_store_ready never showed the outage");
    // Lookups keep working from the cache.
    assert_eq!(store.get(&ns, &[]).len(), 10);

    apiserver::start(&server.dir);
    let up = Instant::now();
    let mut tries = 0;
    let out = loop {
        tries += 1;
        match store.merge(&pending).await {
            Ok(out) => break out,
            Err(e) => {
                assert!(up.elapsed() < Duration::from_secs(30), "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    eprintln!(
        "outage: {failures} failed merges in {OUTAGE:?}; after restart the pending batch \
         ({} keys) landed after {:?} and {tries} tries: {out:?}",
        pending.len(),
        up.elapsed()
    );

    wait_stored(&bin_ns, &acked, Duration::from_secs(30)).await;
    eprintln!(
        "outage: the shim binary acked {} registrations on {} keys; all were in the API \
         server {:?} after the restart",
        acked.entries(),
        acked.len(),
        up.elapsed()
    );
    assert_eq!(
        stored(&bin_ns).await,
        acked,
        "the shim wrote exactly what it acked"
    );
    let t = Instant::now();
    while !store_ready(&shim).await {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the shim's store not ready again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(shim);

    // Everything is in the API server.
    let client = apiserver::client().await;
    let api = apiserver::mappings_api(&client, &ns, apiserver::GROUP);
    let mut all = first.clone();
    all.union(&pending);
    let stored = apiserver::stored(&client, &ns, apiserver::GROUP).await;
    assert_eq!(stored, all);

    // Ready again, and the watch is back: another writer's change arrives.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !store.is_ready() {
        assert!(Instant::now() < deadline, "not ready after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rx = store.changes();
    let mut o = DynamicObject::new(
        "com-acme-outage-direct",
        &crd::api_resource(apiserver::GROUP, crd::DEFAULT_VERSION),
    )
    .within(&ns)
    .data(json!({"spec": {"interfaceName": "com.acme.outage.Direct", "applicationNames": ["x"]}}));
    o.metadata.labels =
        Some([("interface".to_owned(), "com.acme.outage.Direct".to_owned())].into());
    let sent = Instant::now();
    api.create(&PostParams::default(), &o).await.unwrap();
    let direct = MappingKey::new(ns.as_str(), "com.acme.outage.Direct");
    loop {
        let left = Duration::from_secs(10).saturating_sub(sent.elapsed());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(Change::Upsert { key, .. })) if key == direct => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("change stream: {e}"),
            Err(_) => panic!("the watch did not come back after the outage"),
        }
    }
    eprintln!(
        "after the outage, a direct create reached the store in {:?}",
        sent.elapsed()
    );
    assert!(store.get(&ns, &[]).len() > 10);
}
