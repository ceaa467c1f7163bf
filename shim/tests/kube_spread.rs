//! The update spread against a real API server (kube-apiserver + etcd), acting as the
//! shim's service account: stores that all add applications to the same objects at the
//! same moment take turns instead of all updating the same `resourceVersion`, and lose
//! nothing. Its own test binary, so its own server: the requests counted by the server
//! are this test's alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/apiserver.rs"]
mod apiserver;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{DynamicObject, PostParams};
use serde_json::json;
use snp_core::{naming, AppSet, MappingKey, Mappings};
use snp_shim::crd;
use snp_shim::metrics::Metrics;
use snp_shim::store::kube::KubeStore;
use snp_shim::store::{KeyOutcome, Store};

use apiserver::{RequestCounts, GROUP};

/// Stores racing on the same objects.
const STORES: usize = 6;
/// Objects they all update.
const IFACES: usize = 8;
/// Distinct applications among the stores: store `s` adds `app-{s % 3}`, so two stores
/// add each application and every object needs three updates.
const APPS: usize = 3;

fn iface(i: usize) -> String {
    format!("com.acme.spread.Service{i}")
}

/// What one round of the race did.
struct Race {
    /// The server's requests for the group during the merges.
    requests: RequestCounts,
    /// Keys a store found already holding its application after the spread.
    unchanged: usize,
}

/// Creates `IFACES` objects holding application `base` (written by the administrator,
/// i.e. another writer than the stores), then has `STORES` stores with update spread
/// `spread` add their application to every one of them at the same moment. Checks that
/// every key of every store is stored and that every object holds the exact union.
async fn race(prefix: &str, spread: Duration) -> Race {
    let client = apiserver::client().await;
    let ns = apiserver::namespace(prefix);
    let ar = crd::api_resource(GROUP, crd::DEFAULT_VERSION);
    let api = apiserver::mappings_api(&client, &ns, GROUP);
    for i in 0..IFACES {
        let o = DynamicObject::new(&naming::seed_name(&iface(i)), &ar)
            .within(&ns)
            .data(json!({"spec": {"interfaceName": iface(i), "applicationNames": ["base"]}}));
        api.create(&PostParams::default(), &o)
            .await
            .expect("create");
    }
    let mut stores = Vec::new();
    for s in 0..STORES {
        let mut cfg = apiserver::store_config(&format!("{prefix}-{s}"), GROUP);
        cfg.update_spread = spread;
        let store = KubeStore::connect(cfg, Metrics::unregistered())
            .await
            .expect("connect");
        // The merge must start from the objects, not create them.
        let mut want = Mappings::new();
        for i in 0..IFACES {
            want.insert(MappingKey::new(ns.as_str(), iface(i)), "base");
        }
        for _ in 0..100 {
            if store.contains_all(&want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(store.contains_all(&want), "store {s} never saw the objects");
        stores.push(store);
    }

    let before = apiserver::request_counts(&client, GROUP).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(STORES));
    let mut tasks = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        let (store, barrier, ns) = (store.clone(), barrier.clone(), ns.clone());
        tasks.push(tokio::spawn(async move {
            let mut batch = Mappings::new();
            for i in 0..IFACES {
                batch.insert(
                    MappingKey::new(ns.as_str(), iface(i)),
                    &format!("app-{}", s % APPS),
                );
            }
            barrier.wait().await;
            store.merge_keys(&batch).await
        }));
    }
    let mut unchanged = 0;
    for (s, t) in tasks.into_iter().enumerate() {
        let report = t.await.unwrap();
        assert_eq!(report.keys.len(), IFACES, "store {s}: {:?}", report.keys);
        for (key, outcome) in &report.keys {
            match outcome {
                KeyOutcome::Unchanged => unchanged += 1,
                KeyOutcome::Written { created: false } => {}
                other => panic!("store {s}, {key}: {other:?}"),
            }
        }
    }
    let requests = apiserver::request_counts(&client, GROUP)
        .await
        .since(&before);

    // No lost update: every object holds the base and every store's application.
    let mut want: AppSet = (0..APPS).map(|a| format!("app-{a}")).collect();
    want.insert("base");
    let mut held: BTreeMap<String, AppSet> = BTreeMap::new();
    for (_, interface, apps) in apiserver::objects(&client, &ns, GROUP).await {
        assert!(
            held.insert(interface.clone(), apps).is_none(),
            "{interface}"
        );
    }
    assert_eq!(held.len(), IFACES, "{held:?}");
    for (interface, apps) in &held {
        assert_eq!(apps, &want, "{interface}");
    }
    Race {
        requests,
        unchanged,
    }
}

/// Six stores add their application (two stores per application) to the same eight
/// objects at once. Without the spread they all PUT the same resourceVersion and all but
/// one get 409 per object and round; with it they take turns: fewer PUTs and 409s, and
/// the second store of each application finds it there and writes nothing. Counted by
/// the API server itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_updates_take_turns_with_the_update_spread() {
    let none = race("upd-none", Duration::ZERO).await;
    let spread = race("upd-spread", Duration::from_secs(2)).await;
    let put = |r: &Race| r.requests.verb("PUT");
    let put_409 = |r: &Race| r.requests.get("PUT", "409");
    let report = format!(
        "without spread: {} (unchanged keys {}); with a 2 s spread: {} (unchanged keys {})",
        none.requests, none.unchanged, spread.requests, spread.unchanged
    );
    eprintln!("{report}");
    // No creates: the objects were there.
    assert_eq!(none.requests.verb("POST") + spread.requests.verb("POST"), 0);
    // Every object needs three updates (one per application), whoever makes them.
    let floor = (IFACES * APPS) as u64;
    assert!(none.requests.get("PUT", "200") >= floor, "{report}");
    assert!(spread.requests.get("PUT", "200") >= floor, "{report}");
    // Without the spread the stores collide; with it, far less.
    assert!(put_409(&none) >= IFACES as u64, "{report}");
    assert!(put_409(&spread) * 2 < put_409(&none), "{report}");
    assert!(put(&spread) < put(&none), "{report}");
    assert!(
        spread.requests.verb("GET") < none.requests.verb("GET"),
        "{report}"
    );
    // The spread's second look finds applications another store has just added.
    assert!(spread.unchanged > 0, "{report}");
}
