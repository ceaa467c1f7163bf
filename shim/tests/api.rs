//! The gRPC API of an in-process shim on the embedded store: both registration flavours,
//! PushMappings (idempotent, durable), GetMappings, WatchMappings, validation, limits,
//! authentication, and the operations endpoint.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use snp_core::MappingKey;
use snp_proto::api::mapping_event::Kind;
use snp_proto::api::{GetMappingsRequest, PushMappingsRequest, WatchMappingsRequest};
use snp_shim::grpc::codec::BytesCodec;
use tokio::time::Instant;
use tonic::codegen::http;
use tonic::Code;

/// Calls a registration path with arbitrary message bytes.
async fn raw_call(
    addr: std::net::SocketAddr,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(Bytes::from(body)),
        http::uri::PathAndQuery::from_static(path),
        BytesCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

fn encode(ns: &[u8], app: &[u8], ifaces: &[&[u8]]) -> Vec<u8> {
    use prost::Message;
    snp_proto::RawServiceMappingRequest {
        namespace: ns.to_vec(),
        application_name: app.to_vec(),
        interface_names: ifaces.iter().map(|i| i.to_vec()).collect(),
    }
    .encode_to_vec()
}

#[tokio::test]
async fn both_flavours_register_and_lookups_see_the_union() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = start(
        tmp.path(),
        &["--debounce-first-check=20ms", "--debounce-after=10ms"],
    )
    .await;
    let iface = "org.apache.dubbo.demo.DemoService";

    let a = dubbo(shim.grpc_addr)
        .await
        .register_service_app_mapping(dubbo_req("default", "demo-a", &[iface]))
        .await
        .unwrap();
    let _: snp_proto::dubbo::ServiceMappingResponse = a.into_inner();
    let b = admin(shim.grpc_addr)
        .await
        .register_service_app_mapping(admin_req(
            "default",
            "demo-b",
            &[iface, "com.acme.Outer$Inner_2"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(b.success);
    assert_eq!(b.message, "success");
    // Byte-compatible with the seed: the exact response bytes of each flavour.
    let raw = raw_call(
        shim.grpc_addr,
        snp_proto::PATH_FLAVOUR_A,
        encode(b"default", b"demo-a", &[iface.as_bytes()]),
    )
    .await
    .unwrap();
    assert!(raw.is_empty());
    let raw = raw_call(
        shim.grpc_addr,
        snp_proto::PATH_FLAVOUR_B,
        encode(b"default", b"demo-a", &[iface.as_bytes()]),
    )
    .await
    .unwrap();
    assert_eq!(raw.as_ref(), &b"\x08\x01\x12\x07success"[..]);

    let expected = mappings(&[
        ("default", iface, &["demo-a", "demo-b"]),
        ("default", "com.acme.Outer$Inner_2", &["demo-b"]),
    ]);
    assert!(eventually(Duration::from_secs(5), || on_disk(tmp.path()) == expected).await);

    let mut api = api(shim.grpc_addr).await;
    // The embedded store renames the files into place, makes the renames durable, then
    // updates the view lookups read: the disk may show a write a moment before lookups do.
    assert!(
        eventually_async(Duration::from_secs(5), || {
            let mut api = api.clone();
            async move {
                // Names only grow: 3 in all is the union on disk.
                let all = lookup(&mut api, "default", &[]).await;
                all.iter().map(|m| m.application_names.len()).sum::<usize>() == 3
            }
        })
        .await,
        "lookups never saw what is on disk"
    );
    let got = lookup(&mut api, "default", &[iface, "com.unknown.X"]).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].application_names, vec!["demo-a", "demo-b"]);
    assert!(!got[0].revision.is_empty());
    let all = lookup(&mut api, "default", &[]).await;
    assert_eq!(all.len(), 2);
    let none = api
        .get_mappings(GetMappingsRequest {
            namespace: "other".into(),
            interface_names: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.mappings.is_empty());
    shim.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = start(
        tmp.path(),
        &["--debounce-first-check=10ms", "--debounce-after=10ms"],
    )
    .await;
    let a = snp_proto::PATH_FLAVOUR_A;
    let b = snp_proto::PATH_FLAVOUR_B;
    let cases: Vec<(&'static str, Vec<u8>, &str)> = vec![
        (
            a,
            vec![0xff, 0xff, 0xff],
            "is not a ServiceMappingRequest protobuf",
        ),
        (
            b,
            vec![0x0a, 0x10, b'x'],
            "is not a ServiceMappingRequest protobuf",
        ),
        (
            a,
            encode(&[0xc3, 0x28], b"app", &[b"I"]),
            "namespace is not valid UTF-8",
        ),
        (
            b,
            encode(b"default", &[0xff], &[b"I"]),
            "applicationName is not valid UTF-8",
        ),
        (
            a,
            encode(b"default", b"app", &[b"ok.I", &[0xe2, 0x28]]),
            "interfaceNames[1] is not valid UTF-8",
        ),
        (
            a,
            encode(b"mapping\n", b"app", &[b"I"]),
            r#"namespace "mapping\n" is not a valid RFC 1123 label"#,
        ),
        (
            b,
            encode(b"Default", b"app", &[b"I"]),
            "is not a valid RFC 1123 label",
        ),
        (
            a,
            encode(b"default", b"", &[b"I"]),
            "applicationName is empty",
        ),
        (
            a,
            encode(b"default", b"a b", &[b"I"]),
            "contains whitespace",
        ),
        (
            b,
            encode(b"default", b"app", &[]),
            "interfaceNames is empty",
        ),
        (
            a,
            encode(b"default", b"app", &[b"a..b"]),
            "empty segment between dots",
        ),
        (
            a,
            encode(b"default", b"app", &[b"a/b"]),
            "is not a valid interface name",
        ),
    ];
    for (path, body, want) in &cases {
        let err = raw_call(shim.grpc_addr, path, body.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{want}: {err:?}");
        assert!(
            err.message().contains(want),
            "{:?} does not contain {want:?}",
            err.message()
        );
    }

    // PushMappings from an older sender (no results): INVALID_ARGUMENT naming the bad
    // mapping. Each mapping is validated on its own, so the good one is still stored.
    let mut api = api(shim.grpc_addr).await;
    let push = |m: Vec<snp_proto::api::Mapping>| PushMappingsRequest {
        batch_id: "t/1".into(),
        source: "test".into(),
        mappings: m,
        want_results: false,
    };
    for (m, want) in [
        (
            mapping("BAD", "com.A", &["a"]),
            "mappings[1]: namespace \"BAD\"",
        ),
        (
            mapping("default", "com..A", &["a"]),
            "mappings[1].interface_name \"com..A\"",
        ),
        (
            mapping("default", "com.A", &[]),
            "mappings[1].application_names is empty",
        ),
        (
            mapping("default", "com.A", &[""]),
            "mappings[1].application_names[0]: applicationName is empty",
        ),
    ] {
        let err = api
            .push_mappings(push(vec![mapping("default", "com.Good", &["g"]), m]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains(want),
            "{:?} vs {want:?}",
            err.message()
        );
    }
    let err = api
        .get_mappings(GetMappingsRequest {
            namespace: "".into(),
            interface_names: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = api
        .watch_mappings(WatchMappingsRequest {
            namespace: "x_y".into(),
            interface_names: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // An oversized message is refused before it is buffered, as the filter refuses it.
    let huge = encode(b"default", b"app", &[&vec![b'a'; 5 * 1024 * 1024]]);
    let err = raw_call(shim.grpc_addr, a, huge).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Still up, nothing but the valid mapping of the pushed batches was written, and every
    // refusal was counted by reason.
    dubbo(shim.grpc_addr)
        .await
        .register_service_app_mapping(dubbo_req("default", "ok-app", &["com.Ok"]))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || on_disk(tmp.path())
            == mappings(&[
                ("default", "com.Ok", &["ok-app"]),
                ("default", "com.Good", &["g"])
            ]))
        .await
    );
    let http = shim.http_addr;
    assert_eq!(
        metric(
            http,
            "snp_invalid_calls_total",
            &[r#"reason="not_protobuf""#]
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(
            http,
            "snp_invalid_calls_total",
            &[r#"reason="invalid_utf8""#]
        )
        .await,
        3.0
    );
    // Two registrations, one push, one lookup, one watch.
    assert_eq!(
        metric(
            http,
            "snp_invalid_calls_total",
            &[r#"reason="invalid_namespace""#]
        )
        .await,
        5.0
    );
    assert_eq!(
        metric(
            http,
            "snp_calls_total",
            &[r#"api="dubbo""#, r#"result="invalid""#]
        )
        .await,
        8.0
    );
    assert_eq!(
        metric(
            http,
            "snp_calls_total",
            &[r#"api="push""#, r#"result="invalid""#]
        )
        .await,
        4.0
    );
    shim.stop().await.unwrap();
}

#[tokio::test]
async fn push_mappings_is_durable_when_acked_and_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = start(tmp.path(), &[]).await;
    let http = shim.http_addr;
    let mut api = api(shim.grpc_addr).await;
    let batch = PushMappingsRequest {
        batch_id: "node-1/1".into(),
        source: "node-1".into(),
        mappings: vec![
            mapping("default", "com.A", &["a1", "a2"]),
            mapping("default", "com.B", &["b1"]),
            mapping("team-x", "com.A", &["x1"]),
        ],
        want_results: false,
    };
    let expected = mappings(&[
        ("default", "com.A", &["a1", "a2"]),
        ("default", "com.B", &["b1"]),
        ("team-x", "com.A", &["x1"]),
    ]);
    let resp = api.push_mappings(batch.clone()).await.unwrap().into_inner();
    assert_eq!(
        (resp.batch_id.as_str(), resp.unchanged, resp.written),
        ("node-1/1", 0, 3)
    );
    // Acknowledged means durable: on disk now, without waiting.
    assert_eq!(on_disk(tmp.path()), expected);
    let writes = metric(
        http,
        "snp_store_writes_total",
        &[r#"result="ok""#, r#"verb="create""#],
    )
    .await
        + metric(http, "snp_store_writes_total", &[r#"verb="update""#]).await;
    assert_eq!(writes, 3.0);
    let batches = metric(http, "snp_batches_total", &[]).await;

    // Resending changes nothing and costs no batch and no write.
    for id in ["node-1/1", "node-1/2"] {
        let mut again = batch.clone();
        again.batch_id = id.into();
        let resp = api.push_mappings(again).await.unwrap().into_inner();
        assert_eq!((resp.unchanged, resp.written), (3, 0));
    }
    // A partial overlap writes only what is new.
    let resp = api
        .push_mappings(PushMappingsRequest {
            batch_id: "node-2/1".into(),
            source: "node-2".into(),
            mappings: vec![
                mapping("default", "com.A", &["a1"]),
                mapping("default", "com.B", &["b2"]),
            ],
            want_results: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resp.unchanged, resp.written), (1, 1));
    assert_eq!(
        metric(http, "snp_store_writes_total", &[r#"verb="update""#]).await,
        1.0
    );
    assert_eq!(
        metric(http, "snp_store_writes_total", &[r#"verb="create""#]).await,
        3.0
    );
    assert_eq!(metric(http, "snp_batches_total", &[]).await, batches + 1.0);
    // An empty batch is fine.
    let resp = api
        .push_mappings(PushMappingsRequest {
            batch_id: "e".into(),
            source: "s".into(),
            mappings: vec![],
            want_results: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resp.unchanged, resp.written), (0, 0));
    shim.stop().await.unwrap();
}

// On the paused clock: windows and "within" bounds are virtual time, exact under load.
#[tokio::test(start_paused = true)]
async fn ack_modes_immediate_and_durable() {
    // Immediate (the seed's): the answer comes before the write, which waits for the
    // debounce window.
    let tmp = tempfile::tempdir().unwrap();
    let shim = start_paused(tmp.path(), &["--debounce-first-check=400ms"]).await;
    dubbo(shim.grpc_addr)
        .await
        .register_service_app_mapping(dubbo_req("default", "app", &["com.Imm"]))
        .await
        .unwrap();
    assert!(on_disk(tmp.path()).is_empty(), "written before the window");
    assert!(eventually(Duration::from_secs(5), || !on_disk(tmp.path()).is_empty()).await);
    shim.stop().await.unwrap();

    // Durable: the answer means the mapping is on disk.
    let tmp = tempfile::tempdir().unwrap();
    let shim = start_paused(
        tmp.path(),
        &["--ack-mode=durable", "--debounce-first-check=400ms"],
    )
    .await;
    let t0 = Instant::now();
    admin(shim.grpc_addr)
        .await
        .register_service_app_mapping(admin_req("default", "app", &["com.Dur", "com.Dur2"]))
        .await
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(350),
        "answered before the write window"
    );
    assert_eq!(
        on_disk(tmp.path()),
        mappings(&[
            ("default", "com.Dur", &["app"]),
            ("default", "com.Dur2", &["app"])
        ])
    );
    // A repeat of a durable mapping is answered at once.
    let t1 = Instant::now();
    admin(shim.grpc_addr)
        .await
        .register_service_app_mapping(admin_req("default", "app", &["com.Dur"]))
        .await
        .unwrap();
    assert!(t1.elapsed() < Duration::from_millis(300));
    shim.stop().await.unwrap();
}

#[tokio::test]
async fn durable_calls_time_out_with_unavailable_when_the_store_cannot_write() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let shim = start(
        &data,
        &[
            "--ack-timeout=600ms",
            "--debounce-first-check=10ms",
            "--retry-base=100ms",
        ],
    )
    .await;
    // Make the namespace directory unwritable by putting a file where it must go.
    std::fs::write(data.join("blocked"), "not a directory").unwrap();
    let mut api = api(shim.grpc_addr).await;
    let err = api
        .push_mappings(PushMappingsRequest {
            batch_id: "b".into(),
            source: "s".into(),
            mappings: vec![mapping("blocked", "com.A", &["a"])],
            want_results: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("resend later"));
    assert!(metric(shim.http_addr, "snp_batches_total", &[r#"result="error""#]).await >= 1.0);
    // The failed batch is retried with backoff, and lands once the obstacle is gone.
    // Meanwhile its key waits in the debouncer (it is out of it only while a retry is in
    // flight).
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            metric(shim.http_addr, "snp_pending_keys", &[]).await == 1.0
        })
        .await,
        "the failed key is not pending"
    );
    std::fs::remove_file(data.join("blocked")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || on_disk(&data)
            == mappings(&[("blocked", "com.A", &["a"])]))
        .await,
        "the retried batch never landed"
    );
    assert!(metric(shim.http_addr, "snp_batch_retries_total", &[]).await >= 1.0);
    shim.stop().await.unwrap();
}

/// The pipeline's batch events (target `snp_shim::pipeline`), each with the tokio instant
/// it was logged at: on the paused clock, exact virtual times.
#[derive(Clone, Default)]
struct PipelineSteps(std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PipelineSteps {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(Option<String>);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = Some(format!("{v:?}"));
                }
            }
        }
        if event.metadata().target() != "snp_shim::pipeline" {
            return;
        }
        let mut m = Message(None);
        event.record(&mut m);
        if let Some(m) = m.0 {
            self.0.lock().unwrap().push((Instant::now(), m));
        }
    }
}

impl PipelineSteps {
    fn count(&self, message: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m == message)
            .count()
    }
}

// On the paused clock: the retry schedule of `--retry-base`/`--retry-max` in virtual time,
// exact under load. (`kube_cluster.rs` goes through a real API server outage on the wall
// clock, where only lower bounds survive a loaded machine.)
#[tokio::test(start_paused = true)]
async fn failed_batches_are_retried_on_the_configured_backoff() {
    use tracing_subscriber::layer::SubscriberExt;
    const BASE: f64 = 0.2;
    const CAP: f64 = 3.2;
    const JITTER: f64 = 0.2;
    let steps = PipelineSteps::default();
    // This thread only: the paused clock's runtime runs the shim's tasks here.
    let _capture =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(steps.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let shim = start_paused(
        &data,
        &[
            "--debounce-first-check=10ms",
            "--retry-base=200ms",
            "--retry-max=3200ms",
        ],
    )
    .await;
    // The namespace directory cannot be made: every write of the batch fails, transiently.
    std::fs::write(data.join("blocked"), "not a directory").unwrap();
    admin(shim.grpc_addr)
        .await
        .register_service_app_mapping(admin_req("blocked", "app", &["com.A"]))
        .await
        .unwrap();
    let failed = "batch failed; it will be retried";
    assert!(
        eventually(Duration::from_secs(60), || steps.count(failed) >= 9).await,
        "{} failures in 60 s",
        steps.count(failed)
    );
    std::fs::remove_file(data.join("blocked")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || on_disk(&data)
            == mappings(&[("blocked", "com.A", &["app"])]))
        .await,
        "the retried batch never landed"
    );
    shim.stop().await.unwrap();

    let steps: Vec<(f64, Step)> = {
        let events = steps.0.lock().unwrap();
        let t0 = events.first().map(|(t, _)| *t).expect("pipeline events");
        events
            .iter()
            .filter_map(|(t, m)| Some(((*t - t0).as_secs_f64(), Step::of(m)?)))
            .collect()
    };
    let gaps = retries(&steps, BASE, CAP);
    let shown = show_retries(&gaps, JITTER);
    assert!(gaps.len() >= 9, "{shown}");
    for r in &gaps {
        // The debouncer counts whole milliseconds: a deadline may fall up to 1 ms early.
        assert!(
            r.gap() >= r.expected * (1.0 - JITTER) - 0.001 && r.gap() <= r.expected + 0.000_001,
            "retry after failure #{}: {shown}",
            r.failures
        );
    }
    // It grew from 2 x base to the cap, and stayed there.
    assert!(
        gaps.iter().filter(|r| r.expected >= CAP).count() >= 3,
        "{shown}"
    );
}

// On the paused clock: windows and "within" bounds are virtual time, exact under load.
#[tokio::test(start_paused = true)]
async fn watch_delivers_a_snapshot_then_changes_within_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = start_paused(
        tmp.path(),
        &["--debounce-first-check=50ms", "--debounce-after=20ms"],
    )
    .await;
    let mut api = api(shim.grpc_addr).await;
    api.push_mappings(PushMappingsRequest {
        batch_id: "1".into(),
        source: "s".into(),
        mappings: vec![mapping("default", "com.Pre", &["p"])],
        want_results: false,
    })
    .await
    .unwrap();

    let mut all = api
        .watch_mappings(WatchMappingsRequest {
            namespace: "default".into(),
            interface_names: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut one = api
        .watch_mappings(WatchMappingsRequest {
            namespace: "default".into(),
            interface_names: vec!["com.Watched".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let snap = all.message().await.unwrap().unwrap();
    assert_eq!(snap.kind, Kind::Snapshot as i32);
    assert_eq!(snap.mappings.len(), 1);
    assert_eq!(snap.mappings[0].interface_name, "com.Pre");
    let snap = one.message().await.unwrap().unwrap();
    assert_eq!(snap.kind, Kind::Snapshot as i32);
    assert!(snap.mappings.is_empty());
    assert!(
        eventually_async(Duration::from_secs(2), || async {
            metric(shim.http_addr, "snp_watchers", &[]).await == 2.0
        })
        .await
    );

    for (round, app) in ["w1", "w2"].into_iter().enumerate() {
        // PushMappings acks once the store holds the change; the event must follow within 1 s.
        api.push_mappings(PushMappingsRequest {
            batch_id: format!("w/{round}"),
            source: "s".into(),
            mappings: vec![
                mapping("default", "com.Watched", &[app]),
                mapping("other", "com.Watched", &["o"]),
            ],
            want_results: false,
        })
        .await
        .unwrap();
        let landed = Instant::now();
        for stream in [&mut all, &mut one] {
            let ev = tokio::time::timeout(Duration::from_secs(1), stream.message())
                .await
                .expect("a change within 1 s")
                .unwrap()
                .unwrap();
            assert!(landed.elapsed() < Duration::from_secs(1));
            assert_eq!(ev.kind, Kind::Upsert as i32);
            assert_eq!(
                ev.mappings.len(),
                1,
                "other namespaces are filtered out: {ev:?}"
            );
            assert_eq!(ev.mappings[0].interface_name, "com.Watched");
            assert!(ev.mappings[0].application_names.iter().any(|a| a == app));
        }
    }
    // A registration (not a push) reaches watchers too.
    dubbo(shim.grpc_addr)
        .await
        .register_service_app_mapping(dubbo_req("default", "w3", &["com.Watched"]))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(2), one.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.mappings[0].application_names, vec!["w1", "w2", "w3"]);

    // Shutdown ends open watches, so it is not held up by them.
    let t0 = Instant::now();
    shim.stop().await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(ev)) = all.message().await {
            assert_eq!(ev.kind, Kind::Upsert as i32);
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch did not end with the shim");
}

#[tokio::test]
async fn a_full_pending_set_gives_resource_exhausted() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = start(
        tmp.path(),
        &[
            "--max-pending-keys=2",
            "--debounce-first-check=30s",
            "--debounce-max=30s",
            "--debounce-after=30s",
        ],
    )
    .await;
    let mut c = dubbo(shim.grpc_addr).await;
    c.register_service_app_mapping(dubbo_req("default", "a", &["com.One", "com.Two"]))
        .await
        .unwrap();
    // Known keys still merge.
    c.register_service_app_mapping(dubbo_req("default", "b", &["com.One"]))
        .await
        .unwrap();
    let err = c
        .register_service_app_mapping(dubbo_req("default", "a", &["com.Three"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("too many pending"),
        "{}",
        err.message()
    );
    assert_eq!(
        metric(
            shim.http_addr,
            "snp_calls_total",
            &[r#"result="overloaded""#]
        )
        .await,
        1.0
    );
    assert_eq!(metric(shim.http_addr, "snp_pending_keys", &[]).await, 2.0);
    // Shutdown flushes the two pending keys at once.
    assert!(shim.stop().await.unwrap().drained);
    assert_eq!(
        on_disk(tmp.path()),
        mappings(&[
            ("default", "com.One", &["a", "b"]),
            ("default", "com.Two", &["a"])
        ])
    );
}

#[tokio::test]
async fn a_push_with_results_is_answered_per_key_when_the_pending_set_is_full() {
    use snp_proto::api::mapping_result::Status as ResultStatus;
    let tmp = tempfile::tempdir().unwrap();
    let shim = start(
        tmp.path(),
        &[
            "--max-pending-keys=2",
            "--debounce-first-check=30s",
            "--debounce-max=30s",
            "--debounce-after=30s",
            "--ack-timeout=500ms",
        ],
    )
    .await;
    dubbo(shim.grpc_addr)
        .await
        .register_service_app_mapping(dubbo_req("default", "a", &["com.One", "com.Two"]))
        .await
        .unwrap();
    // A known key and a new one the full pending set has no room for: the call is not
    // refused as a whole; the known key joins its pending write, the new one is answered
    // PENDING with why, so the sender retries only it.
    let answer = api(shim.grpc_addr)
        .await
        .push_mappings(PushMappingsRequest {
            batch_id: "t/full".into(),
            source: "test".into(),
            mappings: vec![
                mapping("default", "com.One", &["c"]),
                mapping("default", "com.Three", &["c"]),
            ],
            want_results: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.results.len(), 2, "{answer:?}");
    let known = &answer.results[0];
    assert_eq!(known.status, ResultStatus::Pending as i32, "{known:?}");
    assert_eq!(known.reason, "", "{known:?}");
    let refused = &answer.results[1];
    assert_eq!(refused.status, ResultStatus::Pending as i32, "{refused:?}");
    assert_eq!(refused.reason, "overloaded", "{refused:?}");
    assert!(
        refused.message.contains("com.Three") && refused.message.contains("too many pending"),
        "{refused:?}"
    );
    assert_eq!(metric(shim.http_addr, "snp_pending_keys", &[]).await, 2.0);
    // Shutdown flushes what was accepted: the known key with its new application.
    assert!(shim.stop().await.unwrap().drained);
    assert_eq!(
        on_disk(tmp.path()),
        mappings(&[
            ("default", "com.One", &["a", "c"]),
            ("default", "com.Two", &["a"])
        ])
    );
}

#[tokio::test]
async fn bearer_token_guards_push_and_optionally_registrations() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let token_arg = format!("--auth-token-file={}", token_file.display());
    for scope in ["push", "all"] {
        let data = tmp.path().join(scope);
        let shim = start(
            &data,
            &[
                &token_arg,
                &format!("--auth-scope={scope}"),
                "--debounce-first-check=10ms",
            ],
        )
        .await;
        let ch = channel(shim.grpc_addr).await;
        let push = || {
            tonic::Request::new(PushMappingsRequest {
                batch_id: "1".into(),
                source: "s".into(),
                mappings: vec![mapping("default", "com.A", &["a"])],
                want_results: false,
            })
        };
        let mut api = snp_proto::api::mapping_service_client::MappingServiceClient::new(ch.clone());
        let err = api.push_mappings(push()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(err.message().contains("missing bearer token"));
        let mut wrong = push();
        wrong
            .metadata_mut()
            .insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            api.push_mappings(wrong).await.unwrap_err().code(),
            Code::Unauthenticated
        );
        let mut right = push();
        right
            .metadata_mut()
            .insert("authorization", "Bearer s3cret-token".parse().unwrap());
        api.push_mappings(right).await.unwrap();

        // Reads are open.
        api.get_mappings(GetMappingsRequest {
            namespace: "default".into(),
            interface_names: vec![],
        })
        .await
        .unwrap();
        let mut reg = snp_proto::dubbo::service_name_mapping_service_client::ServiceNameMappingServiceClient::new(ch.clone());
        let r = reg
            .register_service_app_mapping(dubbo_req("default", "b", &["com.B"]))
            .await;
        if scope == "push" {
            r.unwrap();
        } else {
            assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
            let mut req = tonic::Request::new(dubbo_req("default", "b", &["com.B"]));
            req.metadata_mut()
                .insert("authorization", "Bearer s3cret-token".parse().unwrap());
            reg.register_service_app_mapping(req).await.unwrap();
        }
        assert!(
            metric(
                shim.http_addr,
                "snp_calls_total",
                &[r#"result="unauthenticated""#]
            )
            .await
                >= 2.0
        );
        shim.stop().await.unwrap();
    }
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = start(tmp.path(), &[]).await;
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            http_get(shim.http_addr, "/readyz").await.0 == 200
        })
        .await
    );
    assert_eq!(http_get(shim.http_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(shim.http_addr, "/nope").await.0, 404);
    let (status, body) = http_get(shim.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    let metrics = snp_testkit::prom::Metrics::parse(&body).unwrap();
    for name in [
        "snp_calls_total",
        "snp_registrations_total",
        "snp_batches_total",
        "snp_merged_keys_total",
        "snp_store_writes_total",
        "snp_store_conflicts_total",
        "snp_batch_retries_total",
        "snp_pending_keys",
        "snp_flush_duration_seconds",
    ] {
        if let Err(e) = metrics.matching(name, &[]) {
            panic!("{e}:\n{body}");
        }
    }
    shim.stop().await.unwrap();
}

#[tokio::test]
async fn seed_named_objects_are_found_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = tmp.path().join("default");
    std::fs::create_dir_all(&ns).unwrap();
    std::fs::write(
        ns.join("org-apache-dubbo-demo-demoservice.yaml"),
        "apiVersion: extensions.istio.io/v1alpha1\nkind: ServiceNameMapping\nmetadata:\n  name: org-apache-dubbo-demo-demoservice\n  namespace: default\n  labels:\n    interface: org.apache.dubbo.demo.DemoService\nspec:\n  interfaceName: org.apache.dubbo.demo.DemoService\n  applicationNames:\n  - seed-app\n",
    )
    .unwrap();
    let shim = start(tmp.path(), &["--debounce-first-check=10ms"]).await;
    let mut api = api(shim.grpc_addr).await;
    let got = api
        .get_mappings(GetMappingsRequest {
            namespace: "default".into(),
            interface_names: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.mappings[0].application_names, vec!["seed-app"]);
    let resp = api
        .push_mappings(PushMappingsRequest {
            batch_id: "1".into(),
            source: "s".into(),
            mappings: vec![
                mapping("default", "org.apache.dubbo.demo.DemoService", &["new-app"]),
                // Same seed name, different case: must get an object of its own.
                mapping("default", "org.apache.dubbo.demo.demoservice", &["lower"]),
            ],
            want_results: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.written, 2);
    let files = snp_shim::store::embedded::read_dir_files(tmp.path()).unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(
        files[&MappingKey::new("default", "org.apache.dubbo.demo.DemoService")],
        ns.join("org-apache-dubbo-demo-demoservice.yaml")
    );
    assert_ne!(
        files[&MappingKey::new("default", "org.apache.dubbo.demo.demoservice")],
        ns.join("org-apache-dubbo-demo-demoservice.yaml")
    );
    assert_eq!(
        on_disk(tmp.path()),
        mappings(&[
            (
                "default",
                "org.apache.dubbo.demo.DemoService",
                &["new-app", "seed-app"]
            ),
            ("default", "org.apache.dubbo.demo.demoservice", &["lower"]),
        ])
    );
    shim.stop().await.unwrap();
}

/// Runs openssl (a test-only dependency of this one test).
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, signed by
/// the CA named `ca`.
fn pki(dir: &std::path::Path, ca: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj"]);
    let subj = format!("/CN={ca}");
    a.push(&subj);
    openssl(dir, &a);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let key = format!("{who}.key");
        let csr = format!("{who}.csr");
        let pem = format!("{who}.pem");
        let ext = format!("{who}.ext");
        let subj = format!("/CN=snp-{who}");
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &a);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

#[tokio::test]
async fn mutual_tls_guards_writes_when_configured() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let rogue = tmp.path().join("rogue");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::create_dir_all(&rogue).unwrap();
    pki(&good, "snp-test-ca");
    pki(&rogue, "rogue-ca");
    let f = |d: &std::path::Path, n: &str| d.join(n).display().to_string();
    let shim = start(
        &tmp.path().join("data"),
        &[
            &format!("--tls-cert={}", f(&good, "server.pem")),
            &format!("--tls-key={}", f(&good, "server.key")),
            &format!("--tls-client-ca={}", f(&good, "ca.pem")),
            "--auth-scope=all",
            "--debounce-first-check=10ms",
        ],
    )
    .await;
    let read = |d: &std::path::Path, n: &str| std::fs::read(d.join(n)).unwrap();
    let connect = |identity: Option<(&std::path::Path,)>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&good, "ca.pem")))
            .domain_name("localhost");
        if let Some((d,)) = identity {
            tls = tls.identity(Identity::from_pem(
                read(d, "client.pem"),
                read(d, "client.key"),
            ));
        }
        Endpoint::from_shared(format!("https://127.0.0.1:{}", shim.grpc_addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    type Reg =
        snp_proto::dubbo::service_name_mapping_service_client::ServiceNameMappingServiceClient<
            tonic::transport::Channel,
        >;

    // A client certificate from the configured CA: writes allowed.
    let ch = connect(Some((&good,))).connect().await.unwrap();
    Reg::new(ch.clone())
        .register_service_app_mapping(dubbo_req("default", "tls-app", &["com.Tls"]))
        .await
        .unwrap();
    snp_proto::api::mapping_service_client::MappingServiceClient::new(ch)
        .push_mappings(PushMappingsRequest {
            batch_id: "1".into(),
            source: "s".into(),
            mappings: vec![mapping("default", "com.Tls2", &["x"])],
            want_results: false,
        })
        .await
        .unwrap();

    // TLS without a client certificate: reads yes, writes no.
    let ch = connect(None).connect().await.unwrap();
    let err = Reg::new(ch.clone())
        .register_service_app_mapping(dubbo_req("default", "anon", &["com.Tls"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let got = snp_proto::api::mapping_service_client::MappingServiceClient::new(ch)
        .get_mappings(GetMappingsRequest {
            namespace: "default".into(),
            interface_names: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.mappings.len(), 2);

    // A certificate from another CA is refused at the handshake.
    let refused = match connect(Some((&rogue,))).connect().await {
        Err(_) => true,
        Ok(ch) => Reg::new(ch)
            .register_service_app_mapping(dubbo_req("default", "rogue", &["com.Tls"]))
            .await
            .is_err(),
    };
    assert!(refused);
    // Plain text is not served on a TLS port.
    let plain = Endpoint::from_shared(endpoint(shim.grpc_addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(Reg::new(ch)
            .register_service_app_mapping(dubbo_req("default", "plain", &["com.Tls"]))
            .await
            .is_err());
    }
    assert_eq!(
        on_disk(&tmp.path().join("data")),
        mappings(&[
            ("default", "com.Tls", &["tls-app"]),
            ("default", "com.Tls2", &["x"])
        ])
    );
    shim.stop().await.unwrap();
}

// On the paused clock: windows and "within" bounds are virtual time, exact under load.
#[tokio::test(start_paused = true)]
async fn without_debounce_each_registration_goes_out_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = start_paused(
        tmp.path(),
        &[
            "--debounce=false",
            "--debounce-first-check=30s",
            "--debounce-max=30s",
        ],
    )
    .await;
    let mut c = dubbo(shim.grpc_addr).await;
    let t0 = Instant::now();
    for i in 0..20 {
        c.register_service_app_mapping(dubbo_req(
            "default",
            "app",
            &[&format!("com.NoDebounce{i}")],
        ))
        .await
        .unwrap();
    }
    // The 30 s windows do not apply: everything lands right away.
    assert!(eventually(Duration::from_secs(3), || on_disk(tmp.path()).len() == 20).await);
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(metric(shim.http_addr, "snp_batches_total", &[r#"result="ok""#]).await >= 2.0);
    shim.stop().await.unwrap();
}

/// Issue 13: the token file is re-read when it changes; after the swap the old token is
/// refused (a stale token after rotation) and the new one works, with no restart.
#[tokio::test]
async fn a_rotated_token_file_replaces_the_token_without_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "first-token\n").unwrap();
    let token_arg = format!("--auth-token-file={}", token_file.display());
    let shim = start(
        &tmp.path().join("data"),
        &[&token_arg, "--debounce-first-check=10ms"],
    )
    .await;
    let ch = channel(shim.grpc_addr).await;
    let mut api = snp_proto::api::mapping_service_client::MappingServiceClient::new(ch);
    let push = |token: &str| {
        let mut r = tonic::Request::new(PushMappingsRequest {
            batch_id: "1".into(),
            source: "s".into(),
            mappings: vec![mapping("default", "com.A", &["a"])],
            want_results: false,
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    api.push_mappings(push("first-token")).await.unwrap();
    // Rotated as the kubelet does it: the new content replaces the file atomically.
    let next = tmp.path().join("token.new");
    std::fs::write(&next, "second-token\n").unwrap();
    std::fs::rename(&next, &token_file).unwrap();
    let mut swapped = false;
    for _ in 0..100 {
        if api.push_mappings(push("second-token")).await.is_ok() {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swapped, "the new token was never accepted");
    let err = api.push_mappings(push("first-token")).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "the stale token: {err:?}"
    );
    // An empty file (a rotation caught half way) keeps the current token.
    std::fs::write(&token_file, "").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.push_mappings(push("second-token")).await.unwrap();
}
