//! The Nacos endpoint (issue 17) against the real clients: nacos-client 2.5.1 and Dubbo
//! 3.3.5 from Maven Central, built by `tests/dubbo-nacos/build.sh` (scripts/setup.sh runs
//! it). The shim runs in-process on the embedded store; the Java programs are real
//! processes talking gRPC to it, and an embedded ZooKeeper (Curator's test server) is the
//! instance registry of the Dubbo apps.
//!
//! * `golden_*`: the wire JSON of every request and response type, as the real client
//!   classes write it (`tests/dubbo-nacos/golden/`), is decoded and answered correctly, and
//!   the committed file is what the client produces today;
//! * `probe_*`: Dubbo's other traffic (startup probe, group `dubbo`, other groups, removes,
//!   an unknown type) gets the documented answers; CAS publishes with stale MD5s, read-your-
//!   writes, pushes to a listener, and the `trust` namespace policy;
//! * `storm_*`: 100 applications on one interface at once through `publishConfigCas`;
//! * `dubbo_*`: an unmodified provider and consumer, and a second provider reaching the
//!   listening consumer by push.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/java.rs"]
mod java;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use snp_core::{AppSet, MappingKey};
use snp_shim::nacos::proto::request_client::RequestClient;
use snp_shim::nacos::proto::{Metadata, Payload};

use java::{client_addr, Java};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn golden() -> Value {
    let path = root().join("tests/dubbo-nacos/golden/nacos-client-2.5.1.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn apps(list: &[&str]) -> AppSet {
    list.iter().collect()
}

async fn start_shim(dir: &Path, extra: &[&str]) -> snp_shim::app::ShimHandle {
    let mut args = vec!["--nacos", "--nacos-addr=127.0.0.1:0"];
    args.extend_from_slice(extra);
    common::start(&dir.join("data"), &args).await
}

// ---------------------------------------------------------------- golden

fn golden_payload(entry: &Value) -> Payload {
    Payload {
        metadata: Some(Metadata {
            r#type: entry["type"].as_str().unwrap().to_owned(),
            headers: entry["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            // Self-reported and never trusted: a made-up one changes nothing.
            client_ip: "203.0.113.7".into(),
        }),
        body: Some(prost_types::Any {
            type_url: String::new(),
            value: entry["body"].as_str().unwrap().as_bytes().to_vec(),
        }),
    }
}

async fn call(
    client: &mut RequestClient<tonic::transport::Channel>,
    payload: Payload,
) -> (String, Value) {
    let answer = client.request(payload).await.unwrap().into_inner();
    let kind = answer.metadata.unwrap().r#type;
    let body = answer.body.unwrap();
    assert_eq!(body.type_url, "", "Nacos sends an empty type_url");
    (kind, serde_json::from_slice(&body.value).unwrap())
}

/// Every key the real server's response of this kind carries, ours carries too, with the
/// same JSON type.
fn same_shape(ours: &Value, golden_entry: &Value) {
    let theirs: Value = serde_json::from_str(golden_entry["body"].as_str().unwrap()).unwrap();
    for (k, v) in theirs.as_object().unwrap() {
        let mine = ours
            .get(k)
            .unwrap_or_else(|| panic!("missing {k:?} in {ours}"));
        assert_eq!(
            std::mem::discriminant(mine),
            std::mem::discriminant(v),
            "{k:?}: {mine} vs golden {v}"
        );
    }
}

#[tokio::test]
async fn golden_requests_decode_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path(), &[]).await;
    let g = golden();
    let req = &g["requests"];
    let res = &g["responses"];
    let mut client = RequestClient::connect(format!("http://{}", shim.nacos_addr.unwrap()))
        .await
        .unwrap();

    let (kind, body) = call(&mut client, golden_payload(&req["ServerCheckRequest"])).await;
    assert_eq!(kind, "ServerCheckResponse");
    assert_eq!(body["resultCode"], 200);
    assert_eq!(body["requestId"], "1");
    assert_eq!(body["supportAbilityNegotiation"], false);
    assert!(!body["connectionId"].as_str().unwrap().is_empty());
    same_shape(&body, &res["ServerCheckResponse"]);

    let (kind, body) = call(&mut client, golden_payload(&req["HealthCheckRequest"])).await;
    assert_eq!(kind, "HealthCheckResponse");
    same_shape(&body, &res["HealthCheckResponse"]);
    assert_eq!(body["resultCode"], 200);

    // Missing: 500 / 300, exactly as Nacos answers it.
    let (kind, body) = call(&mut client, golden_payload(&req["ConfigQueryRequest"])).await;
    assert_eq!(kind, "ConfigQueryResponse");
    same_shape(&body, &res["ConfigQueryResponse.notFound"]);
    assert_eq!(
        (body["resultCode"].clone(), body["errorCode"].clone()),
        (500.into(), 300.into())
    );

    // Publish with a made-up casMd5: union semantics accept it.
    let (kind, body) = call(&mut client, golden_payload(&req["ConfigPublishRequest"])).await;
    assert_eq!(kind, "ConfigPublishResponse");
    same_shape(&body, &res["ConfigPublishResponse"]);
    assert_eq!(body["resultCode"], 200, "{body}");
    assert_eq!(body["requestId"], "4");
    // Tenant "public" is the default namespace; read-your-writes.
    let mut query: Value =
        serde_json::from_str(req["ConfigQueryRequest"]["body"].as_str().unwrap()).unwrap();
    query["dataId"] = "snp.it.Greeting".into();
    let mut entry = req["ConfigQueryRequest"].clone();
    entry["body"] = query.to_string().into();
    let (kind, body) = call(&mut client, golden_payload(&entry)).await;
    assert_eq!(kind, "ConfigQueryResponse");
    same_shape(&body, &res["ConfigQueryResponse"]);
    assert_eq!(body["content"], "app-a,app-b");
    // Lower-case hex MD5 of the UTF-8 content.
    assert_eq!(body["md5"], "5dc39cb4d060097c3f2b01c26f285b51");

    // Listen: the first entry has no content (md5 ""), the second has a stale md5.
    let (kind, body) = call(
        &mut client,
        golden_payload(&req["ConfigBatchListenRequest"]),
    )
    .await;
    assert_eq!(kind, "ConfigChangeBatchListenResponse");
    same_shape(&body, &res["ConfigChangeBatchListenResponse"]);
    let changed = body["changedConfigs"].as_array().unwrap();
    assert_eq!(changed.len(), 2, "{body}");
    assert_eq!(changed[0]["dataId"], "snp.it.Greeting");
    assert_eq!(changed[0]["tenant"], "");
    assert_eq!(changed[1]["dataId"], "snp.it.Outer___Inner");
    assert_eq!(
        changed[1]["tenant"], "public",
        "the tenant is echoed as sent"
    );

    let (kind, body) = call(&mut client, golden_payload(&req["ConfigRemoveRequest"])).await;
    assert_eq!(kind, "ConfigRemoveResponse");
    same_shape(&body, &res["ConfigRemoveResponse.fail"]);
    assert_eq!(body["resultCode"], 500);
    assert_eq!(body["errorCode"], 400);

    // An unknown type: ErrorResponse 302. A server push type sent as a request is unknown.
    let (kind, body) = call(
        &mut client,
        golden_payload(&req["ConfigChangeNotifyRequest"]),
    )
    .await;
    assert_eq!(kind, "ErrorResponse");
    same_shape(&body, &res["ErrorResponse"]);
    assert_eq!(body["errorCode"], 302);

    // The write went through the pipeline into the store, in the default namespace.
    let key = MappingKey::new("default", "snp.it.Greeting");
    let data = dir.path().join("data");
    assert!(
        common::eventually(Duration::from_secs(10), || common::on_disk(&data)
            .get(&key)
            .is_some_and(|a| *a == apps(&["app-a", "app-b"])))
        .await
    );
    let http = shim.http_addr;
    assert_eq!(
        common::metric(
            http,
            "snp_nacos_calls_total",
            &[r#"request="ConfigPublishRequest""#, r#"result="ok""#]
        )
        .await,
        1.0
    );
    assert_eq!(
        common::metric(
            http,
            "snp_nacos_calls_total",
            &[r#"request="other""#, r#"result="refused""#]
        )
        .await,
        1.0
    );
    shim.stop().await.unwrap();
}

#[tokio::test]
async fn golden_file_is_what_the_client_writes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("golden.json");
    let java = Java::start(
        dir.path(),
        "golden",
        "snp.it.Golden",
        &[out.display().to_string()],
    );
    java.finish(Duration::from_secs(60)).await;
    let fresh: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        fresh,
        golden(),
        "regenerate with tests/dubbo-nacos/build.sh golden"
    );
}

// ---------------------------------------------------------------- probe

#[tokio::test]
async fn probe_other_traffic_cas_pushes_and_trust_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path(), &["--nacos-default-namespace=dubbo-apps"]).await;
    let addr = client_addr(shim.nacos_addr.unwrap());
    let probe = Java::start(dir.path(), "probe", "snp.it.Probe", &[addr]);
    let out = probe.finish(Duration::from_secs(120)).await;
    let want = [
        ("status", "UP"),
        // The startup probe reads as "not found" (null), never an error.
        ("probe", "null"),
        // Group dubbo: accepted and discarded.
        ("dubbo-publish", "true"),
        ("dubbo-read", "null"),
        // Other writes and removes: refused with a typed error, which the client reports
        // as `false` (a 403 would be an exception).
        ("other-publish", "false"),
        ("mapping-remove", "false"),
        ("other-remove", "false"),
        ("unknown", "ErrorResponse 500 302"),
        ("mapping-missing", "null"),
        ("mapping-publish", "true"),
        // Read-your-writes: the query right after the publish sees it.
        ("mapping-read", "app-x"),
        // A stale casMd5 still succeeds: union semantics.
        ("mapping-publish-stale", "true"),
        // The listener on another connection got the change by push.
        ("push", "app-x,app-y"),
        ("inner-publish", "true"),
        ("shop-publish", "true"),
        ("shop-read", "shop-app"),
        ("default-read", "app-x,app-y"),
        ("status-after", "UP"),
        ("done", "true"),
    ];
    for (k, v) in want {
        assert_eq!(out.get(k).map(String::as_str), Some(v), "{k}: {out:?}");
    }
    // Trust policy: tenant "" / "public" → --nacos-default-namespace; "shop" → shop.
    let data = dir.path().join("data");
    let expected = [
        (
            MappingKey::new("dubbo-apps", "snp.it.Probe"),
            apps(&["app-x", "app-y"]),
        ),
        (
            MappingKey::new("dubbo-apps", "snp.it.Outer$Inner"),
            apps(&["app-x"]),
        ),
        (MappingKey::new("shop", "snp.it.Probe"), apps(&["shop-app"])),
    ];
    assert!(
        common::eventually(Duration::from_secs(10), || {
            let disk = common::on_disk(&data);
            expected.iter().all(|(k, a)| disk.get(k) == Some(a)) && disk.len() == 3
        })
        .await,
        "{:?}",
        common::on_disk(&data)
    );
    let http = shim.http_addr;
    assert!(common::metric(http, "snp_nacos_pushes_total", &[]).await >= 1.0);
    assert!(common::metric(http, "snp_nacos_push_acks_total", &[]).await >= 1.0);
    assert_eq!(
        common::metric(
            http,
            "snp_nacos_calls_total",
            &[r#"request="ConfigPublishRequest""#, r#"result="discarded""#]
        )
        .await,
        1.0
    );
    shim.stop().await.unwrap();
}

// ---------------------------------------------------------------- storm

#[tokio::test]
async fn storm_of_100_new_apps_on_one_interface() {
    const N: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path(), &[]).await;
    let addr = client_addr(shim.nacos_addr.unwrap());
    let storm = Java::start(
        dir.path(),
        "storm",
        "snp.it.Storm",
        &[addr, "com.acme.StormService".into(), N.to_string()],
    );
    let out = storm.finish(Duration::from_secs(240)).await;
    // Every application succeeded on its first try: no CAS failures.
    assert_eq!(out.get("first"), Some(&N.to_string()), "{out:?}");
    assert_eq!(out.get("tries"), Some(&N.to_string()), "{out:?}");
    assert_eq!(out.get("failed"), Some(&"0".to_string()), "{out:?}");
    let key = MappingKey::new("default", "com.acme.StormService");
    let want: AppSet = (0..N).map(|i| format!("storm-app-{i:03}")).collect();
    let data = dir.path().join("data");
    assert!(
        common::eventually(Duration::from_secs(10), || common::on_disk(&data).get(&key)
            == Some(&want))
        .await,
        "{:?}",
        common::on_disk(&data).get(&key)
    );
    let http = shim.http_addr;
    let writes = common::metric(http, "snp_store_writes_total", &[r#"result="ok""#]).await;
    eprintln!("storm: {N} publishes, {writes} store writes");
    assert!(
        (1.0..=10.0).contains(&writes),
        "{writes} store writes for {N} publishes"
    );
    shim.stop().await.unwrap();
}

// ---------------------------------------------------------------- dubbo

// ---------------------------------------------------------------- login

/// A free port P with P - 1000 free as well: a client configured with P - 1000 dials P.
fn port_pair() -> (u16, u16) {
    for _ in 0..100 {
        let high = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = high.local_addr().unwrap().port();
        if p > 2000 && std::net::TcpListener::bind(("127.0.0.1", p - 1000)).is_ok() {
            return (p - 1000, p);
        }
    }
    panic!("no free port pair");
}

#[tokio::test]
async fn login_stub_satisfies_a_client_with_a_username() {
    let dir = tempfile::tempdir().unwrap();
    let mut started = None;
    for _ in 0..5 {
        let (login, grpc) = port_pair();
        let args = common::args(
            &dir.path().join("data"),
            &[
                "--nacos",
                &format!("--nacos-addr=127.0.0.1:{grpc}"),
                &format!("--nacos-login-addr=127.0.0.1:{login}"),
            ],
        );
        // Another process may take a port between the probe and the bind: try again.
        if let Ok(shim) = snp_shim::app::start(args).await {
            started = Some((shim, login));
            break;
        }
    }
    let (shim, login) = started.expect("the shim starts on a free port pair");
    let http = shim.http_addr;
    let client = Java::start(
        dir.path(),
        "login",
        "snp.it.Login",
        &[format!("127.0.0.1:{login}"), "12".into()],
    );
    assert!(
        common::eventually(Duration::from_secs(60), || client.has("read ")).await,
        "{}",
        client.log()
    );
    let first = common::metric(http, "snp_nacos_logins_total", &[]).await;
    assert!(first >= 1.0, "the client logged in");
    let out = client.finish(Duration::from_secs(60)).await;
    assert_eq!(out.get("read").map(String::as_str), Some("null"));
    // A client without a usable token logs in again every 5 s; this one kept its token.
    assert_eq!(
        common::metric(http, "snp_nacos_logins_total", &[]).await,
        first,
        "no more logins over 12 s"
    );
    shim.stop().await.unwrap();
}
