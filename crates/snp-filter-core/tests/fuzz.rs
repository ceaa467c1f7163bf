//! Fuzz-style property tests of everything the filter does with untrusted input, run on
//! stable Rust with proptest (cargo-fuzz needs nightly). `SNP_FUZZ_CASES` raises the case
//! count for a longer run (default 20,000 per property).
//!
//! * the whole request path: header checks, body prefix checks, frame + protobuf decoding,
//!   validation, namespace enforcement, and the engine's offer;
//! * the engine as a state machine: random offers, polls, successes, failures, timeouts
//!   and cancellations on a virtual clock never panic, and once the receiver answers,
//!   every accepted registration is delivered.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use prost::Message;
use snp_core::{DebounceConfig, Instant, Limits};
use snp_filter_core::config::{AckMode, Config, NamespacePolicy, OnMismatch};
use snp_filter_core::engine::{Accepted, Engine};
use snp_filter_core::policy::{enforce, spiffe_namespace};
use snp_filter_core::request::{check_headers, check_prefix, decode_body, RequestHeaders};
use snp_proto::api::PushMappingsRequest;
use snp_proto::frame;

fn cases() -> u32 {
    std::env::var("SNP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Bodies that are often almost valid: a real request, framed, then mutated.
fn near_valid_body() -> impl Strategy<Value = Vec<u8>> {
    let fields = (
        prop_oneof![
            Just("default".to_owned()),
            "[a-z0-9-]{0,70}",
            any::<String>()
        ],
        prop_oneof![
            Just("demo-provider".to_owned()),
            "\\PC{0,40}",
            Just(String::new())
        ],
        proptest::collection::vec(
            prop_oneof![
                Just("org.a.B".to_owned()),
                "[a-zA-Z0-9_.$:-]{0,30}",
                any::<String>()
            ],
            0..6,
        ),
    );
    (
        fields,
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 0..4),
    )
        .prop_map(|((ns, app, ifaces), muts)| {
            let msg = snp_proto::dubbo::ServiceMappingRequest {
                namespace: ns,
                application_name: app,
                interface_names: ifaces,
            }
            .encode_to_vec();
            let mut b = frame::encode(&msg);
            for (at, byte, op) in muts {
                if b.is_empty() {
                    b.push(byte);
                    continue;
                }
                let i = at % b.len();
                match op {
                    0 => b[i] = byte,
                    1 => b.truncate(i),
                    2 => b.insert(i, byte),
                    _ => b.extend_from_slice(&[byte; 3]),
                }
            }
            b
        })
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        near_valid_body()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn the_request_path_never_panics(
        body in any_body(),
        ct in prop_oneof![Just(b"application/grpc".to_vec()), proptest::collection::vec(any::<u8>(), 0..30)],
        enc in proptest::option::of(prop_oneof![Just(b"identity".to_vec()), proptest::collection::vec(any::<u8>(), 0..10)]),
        len in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)),
        peer in proptest::collection::vec(any::<u8>(), 0..80),
        policy in prop_oneof![Just(NamespacePolicy::Trust), Just(NamespacePolicy::Node), Just(NamespacePolicy::Peer)],
        rewrite in any::<bool>(),
        max in 64usize..2048,
        proto in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)),
    ) {
        let h = RequestHeaders {
            method: Some(b"POST".to_vec()),
            content_type: Some(ct),
            grpc_encoding: enc,
            content_length: len,
            protocol: proto,
        };
        let _ = check_headers(&h, max);
        let _ = check_prefix(&body, body.len(), max);
        let limits = Limits::default();
        match decode_body(&body, max, &limits) {
            Ok(mut reg) => {
                prop_assert!(snp_core::validate::is_rfc1123_label(&reg.namespace));
                let caller = spiffe_namespace(&peer);
                let on_mismatch = if rewrite { OnMismatch::Rewrite } else { OnMismatch::Reject };
                if enforce(policy, on_mismatch, caller, &mut reg).is_ok() {
                    let mut e = Engine::new(DebounceConfig::default(), AckMode::Durable, Duration::from_secs(1), "f".into());
                    prop_assert!(e.offer(Instant::ZERO, 1, &reg).is_ok());
                }
            }
            Err(r) => {
                prop_assert!(!r.message.is_empty());
                prop_assert!(r.message.bytes().all(|b| (0x20..0x7f).contains(&b)), "{:?}", r.message);
            }
        }
    }

    #[test]
    fn configuration_parsing_never_panics(doc in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| b),
        "\\{(\"[a-z_]{1,20}\": ?(\"[a-z]{0,8}\"|[0-9]{1,12}|true|null|\\[\\]|0\\.[0-9]{1,3})(, ?)?){0,6}\\}".prop_map(String::into_bytes),
    ]) {
        let _ = Config::parse(&doc);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Offer {
        ctx: u32,
        ns: u8,
        iface: u8,
        app: u8,
    },
    Advance(u16),
    Complete {
        ok: bool,
    },
    Forget(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..50, 0u8..3, 0u8..12, 0u8..4).prop_map(|(ctx, ns, iface, app)| Op::Offer { ctx, ns, iface, app }),
        3 => (0u16..1500).prop_map(Op::Advance),
        2 => any::<bool>().prop_map(|ok| Op::Complete { ok }),
        1 => (0u32..50).prop_map(Op::Forget),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases() / 10))]

    /// The engine on a virtual clock: whatever happens, no panic, a held reply is released
    /// or expired exactly once, and once the receiver acknowledges everything, every
    /// accepted registration has been delivered.
    #[test]
    fn the_engine_delivers_everything_it_accepted(
        ops in proptest::collection::vec(op(), 1..200),
        durable in any::<bool>(),
        max_batch_keys in 1usize..8,
    ) {
        let cfg = DebounceConfig { max_batch_keys, max_pending_keys: 20, ..DebounceConfig::default() };
        let mode = if durable { AckMode::Durable } else { AckMode::Immediate };
        let mut e = Engine::new(cfg, mode, Duration::from_millis(2500), "fz".into());
        let mut now = 0u64;
        let mut token = 0u32;
        let mut in_flight: Vec<u32> = Vec::new();
        let mut accepted: BTreeSet<(String, String, String)> = BTreeSet::new();
        let mut delivered: BTreeSet<(String, String, String)> = BTreeSet::new();
        let mut held: BTreeSet<u32> = BTreeSet::new();
        let mut payloads: std::collections::BTreeMap<u32, PushMappingsRequest> = Default::default();

        let pump = |e: &mut Engine, now: u64, in_flight: &mut Vec<u32>, token: &mut u32, payloads: &mut std::collections::BTreeMap<u32, PushMappingsRequest>| {
            while let Some(b) = e.next_batch(Instant::from_millis(now)) {
                *token += 1;
                in_flight.push(*token);
                payloads.insert(*token, PushMappingsRequest::decode(b.payload.as_slice()).map_err(|_| ()).unwrap_or_default());
                e.sent(*token, b);
            }
        };

        for op in ops {
            match op {
                Op::Offer { ctx, ns, iface, app } => {
                    if held.contains(&ctx) { continue; }
                    let reg = snp_core::Registration {
                        namespace: format!("ns{ns}"),
                        application: format!("app{app}"),
                        interfaces: vec![format!("org.I{iface}")],
                    };
                    match e.offer(Instant::from_millis(now), ctx, &reg) {
                        Ok(a) => {
                            accepted.insert((reg.namespace.clone(), reg.interfaces[0].clone(), reg.application.clone()));
                            if a == Accepted::Hold { held.insert(ctx); }
                            prop_assert!(durable || a == Accepted::Reply);
                        }
                        Err(r) => prop_assert_eq!(r.code, snp_filter_core::request::Code::ResourceExhausted),
                    }
                }
                Op::Advance(ms) => {
                    now += u64::from(ms);
                    for ctx in e.expired(Instant::from_millis(now)) {
                        prop_assert!(held.remove(&ctx), "expired a stream that was not held");
                    }
                }
                Op::Complete { ok } => {
                    if let Some(t) = in_flight.first().copied() {
                        in_flight.remove(0);
                        let done = e.completed(Instant::from_millis(now), t, ok, &[]);
                        prop_assert!(done.is_some());
                        let done = done.unwrap_or_default();
                        if ok {
                            if let Some(p) = payloads.get(&t) {
                                for m in &p.mappings {
                                    for a in &m.application_names {
                                        delivered.insert((m.namespace.clone(), m.interface_name.clone(), a.clone()));
                                    }
                                }
                            }
                        }
                        for ctx in done.released {
                            prop_assert!(held.remove(&ctx), "released a stream that was not held");
                        }
                    }
                }
                Op::Forget(ctx) => {
                    e.forget(ctx);
                    held.remove(&ctx);
                }
            }
            pump(&mut e, now, &mut in_flight, &mut token, &mut payloads);
        }
        // The receiver comes back and acknowledges everything from now on.
        for _ in 0..10_000 {
            if let Some(t) = in_flight.first().copied() {
                in_flight.remove(0);
                if let Some(done) = e.completed(Instant::from_millis(now), t, true, &[]) {
                    for ctx in done.released { held.remove(&ctx); }
                }
                if let Some(p) = payloads.get(&t) {
                    for m in &p.mappings {
                        for a in &m.application_names {
                            delivered.insert((m.namespace.clone(), m.interface_name.clone(), a.clone()));
                        }
                    }
                }
            }
            now += 100;
            let _ = e.expired(Instant::from_millis(now));
            pump(&mut e, now, &mut in_flight, &mut token, &mut payloads);
            if in_flight.is_empty() && e.pending_keys() == 0 { break; }
        }
        prop_assert_eq!(e.pending_keys(), 0);
        prop_assert!(accepted.is_subset(&delivered), "accepted but never delivered: {:?}", accepted.difference(&delivered).collect::<Vec<_>>());
        prop_assert_eq!(e.held(), 0);
    }
}
