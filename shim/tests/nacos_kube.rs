//! The Nacos endpoint (issue 17) writing to a real Kubernetes API server: 100 new
//! applications on one interface (a Dubbo inner interface, so the data id carries `___`)
//! publish at once through nacos-client 2.5.1's `publishConfigCas`, each on its own
//! connection. All succeed on the first try, the API server's object holds exactly the 100
//! under the decoded `spec.interfaceName`, and the API server counts few writes.
//!
//! The API server is the test harness's (`support/apiserver.rs`); the other Nacos tests
//! (`nacos_dubbo.rs`) use the embedded store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/apiserver.rs"]
mod apiserver;
mod common;
#[path = "support/java.rs"]
mod java;

use std::time::Duration;

use clap::Parser;
use kube::api::{Api, DynamicObject, ListParams};
use snp_core::AppSet;
use snp_shim::config::Cli;
use snp_shim::crd;

use apiserver::GROUP;
use java::{client_addr, Java};

/// `(interfaceName, applicationNames)` of every object in `ns`.
async fn objects(client: &kube::Client, ns: &str) -> Vec<(String, AppSet)> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &crd::api_resource(GROUP, crd::DEFAULT_VERSION),
    );
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| {
            let spec = &o.data["spec"];
            let apps: AppSet = spec["applicationNames"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
                .unwrap_or_default();
            (spec["interfaceName"].as_str().unwrap().to_owned(), apps)
        })
        .collect()
}

#[tokio::test]
async fn storm_of_100_new_apps_lands_on_the_api_server() {
    const N: usize = 100;
    common::init_logs();
    let server = apiserver::server();
    let client = apiserver::client().await;
    // The default tenant writes into this namespace.
    let ns = apiserver::namespace("nacos-storm");
    let args = Cli::parse_from([
        "snp-shim".to_owned(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--http-addr=127.0.0.1:0".into(),
        "--store=kubernetes".into(),
        format!("--kubeconfig={}", server.kubeconfig.display()),
        format!("--crd-group={GROUP}"),
        "--nacos".into(),
        "--nacos-addr=127.0.0.1:0".into(),
        format!("--nacos-default-namespace={ns}"),
    ])
    .serve;
    let shim = snp_shim::app::start(args).await.unwrap();
    let http = shim.http_addr;
    assert!(
        common::eventually_async(Duration::from_secs(30), || async move {
            common::http_get(http, "/readyz").await.0 == 200
        })
        .await,
        "the shim never became ready"
    );
    let before = apiserver::request_counts(&client, GROUP).await;

    let dir = tempfile::tempdir().unwrap();
    let storm = Java::start(
        dir.path(),
        "storm",
        "snp.it.Storm",
        &[
            client_addr(shim.nacos_addr.unwrap()),
            "com.acme.Kube___Inner".into(),
            N.to_string(),
        ],
    );
    let out = storm.finish(Duration::from_secs(240)).await;
    assert_eq!(out.get("first"), Some(&N.to_string()), "{out:?}");
    assert_eq!(out.get("tries"), Some(&N.to_string()), "{out:?}");
    assert_eq!(out.get("failed"), Some(&"0".to_string()), "{out:?}");

    let want: AppSet = (0..N).map(|i| format!("storm-app-{i:03}")).collect();
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = objects(&client, &ns).await;
        if seen.len() == 1 && seen[0] == ("com.acme.Kube$Inner".to_owned(), want.clone()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen,
        vec![("com.acme.Kube$Inner".to_owned(), want)],
        "exactly one object with exactly the {N} applications"
    );
    let writes = apiserver::request_counts(&client, GROUP)
        .await
        .since(&before);
    eprintln!(
        "nacos storm on the API server: {N} publishes, {} API writes ({writes:?})",
        writes.writes()
    );
    assert!(
        (1..=10).contains(&writes.writes()),
        "{} API writes for {N} publishes: {writes:?}",
        writes.writes()
    );
    shim.stop().await.unwrap();
}
