//! The Nacos endpoint (issue 17) writing to a real Kubernetes API server: 100 new
//! applications on one interface (a Dubbo inner interface, so the data id carries `___`)
//! publish at once through nacos-client 2.5.1's `publishConfigCas`, each on its own
//! connection. All succeed on the first try, the API server's object holds exactly the 100
//! under the decoded `spec.interfaceName`, and the API server counts few writes.
//!
//! Also an unmodified Dubbo 3.3.5 provider and consumer whose mappings land on the API
//! server: the consumer resolves the provider through the shim and calls it, and a second
//! provider reaches the listening consumer by push.
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
use snp_core::AppSet;
use snp_shim::config::Cli;

use apiserver::GROUP;
use java::{client_addr, Java};

/// `(interfaceName, applicationNames)` of every object in `ns`.
async fn objects(client: &kube::Client, ns: &str) -> Vec<(String, AppSet)> {
    apiserver::objects(client, ns, GROUP)
        .await
        .into_iter()
        .map(|(_, iface, apps)| (iface, apps))
        .collect()
}

/// An in-process shim with the Kubernetes store (as the shim's service account) and the
/// Nacos endpoint, its default tenant writing into `ns`, its journal under `data`; returns
/// once it is ready.
async fn start_shim(ns: &str, data: &std::path::Path) -> snp_shim::app::ShimHandle {
    let mut argv = vec!["snp-shim".to_owned()];
    argv.extend(apiserver::shim_flags(GROUP, data));
    argv.extend([
        "--nacos".into(),
        "--nacos-addr=127.0.0.1:0".into(),
        format!("--nacos-default-namespace={ns}"),
    ]);
    common::start_args(Cli::parse_from(argv).serve, Duration::from_secs(30)).await
}

#[tokio::test]
async fn storm_of_100_new_apps_lands_on_the_api_server() {
    const N: usize = 100;
    common::init_logs();
    let client = apiserver::client().await;
    // The default tenant writes into this namespace.
    let ns = apiserver::namespace("nacos-storm");
    let data = tempfile::tempdir().unwrap();
    let shim = start_shim(&ns, data.path()).await;
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

#[tokio::test]
async fn dubbo_provider_and_consumer_through_the_shim_on_the_api_server() {
    common::init_logs();
    let client = apiserver::client().await;
    // The apps use the default tenant, which writes into this namespace.
    let ns = apiserver::namespace("nacos-dubbo");
    let data = tempfile::tempdir().unwrap();
    let shim = start_shim(&ns, data.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let nacos = client_addr(shim.nacos_addr.unwrap());
    let zk = Java::start(dir.path(), "zk", "snp.it.Zk", &[]);
    zk.wait_for("ZK ", Duration::from_secs(60)).await;
    let zk_port = zk.lines()[0].split_once(' ').unwrap().1.to_owned();

    // Provider A, unmodified: the default nacos.check=true startup probe must pass.
    let a = Java::start(
        dir.path(),
        "provider-a",
        "snp.it.Provider",
        &[zk_port.clone(), nacos.clone(), "app-a".into()],
    );
    a.wait_for("STARTED app-a", Duration::from_secs(120)).await;
    let stored = |want: Vec<(String, AppSet)>| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            for _ in 0..300 {
                let mut seen = objects(&client, &ns).await;
                seen.sort();
                if seen == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!(
                "the API server holds {:?}, not {want:?}",
                objects(&client, &ns).await
            );
        }
    };
    let only = |apps: &[&str]| apps.iter().copied().collect::<AppSet>();
    stored(vec![
        ("snp.it.Greeting".into(), only(&["app-a"])),
        ("snp.it.Outer$Inner".into(), only(&["app-a"])),
    ])
    .await;

    // The consumer finds app-a only through the mapping, and calls it.
    let c = Java::start(
        dir.path(),
        "consumer",
        "snp.it.Consumer",
        &[zk_port.clone(), nacos.clone()],
    );
    c.wait_for("CALL app-a: hello snp", Duration::from_secs(120))
        .await;

    // A second application on the same interface reaches the listening consumer by push.
    let pushes_before = common::metric(shim.http_addr, "snp_nacos_pushes_total", &[]).await;
    let b = Java::start(
        dir.path(),
        "provider-b",
        "snp.it.Provider",
        &[zk_port, nacos, "app-b".into()],
    );
    b.wait_for("STARTED app-b", Duration::from_secs(120)).await;
    c.wait_for("CALL app-b: hello snp", Duration::from_secs(90))
        .await;
    stored(vec![
        ("snp.it.Greeting".into(), only(&["app-a", "app-b"])),
        ("snp.it.Outer$Inner".into(), only(&["app-a", "app-b"])),
    ])
    .await;
    let http = shim.http_addr;
    assert!(common::metric(http, "snp_nacos_pushes_total", &[]).await > pushes_before);
    assert!(common::metric(http, "snp_nacos_push_acks_total", &[]).await >= 1.0);
    // Service definitions went to group dubbo and were discarded, not refused.
    assert!(
        common::metric(
            http,
            "snp_nacos_calls_total",
            &[r#"request="ConfigPublishRequest""#, r#"result="discarded""#]
        )
        .await
            >= 1.0
    );
    assert_eq!(
        common::metric(http, "snp_nacos_calls_total", &[r#"result="refused""#]).await,
        0.0
    );
    // The apps keep running.
    let alive = (a.count("ALIVE"), b.count("ALIVE"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.count("ALIVE") > alive.0 && b.count("ALIVE") > alive.1);
    assert!(
        c.lines().iter().filter(|l| l.starts_with("FAIL")).count() == 0,
        "{}",
        c.log()
    );
    shim.stop().await.unwrap();
}
