//! Several workers of one Envoy: one mock VM per worker, all sharing one shared-data store
//! (as Envoy's VMs of one `vm_id` do). Workers die (dropped without `on_done`, as a
//! crashed VM) and restart (a new VM on the same store), and the batches of all of them
//! are counted.

use core::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use prost::Message;
use snp_proto::api::{MappingResult, PushMappingsRequest, PushMappingsResponse};
use snp_proto::dubbo::ServiceMappingRequest;
use snp_proto::frame;

use crate::host::Action;
use crate::mock::{MockHost, MockStream, Reply, SharedStore};
use crate::shared::{Outbox, SHARDS};
use crate::{Root, Stream};

const ROOT: u32 = 1;
const DUBBO: &str =
    "/dubbo.networking.v1alpha1.ServiceNameMappingService/registerServiceAppMapping";
const STORED: i32 = 1;
const REJECTED: i32 = 3;

/// One worker's VM.
struct Vm {
    host: Rc<MockHost>,
    root: Root<MockHost>,
    streams: BTreeMap<u32, Stream<MockHost>>,
    next: u32,
    /// Calls of this VM already completed (by index in its host's call list).
    completed: BTreeSet<usize>,
    /// Calls of this VM already recorded in `Proxy::pushes`.
    seen: usize,
}

/// An Envoy with `n` workers.
struct Proxy {
    store: Rc<RefCell<SharedStore>>,
    vms: Vec<Option<Vm>>,
    config: String,
    wall_ms: u64,
    /// Every `PushMappings` request sent, by any VM that ever ran.
    pushes: Vec<PushMappingsRequest>,
}

type Pair = (String, String, String);

impl Proxy {
    fn new(workers: usize, config: &str) -> Self {
        let mut p = Self {
            store: Rc::default(),
            vms: (0..workers).map(|_| None).collect(),
            config: config.to_owned(),
            wall_ms: 1_700_000_000_000,
            pushes: Vec::new(),
        };
        for i in 0..workers {
            p.start(i);
            // Envoy starts its workers' VMs one after another.
            p.advance(1);
        }
        p
    }

    /// Starts (or restarts) worker `i`'s VM on the shared store.
    fn start(&mut self, i: usize) {
        let host = Rc::new(MockHost::with_shared(ROOT, Rc::clone(&self.store)));
        {
            let mut st = host.state.borrow_mut();
            st.config = self.config.as_bytes().to_vec();
            st.wall_ms = self.wall_ms;
        }
        let mut root = Root::new(ROOT, Rc::clone(&host));
        assert!(root.on_configure(), "{:?}", host.state.borrow().logs);
        self.vms[i] = Some(Vm {
            host,
            root,
            streams: BTreeMap::new(),
            next: 10,
            completed: BTreeSet::new(),
            seen: 0,
        });
    }

    /// Worker `i`'s VM crashes: no `on_done`, its memory and callouts are gone.
    fn kill(&mut self, i: usize) {
        self.collect();
        self.vms[i] = None;
    }

    fn vm(&mut self, i: usize) -> &mut Vm {
        self.vms[i].as_mut().expect("running worker")
    }

    fn advance(&mut self, ms: u64) {
        self.wall_ms += ms;
        for vm in self.vms.iter().flatten() {
            vm.host.state.borrow_mut().wall_ms = self.wall_ms;
        }
    }

    /// Every running worker ticks.
    fn tick(&mut self) {
        for vm in self.vms.iter_mut().flatten() {
            vm.host.state.borrow_mut().effective = ROOT;
            vm.root.on_tick();
        }
        self.collect();
    }

    /// `ms` of time in ticks of 50 ms.
    fn run(&mut self, ms: u64) {
        for _ in 0..ms / 50 {
            self.advance(50);
            self.tick();
        }
    }

    /// `ms` of time in which worker `stalled` does not tick (its thread is busy).
    fn run_stalled(&mut self, ms: u64, stalled: usize) {
        for _ in 0..ms / 50 {
            self.advance(50);
            for (i, vm) in self.vms.iter_mut().enumerate() {
                if let (Some(vm), true) = (vm, i != stalled) {
                    vm.host.state.borrow_mut().effective = ROOT;
                    vm.root.on_tick();
                }
            }
            self.collect();
        }
    }

    /// A registration on worker `i`: its stream id and what the filter answered.
    fn call(&mut self, i: usize, ns: &str, app: &str, ifaces: &[&str]) -> (u32, Action) {
        let body = frame::encode(
            &ServiceMappingRequest {
                namespace: ns.into(),
                application_name: app.into(),
                interface_names: ifaces.iter().map(|s| s.to_string()).collect(),
            }
            .encode_to_vec(),
        );
        let vm = self.vm(i);
        let id = vm.next;
        vm.next += 1;
        let mut s = MockStream::default();
        for (k, v) in [
            (":path", DUBBO),
            (":method", "POST"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            s.request_headers.insert(k.into(), v.as_bytes().to_vec());
        }
        let len = body.len();
        s.request_body = body;
        vm.host.state.borrow_mut().streams.insert(id, s);
        let mut stream = vm.root.create_stream(id);
        vm.host.state.borrow_mut().effective = id;
        vm.host.state.borrow_mut().in_request_headers = true;
        assert_eq!(stream.on_request_headers(false), Action::Pause);
        vm.host.state.borrow_mut().in_request_headers = false;
        let a = stream.on_request_body(len, true);
        vm.host.state.borrow_mut().effective = ROOT;
        vm.streams.insert(id, stream);
        (id, a)
    }

    /// What the host knows of stream `id` of worker `i`.
    fn stream<T>(&self, i: usize, id: u32, f: impl FnOnce(&MockStream) -> T) -> T {
        let vm = self.vms[i].as_ref().expect("running");
        let st = vm.host.state.borrow();
        f(&st.streams[&id])
    }

    fn reply(&self, i: usize, id: u32) -> Option<Reply> {
        self.stream(i, id, |s| s.reply.clone())
    }

    fn resumed(&self, i: usize, id: u32) -> bool {
        self.stream(i, id, |s| s.resumed)
    }

    /// Records the requests sent since the last look.
    fn collect(&mut self) {
        for vm in self.vms.iter_mut().flatten() {
            let st = vm.host.state.borrow();
            for c in &st.calls[vm.seen..] {
                self.pushes
                    .push(PushMappingsRequest::decode(c.message.as_slice()).expect("request"));
            }
            vm.seen = st.calls.len();
        }
    }

    /// Callouts of running workers not completed yet: (worker, index).
    fn open_calls(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (i, vm) in self.vms.iter().enumerate() {
            if let Some(vm) = vm {
                for n in 0..vm.host.state.borrow().calls.len() {
                    if !vm.completed.contains(&n) {
                        out.push((i, n));
                    }
                }
            }
        }
        out
    }

    /// The shim answers every open callout: each mapping stored, but those of `reject`
    /// (interface names), rejected for good.
    fn shim_answers(&mut self, reject: &[&str]) {
        for (i, n) in self.open_calls() {
            let vm = self.vm(i);
            let (token, req) = {
                let st = vm.host.state.borrow();
                let c = &st.calls[n];
                (
                    c.token,
                    PushMappingsRequest::decode(c.message.as_slice()).expect("request"),
                )
            };
            let results = req
                .mappings
                .iter()
                .map(|m| {
                    if reject.contains(&m.interface_name.as_str()) {
                        MappingResult {
                            status: REJECTED,
                            reason: "namespace_not_found".into(),
                            message: format!("{} cannot be stored", m.interface_name),
                        }
                    } else {
                        MappingResult {
                            status: STORED,
                            ..MappingResult::default()
                        }
                    }
                })
                .collect();
            let body = PushMappingsResponse {
                results,
                ..PushMappingsResponse::default()
            }
            .encode_to_vec();
            vm.completed.insert(n);
            {
                let mut st = vm.host.state.borrow_mut();
                st.effective = ROOT;
                st.grpc_response = body.clone();
            }
            vm.root.on_grpc_call_response(token, 0, body.len());
        }
        self.collect();
    }

    /// Every (namespace, interface, app) sent so far.
    fn sent(&self) -> BTreeSet<Pair> {
        self.pushes.iter().flat_map(pairs_of).collect()
    }

    /// Pairs left in the shared outbox.
    fn outbox_entries(&self) -> usize {
        let host = MockHost::with_shared(99, Rc::clone(&self.store));
        let o = Outbox::new(1000, &snp_core::DebounceConfig::default());
        (0..SHARDS)
            .map(|i| o.read(&host, i).map_or(0, |(s, _)| s.entries()))
            .sum()
    }

    /// A metric summed over running workers (Envoy shows one stat for all of them).
    fn metric(&self, name: &str) -> i64 {
        self.vms
            .iter()
            .flatten()
            .map(|vm| vm.host.metric(name))
            .sum()
    }
}

/// The (namespace, interface, app) of a request.
fn pairs_of(req: &PushMappingsRequest) -> BTreeSet<Pair> {
    req.mappings
        .iter()
        .flat_map(|m| {
            m.application_names
                .iter()
                .map(|a| (m.namespace.clone(), m.interface_name.clone(), a.clone()))
        })
        .collect()
}

fn pair(ns: &str, iface: &str, app: &str) -> Pair {
    (ns.into(), iface.into(), app.into())
}

/// Registrations spread over four workers: (worker, app, interface).
fn spread(p: &mut Proxy, n: usize, offset: usize) -> BTreeSet<Pair> {
    let mut want = BTreeSet::new();
    for k in 0..n {
        let w = k % 4;
        let app = format!("app-{}", (k + offset) % 5);
        let iface = format!("org.S{}", k + offset);
        let (_, a) = p.call(w, "default", &app, &[&iface]);
        assert_eq!(a, Action::Continue);
        want.insert(pair("default", &iface, &app));
    }
    want
}

#[test]
fn four_workers_send_one_batch_per_window() {
    let mut p = Proxy::new(4, r#"{"retry_jitter": 0}"#);
    for window in 0..3 {
        let want = spread(&mut p, 40, window * 100);
        p.run(1500);
        assert_eq!(p.pushes.len(), window + 1, "one batch for the whole Envoy");
        let got = pairs_of(p.pushes.last().unwrap());
        assert_eq!(got, want, "every worker's mappings, merged");
        p.shim_answers(&[]);
        p.run(100);
        assert_eq!(p.outbox_entries(), 0, "stored mappings leave the outbox");
    }
    assert_eq!(p.metric("snp.batches.sent"), 3);
    assert_eq!(p.metric("snp.shared.senders"), 1);
    assert_eq!(p.metric("snp.shared.lease_taken"), 1);
    assert_eq!(p.metric("snp.shared.handed"), 120);
    assert_eq!(
        p.metric("snp.shared.taken"),
        90,
        "the three other workers' mappings"
    );
}

#[test]
fn per_worker_batches_when_turned_off() {
    let mut p = Proxy::new(4, r#"{"retry_jitter": 0, "shared_batch": false}"#);
    spread(&mut p, 40, 0);
    p.run(1500);
    assert_eq!(p.pushes.len(), 4, "one batch per worker");
    assert!(p.store.borrow().data.is_empty(), "nothing shared");
}

#[test]
fn repeats_are_answered_without_touching_shared_data() {
    let mut p = Proxy::new(4, r#"{"retry_jitter": 0}"#);
    p.call(2, "default", "a", &["x.A", "x.B"]);
    let writes = p.store.borrow().writes;
    for _ in 0..1000 {
        let (_, a) = p.call(2, "default", "a", &["x.A", "x.B"]);
        assert_eq!(a, Action::Continue);
    }
    assert_eq!(p.store.borrow().writes, writes, "no write per repeat");
    p.run(1500);
    p.shim_answers(&[]);
    p.run(100);
    // Acknowledged now: still no write.
    let writes = p.store.borrow().writes;
    for _ in 0..100 {
        p.call(2, "default", "a", &["x.A"]);
    }
    assert_eq!(p.store.borrow().writes, writes);
    assert_eq!(p.pushes.len(), 1);
}

#[test]
fn the_senders_death_mid_flight_loses_nothing() {
    let mut p = Proxy::new(4, r#"{"retry_jitter": 0}"#);
    let want = spread(&mut p, 20, 0);
    p.run(1500);
    assert_eq!(p.pushes.len(), 1);
    // Worker 0 took the lease first; its batch is in flight when its VM dies.
    assert_eq!(
        p.vms[0].as_ref().unwrap().host.metric("snp.shared.senders"),
        1
    );
    p.kill(0);
    // More registrations while nobody sends.
    let mut more = BTreeSet::new();
    for (w, iface) in [(1, "x.Late1"), (3, "x.Late3")] {
        p.call(w, "default", "late", &[iface]);
        more.insert(pair("default", iface, "late"));
    }
    p.run(2500);
    assert_eq!(p.pushes.len(), 2, "one new sender, one batch");
    let resent = pairs_of(&p.pushes[1]);
    let all: BTreeSet<Pair> = want.union(&more).cloned().collect();
    assert_eq!(resent, all, "the dead sender's batch and the new mappings");
    assert_eq!(p.metric("snp.shared.senders"), 1);
    p.shim_answers(&[]);
    p.run(100);
    assert_eq!(p.outbox_entries(), 0);
}

#[test]
fn a_restarted_worker_and_a_dead_one_lose_nothing_they_answered() {
    let mut p = Proxy::new(4, r#"{"retry_jitter": 0}"#);
    // Worker 2 answers OK, and its VM dies before any window ends.
    let (id, a) = p.call(2, "default", "a", &["x.Two"]);
    assert_eq!((a, p.reply(2, id)), (Action::Continue, None));
    p.kill(2);
    // The sender dies too, and both VMs are restarted (a reload after a crash).
    p.kill(0);
    p.start(2);
    p.start(0);
    p.call(3, "default", "b", &["x.Three"]);
    p.run(2500);
    assert_eq!(p.pushes.len(), 1, "{:?}", p.pushes);
    assert_eq!(
        p.sent(),
        BTreeSet::from([
            pair("default", "x.Two", "a"),
            pair("default", "x.Three", "b")
        ])
    );
    p.shim_answers(&[]);
    p.run(100);
    assert_eq!(p.outbox_entries(), 0);
    assert_eq!(p.metric("snp.shared.senders"), 1);
}

#[test]
fn held_replies_on_other_workers_follow_the_senders_outcome() {
    let mut p = Proxy::new(4, r#"{"ack_mode": "durable", "retry_jitter": 0}"#);
    let (ok, a) = p.call(1, "default", "a", &["x.Good"]);
    assert_eq!(a, Action::Pause);
    let (bad, _) = p.call(3, "missing", "a", &["x.Bad"]);
    p.run(1500);
    assert_eq!(p.pushes.len(), 1);
    p.shim_answers(&["x.Bad"]);
    assert!(!p.resumed(1, ok), "worker 1 learns it at its tick");
    p.run(50);
    assert!(p.resumed(1, ok));
    assert!(
        matches!(p.reply(3, bad), Some(Reply::Grpc { status: 9, ref message }) if message.contains("namespace_not_found")),
        "{:?}",
        p.reply(3, bad)
    );
    // The key is parked Envoy-wide: a worker that never saw it refuses it at once.
    let (again, _) = p.call(2, "missing", "b", &["x.Bad"]);
    assert!(matches!(
        p.reply(2, again),
        Some(Reply::Grpc { status: 9, .. })
    ));
    assert_eq!(
        p.metric("snp.mappings.rejected"),
        1,
        "counted once, by the sender"
    );
    assert_eq!(p.outbox_entries(), 0);
}

#[test]
fn the_outbox_is_bounded_by_keys_envoy_wide() {
    let mut p = Proxy::new(4, r#"{"max_pending_keys": 32, "retry_jitter": 0}"#);
    let mut refused = 0;
    for k in 0..400 {
        let (id, a) = p.call(k % 4, "default", "a", &[&format!("x.K{k}")]);
        if a != Action::Continue {
            assert!(matches!(
                p.reply(k % 4, id),
                Some(Reply::Grpc { status: 8, .. })
            ));
            refused += 1;
        }
    }
    let held = p.outbox_entries();
    assert!(held <= 64, "{held} keys in the outbox");
    assert_eq!(held + refused, 400);
}

#[test]
fn a_stopping_envoy_flushes_every_workers_mappings() {
    let mut p = Proxy::new(4, r#"{"retry_jitter": 0}"#);
    let want = spread(&mut p, 8, 0);
    for i in 0..4 {
        let vm = p.vm(i);
        vm.host.state.borrow_mut().effective = ROOT;
        assert!(!vm.root.on_done(), "worker {i} has mappings to flush");
    }
    p.tick();
    assert_eq!(p.sent(), want, "sent at once, each worker its own");
    p.shim_answers(&[]);
    p.tick();
    for vm in p.vms.iter().flatten() {
        assert_eq!(vm.host.state.borrow().done, 1);
    }
    assert_eq!(p.outbox_entries(), 0);
}

#[test]
fn a_stalled_sender_loses_the_lease_and_steps_back_without_loss() {
    let mut p = Proxy::new(4, r#"{"retry_jitter": 0}"#);
    let first = spread(&mut p, 8, 0);
    p.run(1500);
    assert_eq!(p.pushes.len(), 1);
    let old_sender = p.pushes[0].source.clone();
    p.shim_answers(&[]);
    // Worker 0, the sender, stops ticking for longer than its lease.
    let second = spread(&mut p, 8, 50);
    p.run_stalled(2500, 0);
    assert_eq!(
        p.pushes.len(),
        2,
        "another worker sent in its place, in one batch"
    );
    assert_eq!(p.metric("snp.shared.lease_taken"), 2);
    p.shim_answers(&[]);
    // Worker 0 ticks again: it sees the lease is gone and sends nothing of its own.
    p.run(1500);
    assert_eq!(p.pushes.len(), 2);
    assert_eq!(
        p.pushes.iter().filter(|r| r.source == old_sender).count(),
        1
    );
    assert_eq!(p.metric("snp.shared.senders"), 1);
    let all: BTreeSet<Pair> = first.union(&second).cloned().collect();
    assert_eq!(p.sent(), all);
    assert_eq!(p.outbox_entries(), 0);
    // Every worker's handed batch completed from the outbox: each stops at once.
    for vm in p.vms.iter_mut().flatten() {
        vm.host.state.borrow_mut().effective = ROOT;
        assert!(vm.root.on_done(), "{:?}", vm.host.state.borrow().logs);
    }
}

#[test]
fn a_mapping_stored_already_is_answered_from_the_senders_memory_without_a_batch() {
    let mut p = Proxy::new(4, r#"{"ack_mode": "durable", "retry_jitter": 0}"#);
    let (first, _) = p.call(1, "default", "a", &["x.A"]);
    p.run(1500);
    p.shim_answers(&[]);
    p.run(100);
    assert!(p.resumed(1, first));
    assert_eq!(p.pushes.len(), 1);
    // Worker 3 never saw it: it hands it over and holds its caller...
    let (again, a) = p.call(3, "default", "a", &["x.A"]);
    assert_eq!(a, Action::Pause);
    p.run(1500);
    // ...and the sender, which the shim told it is stored, releases it without a batch.
    assert!(p.resumed(3, again));
    assert_eq!(p.pushes.len(), 1);
    assert_eq!(p.outbox_entries(), 0);
}
