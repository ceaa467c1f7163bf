//! The Nacos endpoint (issue 17) at the protocol level, with tonic clients of the Nacos proto
//! on one connection each, as nacos-client uses it: the bi-stream and the unary calls share
//! the TCP connection, which is how pushes find their listener.
//!
//! * pushes echo the listener's data id and tenant, are sent again while unacknowledged
//!   (`snp_nacos_push_retries_total`) and stop once acknowledged;
//! * a listener that closes its stream is forgotten;
//! * bad publishes get errorCode 400 with the registration API's message;
//! * `--ack-mode durable`: a publish is answered once the mapping is in the store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use snp_core::{AppSet, Limits, MappingKey, Registration};
use snp_shim::nacos::proto::bi_request_stream_client::BiRequestStreamClient;
use snp_shim::nacos::proto::request_client::RequestClient;
use snp_shim::nacos::proto::{Metadata, Payload};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn payload(kind: &str, body: Value) -> Payload {
    Payload {
        metadata: Some(Metadata {
            r#type: kind.into(),
            headers: Default::default(),
            client_ip: "198.51.100.1".into(),
        }),
        body: Some(prost_types::Any {
            type_url: String::new(),
            value: body.to_string().into_bytes(),
        }),
    }
}

fn parse(p: &Payload) -> (String, Value) {
    (
        p.metadata.as_ref().unwrap().r#type.clone(),
        serde_json::from_slice(&p.body.as_ref().unwrap().value).unwrap(),
    )
}

async fn call(channel: &Channel, kind: &str, body: Value) -> (String, Value) {
    let answer = RequestClient::new(channel.clone())
        .request(payload(kind, body))
        .await
        .unwrap()
        .into_inner();
    parse(&answer)
}

async fn publish(channel: &Channel, tenant: &str, data_id: &str, content: &str) -> Value {
    let (kind, body) = call(
        channel,
        "ConfigPublishRequest",
        json!({"requestId": "p", "dataId": data_id, "group": "mapping", "tenant": tenant,
               "content": content, "casMd5": "stale"}),
    )
    .await;
    assert_eq!(kind, "ConfigPublishResponse");
    body
}

/// A connection with its bi-stream open: the sender of client messages and the pushes.
struct Conn {
    channel: Channel,
    out: mpsc::Sender<Payload>,
    pushes: tonic::Streaming<Payload>,
}

async fn connect(shim: &snp_shim::app::ShimHandle) -> Conn {
    let channel = Channel::from_shared(format!("http://{}", shim.nacos_addr.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (kind, _) = call(&channel, "ServerCheckRequest", json!({"requestId": "1"})).await;
    assert_eq!(kind, "ServerCheckResponse");
    let (out, rx) = mpsc::channel(16);
    out.send(payload(
        "ConnectionSetupRequest",
        json!({"clientVersion": "test", "tenant": "", "labels": {}}),
    ))
    .await
    .unwrap();
    let pushes = BiRequestStreamClient::new(channel.clone())
        .request_bi_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    Conn {
        channel,
        out,
        pushes,
    }
}

async fn next_push(conn: &mut Conn, within: Duration) -> Option<Value> {
    match tokio::time::timeout(within, conn.pushes.next()).await {
        Ok(Some(Ok(p))) => {
            let (kind, body) = parse(&p);
            assert_eq!(kind, "ConfigChangeNotifyRequest");
            Some(body)
        }
        Ok(other) => panic!("the push stream ended: {other:?}"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn pushes_echo_the_listen_are_retried_until_acked_and_stop_with_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let shim = common::start(dir.path(), &["--nacos", "--nacos-addr=127.0.0.1:0"]).await;
    let http = shim.http_addr;
    let mut listener = connect(&shim).await;
    // The stream is bound once the server has seen it; the listen below shares its peer.
    assert!(
        common::eventually_async(Duration::from_secs(5), || async move {
            common::metric(http, "snp_nacos_connections", &[]).await == 1.0
        })
        .await
    );
    let (_, body) = call(
        &listener.channel,
        "ConfigBatchListenRequest",
        json!({"requestId": "l", "listen": true, "configListenContexts": [
            {"group": "mapping", "dataId": "com.acme.Outer___Push", "tenant": "public", "md5": ""}
        ]}),
    )
    .await;
    assert_eq!(
        body["changedConfigs"],
        json!([]),
        "nothing yet, and the client has nothing"
    );
    assert_eq!(common::metric(http, "snp_nacos_listeners", &[]).await, 1.0);

    // Another connection publishes (tenant "" is the same as the listener's "public").
    let writer = connect(&shim).await;
    assert_eq!(
        publish(&writer.channel, "", "com.acme.Outer___Push", "app-1").await["resultCode"],
        200
    );

    let first = next_push(&mut listener, Duration::from_secs(5))
        .await
        .expect("a push");
    assert_eq!(
        first["dataId"], "com.acme.Outer___Push",
        "data id as the client listened"
    );
    assert_eq!(first["group"], "mapping");
    assert_eq!(first["tenant"], "public", "tenant as the client listened");
    // No ack: the same notification comes again, with a new request id.
    let started = Instant::now();
    let again = next_push(&mut listener, Duration::from_secs(10))
        .await
        .expect("a retry");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(again["dataId"], first["dataId"]);
    assert_ne!(again["requestId"], first["requestId"]);
    assert!(common::metric(http, "snp_nacos_push_retries_total", &[]).await >= 1.0);
    // Ack it: no more pushes.
    listener
        .out
        .send(payload(
            "ConfigChangeNotifyResponse",
            json!({"resultCode": 200, "errorCode": 0, "requestId": again["requestId"]}),
        ))
        .await
        .unwrap();
    assert!(
        common::eventually_async(Duration::from_secs(5), || async move {
            common::metric(http, "snp_nacos_push_acks_total", &[]).await == 1.0
        })
        .await
    );
    assert!(next_push(&mut listener, Duration::from_secs(5))
        .await
        .is_none());
    // The client's periodic full listen with the current MD5 reports nothing changed.
    let (_, q) = call(
        &listener.channel,
        "ConfigQueryRequest",
        json!({"dataId": "com.acme.Outer___Push", "group": "mapping", "tenant": "public"}),
    )
    .await;
    assert_eq!(q["content"], "app-1");
    let (_, body) = call(
        &listener.channel,
        "ConfigBatchListenRequest",
        json!({"listen": true, "configListenContexts": [
            {"group": "mapping", "dataId": "com.acme.Outer___Push", "tenant": "public", "md5": q["md5"]}
        ]}),
    )
    .await;
    assert_eq!(body["changedConfigs"], json!([]));
    // A publish that adds nothing pushes nothing.
    assert_eq!(
        publish(&writer.channel, "", "com.acme.Outer___Push", "app-1").await["resultCode"],
        200
    );
    assert!(next_push(&mut listener, Duration::from_secs(2))
        .await
        .is_none());

    // Closing the stream forgets the connection and its listens.
    drop(listener);
    assert!(
        common::eventually_async(Duration::from_secs(5), || async move {
            common::metric(http, "snp_nacos_listeners", &[]).await == 0.0
                && common::metric(http, "snp_nacos_connections", &[]).await == 1.0
        })
        .await
    );
    let key = MappingKey::new("default", "com.acme.Outer$Push");
    assert_eq!(
        common::on_disk(dir.path()).get(&key),
        Some(&["app-1"].iter().collect::<AppSet>())
    );
    shim.stop().await.unwrap();
}

#[tokio::test]
async fn bad_publishes_get_400_with_the_registration_api_message() {
    let dir = tempfile::tempdir().unwrap();
    let shim = common::start(dir.path(), &["--nacos", "--nacos-addr=127.0.0.1:0"]).await;
    let conn = connect(&shim).await;
    let limits = Limits::default();
    for (data_id, content) in [
        ("com.acme.Svc", "good,bad app"),
        ("com.acme..Svc", "good"),
        ("com.acme.Svc", " , "),
        ("com.acme-Svc", "good"),
    ] {
        let body = publish(&conn.channel, "", data_id, content).await;
        assert_eq!(
            (body["resultCode"].clone(), body["errorCode"].clone()),
            (500.into(), 400.into()),
            "{data_id} {content}: {body}"
        );
        let names: Vec<&str> = content
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(bad) = names.iter().find_map(|app| {
            let iface = data_id.replace("___", "$").replace('-', "/");
            Registration::new("default".into(), (*app).into(), vec![iface], &limits).err()
        }) {
            assert_eq!(
                body["message"],
                bad.to_string(),
                "one validation, one answer"
            );
        } else {
            assert_eq!(body["message"], "the content names no application");
        }
    }
    // Bounded: at most 1,024 names per publish (the debouncer's bound per key).
    let many: Vec<String> = (0..1025).map(|i| format!("app-{i}")).collect();
    let body = publish(&conn.channel, "", "com.acme.Svc", &many.join(",")).await;
    assert_eq!(body["errorCode"], 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("1025 applications"),
        "{body}"
    );
    assert!(common::on_disk(dir.path()).is_empty());
    shim.stop().await.unwrap();
}

#[tokio::test]
async fn durable_ack_mode_answers_a_publish_once_it_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let shim = common::start(
        dir.path(),
        &["--nacos", "--nacos-addr=127.0.0.1:0", "--ack-mode=durable"],
    )
    .await;
    let conn = connect(&shim).await;
    let body = publish(&conn.channel, "shop", "com.acme.Durable", "app-a,app-b").await;
    assert_eq!(body["resultCode"], 200, "{body}");
    // Answered only now: the manifest is already on disk.
    let key = MappingKey::new("shop", "com.acme.Durable");
    assert_eq!(
        common::on_disk(dir.path()).get(&key),
        Some(&["app-a", "app-b"].iter().collect::<AppSet>())
    );
    shim.stop().await.unwrap();
}

#[tokio::test]
async fn login_stub_hands_out_a_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let shim = common::start(
        dir.path(),
        &[
            "--nacos",
            "--nacos-addr=127.0.0.1:0",
            "--nacos-login-addr=127.0.0.1:0",
        ],
    )
    .await;
    let addr = shim.nacos_login_addr.expect("login stub address");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // As nacos-client sends it: a form POST with the credentials.
    let form = "username=dubbo&password=secret";
    s.write_all(
        format!(
            "POST /nacos/v1/auth/users/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body: Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert!(!body["accessToken"].as_str().unwrap().is_empty());
    assert!(body["tokenTtl"].as_i64().unwrap() > 0);
    shim.stop().await.unwrap();
}

#[tokio::test]
async fn refuses_to_start_where_registrations_must_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let token_flag = format!("--auth-token-file={}", token.display());
    let args = common::args(
        dir.path(),
        &[
            "--nacos",
            "--nacos-addr=127.0.0.1:0",
            &token_flag,
            "--auth-scope=all",
        ],
    );
    match snp_shim::app::start(args).await {
        Err(e) => assert!(e.to_string().contains("--auth-scope all"), "{e}"),
        Ok(_) => panic!("the Nacos endpoint would bypass registration authentication"),
    }
    // With authentication of PushMappings only (the default scope), it starts.
    let args = common::args(
        dir.path(),
        &["--nacos", "--nacos-addr=127.0.0.1:0", &token_flag],
    );
    let shim = snp_shim::app::start(args).await.unwrap();
    assert!(shim.nacos_addr.is_some());
    shim.stop().await.unwrap();
}
