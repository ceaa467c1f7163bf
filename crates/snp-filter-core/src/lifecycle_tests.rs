//! Whole request lifecycles through [`Root`] and [`Stream`] on the mock host: what Envoy
//! would see, callback by callback, without Envoy.

use std::collections::BTreeMap;
use std::rc::Rc;

use prost::Message;
use snp_proto::api::PushMappingsRequest;
use snp_proto::dubbo::ServiceMappingRequest;
use snp_proto::{frame, Flavour};

use crate::host::{Action, LogLevel};
use crate::mock::{MockHost, MockStream, Reply};
use crate::stream::Phase;
use crate::{Root, Stream};

const ROOT: u32 = 1;
const DUBBO: &str =
    "/dubbo.networking.v1alpha1.ServiceNameMappingService/registerServiceAppMapping";
const ADMIN: &str = "/v1alpha1.ServiceNameMappingService/registerServiceAppMapping";

fn body(ns: &str, app: &str, ifaces: &[&str]) -> Vec<u8> {
    frame::encode(
        &ServiceMappingRequest {
            namespace: ns.into(),
            application_name: app.into(),
            interface_names: ifaces.iter().map(|s| s.to_string()).collect(),
        }
        .encode_to_vec(),
    )
}

/// Envoy as far as the filter can tell: one root context, streams by id, a wall clock.
struct Envoy {
    host: Rc<MockHost>,
    root: Root<MockHost>,
    streams: BTreeMap<u32, Stream<MockHost>>,
    next: u32,
}

impl Envoy {
    fn new(config: &str) -> Self {
        Self::with_env(config, &[])
    }

    /// Like [`Envoy::new`], with environment variables in the VM.
    fn with_env(config: &str, env: &[(&str, &str)]) -> Self {
        let host = Rc::new(MockHost::new(ROOT));
        let mut root = Root::new(ROOT, Rc::clone(&host));
        {
            let mut st = host.state.borrow_mut();
            st.config = config.as_bytes().to_vec();
            st.env = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        }
        assert!(root.on_configure(), "{:?}", host.state.borrow().logs);
        Self {
            host,
            root,
            streams: BTreeMap::new(),
            next: 10,
        }
    }

    fn reconfigure(&mut self, config: &str) -> bool {
        self.host.state.borrow_mut().config = config.as_bytes().to_vec();
        self.host.state.borrow_mut().effective = ROOT;
        self.root.on_configure()
    }

    fn advance(&self, ms: u64) {
        self.host.state.borrow_mut().wall_ms += ms;
    }

    fn tick(&mut self) {
        self.host.state.borrow_mut().effective = ROOT;
        self.root.on_tick();
        assert_eq!(
            self.host.state.borrow().effective,
            ROOT,
            "root not restored"
        );
    }

    /// A new stream with a gRPC call's request headers to `path`.
    fn open(&mut self, path: &str, extra: &[(&str, &str)], request_body: Vec<u8>) -> u32 {
        let id = self.next;
        self.next += 1;
        let mut s = MockStream::default();
        for (k, v) in [
            (":path", path),
            (":method", "POST"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            s.request_headers.insert(k.into(), v.as_bytes().to_vec());
        }
        s.request_body = request_body;
        self.host.state.borrow_mut().streams.insert(id, s);
        self.streams.insert(id, self.root.create_stream(id));
        id
    }

    fn on<T>(&mut self, id: u32, f: impl FnOnce(&mut Stream<MockHost>) -> T) -> T {
        self.host.state.borrow_mut().effective = id;
        let stream = self.streams.get_mut(&id).expect("open stream");
        f(stream)
    }

    fn request_headers(&mut self, id: u32, end_of_stream: bool) -> Action {
        self.host.state.borrow_mut().in_request_headers = true;
        let a = self.on(id, |s| s.on_request_headers(end_of_stream));
        self.host.state.borrow_mut().in_request_headers = false;
        a
    }

    fn request_body(&mut self, id: u32, end_of_stream: bool) -> Action {
        let len = self.host.state.borrow().streams[&id].request_body.len();
        self.on(id, |s| s.on_request_body(len, end_of_stream))
    }

    /// A complete unary call: headers, then the whole body.
    fn call(&mut self, path: &str, request_body: Vec<u8>) -> (u32, Action) {
        let id = self.open(path, &[], request_body);
        assert_eq!(self.request_headers(id, false), Action::Pause);
        let a = self.request_body(id, true);
        (id, a)
    }

    /// The ack listener's answer (200, the empty frame, its marker) flows back through
    /// the filter.
    fn ack_listener_answers(&mut self, id: u32) {
        {
            let mut st = self.host.state.borrow_mut();
            let s = st.streams.get_mut(&id).expect("stream");
            for (k, v) in [
                (":status", "200"),
                ("content-type", "application/octet-stream"),
                ("content-length", "5"),
                ("x-snp-acked", "1"),
            ] {
                s.response_headers.insert(k.into(), v.as_bytes().to_vec());
            }
            s.response_body = vec![0; 5];
        }
        assert_eq!(
            self.on(id, |s| s.on_response_headers(false)),
            Action::Continue
        );
        assert_eq!(
            self.on(id, |s| s.on_response_body(5, true)),
            Action::Continue
        );
    }

    /// The client resets the stream: Envoy forgets it and destroys its context.
    fn reset(&mut self, id: u32) {
        self.host
            .state
            .borrow_mut()
            .streams
            .get_mut(&id)
            .expect("stream")
            .gone = true;
        self.streams.remove(&id);
    }

    fn complete(&mut self, token: u32, status: u32) {
        self.complete_with(token, status, Vec::new());
    }

    /// A callout finishes with `status` and response message `response`.
    fn complete_with(&mut self, token: u32, status: u32, response: Vec<u8>) {
        let size = response.len();
        {
            let mut st = self.host.state.borrow_mut();
            st.effective = ROOT;
            st.grpc_response = response;
        }
        self.root.on_grpc_call_response(token, status, size);
        assert_eq!(
            self.host.state.borrow().effective,
            ROOT,
            "root not restored"
        );
    }

    fn reply(&self, id: u32) -> Option<Reply> {
        self.host.state.borrow().streams[&id].reply.clone()
    }

    fn phase(&self, id: u32) -> Phase {
        self.streams[&id].phase().clone()
    }

    /// Whether the filter routed the stream to the ack listener (filter state `snp_ack`).
    fn ack_routed(&self, id: u32) -> bool {
        self.host.state.borrow().streams[&id]
            .properties
            .get("snp_ack")
            .is_some_and(|v| v == b"1")
    }

    fn request_header(&self, id: u32, name: &str) -> Option<String> {
        self.host.state.borrow().streams[&id]
            .request_headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn calls(&self) -> usize {
        self.host.state.borrow().calls.len()
    }

    /// The `n`th batch sent: its token and its request.
    fn batch(&self, n: usize) -> (u32, PushMappingsRequest) {
        let st = self.host.state.borrow();
        let c = &st.calls[n];
        (
            c.token,
            PushMappingsRequest::decode(c.message.as_slice()).expect("PushMappingsRequest"),
        )
    }

    fn metric(&self, name: &str) -> i64 {
        self.host.metric(name)
    }

    /// Nothing pending, in flight or held: `on_done` completes at once.
    fn root_is_idle(&mut self) -> bool {
        self.host.state.borrow_mut().effective = ROOT;
        self.root.on_done()
    }
}

fn mappings(req: &PushMappingsRequest) -> Vec<(String, String, Vec<String>)> {
    req.mappings
        .iter()
        .map(|m| {
            (
                m.namespace.clone(),
                m.interface_name.clone(),
                m.application_names.clone(),
            )
        })
        .collect()
}

fn grpc(status: u32) -> impl Fn(&Option<Reply>) -> bool {
    move |r| matches!(r, Some(Reply::Grpc { status: s, .. }) if *s == status)
}

#[test]
fn immediate_dubbo_call_is_answered_in_the_proxy_and_forwarded_in_a_batch() {
    let mut envoy = Envoy::new(r#"{"retry_jitter": 0, "auth_token": "s3cret"}"#);
    assert_eq!(
        envoy.host.state.borrow().tick,
        Some(core::time::Duration::from_millis(50))
    );
    let (id, action) = envoy.call(
        DUBBO,
        body(
            "default",
            "demo-provider",
            &["org.apache.dubbo.demo.DemoService"],
        ),
    );
    // Valid and queued: on to the ack route.
    assert_eq!(action, Action::Continue);
    assert_eq!(envoy.reply(id), None);
    assert_eq!(
        envoy.request_header(id, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert!(envoy.ack_routed(id));
    assert_eq!(envoy.request_header(id, "x-snp-ack"), None);
    assert_eq!(envoy.metric("snp.registrations.ok"), 1);

    envoy.ack_listener_answers(id);
    {
        let st = envoy.host.state.borrow();
        let s = &st.streams[&id];
        assert_eq!(
            s.response_headers.get("content-type").map(Vec::as_slice),
            Some(&b"application/grpc"[..])
        );
        assert!(!s.response_headers.contains_key("content-length"));
        assert!(!s.response_headers.contains_key("x-snp-acked"));
        assert_eq!(s.response_body, Flavour::Dubbo.ok_response_frame());
        assert_eq!(
            s.response_trailers,
            vec![("grpc-status".into(), "0".into())]
        );
    }
    assert_eq!(envoy.phase(id), Phase::Done);

    // The batch waits for the first check (200 ms after the burst), then goes out.
    envoy.advance(150);
    envoy.tick();
    assert_eq!(envoy.calls(), 0);
    assert_eq!(envoy.metric("snp.pending_keys"), 1);
    envoy.advance(60);
    envoy.tick();
    assert_eq!(envoy.calls(), 1);
    let (token, req) = envoy.batch(0);
    {
        let st = envoy.host.state.borrow();
        let c = &st.calls[0];
        assert_eq!(
            (c.cluster.as_str(), c.service.as_str(), c.method.as_str()),
            ("snp_shim", "snp.v1.MappingService", "PushMappings")
        );
        assert_eq!(
            c.metadata,
            vec![("authorization".into(), b"Bearer s3cret".to_vec())]
        );
        assert_eq!(c.timeout, core::time::Duration::from_secs(5));
    }
    assert_eq!(
        mappings(&req),
        vec![(
            "default".into(),
            "org.apache.dubbo.demo.DemoService".into(),
            vec!["demo-provider".into()]
        )]
    );
    assert!(req.source.starts_with("envoy/"), "{}", req.source);
    assert_eq!(envoy.metric("snp.batches.sent"), 1);
    envoy.complete(token, 0);
    assert_eq!(envoy.metric("snp.batches.acked"), 1);
    assert_eq!(envoy.metric("snp.mappings.acked"), 1);
    envoy.tick();
    assert_eq!(envoy.metric("snp.pending_keys"), 0);
}

/// The `authorization` metadata of the first batch sent after one valid registration.
fn first_batch_authorization(envoy: &mut Envoy) -> Option<Vec<u8>> {
    let (id, _) = envoy.call(DUBBO, body("default", "app", &["a.B"]));
    envoy.ack_listener_answers(id);
    envoy.advance(300);
    envoy.tick();
    assert_eq!(envoy.calls(), 1);
    let st = envoy.host.state.borrow();
    st.calls[0]
        .metadata
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone())
}

#[test]
fn the_token_comes_from_the_vms_environment() {
    let config = r#"{"auth_token_env": "SNP_SHIM_TOKEN", "retry_jitter": 0}"#;
    // Set (a Secret's file content, with its newline): sent with every batch.
    let mut envoy = Envoy::with_env(config, &[("SNP_SHIM_TOKEN", "t0ken\n")]);
    assert_eq!(
        first_batch_authorization(&mut envoy).as_deref(),
        Some(&b"Bearer t0ken"[..])
    );
    // Unset or empty (a sidecar): no token, and the configuration still loads.
    for env in [&[][..], &[("SNP_SHIM_TOKEN", " ")][..]] {
        let mut envoy = Envoy::with_env(config, env);
        assert!(envoy
            .host
            .logged(LogLevel::Info, "batches are sent without a token"));
        assert_eq!(first_batch_authorization(&mut envoy), None);
    }
    // Not a header value: the configuration is refused, naming the variable only.
    let mut envoy = Envoy::new("{}");
    envoy.host.state.borrow_mut().env =
        [("SNP_SHIM_TOKEN".to_owned(), "a\u{7f}b".to_owned())].into();
    assert!(!envoy.reconfigure(config));
    assert!(envoy
        .host
        .logged(LogLevel::Error, "SNP_SHIM_TOKEN (auth_token_env)"));
}

#[test]
fn admin_call_with_request_trailers_gets_the_admin_answer() {
    let mut envoy = Envoy::new("");
    let b = body("shop", "cart", &["com.shop.Cart", "com.shop.Order"]);
    let id = envoy.open(ADMIN, &[], b);
    assert_eq!(envoy.request_headers(id, false), Action::Pause);
    // The body arrives without end of stream; the trailers end the request.
    assert_eq!(envoy.request_body(id, false), Action::Pause);
    assert!(matches!(envoy.phase(id), Phase::Reading { .. }));
    assert_eq!(envoy.on(id, |s| s.on_request_trailers()), Action::Continue);
    assert_eq!(
        envoy.phase(id),
        Phase::Forwarded {
            flavour: Flavour::Admin
        }
    );
    envoy.ack_listener_answers(id);
    let st = envoy.host.state.borrow();
    let s = &st.streams[&id];
    assert_eq!(s.response_body, Flavour::Admin.ok_response_frame());
    assert_ne!(s.response_body, Flavour::Dubbo.ok_response_frame());
    assert_eq!(
        s.response_trailers,
        vec![("grpc-status".into(), "0".into())]
    );
}

#[test]
fn other_traffic_and_other_answers_are_untouched() {
    let mut envoy = Envoy::new("");
    let id = envoy.open("/grpc.health.v1.Health/Check", &[], vec![0; 5]);
    assert_eq!(envoy.request_headers(id, false), Action::Continue);
    assert_eq!(envoy.request_body(id, true), Action::Continue);
    assert_eq!(envoy.phase(id), Phase::Pass);
    // A registration whose answer is not the ack listener's (a timeout, no route).
    let (id, _) = envoy.call(DUBBO, body("default", "a", &["x.A"]));
    envoy
        .host
        .state
        .borrow_mut()
        .streams
        .get_mut(&id)
        .unwrap()
        .response_headers
        .insert(":status".into(), b"504".to_vec());
    assert_eq!(
        envoy.on(id, |s| s.on_response_headers(false)),
        Action::Continue
    );
    assert_eq!(envoy.phase(id), Phase::Done);
    assert_eq!(
        envoy.on(id, |s| s.on_response_body(3, true)),
        Action::Continue
    );
    assert!(envoy.host.state.borrow().streams[&id]
        .response_trailers
        .is_empty());
}

#[test]
fn bad_input_gets_its_own_local_reply_and_never_reaches_the_ack_route() {
    let mut envoy = Envoy::new("");
    let good = body("default", "app", &["a.B"]);

    let (id, a) = envoy.call(DUBBO, good[..good.len() - 2].to_vec());
    assert_eq!(a, Action::Pause);
    assert!(grpc(3)(&envoy.reply(id)));
    assert!(!envoy.ack_routed(id));
    assert_eq!(envoy.metric("snp.registrations.invalid"), 1);
    assert_eq!(envoy.metric("snp.invalid.truncated_frame"), 1);

    let (id, _) = envoy.call(DUBBO, body("Not_A_Label", "app", &["a.B"]));
    match envoy.reply(id) {
        Some(Reply::Grpc { status: 3, message }) => {
            assert!(message.contains("Not_A_Label"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(envoy.metric("snp.invalid.invalid_namespace"), 1);

    // Not gRPC at all: HTTP 415, decided on the headers.
    let id = envoy.open(DUBBO, &[("content-type", "application/json")], good.clone());
    assert_eq!(envoy.request_headers(id, false), Action::Pause);
    assert!(matches!(
        envoy.reply(id),
        Some(Reply::Http { status: 415, .. })
    ));
    assert_eq!(envoy.metric("snp.invalid.not_grpc"), 1);
    // Nothing more happens to an answered stream.
    assert_eq!(envoy.request_body(id, true), Action::Pause);

    // Compressed: UNIMPLEMENTED before the body is read.
    let id = envoy.open(DUBBO, &[("grpc-encoding", "gzip")], good.clone());
    assert_eq!(envoy.request_headers(id, false), Action::Pause);
    assert!(grpc(12)(&envoy.reply(id)));

    // Oversized: refused on the frame header, before the rest is buffered.
    let id = envoy.open(DUBBO, &[], vec![0, 0, 1, 0, 0, 1, 2]);
    assert_eq!(envoy.request_headers(id, false), Action::Pause);
    assert_eq!(envoy.request_body(id, false), Action::Pause);
    assert!(grpc(8)(&envoy.reply(id)));
    assert_eq!(envoy.metric("snp.invalid.too_large"), 1);

    // No body at all (end of stream on the headers).
    let id = envoy.open(DUBBO, &[], vec![]);
    assert_eq!(envoy.request_headers(id, true), Action::Pause);
    assert!(grpc(3)(&envoy.reply(id)));

    // Nothing was queued by any of them.
    envoy.advance(5000);
    envoy.tick();
    assert_eq!(envoy.calls(), 0);
}

#[test]
fn namespace_policy_peer_denies_and_node_rewrites() {
    let mut envoy = Envoy::new(r#"{"namespace_policy": "peer"}"#);
    envoy.host.state.borrow_mut().properties.insert(
        vec!["connection".into(), "uri_san_peer_certificate".into()],
        b"spiffe://cluster.local/ns/shop/sa/default".to_vec(),
    );
    let (id, _) = envoy.call(DUBBO, body("mapping", "app", &["a.B"]));
    assert!(grpc(7)(&envoy.reply(id)));
    assert_eq!(envoy.metric("snp.rejected.namespace_mismatch"), 1);
    let (id, a) = envoy.call(DUBBO, body("shop", "app", &["a.B"]));
    assert_eq!((a, envoy.reply(id)), (Action::Continue, None));

    let host = Rc::new(MockHost::new(ROOT));
    host.state.borrow_mut().properties.insert(
        vec![
            "xds".into(),
            "node".into(),
            "metadata".into(),
            "NAMESPACE".into(),
        ],
        b"shop".to_vec(),
    );
    host.state.borrow_mut().config =
        br#"{"namespace_policy": "node", "on_mismatch": "rewrite", "retry_jitter": 0}"#.to_vec();
    let mut root = Root::new(ROOT, Rc::clone(&host));
    assert!(root.on_configure());
    let mut envoy = Envoy {
        host,
        root,
        streams: BTreeMap::new(),
        next: 10,
    };
    let (id, a) = envoy.call(DUBBO, body("mapping", "app", &["a.B"]));
    assert_eq!((a, envoy.reply(id)), (Action::Continue, None));
    assert_eq!(envoy.metric("snp.registrations.rewritten"), 1);
    envoy.advance(300);
    envoy.tick();
    let (_, req) = envoy.batch(0);
    assert_eq!(mappings(&req)[0].0, "shop");
}

#[test]
fn durable_calls_are_held_until_the_shim_acknowledges_them() {
    let mut envoy = Envoy::new(r#"{"ack_mode": "durable", "retry_jitter": 0}"#);
    let (id, a) = envoy.call(DUBBO, body("default", "a", &["x.A"]));
    assert_eq!(a, Action::Pause);
    assert_eq!(
        envoy.phase(id),
        Phase::Held {
            flavour: Flavour::Dubbo
        }
    );
    assert_eq!(envoy.metric("snp.registrations.held"), 1);
    assert!(!envoy.ack_routed(id));
    envoy.advance(250);
    envoy.tick();
    assert_eq!(envoy.metric("snp.held_replies"), 1);
    let (token, _) = envoy.batch(0);
    assert!(!envoy.host.state.borrow().streams[&id].resumed);
    envoy.complete(token, 0);
    // Released: routed to the ack listener and resumed by the root context.
    {
        let st = envoy.host.state.borrow();
        let s = &st.streams[&id];
        assert!(s.resumed);
        assert_eq!(
            s.properties.get("snp_ack").map(Vec::as_slice),
            Some(&b"1"[..])
        );
    }
    assert_eq!(envoy.metric("snp.registrations.ok"), 1);
    envoy.ack_listener_answers(id);
    assert_eq!(
        envoy.host.state.borrow().streams[&id].response_trailers,
        vec![("grpc-status".into(), "0".into())]
    );
    envoy.tick();
    assert_eq!(envoy.metric("snp.held_replies"), 0);
}

#[test]
fn durable_timeout_answers_unavailable_and_the_mapping_is_still_delivered() {
    let mut envoy = Envoy::new(
        r#"{"ack_mode": "durable", "durable_timeout_ms": 400, "push_timeout_ms": 400, "retry_jitter": 0, "retry_base_ms": 500}"#,
    );
    let (id, _) = envoy.call(DUBBO, body("default", "a", &["x.A"]));
    envoy.advance(250);
    envoy.tick();
    let (token, _) = envoy.batch(0);
    // The callout times out (Envoy reports DEADLINE_EXCEEDED).
    envoy.complete(token, 4);
    assert_eq!(envoy.metric("snp.batches.failed"), 1);
    assert!(envoy
        .host
        .logged(LogLevel::Warn, "failed with gRPC status 4"));
    assert_eq!(envoy.reply(id), None);
    envoy.advance(100);
    envoy.tick();
    assert_eq!(envoy.reply(id), None, "399 ms: still held");
    envoy.advance(60);
    envoy.tick();
    match envoy.reply(id) {
        Some(Reply::Grpc {
            status: 14,
            message,
        }) => {
            assert!(message.contains("not yet acknowledged"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(envoy.metric("snp.registrations.unavailable"), 1);
    assert_eq!(envoy.metric("snp.rejected.not_acknowledged"), 1);
    assert_eq!(envoy.metric("snp.held_replies"), 0);
    assert_eq!(envoy.metric("snp.pending_keys"), 1);
    // The retry (500 ms << 1 after the failure, at 1,250 ms) carries the mapping.
    envoy.advance(700);
    envoy.tick();
    assert_eq!(envoy.calls(), 1, "1,110 ms: still backing off");
    envoy.advance(150);
    envoy.tick();
    assert_eq!(envoy.calls(), 2);
    let (token, req) = envoy.batch(1);
    assert_eq!(
        mappings(&req),
        vec![("default".into(), "x.A".into(), vec!["a".into()])]
    );
    envoy.complete(token, 0);
    assert!(
        !envoy.host.state.borrow().streams[&id].resumed,
        "answered once"
    );
}

#[test]
fn a_stream_reset_during_a_hold_is_forgotten() {
    let mut envoy = Envoy::new(r#"{"ack_mode": "durable", "retry_jitter": 0}"#);
    let (gone, _) = envoy.call(DUBBO, body("default", "a", &["x.A"]));
    let (kept, _) = envoy.call(DUBBO, body("default", "b", &["x.A"]));
    envoy.tick();
    assert_eq!(envoy.metric("snp.held_replies"), 2);
    envoy.reset(gone);
    envoy.tick();
    assert_eq!(envoy.metric("snp.held_replies"), 1);
    envoy.advance(250);
    envoy.tick();
    let (token, req) = envoy.batch(0);
    // The mapping of the reset call is still delivered: it was accepted.
    assert_eq!(req.mappings[0].application_names, vec!["a", "b"]);
    envoy.complete(token, 0);
    assert!(envoy.host.state.borrow().streams[&kept].resumed);
    assert_eq!(envoy.metric("snp.registrations.ok"), 1);
    envoy.tick();
    assert_eq!(envoy.metric("snp.held_replies"), 0);
}

#[test]
fn reconfiguration_with_mappings_pending_keeps_them() {
    let mut envoy = Envoy::new(r#"{"retry_jitter": 0}"#);
    envoy.call(DUBBO, body("default", "a", &["x.A"]));
    assert!(envoy.reconfigure(r#"{"shim_cluster": "other", "tick_ms": 20}"#));
    assert!(envoy
        .host
        .logged(LogLevel::Warn, "reconfigured while mappings are pending"));
    assert_eq!(
        envoy.host.state.borrow().tick,
        Some(core::time::Duration::from_millis(20))
    );
    envoy.advance(250);
    envoy.tick();
    let (token, req) = envoy.batch(0);
    assert_eq!(envoy.host.state.borrow().calls[0].cluster, "other");
    assert_eq!(
        mappings(&req),
        vec![("default".into(), "x.A".into(), vec!["a".into()])]
    );
    envoy.complete(token, 0);

    // Idle now: a stream that started before the next reconfiguration still reaches the
    // engine this root context drives.
    let id = envoy.open(DUBBO, &[], body("default", "b", &["x.B"]));
    assert_eq!(envoy.request_headers(id, false), Action::Pause);
    assert!(envoy.reconfigure(r#"{"debounce_after_ms": 10, "first_check_ms": 10}"#));
    assert_eq!(envoy.request_body(id, true), Action::Continue);
    envoy.advance(1000);
    envoy.tick();
    assert_eq!(envoy.calls(), 2);
    let (_, req) = envoy.batch(1);
    assert_eq!(
        mappings(&req),
        vec![("default".into(), "x.B".into(), vec!["b".into()])]
    );

    // A refused configuration is reported and changes nothing.
    assert!(!envoy.reconfigure(r#"{"namespace_polcy": "node"}"#));
    assert!(envoy.host.logged(LogLevel::Error, "namespace_polcy"));
}

#[test]
fn batches_that_cannot_be_sent_or_fail_are_retried() {
    let mut envoy = Envoy::new(r#"{"retry_jitter": 0, "retry_base_ms": 100}"#);
    envoy.call(DUBBO, body("default", "a", &["x.A"]));
    envoy.host.state.borrow_mut().dispatch_error = Some("BadArgument".into());
    envoy.advance(250);
    envoy.tick();
    assert_eq!(envoy.calls(), 0);
    assert_eq!(envoy.metric("snp.batches.failed"), 1);
    assert!(envoy.host.logged(LogLevel::Warn, "cannot send batch"));
    envoy.host.state.borrow_mut().dispatch_error = None;
    // Backoff: 100 ms << 1.
    envoy.advance(150);
    envoy.tick();
    assert_eq!(envoy.calls(), 0);
    envoy.advance(100);
    envoy.tick();
    assert_eq!(envoy.calls(), 1);
    let (token, _) = envoy.batch(0);
    // The shim answers with an error status: merged back, retried.
    envoy.complete(token, 14);
    assert_eq!(envoy.metric("snp.batches.failed"), 2);
    envoy.advance(1000);
    envoy.tick();
    let (token, req) = envoy.batch(1);
    assert_eq!(
        mappings(&req),
        vec![("default".into(), "x.A".into(), vec!["a".into()])]
    );
    envoy.complete(token, 0);
    assert_eq!(envoy.metric("snp.batches.acked"), 1);
    // An unknown token (a stale callout) changes nothing.
    envoy.complete(999, 0);
    assert_eq!(envoy.metric("snp.batches.acked"), 1);
}

#[test]
fn stopping_flushes_pending_mappings_then_reports_done() {
    let mut envoy = Envoy::new(
        r#"{"debounce_after_ms": 5000, "debounce_max_ms": 10000, "first_check_ms": 5000}"#,
    );
    envoy.call(DUBBO, body("default", "a", &["x.A"]));
    envoy.host.state.borrow_mut().effective = ROOT;
    assert!(!envoy.root.on_done(), "pending: not done yet");
    // Sent at once, whatever the debounce windows say.
    assert_eq!(envoy.calls(), 1);
    assert_eq!(envoy.host.state.borrow().done, 0);
    let (token, _) = envoy.batch(0);
    envoy.complete(token, 0);
    assert_eq!(envoy.host.state.borrow().done, 1);

    let mut idle = Envoy::new("");
    assert!(idle.root.on_done());
}

#[test]
fn an_unconfigured_root_passes_everything_through() {
    let host = Rc::new(MockHost::new(ROOT));
    let root = Root::new(ROOT, Rc::clone(&host));
    let mut envoy = Envoy {
        host,
        root,
        streams: BTreeMap::new(),
        next: 10,
    };
    let id = envoy.open(DUBBO, &[], body("default", "a", &["x.A"]));
    assert_eq!(envoy.request_headers(id, false), Action::Continue);
    assert_eq!(envoy.request_body(id, true), Action::Continue);
    assert_eq!(envoy.reply(id), None);
    envoy.tick();
}

mod random_sequences {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A new stream: path (0 dubbo, 1 admin, 2 other), body kind, extra header kind.
        Open(u8, u8, u8),
        RequestHeaders(usize, bool),
        RequestBody(usize, bool),
        RequestTrailers(usize),
        /// The response arrives: from the ack listener or not.
        Response(usize, bool),
        Reset(usize),
        Tick(u16),
        /// The oldest outstanding callout completes with this status.
        Complete(u8),
        DispatchFails(bool),
        Reconfigure(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..3, 0u8..4, 0u8..3).prop_map(|(p, b, h)| Op::Open(p, b, h)),
            3 => (0usize..8, any::<bool>()).prop_map(|(i, e)| Op::RequestHeaders(i, e)),
            3 => (0usize..8, any::<bool>()).prop_map(|(i, e)| Op::RequestBody(i, e)),
            1 => (0usize..8).prop_map(Op::RequestTrailers),
            2 => (0usize..8, any::<bool>()).prop_map(|(i, a)| Op::Response(i, a)),
            1 => (0usize..8).prop_map(Op::Reset),
            3 => (0u16..1500).prop_map(Op::Tick),
            2 => prop_oneof![Just(0u8), Just(4), Just(14)].prop_map(Op::Complete),
            1 => any::<bool>().prop_map(Op::DispatchFails),
            1 => (0u8..3).prop_map(Op::Reconfigure),
        ]
    }

    const CONFIGS: [&str; 3] = [
        r#"{"retry_jitter": 0}"#,
        r#"{"ack_mode": "durable", "durable_timeout_ms": 700, "push_timeout_ms": 700, "retry_jitter": 0}"#,
        r#"{"namespace_policy": "peer", "on_mismatch": "rewrite", "max_batch_keys": 1}"#,
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever order Envoy's callbacks come in, the filter never does what the SDK
        /// panics on (the mock fails the test then), never answers a stream twice, and
        /// delivers what it accepted once the shim answers.
        #[test]
        fn random_callback_sequences_keep_the_filter_sound(
            config in 0usize..3,
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let mut envoy = Envoy::new(CONFIGS[config]);
            envoy.host.state.borrow_mut().properties.insert(
                vec!["connection".into(), "uri_san_peer_certificate".into()],
                b"spiffe://td/ns/shop/sa/x".to_vec(),
            );
            let mut ids: Vec<u32> = Vec::new();
            let mut headers_seen: std::collections::BTreeSet<u32> = Default::default();
            let mut answered = 0usize;
            for op in ops {
                let pick = |i: usize, ids: &Vec<u32>| ids.get(i % ids.len().max(1)).copied();
                match op {
                    Op::Open(p, b, h) => {
                        let path = [DUBBO, ADMIN, "/other.Svc/Call"][p as usize];
                        let b = match b {
                            0 => body("default", "a", &["x.A", "x.B"]),
                            1 => body("shop", "b", &["x.C"]),
                            2 => vec![0, 0, 0, 0, 9, 1],
                            _ => vec![0, 0, 1, 0, 0],
                        };
                        let extra: &[(&str, &str)] = match h {
                            0 => &[],
                            1 => &[("grpc-encoding", "gzip")],
                            _ => &[("content-length", "12")],
                        };
                        ids.push(envoy.open(path, extra, b));
                    }
                    Op::RequestHeaders(i, eos) => {
                        if let Some(id) = pick(i, &ids) {
                            if headers_seen.insert(id) {
                                envoy.request_headers(id, eos);
                            }
                        }
                    }
                    Op::RequestBody(i, eos) => {
                        if let Some(id) = pick(i, &ids).filter(|id| headers_seen.contains(id)) {
                            envoy.request_body(id, eos);
                        }
                    }
                    Op::RequestTrailers(i) => {
                        if let Some(id) = pick(i, &ids).filter(|id| headers_seen.contains(id)) {
                            envoy.on(id, |s| s.on_request_trailers());
                        }
                    }
                    Op::Response(i, from_ack) => {
                        if let Some(id) = pick(i, &ids).filter(|id| headers_seen.contains(id)) {
                            if from_ack {
                                envoy.ack_listener_answers(id);
                            } else {
                                envoy.on(id, |s| s.on_response_headers(false));
                                envoy.on(id, |s| s.on_response_body(0, true));
                            }
                        }
                    }
                    Op::Reset(i) => {
                        if let Some(id) = pick(i, &ids) {
                            envoy.reset(id);
                            ids.retain(|x| *x != id);
                        }
                    }
                    Op::Tick(ms) => {
                        envoy.advance(u64::from(ms));
                        envoy.tick();
                    }
                    Op::Complete(status) => {
                        let next = envoy.host.state.borrow().calls.get(answered).map(|c| c.token);
                        if let Some(token) = next {
                            answered += 1;
                            envoy.complete(token, u32::from(status));
                        }
                    }
                    Op::DispatchFails(fail) => {
                        envoy.host.state.borrow_mut().dispatch_error = fail.then(|| "BadArgument".to_owned());
                    }
                    Op::Reconfigure(c) => {
                        prop_assert!(envoy.reconfigure(CONFIGS[c as usize]));
                    }
                }
            }
            // The shim comes back and answers everything OK: nothing stays pending or held.
            envoy.host.state.borrow_mut().dispatch_error = None;
            for _ in 0..400 {
                let next = envoy.host.state.borrow().calls.get(answered).map(|c| c.token);
                if let Some(token) = next {
                    answered += 1;
                    envoy.complete(token, 0);
                }
                envoy.advance(250);
                envoy.tick();
            }
            prop_assert_eq!(envoy.metric("snp.pending_keys"), 0);
            prop_assert_eq!(envoy.metric("snp.held_replies"), 0);
            prop_assert!(envoy.host.state.borrow().calls.len() == answered);
            // Every call routed to the ack listener (answered OK) was delivered.
            let mut sent: std::collections::BTreeSet<(String, String, String)> = Default::default();
            for n in 0..answered {
                for (ns, iface, apps) in mappings(&envoy.batch(n).1) {
                    for app in apps {
                        sent.insert((ns.clone(), iface.clone(), app));
                    }
                }
            }
            let st = envoy.host.state.borrow();
            for s in st.streams.values().filter(|s| s.properties.contains_key("snp_ack")) {
                let req = ServiceMappingRequest::decode(&s.request_body[5..]).unwrap();
                // Under the peer policy (the stream's configuration) the namespace was
                // rewritten to the caller's.
                for iface in &req.interface_names {
                    let key = |ns: &str| (ns.to_owned(), iface.clone(), req.application_name.clone());
                    prop_assert!(
                        sent.contains(&key(&req.namespace)) || sent.contains(&key("shop")),
                        "answered OK but never sent: {:?}", key(&req.namespace)
                    );
                }
            }
        }
    }
}

/// A query string does not hide a registration, a spelling of the path that a
/// proxy could route to the method is refused, and a client's ack header selects nothing.
#[test]
fn path_variants_are_registrations_or_refused_and_the_ack_header_is_inert() {
    let host = Rc::new(MockHost::new(ROOT));
    host.state.borrow_mut().properties.insert(
        vec![
            "xds".into(),
            "node".into(),
            "metadata".into(),
            "NAMESPACE".into(),
        ],
        b"shop".to_vec(),
    );
    host.state.borrow_mut().config = br#"{"namespace_policy": "node"}"#.to_vec();
    let mut root = Root::new(ROOT, Rc::clone(&host));
    assert!(root.on_configure());
    let mut envoy = Envoy {
        host,
        root,
        streams: BTreeMap::new(),
        next: 10,
    };
    for suffix in ["?x=1", "?", "#f"] {
        let (id, _) = envoy.call(
            &format!("{DUBBO}{suffix}"),
            body("kube-system", "app", &["a.B"]),
        );
        assert!(grpc(7)(&envoy.reply(id)), "{suffix}: {:?}", envoy.reply(id));
        assert!(!envoy.ack_routed(id));
    }
    for variant in [
        DUBBO.replacen("/register", "//register", 1),
        DUBBO.replacen('.', "%2E", 1),
        DUBBO.to_ascii_lowercase(),
        format!("{ADMIN}/"),
    ] {
        let id = envoy.open(&variant, &[], body("shop", "app", &["a.B"]));
        assert_eq!(envoy.request_headers(id, false), Action::Pause);
        assert!(
            grpc(3)(&envoy.reply(id)),
            "{variant}: {:?}",
            envoy.reply(id)
        );
        assert!(!envoy.ack_routed(id));
    }
    // A forged ack header on a call the filter accepts is removed; on one it refuses, the
    // call never reaches a route.
    let id = envoy.open(
        &format!("{DUBBO}?x=1"),
        &[("x-snp-ack", "1")],
        body("shop", "app", &["a.B"]),
    );
    assert_eq!(envoy.request_headers(id, false), Action::Pause);
    assert_eq!(envoy.request_body(id, true), Action::Continue);
    assert!(envoy.ack_routed(id));
    assert_eq!(envoy.request_header(id, "x-snp-ack"), None);
}

/// The shim's per-mapping answer: `(status, reason, message)` per mapping, in order.
fn results(rs: &[(i32, &str, &str)]) -> Vec<u8> {
    use snp_proto::api::{MappingResult, PushMappingsResponse};
    PushMappingsResponse {
        batch_id: String::new(),
        unchanged: 0,
        written: 0,
        results: rs
            .iter()
            .map(|(status, reason, message)| MappingResult {
                status: *status,
                reason: (*reason).into(),
                message: (*message).into(),
            })
            .collect(),
    }
    .encode_to_vec()
}

const STORED: i32 = 1;
const PENDING: i32 = 2;
const REJECTED: i32 = 3;

fn position(req: &PushMappingsRequest, iface: &str) -> usize {
    position_of(req, iface).expect("in the batch")
}

fn position_of(req: &PushMappingsRequest, iface: &str) -> Option<usize> {
    req.mappings.iter().position(|m| m.interface_name == iface)
}

#[test]
fn a_rejected_mapping_is_dropped_counted_and_its_callers_told_while_the_rest_is_stored() {
    let mut envoy = Envoy::new(r#"{"ack_mode": "durable", "retry_jitter": 0}"#);
    let (good, _) = envoy.call(DUBBO, body("default", "a", &["x.Good"]));
    let (bad, _) = envoy.call(DUBBO, body("missing", "a", &["x.Bad"]));
    envoy.advance(250);
    envoy.tick();
    let (token, req) = envoy.batch(0);
    assert!(req.want_results, "the filter asks for per-mapping results");
    assert_eq!(req.mappings.len(), 2);
    let msg = "missing/x.Bad cannot be stored: namespace missing not found";
    let mut rs = vec![(STORED, "", ""); 2];
    rs[position(&req, "x.Bad")] = (REJECTED, "namespace_not_found", msg);
    envoy.complete_with(token, 0, results(&rs));
    // The good one is released; the bad one is answered as the shim answers it.
    assert!(envoy.host.state.borrow().streams[&good].resumed);
    match envoy.reply(bad) {
        Some(Reply::Grpc { status: 9, message }) => assert_eq!(
            message,
            format!("{msg} (reason namespace_not_found; the shim retries it on a slow schedule; see /parked)")
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(envoy.metric("snp.mappings.rejected"), 1);
    assert_eq!(envoy.metric("snp.registrations.rejected"), 1);
    assert_eq!(envoy.metric("snp.rejected.store_rejected"), 1);
    assert_eq!(envoy.metric("snp.pending_keys"), 0);
    assert_eq!(envoy.metric("snp.parked_keys"), 1);
    assert_eq!(envoy.metric("snp.held_replies"), 0);
    assert_eq!(envoy.metric("snp.mappings.acked"), 1);
    let warned = |e: &Envoy| {
        e.host
            .state
            .borrow()
            .logs
            .iter()
            .filter(|(l, m)| *l == LogLevel::Warn && m.contains("rejected mapping missing/x.Bad"))
            .count()
    };
    assert_eq!(warned(&envoy), 1);
    // A storm of repeats for the rejected key is answered at once, in either mode, and
    // sends nothing: it is never retried in a loop.
    for app in ["a", "b", "c"] {
        let (id, _) = envoy.call(DUBBO, body("missing", app, &["x.Bad"]));
        assert!(grpc(9)(&envoy.reply(id)), "{:?}", envoy.reply(id));
    }
    for _ in 0..100 {
        envoy.advance(1000);
        envoy.tick();
    }
    assert_eq!(envoy.calls(), 1, "nothing resent within the probe interval");
    assert_eq!(envoy.metric("snp.registrations.rejected"), 4);
    assert_eq!(warned(&envoy), 1, "logged once per key");
    assert!(envoy.root_is_idle());
}

#[test]
fn pending_mappings_are_retried_alone_and_stored_ones_are_not_resent() {
    let mut envoy = Envoy::new(r#"{"retry_jitter": 0, "retry_base_ms": 500}"#);
    envoy.call(DUBBO, body("default", "a", &["x.A", "x.B"]));
    envoy.advance(250);
    envoy.tick();
    let (token, req) = envoy.batch(0);
    let mut rs = vec![(STORED, "", ""); 2];
    rs[position(&req, "x.B")] = (PENDING, "", "");
    envoy.complete_with(token, 0, results(&rs));
    assert_eq!(envoy.metric("snp.pending_keys"), 1);
    assert_eq!(envoy.metric("snp.mappings.acked"), 1);
    // Its own backoff: 500 ms << 1.
    envoy.advance(900);
    envoy.tick();
    assert_eq!(envoy.calls(), 1);
    envoy.advance(200);
    envoy.tick();
    let (token, req) = envoy.batch(1);
    assert_eq!(
        mappings(&req),
        vec![("default".into(), "x.B".into(), vec!["a".into()])]
    );
    envoy.complete_with(token, 0, results(&[(STORED, "", "")]));
    assert_eq!(envoy.metric("snp.pending_keys"), 0);
    assert_eq!(envoy.metric("snp.mappings.rejected"), 0);
}

#[test]
fn a_shim_without_results_settles_the_whole_batch_as_before() {
    let mut envoy = Envoy::new(r#"{"ack_mode": "durable", "retry_jitter": 0}"#);
    let (id, _) = envoy.call(DUBBO, body("default", "a", &["x.A", "x.B"]));
    envoy.advance(250);
    envoy.tick();
    let (token, _) = envoy.batch(0);
    // An older shim: OK with an empty response message.
    envoy.complete_with(token, 0, results(&[]));
    assert!(envoy.host.state.borrow().streams[&id].resumed);
    assert_eq!(envoy.metric("snp.mappings.acked"), 2);
    assert_eq!(envoy.metric("snp.pending_keys"), 0);
    // ...and its whole-batch error is retried, as before.
    envoy.call(DUBBO, body("default", "a", &["x.C"]));
    envoy.advance(250);
    envoy.tick();
    let (token, _) = envoy.batch(1);
    envoy.complete(token, 3);
    assert_eq!(envoy.metric("snp.pending_keys"), 1);
    assert_eq!(envoy.metric("snp.mappings.rejected"), 0);
}

#[test]
fn batches_larger_than_max_push_bytes_go_in_parts_and_settle_together() {
    let mut envoy = Envoy::new(
        r#"{"ack_mode": "durable", "max_push_bytes": 16384, "retry_jitter": 0, "retry_base_ms": 500}"#,
    );
    // 40 interfaces of ~1000 bytes (~40 KB) and one interface with 100 apps of ~200
    // bytes (~20 KB, more than one request alone).
    let long: Vec<String> = (0..40)
        .map(|i| format!("x.I{i:02}{}", "a".repeat(990)))
        .collect();
    let refs: Vec<&str> = long.iter().map(String::as_str).collect();
    let (first, _) = envoy.call(DUBBO, body("default", "a", &refs));
    let mut wide = Vec::new();
    for i in 0..100 {
        let app = format!("app-{i:03}-{}", "b".repeat(190));
        let (id, _) = envoy.call(DUBBO, body("default", &app, &["x.Wide"]));
        wide.push(id);
    }
    envoy.advance(1100);
    envoy.tick();
    // Parts go at once, but the pieces of x.Wide one after another: each once the previous
    // one is answered.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut done = 0;
    while done < envoy.calls() {
        let wide_out = (done..envoy.calls())
            .filter(|i| position_of(&envoy.batch(*i).1, "x.Wide").is_some())
            .count();
        assert!(
            wide_out <= 1,
            "{wide_out} pieces of one key in flight at once"
        );
        // A part is still out: nothing is released yet.
        assert!(!envoy.host.state.borrow().streams[&first].resumed);
        let c = envoy.host.state.borrow().calls[done].message.len();
        assert!(c <= 16384, "request {done} is {c} bytes");
        let (token, req) = envoy.batch(done);
        for m in &req.mappings {
            *seen.entry(m.interface_name.clone()).or_default() += m.application_names.len();
        }
        envoy.complete_with(
            token,
            0,
            results(&vec![(STORED, "", ""); req.mappings.len()]),
        );
        done += 1;
    }
    assert!(done >= 5, "split into {done} requests");
    assert_eq!(seen.len(), 41);
    assert_eq!(
        seen["x.Wide"], 100,
        "every application of the wide key, across parts"
    );
    assert!(envoy.host.state.borrow().streams[&first].resumed);
    assert!(wide
        .iter()
        .all(|id| envoy.host.state.borrow().streams[id].resumed));
    assert_eq!(envoy.metric("snp.pending_keys"), 0);
    assert_eq!(envoy.metric("snp.held_replies"), 0);
}

#[test]
fn stopping_retries_at_once_and_gives_up_after_one_push_timeout() {
    let mut envoy = Envoy::new(
        r#"{"push_timeout_ms": 1000, "durable_timeout_ms": 1000, "retry_jitter": 0, "retry_base_ms": 10000, "retry_max_ms": 60000}"#,
    );
    envoy.call(DUBBO, body("default", "a", &["x.A"]));
    envoy.advance(250);
    envoy.tick();
    let (token, _) = envoy.batch(0);
    envoy.complete(token, 14);
    // Backing off for 20 s; stopping sends it again at once.
    envoy.host.state.borrow_mut().effective = ROOT;
    assert!(!envoy.root.on_done());
    assert_eq!(envoy.calls(), 2);
    let (token, _) = envoy.batch(1);
    envoy.complete(token, 14);
    envoy.advance(500);
    envoy.tick();
    assert_eq!(envoy.host.state.borrow().done, 0, "within the deadline");
    envoy.advance(600);
    envoy.tick();
    assert_eq!(envoy.host.state.borrow().done, 1, "done at the deadline");
    assert!(envoy
        .host
        .logged(LogLevel::Warn, "1 keys not acknowledged by the shim"));
}

#[test]
fn a_rejected_key_is_probed_on_the_slow_schedule_and_recovers_once_the_shim_stores_it() {
    let mut envoy = Envoy::new(r#"{"park_probe_ms": 2000, "retry_jitter": 0}"#);
    envoy.call(DUBBO, body("late", "a", &["x.Late"]));
    envoy.advance(250);
    envoy.tick();
    let (token, _) = envoy.batch(0);
    let msg = "late/x.Late cannot be stored: namespace late not found";
    envoy.complete_with(token, 0, results(&[(REJECTED, "namespace_not_found", msg)]));
    assert_eq!(envoy.metric("snp.parked_keys"), 1);
    // A caller in the meantime is told, and joins the probe.
    let (id, _) = envoy.call(DUBBO, body("late", "b", &["x.Late"]));
    assert!(grpc(9)(&envoy.reply(id)));
    envoy.advance(1500);
    envoy.tick();
    assert_eq!(envoy.calls(), 1, "not before the probe");
    envoy.advance(600);
    envoy.tick();
    let (token, req) = envoy.batch(1);
    assert_eq!(
        mappings(&req),
        vec![("late".into(), "x.Late".into(), vec!["a".into(), "b".into()])]
    );
    // The namespace exists now: stored, unparked, and calls are answered OK again.
    envoy.complete_with(token, 0, results(&[(STORED, "", "")]));
    assert_eq!(envoy.metric("snp.parked_keys"), 0);
    assert_eq!(envoy.metric("snp.mappings.rejected"), 1);
    let (id, action) = envoy.call(DUBBO, body("late", "b", &["x.Late"]));
    assert_eq!(action, Action::Continue);
    assert_eq!(envoy.reply(id), None);
}

#[test]
fn a_key_with_more_applications_than_one_push_carries_goes_in_pieces_and_none_is_lost() {
    let mut envoy = Envoy::new(
        r#"{"ack_mode": "durable", "max_push_apps_per_key": 3, "max_apps_per_key": 4, "retry_jitter": 0, "retry_base_ms": 500}"#,
    );
    // Four applications of x.Many (the most a key may hold pending) and one of x.B.
    let mut held = Vec::new();
    for app in ["a0", "a1", "a2", "a3"] {
        held.push(envoy.call(DUBBO, body("default", app, &["x.Many"])).0);
    }
    let (one, _) = envoy.call(DUBBO, body("default", "b", &["x.B"]));
    let (refused, _) = envoy.call(DUBBO, body("default", "a4", &["x.Many"]));
    assert!(grpc(8)(&envoy.reply(refused)), "{:?}", envoy.reply(refused));
    envoy.advance(250);
    envoy.tick();
    assert_eq!(envoy.calls(), 1, "the second piece waits for the first");
    let (token, req) = envoy.batch(0);
    assert_eq!(req.mappings.len(), 2);
    assert_eq!(
        req.mappings[position(&req, "x.Many")]
            .application_names
            .len(),
        3
    );
    // The first request fails as a whole: everything is merged back. Meanwhile x.Many
    // gathers more applications (the in-flight ones do not count against its bound), so
    // the retry carries more than `max_apps_per_key` of it.
    for app in ["n0", "n1", "n2"] {
        held.push(envoy.call(DUBBO, body("default", app, &["x.Many"])).0);
    }
    envoy.complete(token, 14);
    // The second piece goes once the first is back; the key is settled by its worst piece.
    assert_eq!(envoy.calls(), 2);
    let (token, req) = envoy.batch(1);
    assert_eq!(mappings(&req).len(), 1);
    assert_eq!(req.mappings[0].application_names.len(), 1);
    envoy.complete_with(token, 0, results(&[(STORED, "", "")]));
    assert_eq!(envoy.metric("snp.pending_keys"), 2);
    envoy.advance(1000);
    envoy.tick();
    // Every request carries at most 3 applications of a key, one piece of it at a time,
    // and every application arrives.
    let mut apps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut done = 2;
    while done < envoy.calls() {
        assert_eq!(envoy.calls(), done + 1, "one piece in flight at a time");
        assert!(!envoy.host.state.borrow().streams[&held[0]].resumed);
        let (token, req) = envoy.batch(done);
        for m in &req.mappings {
            assert!(m.application_names.len() <= 3, "{m:?}");
            apps.entry(m.interface_name.clone())
                .or_default()
                .extend(m.application_names.iter().cloned());
        }
        envoy.complete_with(
            token,
            0,
            results(&vec![(STORED, "", ""); req.mappings.len()]),
        );
        done += 1;
    }
    let mut many = apps.remove("x.Many").unwrap();
    many.sort();
    assert_eq!(many, ["a0", "a1", "a2", "a3", "n0", "n1", "n2"]);
    assert_eq!(apps.remove("x.B").unwrap(), ["b"]);
    assert_eq!(done, 5, "two pieces of the first try, three of the retry");
    // Released once every piece is stored.
    for id in held.iter().chain([&one]) {
        assert!(envoy.host.state.borrow().streams[id].resumed, "{id}");
    }
    assert_eq!(envoy.metric("snp.mappings.acked"), 8);
    assert_eq!(envoy.metric("snp.mappings.rejected"), 0);
    assert_eq!(envoy.metric("snp.pending_keys"), 0);
    assert!(envoy.root_is_idle());
}

#[test]
fn a_piece_the_shim_keeps_pending_retries_the_key_without_losing_the_others() {
    let mut envoy =
        Envoy::new(r#"{"max_push_apps_per_key": 2, "retry_jitter": 0, "retry_base_ms": 500}"#);
    for app in ["a", "b", "c", "d", "e"] {
        envoy.call(DUBBO, body("default", app, &["x.K"]));
    }
    envoy.advance(250);
    envoy.tick();
    let mut sent: Vec<String> = Vec::new();
    let mut i = 0;
    while i < envoy.calls() {
        let (token, req) = envoy.batch(i);
        sent.extend(req.mappings[0].application_names.iter().cloned());
        // The second piece is still pending at the shim.
        let status = if i == 1 { PENDING } else { STORED };
        envoy.complete_with(token, 0, results(&[(status, "", "")]));
        i += 1;
    }
    assert_eq!(i, 3);
    assert_eq!(envoy.metric("snp.pending_keys"), 1);
    // The key is retried on its backoff, whole, in pieces again.
    envoy.advance(1100);
    envoy.tick();
    while i < envoy.calls() {
        let (token, req) = envoy.batch(i);
        assert!(req.mappings[0].application_names.len() <= 2);
        sent.extend(req.mappings[0].application_names.iter().cloned());
        envoy.complete_with(token, 0, results(&[(STORED, "", "")]));
        i += 1;
    }
    assert_eq!(i, 6);
    sent.sort();
    assert_eq!(sent, ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"]);
    assert_eq!(envoy.metric("snp.pending_keys"), 0);
    assert!(envoy.root_is_idle());
}

#[test]
fn windows_longer_than_a_sidecar_drain_are_warned_about() {
    let warned = |e: &Envoy| {
        e.host
            .logged(LogLevel::Warn, "mappings still held then are lost")
    };
    let envoy = Envoy::new("{}");
    assert!(!warned(&envoy), "the default windows fit in a drain");
    let envoy = Envoy::new(r#"{"debounce_max_ms": 3900}"#);
    assert!(!warned(&envoy));
    let envoy = Envoy::new(
        r#"{"first_check_ms": 60000, "debounce_after_ms": 60000, "debounce_max_ms": 60000}"#,
    );
    assert!(warned(&envoy));
    assert!(envoy
        .host
        .logged(LogLevel::Warn, "hold a registration up to 60050 ms"));
    let envoy =
        Envoy::new(r#"{"debounce": false, "debounce_max_ms": 60000, "debounce_after_ms": 10}"#);
    assert!(!warned(&envoy), "without debouncing nothing is held");
}
