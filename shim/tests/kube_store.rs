//! The Kubernetes store against a real API server (kube-apiserver + etcd), acting as the
//! shim's service account: seed compatibility, concurrent writers, no-op suppression, hard
//! names, watch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/apiserver.rs"]
mod apiserver;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::json;
use snp_core::{naming, AppSet, MappingKey, Mappings, Rng, SplitMix64};
use snp_shim::crd;
use snp_shim::metrics::{Metrics, Outcome, Verb, WriteLabels};
use snp_shim::store::kube::KubeStore;
use snp_shim::store::{Change, Store};
use tokio::sync::broadcast;

use apiserver::{GROUP, OTHER_GROUP};

async fn connect(writer: &str, group: &str) -> (KubeStore, Metrics) {
    let metrics = Metrics::unregistered();
    let store = KubeStore::connect(apiserver::store_config(writer, group), metrics.clone())
        .await
        .expect("connect");
    assert!(
        store.is_ready(),
        "{writer}: connect returned before the cache synced"
    );
    (store, metrics)
}

fn objects_api(client: &kube::Client, ns: &str, group: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &crd::api_resource(group, crd::DEFAULT_VERSION),
    )
}

/// Every object of `ns`: interface -> (object name, sorted app names).
async fn list(api: &Api<DynamicObject>) -> BTreeMap<String, Vec<(String, Vec<String>)>> {
    let mut out: BTreeMap<String, Vec<(String, Vec<String>)>> = BTreeMap::new();
    for o in api.list(&ListParams::default()).await.expect("list").items {
        let spec = &o.data["spec"];
        let mut apps: Vec<String> = spec["applicationNames"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        apps.sort();
        out.entry(spec["interfaceName"].as_str().unwrap().to_owned())
            .or_default()
            .push((o.metadata.name.clone().unwrap(), apps));
    }
    out
}

fn apps(names: &[&str]) -> AppSet {
    names.iter().collect()
}

fn writes(m: &Metrics, verb: Verb) -> u64 {
    [Outcome::Ok, Outcome::Error, Outcome::Invalid]
        .into_iter()
        .map(|result| {
            m.store_writes
                .get_or_create(&WriteLabels { verb, result })
                .get()
        })
        .sum()
}

fn count(m: &Metrics, verb: Verb, result: Outcome) -> u64 {
    m.store_writes
        .get_or_create(&WriteLabels { verb, result })
        .get()
}

/// Waits for a change of `key` on `rx` until `within` after `start`; returns it with
/// the time since `start`.
async fn change_of(
    rx: &mut broadcast::Receiver<Change>,
    key: &MappingKey,
    start: Instant,
    within: Duration,
) -> (Change, Duration) {
    loop {
        let left = within.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(c)) => {
                let k = match &c {
                    Change::Upsert { key, .. } | Change::Delete { key } => key,
                };
                if k == key {
                    return (c, start.elapsed());
                }
            }
            Ok(Err(e)) => panic!("change stream: {e}"),
            Err(_) => panic!("no change of {key} within {within:?}"),
        }
    }
}

/// Test 1: an object exactly as the seed server creates it (seed name, `interface` label,
/// its app list) is found by `spec.interfaceName` and union-updated in place, whether the
/// store listed it at start or learnt it from the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_objects_are_reused_and_union_updated() {
    let client = apiserver::client().await;
    let ns = apiserver::namespace("seed");
    let api = objects_api(&client, &ns, GROUP);
    let seed_create = |iface: &str| {
        let mut o = DynamicObject::new(
            &iface.replace('.', "-").to_lowercase(),
            &crd::api_resource(GROUP, crd::DEFAULT_VERSION),
        )
        .within(&ns)
        .data(json!({"spec": {"interfaceName": iface, "applicationNames": ["a"]}}));
        o.metadata.labels = Some([("interface".to_owned(), iface.to_owned())].into());
        o
    };
    let before = "org.apache.dubbo.demo.DemoService";
    let after = "org.apache.dubbo.demo.GreetingService";
    let racing = "org.apache.dubbo.demo.RacingService";
    api.create(&PostParams::default(), &seed_create(before))
        .await
        .unwrap();

    let (store, metrics) = connect("seed-compat", GROUP).await;
    let mut rx = store.changes();
    api.create(&PostParams::default(), &seed_create(after))
        .await
        .unwrap();
    let after_key = MappingKey::new(ns.as_str(), after);
    change_of(&mut rx, &after_key, Instant::now(), Duration::from_secs(5)).await;
    // Created right before the merge: the cache may not know it yet, in which case the
    // create meets 409 AlreadyExists, re-reads and updates.
    api.create(&PostParams::default(), &seed_create(racing))
        .await
        .unwrap();

    let mut batch = Mappings::new();
    for iface in [before, after, racing] {
        batch.insert_set(MappingKey::new(ns.as_str(), iface), &apps(&["b"]));
    }
    let out = store.merge(&batch).await.expect("merge");
    assert_eq!(out.created, 0, "{out:?}");
    assert_eq!(out.updated, 3, "{out:?}");

    let objs = list(&api).await;
    assert_eq!(objs.len(), 3, "{objs:?}");
    for iface in [before, after, racing] {
        let held = &objs[iface];
        assert_eq!(held.len(), 1, "one object for {iface}: {held:?}");
        assert_eq!(held[0].0, naming::seed_name(iface));
        assert_eq!(held[0].1, vec!["a", "b"], "{iface}");
        let o = api.get(&held[0].0).await.unwrap();
        assert_eq!(
            o.metadata.labels.unwrap()["interface"],
            iface,
            "the seed's label is kept"
        );
    }
    assert_eq!(
        writes(&metrics, Verb::Create),
        count(&metrics, Verb::Create, Outcome::Error)
    );
    assert_eq!(count(&metrics, Verb::Update, Outcome::Ok), 3);
    let got = store.get(&ns, &[before.to_owned()]);
    assert_eq!(got[0].1.apps, apps(&["a", "b"]));
}

/// Test 2: 8 stores (separate clients and caches, one writer name each) merge 2,000
/// overlapping registrations over 50 interfaces at the same time, in debouncer-sized
/// batches. Every object ends with the exact union, one object per interface, and the
/// writers did meet 409s on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_converge_on_the_union() {
    const STORES: usize = 8;
    const IFACES: usize = 50;
    const BATCHES: usize = 5;
    let client = apiserver::client().await;
    let ns = apiserver::namespace("race");
    let api = objects_api(&client, &ns, GROUP);
    let iface = |i: usize| format!("com.acme.race.Service{i}");

    // Store s registers 5 apps on every interface: one everybody registers, one of its
    // own, two shared with some other stores, one shared with no one but per interface.
    let mut expected: BTreeMap<String, AppSet> = BTreeMap::new();
    let mut plans: Vec<Vec<Mappings>> = Vec::new();
    let mut registrations = 0;
    for s in 0..STORES {
        let mut regs: Vec<(MappingKey, String)> = Vec::new();
        for i in 0..IFACES {
            for app in apiserver::race_apps(s, i) {
                expected.entry(iface(i)).or_default().insert(&app);
                regs.push((MappingKey::new(ns.as_str(), iface(i)), app));
            }
        }
        registrations += regs.len();
        // Shuffle, then cut into batches, as registrations arriving over time would be.
        let mut rng = SplitMix64::new(s as u64 + 1);
        for n in (1..regs.len()).rev() {
            regs.swap(n, (rng.next_u64() % (n as u64 + 1)) as usize);
        }
        let per = regs.len().div_ceil(BATCHES);
        plans.push(
            regs.chunks(per)
                .map(|chunk| {
                    let mut m = Mappings::new();
                    for (k, a) in chunk {
                        m.insert(k.clone(), a);
                    }
                    m
                })
                .collect(),
        );
    }
    assert_eq!(registrations, 2000);

    let mut stores = Vec::new();
    for s in 0..STORES {
        stores.push(connect(&format!("node-{s}"), GROUP).await);
    }
    let started = Instant::now();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(STORES));
    let mut tasks = Vec::new();
    for ((store, _), batches) in stores.iter().zip(plans) {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut written = 0;
            for batch in batches {
                // A debouncer retries a failed batch; count how often that was needed.
                let mut tries = 0;
                loop {
                    tries += 1;
                    match store.merge(&batch).await {
                        Ok(out) => {
                            written += out.written();
                            break;
                        }
                        Err(e) if tries < 5 => eprintln!("batch retry after: {e}"),
                        Err(e) => panic!("batch failed 5 times: {e}"),
                    }
                }
            }
            written
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();

    let objs = list(&api).await;
    assert_eq!(objs.len(), IFACES);
    for (iface, want) in &expected {
        let held = &objs[iface];
        assert_eq!(held.len(), 1, "one object for {iface}: {held:?}");
        assert_eq!(held[0].1, want.as_slice(), "{iface}");
        assert_eq!(held[0].0, naming::seed_name(iface));
    }
    // Every cache converges on the same content through the watch.
    let want: Vec<(MappingKey, AppSet)> = expected
        .iter()
        .map(|(i, a)| (MappingKey::new(ns.as_str(), i.as_str()), a.clone()))
        .collect();
    for (store, _) in &stores {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got: Vec<(MappingKey, AppSet)> = store
                .get(&ns, &[])
                .into_iter()
                .map(|(k, e)| (k, e.apps))
                .collect();
            if got == want {
                break;
            }
            assert!(Instant::now() < deadline, "a cache did not converge");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let sum = |f: &dyn Fn(&Metrics) -> u64| stores.iter().map(|(_, m)| f(m)).sum::<u64>();
    let conflicts = sum(&|m| m.conflicts.get());
    let report = format!(
        "{registrations} registrations, {STORES} writers, {IFACES} interfaces, {:.2}s: \
         POST ok {} / 409 {}, PUT ok {} / 409 {}, GET {}, 409s total {}, no-op keys {}",
        elapsed.as_secs_f64(),
        sum(&|m| count(m, Verb::Create, Outcome::Ok)),
        sum(&|m| count(m, Verb::Create, Outcome::Error)),
        sum(&|m| count(m, Verb::Update, Outcome::Ok)),
        sum(&|m| count(m, Verb::Update, Outcome::Error)),
        sum(&|m| writes(m, Verb::Get)),
        conflicts,
        sum(&|m| m.noop_skips.get()),
    );
    eprintln!("concurrent writers: {report}");
    assert!(
        conflicts > 0,
        "8 writers on the same objects met no 409: {report}"
    );
    assert_eq!(
        sum(&|m| count(m, Verb::Create, Outcome::Ok)),
        IFACES as u64,
        "{report}"
    );
}

/// Test 4: merging mappings the store already holds sends no write request, counted by
/// the API server itself. Uses the second group so that the other tests' writes are not
/// in the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_mappings_cost_no_write_request() {
    let client = apiserver::client().await;
    let ns = apiserver::namespace("noop");
    let (store, metrics) = connect("noop", OTHER_GROUP).await;
    let mut batch = Mappings::new();
    for i in 0..20 {
        for app in ["a", "b", "c"] {
            batch.insert(
                MappingKey::new(ns.as_str(), format!("com.acme.noop.S{i}")),
                app,
            );
        }
    }
    let w0 = apiserver::write_requests(&client, OTHER_GROUP).await;
    let out = store.merge(&batch).await.unwrap();
    assert_eq!(out.created, 20);
    let w1 = apiserver::write_requests(&client, OTHER_GROUP).await;
    assert_eq!(w1 - w0, 20, "the API server counted the 20 creates");

    let out = store.merge(&batch).await.unwrap();
    assert_eq!((out.unchanged, out.written()), (20, 0));
    // A subset, in other batches, is also known.
    let mut subset = Mappings::new();
    subset.insert(MappingKey::new(ns.as_str(), "com.acme.noop.S3"), "b");
    assert_eq!(store.merge(&subset).await.unwrap().written(), 0);
    assert!(store.contains_all(&batch));
    let w2 = apiserver::write_requests(&client, OTHER_GROUP).await;
    eprintln!(
        "no-op suppression: API server write requests {w0} -> {w1} (20 creates) -> {w2} \
         (after re-merging the 60 registrations); store no-op keys {}",
        metrics.noop_skips.get()
    );
    assert_eq!(w2, w1, "re-merging known mappings sent writes");
    assert_eq!(metrics.noop_skips.get(), 21);

    // A new app is one PUT.
    let mut more = Mappings::new();
    more.insert(MappingKey::new(ns.as_str(), "com.acme.noop.S3"), "d");
    assert_eq!(store.merge(&more).await.unwrap().updated, 1);
    let w3 = apiserver::write_requests(&client, OTHER_GROUP).await;
    assert_eq!(w3, w2 + 1);
    eprintln!(
        "  API server requests of {OTHER_GROUP}: {}",
        apiserver::request_counts(&client, OTHER_GROUP).await
    );
}

/// Test 5: interface names the seed could not store, or stored on top of each other,
/// each get a valid object of their own, and a fresh store finds them all again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_interface_names_get_distinct_valid_objects() {
    let client = apiserver::client().await;
    let ns = apiserver::namespace("names");
    let api = objects_api(&client, &ns, GROUP);
    let long = format!("com.acme.{}.Service", "Deep".repeat(80));
    assert!(long.len() > 300);
    let ifaces = [
        "com.acme.Outer$Inner".to_owned(),
        "com.acme.snake_case.Service".to_owned(),
        "COM.ACME.UPPER.SERVICE".to_owned(),
        "com.Foo".to_owned(),
        "com.foo".to_owned(),
        long.clone(),
        format!("{long}2"),
    ];
    let (store, _) = connect("names", GROUP).await;
    let mut batch = Mappings::new();
    for (n, i) in ifaces.iter().enumerate() {
        batch.insert(
            MappingKey::new(ns.as_str(), i.as_str()),
            &format!("app-{n}"),
        );
    }
    let out = store.merge(&batch).await.expect("merge");
    assert_eq!(out.created, ifaces.len());
    // Both twins were planned onto the free seed name `com-foo` at once: one create met
    // 409 AlreadyExists, read the object, saw the other interface and took the hashed name.
    assert!(out.conflicts >= 1, "{out:?}");

    let objs = list(&api).await;
    assert_eq!(
        objs.keys().cloned().collect::<BTreeSet<_>>(),
        ifaces.iter().cloned().collect::<BTreeSet<_>>()
    );
    let mut names = BTreeSet::new();
    for (n, i) in ifaces.iter().enumerate() {
        let held = &objs[i];
        assert_eq!(held.len(), 1, "{i}");
        let (name, apps) = &held[0];
        assert!(naming::is_valid_object_name(name), "{name}");
        assert!(names.insert(name.clone()), "name {name} used twice");
        assert_eq!(apps, &vec![format!("app-{n}")]);
        let o = api.get(name).await.unwrap();
        let labels = o.metadata.labels.unwrap();
        assert_eq!(
            labels[naming::LABEL_INTERFACE_HASH],
            naming::interface_hash(i)
        );
    }
    // The case twins: one got the seed name, the other the hashed one.
    let twin_names: BTreeSet<&str> = ["com.Foo", "com.foo"]
        .iter()
        .map(|i| objs[*i][0].0.as_str())
        .collect();
    assert!(twin_names.contains("com-foo"), "{twin_names:?}");
    // The upper-case interface keeps the seed's (lower-cased) name.
    assert_eq!(
        objs["COM.ACME.UPPER.SERVICE"][0].0,
        "com-acme-upper-service"
    );

    // A new store (empty cache, fresh list) finds every one by interface: no write.
    let (fresh, fresh_metrics) = connect("names-2", GROUP).await;
    let out = fresh.merge(&batch).await.unwrap();
    assert_eq!((out.unchanged, out.written()), (ifaces.len(), 0));
    assert_eq!(
        writes(&fresh_metrics, Verb::Create) + writes(&fresh_metrics, Verb::Update),
        0
    );
    // And the twins stay apart when both grow.
    let mut grow = Mappings::new();
    grow.insert(MappingKey::new(ns.as_str(), "com.Foo"), "upper");
    grow.insert(MappingKey::new(ns.as_str(), "com.foo"), "lower");
    fresh.merge(&grow).await.unwrap();
    let objs = list(&api).await;
    assert!(objs["com.Foo"][0].1.contains(&"upper".to_owned()));
    assert!(!objs["com.Foo"][0].1.contains(&"lower".to_owned()));
    assert!(objs["com.foo"][0].1.contains(&"lower".to_owned()));
    assert_eq!(objs.values().map(Vec::len).sum::<usize>(), ifaces.len());
}

/// Test 6: what another writer does (another store, or anybody through the API) reaches
/// this store's change stream within a second, and its lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_writers_changes_arrive_within_a_second() {
    let client = apiserver::client().await;
    let ns = apiserver::namespace("watch");
    let api = objects_api(&client, &ns, GROUP);
    let (a, _) = connect("watcher-a", GROUP).await;
    let (b, _) = connect("writer-b", GROUP).await;
    let key = MappingKey::new(ns.as_str(), "com.acme.watch.Service");
    let mut rx = a.changes();

    let mut batch = Mappings::new();
    batch.insert(key.clone(), "from-b");
    let sent = Instant::now();
    b.merge(&batch).await.unwrap();
    let (c, took) = change_of(&mut rx, &key, sent, Duration::from_secs(1)).await;
    eprintln!("store B's create (timed from the request) reached store A after {took:?}");
    assert!(matches!(c, Change::Upsert { ref entry, .. } if entry.apps == apps(&["from-b"])));
    assert_eq!(
        a.get(&ns, std::slice::from_ref(&key.interface))[0].1.apps,
        apps(&["from-b"])
    );

    // Directly through the API: an update...
    let name = naming::seed_name(&key.interface);
    let mut o = api.get(&name).await.unwrap();
    o.data["spec"]["applicationNames"] = json!(["direct", "from-b"]);
    let sent = Instant::now();
    api.replace(&name, &PostParams::default(), &o)
        .await
        .unwrap();
    let (c, took) = change_of(&mut rx, &key, sent, Duration::from_secs(1)).await;
    eprintln!("a direct update (timed from the request) reached store A after {took:?}");
    assert!(
        matches!(c, Change::Upsert { ref entry, .. } if entry.apps == apps(&["direct", "from-b"]))
    );
    assert!(a.contains_all(&{
        let mut m = Mappings::new();
        m.insert(key.clone(), "direct");
        m
    }));

    // ...and a delete.
    let sent = Instant::now();
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    let (c, took) = change_of(&mut rx, &key, sent, Duration::from_secs(1)).await;
    eprintln!("a direct delete (timed from the request) reached store A after {took:?}");
    assert_eq!(c, Change::Delete { key: key.clone() });
    assert!(a.get(&ns, &[]).is_empty());

    // B's cache learnt of the delete too: merging again re-creates the object.
    let deadline = Instant::now() + Duration::from_secs(1);
    while !b.get(&ns, &[]).is_empty() {
        assert!(Instant::now() < deadline, "B did not see the delete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.merge(&batch).await.unwrap().created, 1);
}

/// The client-side rate limit paces every request: 12 creates at 10 QPS with a burst of
/// 2 take about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_rate_limited() {
    let ns = apiserver::namespace("qps");
    let mut cfg = apiserver::store_config("qps", GROUP);
    cfg.qps = 10.0;
    cfg.burst = 2;
    let store = KubeStore::connect(cfg, Metrics::unregistered())
        .await
        .unwrap();
    let mut batch = Mappings::new();
    for i in 0..12 {
        batch.insert(
            MappingKey::new(ns.as_str(), format!("com.acme.qps.S{i}")),
            "a",
        );
    }
    let t = Instant::now();
    assert_eq!(store.merge(&batch).await.unwrap().created, 12);
    let took = t.elapsed();
    eprintln!("12 creates at 10 QPS, burst 2: {took:?}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

/// `kubectl get snp` shows the interface, the number of applications and the age (the
/// CRD's printer columns read the count from an annotation every write of the store keeps
/// equal to the list); `-o wide` adds the list itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_shows_the_interface_and_the_application_count() {
    let ns = apiserver::namespace("printer");
    let (store, _) = connect("printer", GROUP).await;
    let iface = "org.apache.dubbo.demo.PrinterService";
    let key = MappingKey::new(ns.as_str(), iface);
    let table = |wide: bool| {
        let mut args = vec!["get", "servicenamemappings.extensions.istio.io", "-n", &ns];
        if wide {
            args.extend(["-o", "wide"]);
        }
        let (ok, out, err) = apiserver::kubectl(&args);
        assert!(ok, "kubectl get: {err}");
        let mut lines = out.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let rows: Vec<Vec<String>> = lines
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect();
        (header, rows)
    };

    let mut batch = Mappings::new();
    batch.insert_set(key.clone(), &apps(&["cart", "shelf"]));
    store.merge(&batch).await.expect("merge");
    let (header, rows) = table(false);
    assert_eq!(header, ["NAME", "INTERFACE", "APPS", "AGE"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][1], iface);
    assert_eq!(rows[0][2], "2", "{rows:?}");

    // An update keeps the count with the list, in the same write.
    let mut batch = Mappings::new();
    batch.insert_set(key.clone(), &apps(&["cart", "checkout", "ledger"]));
    store.merge(&batch).await.expect("merge");
    let (_, rows) = table(false);
    assert_eq!(rows[0][2], "4", "{rows:?}");
    let (header, rows) = table(true);
    assert_eq!(header, ["NAME", "INTERFACE", "APPS", "APPLICATIONS", "AGE"]);
    assert_eq!(rows[0][3], r#"["cart","checkout","ledger","shelf"]"#);
}
