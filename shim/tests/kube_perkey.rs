//! Per-key outcomes against the real API server, with a fault-injecting proxy in front of
//! it for the answers today's server cannot give (it serves CRDs only: no namespaces, no
//! RBAC, no quota). The proxy forwards every other request to the real server unchanged.
//!
//! * the store classifies each key's answer (404 namespace, 403 terminating / quota, 422,
//!   413, 429, 5xx) and writes the healthy keys of the same batch;
//! * the shim parks a key that fails for good, stores the healthy key of the same batch
//!   within one batch window, tells waiting callers `FAILED_PRECONDITION` at once, shows
//!   the parked key in `/metrics` and `/parked`, and retries transient failures per key
//!   until they land;
//! * an object an operator deletes is created again by the next registration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/apiserver.rs"]
mod apiserver;
mod common;
#[path = "support/faultproxy.rs"]
mod faultproxy;

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use snp_core::{AppSet, MappingKey, Mappings};
use snp_proto::api::mapping_result::Status as ResultStatus;
use snp_proto::api::PushMappingsRequest;
use snp_shim::crd;
use snp_shim::store::kube::KubeStore;
use snp_shim::store::{KeyOutcome, Store};
use tonic::Code;

use common::{api, dubbo, dubbo_req, eventually_async, http_get, mapping, metric};
use faultproxy::{FaultProxy, Rule};

/// One test at a time: they share the API server.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn objects(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = crd::api_resource(apiserver::GROUP, crd::DEFAULT_VERSION);
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Application names the real server holds for `(ns, interface)`.
async fn stored(client: &kube::Client, ns: &str, interface: &str) -> Option<AppSet> {
    let list = objects(client, ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    list.items.iter().find_map(|o| {
        let spec = o.data.get("spec")?;
        (spec.get("interfaceName")?.as_str()? == interface).then(|| {
            spec.get("applicationNames")
                .and_then(|a| a.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default()
        })
    })
}

async fn proxy(name: &str) -> FaultProxy {
    let server = apiserver::server();
    FaultProxy::start(apiserver::client().await, &server.dir.join(name)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reports_one_outcome_per_key() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy("proxy-store").await;
    let good = apiserver::namespace("good");
    let ghost = apiserver::namespace("ghost");
    let dying = apiserver::namespace("dying");
    let quota = apiserver::namespace("quota");
    let big = apiserver::namespace("big");
    let flaky = apiserver::namespace("flaky");
    let down = apiserver::namespace("down");
    proxy.add(Rule::namespace_not_found(&ghost));
    proxy.add(Rule::namespace_terminating(&dying));
    proxy.add(Rule::new(
        "quota",
        Rule::writes_in(&quota),
        403,
        "Forbidden",
        "servicenamemappings \"x\" is forbidden: exceeded quota: snp, requested: count/servicenamemappings.extensions.istio.io=1, used: count/servicenamemappings.extensions.istio.io=5, limited: count/servicenamemappings.extensions.istio.io=5",
    ));
    proxy.add(Rule::new(
        "too large",
        Rule::writes_in(&big),
        413,
        "RequestEntityTooLarge",
        "Request entity too large: limit is 3145728",
    ));
    proxy.add(Rule::new(
        "admission",
        Rule::writes_of("com.acme.Refused"),
        422,
        "Invalid",
        "ServiceNameMapping.extensions.istio.io \"com-acme-refused\" is invalid: spec.interfaceName: Invalid value: \"com.acme.Refused\": denied by policy",
    ));
    proxy.add(
        Rule::new(
            "429",
            Rule::writes_in(&flaky),
            429,
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
        )
        .times(2),
    );
    proxy.add(
        Rule::new(
            "503",
            Rule::writes_in(&down),
            503,
            "ServiceUnavailable",
            "etcd leader changed",
        )
        .times(1),
    );
    let mut cfg = apiserver::store_config("perkey-store", apiserver::GROUP);
    cfg.kubeconfig = Some(proxy.kubeconfig.clone());
    let store = KubeStore::connect(cfg, ()).await.unwrap();
    assert!(store.is_ready(), "synced through the proxy");

    let key = |ns: &str, i: &str| MappingKey::new(ns, i);
    let batch: Mappings = [
        (key(&good, "com.acme.Healthy"), "a"),
        (key(&good, "com.acme.Refused"), "a"),
        (key(&ghost, "com.acme.Healthy"), "a"),
        (key(&dying, "com.acme.Healthy"), "a"),
        (key(&quota, "com.acme.Healthy"), "a"),
        (key(&big, "com.acme.Healthy"), "a"),
        (key(&flaky, "com.acme.Healthy"), "a"),
        (key(&down, "com.acme.Healthy"), "a"),
    ]
    .into_iter()
    .map(|(k, a)| (k, [a].into_iter().collect::<AppSet>()))
    .collect();
    let report = store.merge_keys(&batch).await;
    assert_eq!(report.keys.len(), 8);
    let reason = |k: &MappingKey| match report.outcome(k).unwrap() {
        KeyOutcome::Permanent(e) => ("permanent", e.reason(), e.to_string()),
        KeyOutcome::Transient(e) => ("transient", e.reason(), e.to_string()),
        other => ("stored", "", format!("{other:?}")),
    };
    assert!(matches!(
        report.outcome(&key(&good, "com.acme.Healthy")),
        Some(KeyOutcome::Written { created: true })
    ));
    let (kind, r, msg) = reason(&key(&ghost, "com.acme.Healthy"));
    assert_eq!((kind, r), ("permanent", "namespace_not_found"), "{msg}");
    assert!(
        msg.starts_with(&format!("namespace {ghost} does not exist: create of ServiceNameMapping {ghost}/com-acme-healthy: 404 NotFound")),
        "{msg}"
    );
    assert_eq!(
        reason(&key(&dying, "com.acme.Healthy")).1,
        "namespace_terminating"
    );
    assert_eq!(reason(&key(&quota, "com.acme.Healthy")).1, "quota_exceeded");
    assert_eq!(reason(&key(&big, "com.acme.Healthy")).1, "too_large");
    let (kind, r, msg) = reason(&key(&good, "com.acme.Refused"));
    assert_eq!((kind, r), ("permanent", "invalid"), "{msg}");
    assert!(msg.contains("denied by policy"), "{msg}");
    for ns in [&flaky, &down] {
        let (kind, r, msg) = reason(&key(ns, "com.acme.Healthy"));
        assert_eq!((kind, r), ("transient", "unavailable"), "{msg}");
    }
    let s = report.summary();
    assert_eq!((s.created, s.transient, s.permanent), (1, 2, 5));

    // Transient keys land on a later try: the 503 was once, the 429 twice.
    let retry: Mappings = [
        key(&flaky, "com.acme.Healthy"),
        key(&down, "com.acme.Healthy"),
    ]
    .into_iter()
    .map(|k| (k, ["a"].into_iter().collect::<AppSet>()))
    .collect();
    let again = store.merge_keys(&retry).await.summary();
    assert_eq!((again.created, again.transient), (1, 1));
    let third = store.merge_keys(&retry).await.summary();
    assert_eq!((third.created, third.unchanged, third.transient), (1, 1, 0));

    // What the real server holds: exactly the keys reported stored.
    let client = apiserver::client().await;
    for ns in [&good, &flaky, &down] {
        assert!(
            stored(&client, ns, "com.acme.Healthy").await.is_some(),
            "{ns}"
        );
    }
    assert!(stored(&client, &good, "com.acme.Refused").await.is_none());
    assert_eq!(proxy.hits("429"), 2);
    assert_eq!(proxy.hits("503"), 1);
    assert!(proxy.forwarded() > 0);
}

/// A shim in-process on the proxy (`--store kubernetes`), ready.
async fn shim_on(proxy: &FaultProxy, node: &str, extra: &[&str]) -> snp_shim::app::ShimHandle {
    use clap::Parser;
    common::init_logs();
    let mut argv: Vec<String> = vec![
        "snp-shim".into(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--http-addr=127.0.0.1:0".into(),
        "--store=kubernetes".into(),
        format!("--kubeconfig={}", proxy.kubeconfig.display()),
        "--kube-create-spread=0s".into(),
        format!("--node-name={node}"),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let shim = snp_shim::app::start(snp_shim::config::Cli::parse_from(argv).serve)
        .await
        .expect("shim starts");
    let http = shim.http_addr;
    assert!(
        eventually_async(Duration::from_secs(30), || async move {
            http_get(http, "/readyz").await.0 == 200
        })
        .await,
        "the shim never became ready"
    );
    shim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_fails_for_good_is_parked_and_holds_nobody_up() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy("proxy-park").await;
    let good = apiserver::namespace("good");
    let ghost = apiserver::namespace("ghost");
    let flaky = apiserver::namespace("flaky");
    proxy.add(Rule::namespace_not_found(&ghost));
    proxy.add(
        Rule::new(
            "429",
            Rule::writes_in(&flaky),
            429,
            "TooManyRequests",
            "try again later",
        )
        .times(2),
    );
    let shim = shim_on(
        &proxy,
        "park",
        &[
            "--ack-mode=durable",
            "--park-probe=1h",
            "--retry-base=100ms",
        ],
    )
    .await;
    let client = apiserver::client().await;

    // One batch holds a key of a missing namespace, a healthy key and a flaky key.
    let mut push = api(shim.grpc_addr).await;
    let started = Instant::now();
    let resp = push
        .push_mappings(PushMappingsRequest {
            batch_id: "t/1".into(),
            source: "test".into(),
            mappings: vec![
                mapping(&ghost, "com.acme.Orders", &["orders"]),
                mapping(&good, "com.acme.Orders", &["orders"]),
                mapping(&flaky, "com.acme.Orders", &["orders"]),
                mapping("Not-A-Namespace", "com.acme.Orders", &["orders"]),
            ],
            want_results: true,
        })
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    let status: Vec<(i32, String)> = resp
        .results
        .iter()
        .map(|r| (r.status, r.reason.clone()))
        .collect();
    assert_eq!(
        status,
        vec![
            (ResultStatus::Rejected as i32, "namespace_not_found".into()),
            (ResultStatus::Stored as i32, String::new()),
            (ResultStatus::Stored as i32, String::new()),
            (ResultStatus::Rejected as i32, "invalid_namespace".into()),
        ],
        "{resp:?}"
    );
    assert!(
        resp.results[0].message.contains("does not exist"),
        "{resp:?}"
    );
    // The flaky key took its own retries (2 x 429, 100 ms doubling); the healthy key was
    // written by the first batch, and nothing waited for the parked key.
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(stored(&client, &good, "com.acme.Orders").await.is_some());
    assert!(stored(&client, &flaky, "com.acme.Orders").await.is_some());
    assert_eq!(proxy.hits("429"), 2);

    // The parked key is visible: metrics, and /parked with its reason and last try.
    assert_eq!(metric(shim.http_addr, "snp_parked_keys", &[]).await, 1.0);
    assert_eq!(
        metric(
            shim.http_addr,
            "snp_keys_parked_total",
            &["reason=\"namespace_not_found\""]
        )
        .await,
        1.0
    );
    let (code, body) = http_get(shim.http_addr, "/parked").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let parked = v["parked"].as_array().unwrap();
    assert_eq!(parked.len(), 1, "{body}");
    assert_eq!(parked[0]["namespace"], ghost.as_str());
    assert_eq!(parked[0]["interface"], "com.acme.Orders");
    assert_eq!(parked[0]["reason"], "namespace_not_found");
    assert!(parked[0]["last_tried"].as_str().unwrap().ends_with('Z'));
    assert_eq!(parked[0]["tries"], 1);

    // Callers of the parked key are told at once: a durable registration, and an older
    // filter's push (no results): FAILED_PRECONDITION with the store's reason.
    let started = Instant::now();
    let err = dubbo(shim.grpc_addr)
        .await
        .register_service_app_mapping(dubbo_req(&ghost, "billing", &["com.acme.Orders"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("does not exist"), "{err:?}");
    let err = push
        .push_mappings(PushMappingsRequest {
            batch_id: "t/2".into(),
            source: "old-filter".into(),
            mappings: vec![mapping(&ghost, "com.acme.Orders", &["orders"])],
            want_results: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The registration joined the parked key: it is probed with it, and listed.
    let (_, body) = http_get(shim.http_addr, "/parked").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["parked"][0]["applications"],
        serde_json::json!(["billing", "orders"]),
        "{body}"
    );

    // A durable call already waiting when its key gets parked is told then, not at its
    // deadline.
    let late = apiserver::namespace("ghost");
    proxy.add(Rule::namespace_not_found(&late));
    let started = Instant::now();
    let err = dubbo(shim.grpc_addr)
        .await
        .register_service_app_mapping(dubbo_req(&late, "billing", &["com.acme.Late"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(metric(shim.http_addr, "snp_parked_keys", &[]).await, 2.0);

    // Healthy registrations after the parking go in the next batch as if nothing
    // happened (one debounce window, no backoff inherited from the bad key).
    let started = Instant::now();
    dubbo(shim.grpc_addr)
        .await
        .register_service_app_mapping(dubbo_req(&good, "billing", &["com.acme.Billing"]))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(stored(&client, &good, "com.acme.Billing").await.is_some());
    assert_eq!(
        metric(shim.http_addr, "snp_durable_waiters", &[]).await,
        0.0
    );
    shim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_an_operator_deletes_is_created_again_by_the_next_registration() {
    let _serial = SERIAL.lock().await;
    // No faults: the proxy only forwards.
    let proxy = proxy("proxy-delete").await;
    let ns = apiserver::namespace("deleted");
    let shim = shim_on(&proxy, "delete", &[]).await;
    let client = apiserver::client().await;
    let register = || async {
        dubbo(shim.grpc_addr)
            .await
            .register_service_app_mapping(dubbo_req(&ns, "orders", &["com.acme.Gone"]))
            .await
            .unwrap();
    };
    register().await;
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            stored(&client, &ns, "com.acme.Gone").await.is_some()
        })
        .await
    );
    // The operator deletes it; the shim's watch sees it go.
    objects(&client, &ns)
        .delete("com-acme-gone", &DeleteParams::default())
        .await
        .unwrap();
    let get = api(shim.grpc_addr).await;
    assert!(
        eventually_async(Duration::from_secs(10), || {
            let mut get = get.clone();
            let ns = ns.clone();
            async move {
                get.get_mappings(snp_proto::api::GetMappingsRequest {
                    namespace: ns,
                    interface_names: vec![],
                })
                .await
                .unwrap()
                .into_inner()
                .mappings
                .is_empty()
            }
        })
        .await
    );
    // The same registration again: the shim keeps no acknowledged set, so it writes.
    register().await;
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            stored(&client, &ns, "com.acme.Gone").await.is_some()
        })
        .await,
        "the deleted object was not created again"
    );
    shim.stop().await.unwrap();
}
