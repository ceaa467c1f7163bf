//! Per-key outcomes in the shim on the embedded store: one bad mapping never rejects its
//! batch, waiters are pruned while the store fails, the longest names are stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use snp_core::MappingKey;
use snp_proto::api::mapping_result::Status as ResultStatus;
use snp_proto::api::PushMappingsRequest;
use tonic::Code;

use common::{api, dubbo, dubbo_req, eventually_async, http_get, mapping, on_disk, start};

/// The value of a metric that must exist (an absent metric fails the test, never reads 0).
async fn gauge(addr: std::net::SocketAddr, name: &str) -> f64 {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let line = body
        .lines()
        .find(|l| l.split_once(' ').is_some_and(|(n, _)| n == name))
        .unwrap_or_else(|| panic!("metric {name} is missing:\n{body}"));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[tokio::test]
async fn one_bad_mapping_never_rejects_its_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let shim = start(&data, &["--debounce-first-check=10ms"]).await;
    let mut api = api(shim.grpc_addr).await;
    let resp = api
        .push_mappings(PushMappingsRequest {
            batch_id: "f/1".into(),
            source: "filter".into(),
            mappings: vec![
                mapping("default", "com.Good", &["g"]),
                mapping("default", "com..Bad", &["b"]),
                mapping("default", "com.Also", &[]),
                mapping("default", "com.Fine", &["f"]),
            ],
            want_results: true,
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(i32, &str)> = resp
        .results
        .iter()
        .map(|r| (r.status, r.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (ResultStatus::Stored as i32, ""),
            (ResultStatus::Rejected as i32, "invalid_interface"),
            (ResultStatus::Rejected as i32, "empty_application"),
            (ResultStatus::Stored as i32, ""),
        ],
        "{resp:?}"
    );
    assert!(
        resp.results[1]
            .message
            .contains("mappings[1].interface_name"),
        "{resp:?}"
    );
    assert_eq!((resp.unchanged, resp.written), (0, 2));
    let disk = on_disk(&data);
    assert!(disk.contains(&MappingKey::new("default", "com.Good"), "g"));
    assert!(disk.contains(&MappingKey::new("default", "com.Fine"), "f"));
    assert_eq!(disk.len(), 2);

    // An older sender (no results) still gets INVALID_ARGUMENT naming the bad mapping, and
    // its good mappings are stored anyway.
    let err = api
        .push_mappings(PushMappingsRequest {
            batch_id: "f/2".into(),
            source: "old-filter".into(),
            mappings: vec![
                mapping("default", "com.Later", &["l"]),
                mapping("BAD", "com.A", &["a"]),
            ],
            want_results: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("mappings[1]"), "{err:?}");
    assert!(on_disk(&data).contains(&MappingKey::new("default", "com.Later"), "l"));

    // More applications in one mapping than a key may hold: that mapping only.
    let many: Vec<String> = (0..5).map(|i| format!("app{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    shim.stop().await.unwrap();
    let shim = start(
        &data,
        &["--debounce-first-check=10ms", "--max-apps-per-key=4"],
    )
    .await;
    let mut api = common::api(shim.grpc_addr).await;
    let resp = api
        .push_mappings(PushMappingsRequest {
            batch_id: "f/3".into(),
            source: "filter".into(),
            mappings: vec![
                mapping("default", "com.Many", &many),
                mapping("default", "com.Few", &["a"]),
            ],
            want_results: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results[0].reason, "too_many_applications", "{resp:?}");
    assert_eq!(resp.results[1].status, ResultStatus::Stored as i32);
    shim.stop().await.unwrap();
}

#[tokio::test]
async fn waiters_are_pruned_while_the_store_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let shim = start(
        &data,
        &[
            "--ack-mode=durable",
            "--ack-timeout=300ms",
            "--debounce-first-check=10ms",
            "--retry-base=50ms",
        ],
    )
    .await;
    // The namespace's directory cannot be created: every write of it fails (transiently).
    std::fs::write(data.join("blocked"), "not a directory").unwrap();
    let calls = (0..40).map(|i| {
        let addr = shim.grpc_addr;
        tokio::spawn(async move {
            dubbo(addr)
                .await
                .register_service_app_mapping(dubbo_req("blocked", &format!("app{i}"), &["com.A"]))
                .await
        })
    });
    for call in futures::future::join_all(calls).await {
        let err = call.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    // Every caller gave up: their waiters go within the prune interval, while the key
    // still fails and is retried.
    let http = shim.http_addr;
    assert!(
        eventually_async(Duration::from_secs(3), || async move {
            gauge(http, "snp_durable_waiters").await == 0.0
        })
        .await,
        "waiters of callers that timed out are kept"
    );
    // The key is still retried.
    let failed = common::metric(shim.http_addr, "snp_batches_total", &[r#"result="error""#]).await;
    assert!(
        eventually_async(Duration::from_secs(5), || async move {
            common::metric(http, "snp_batches_total", &[r#"result="error""#]).await > failed
        })
        .await
    );
    // A healthy key meanwhile is not held up by the failing one.
    let started = std::time::Instant::now();
    dubbo(shim.grpc_addr)
        .await
        .register_service_app_mapping(dubbo_req("default", "ok", &["com.Ok"]))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    std::fs::remove_file(data.join("blocked")).unwrap();
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            on_disk(&data).entries() == 41
        })
        .await
    );
    shim.stop().await.unwrap();
}

#[tokio::test]
async fn the_longest_object_names_are_stored_by_the_embedded_store() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let shim = start(
        &data,
        &["--ack-mode=durable", "--debounce-first-check=10ms"],
    )
    .await;
    let ifaces: Vec<String> = (240..=253)
        .map(|n| format!("com.{}", "x".repeat(n - 4)))
        .collect();
    let refs: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    dubbo(shim.grpc_addr)
        .await
        .register_service_app_mapping(dubbo_req("default", "long", &refs))
        .await
        .unwrap();
    let disk = on_disk(&data);
    for i in &ifaces {
        assert!(
            disk.contains(&MappingKey::new("default", i.as_str()), "long"),
            "{}",
            i.len()
        );
    }
    shim.stop().await.unwrap();
}
