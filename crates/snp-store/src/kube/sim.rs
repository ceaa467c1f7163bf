//! A cluster of shims on a virtual clock, against an in-process model of the API server.
//!
//! Every node runs what a shim runs, with the I/O replaced: the core's [`Debouncer`]
//! (the shim's settings: seed windows, per-key backoff, no acknowledged set), this store's
//! [`Cache`] and its write plan ([`Cache::plan`], [`cache::union_body`], the shared index
//! and name chooser), the merge loop of [`KubeStore`](super::KubeStore) step by step (union
//! update with the cached `resourceVersion`; on 409 Conflict a GET, a jittered pause and
//! another round; the create spread or the update spread, then a second look; after the
//! first 409 the update spread again, then the watch cache or a GET; on 409
//! AlreadyExists a GET and another round; at most `MAX_TRIES_PER_KEY` requests per key and merge, eight keys of a
//! batch at once), and the client-side token bucket (`--kube-qps`, `--kube-burst`).
//!
//! The API server model keeps a `resourceVersion` per object from one counter, answers a
//! replace with a stale `resourceVersion` with 409 Conflict and a create of a taken name
//! with 409 AlreadyExists, serves at most `server_qps` requests per second (a FIFO queue,
//! as priority and fairness queues before it rejects), and sends each write to every
//! node's watch after `watch_ms` plus a per-node random delay of up to `watch_ms`.
//!
//! Where it simplifies:
//! * a node's cache only receives the objects of the interfaces its own pods register.
//!   A plan reads only its key's objects and its candidate names, and the workload's
//!   interface names never share a candidate name, so the plans are the same as with the
//!   full watch; it keeps 1,000 nodes' caches within memory;
//! * pods register straight into their node's shim (no filter in front); pod `p` runs
//!   application `p % apps` on a node picked at random (`round_robin`: node `p % nodes`),
//!   and registers its application's interfaces `call_gap_ms` apart from a start time
//!   uniform over `over_ms`;
//! * the store starts empty (the first rollout after installing, the case with the most
//!   writes and races); every interface lives in one namespace;
//! * a request takes `request_ms`: the server acts on it halfway, the answer arrives at
//!   the end. The watch never fails and never re-lists.
//!
//! Deterministic: the same [`Cluster`] gives the same [`ClusterReport`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::DynamicObject;
use ::kube::core::ApiResource;
use snp_core::{
    AppSet, BatchId, DebounceConfig, Debouncer, Instant, KeyResult, MappingKey, Rng, SplitMix64,
};

use super::cache::{self, Cache, Plan};
use super::{conflict_pause, new_object, spread_delay, MAX_TRIES_PER_KEY, WRITE_CONCURRENCY};
use crate::crd;

/// Namespace of every simulated interface.
pub const NAMESPACE: &str = "default";

/// A cluster and its rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Nodes, one shim each.
    pub nodes: u32,
    /// Pods that start.
    pub pods: u32,
    /// Applications (deployments); pod `p` runs application `p % apps`.
    pub apps: u32,
    /// Distinct interfaces.
    pub interfaces: u32,
    /// Interfaces each application provides (consecutive ones, so neighbouring
    /// applications share some and a key gets several applications).
    pub interfaces_per_app: u32,
    /// Time from the first pod start to the last.
    pub over_ms: u64,
    /// Time between one pod's consecutive registrations.
    pub call_gap_ms: u64,
    /// Duration of one API request.
    pub request_ms: u64,
    /// Least delay of a watch event; each node adds up to as much again at random.
    pub watch_ms: u64,
    /// Requests per second the API server serves (queued beyond it). Zero: unlimited.
    pub server_qps: f64,
    /// `--kube-qps` of every shim. Zero: unlimited.
    pub qps: f64,
    /// `--kube-burst` of every shim.
    pub burst: u32,
    /// `--kube-create-spread` of every shim.
    pub create_spread: Duration,
    /// `--kube-update-spread` of every shim.
    pub update_spread: Duration,
    /// Pod `p` runs on node `p % nodes` (as the benchmark's load generator spreads pods
    /// over shims) instead of a node picked at random.
    pub round_robin: bool,
    /// Seed of placement, start times and jitter.
    pub seed: u64,
}

impl Default for Cluster {
    /// 1,000 nodes, 50,000 pods of 1,000 applications over 2,000 interfaces (four per
    /// application, each interface provided by two), starting within 5 minutes; the
    /// shim's default flags.
    fn default() -> Self {
        Self {
            nodes: 1_000,
            pods: 50_000,
            apps: 1_000,
            interfaces: 2_000,
            interfaces_per_app: 4,
            over_ms: 300_000,
            call_gap_ms: 2,
            request_ms: 10,
            watch_ms: 20,
            server_qps: 2_000.0,
            qps: 20.0,
            burst: 40,
            create_spread: Duration::from_millis(500),
            update_spread: Duration::from_millis(500),
            round_robin: false,
            seed: 0x5eed,
        }
    }
}

/// What the cluster did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterReport {
    /// Registration calls.
    pub calls: u64,
    /// Distinct `(interface, application)` mappings the rollout registers.
    pub mappings: u64,
    /// Shim batches (all nodes).
    pub batches: u64,
    /// Create requests (including those answered 409 AlreadyExists).
    pub creates: u64,
    /// Replace requests (including those answered 409 Conflict).
    pub updates: u64,
    /// GET requests (re-reads after a 409).
    pub gets: u64,
    /// 409 Conflict answers (stale `resourceVersion`).
    pub conflicts: u64,
    /// 409 AlreadyExists answers (racing creates).
    pub already_exists: u64,
    /// Keys a merge found already held (no request).
    pub noop_skips: u64,
    /// Keys a merge gave up on after `MAX_TRIES_PER_KEY` requests (retried later).
    pub contended: u64,
    /// Longest a request waited for the API server's queue.
    pub max_server_wait_ms: u64,
    /// When the API server first held every mapping.
    pub all_stored_ms: Option<u64>,
    /// When the last registration call was made.
    pub last_call_ms: u64,
    /// When the last batch completed.
    pub end_ms: u64,
}

impl ClusterReport {
    /// Write requests (creates and replaces, whatever their answer).
    pub fn writes(&self) -> u64 {
        self.creates + self.updates
    }

    /// Every 409 (Conflict and AlreadyExists).
    pub fn all_409s(&self) -> u64 {
        self.conflicts + self.already_exists
    }
}

/// Virtual time, in microseconds.
type Us = u64;

const MS: Us = 1_000;
/// Virtual time after which a run stops (two hours).
const MAX_TIME: Us = 7_200_000 * MS;

fn us(d: Duration) -> Us {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One request a merge sends.
#[derive(Debug, Clone)]
enum Request {
    Create(DynamicObject),
    Replace(DynamicObject),
    Get(String),
}

/// The server's answer.
#[derive(Debug, Clone)]
enum Reply {
    Object(DynamicObject),
    Got(Option<DynamicObject>),
    Conflict,
    AlreadyExists,
    NotFound,
}

#[derive(Debug)]
enum Event {
    Call {
        node: u32,
        iface: u32,
        app: u32,
    },
    Wake {
        node: u32,
    },
    /// The server acts on request `req` of key run `run`.
    Serve {
        run: u64,
        req: Request,
    },
    /// The answer reaches key run `run`.
    Answer {
        run: u64,
        reply: Reply,
    },
    /// Key run `run` wakes from a pause (conflict backoff, create or update spread).
    Resume {
        run: u64,
    },
    /// An object reaches `node`'s watch.
    Watch {
        node: u32,
        obj: Arc<DynamicObject>,
    },
}

/// Where one key's merge stands (the states of `KubeStore::merge_key`).
#[derive(Debug)]
enum Step {
    /// Plan the next round.
    Plan,
    /// Waiting for the answer to a create or a replace of object `name` (`stale`: the
    /// replaced version; `None` for a create).
    Write { name: String, stale: Option<String> },
    /// Spread after the key's first 409: then the watch cache, or a re-read.
    Retry { name: String, stale: Option<String> },
    /// Waiting for the re-read after a 409; then pause (Conflict) or not (AlreadyExists).
    Reread { name: String, pause: bool },
    /// Paused after a conflict: the next round follows.
    Pause,
    /// Paused before a create or an update: look again.
    Spread,
}

struct KeyRun {
    node: u32,
    batch: BatchId,
    key: MappingKey,
    want: AppSet,
    tries: u32,
    conflicts: usize,
    /// Whether the update spread may still be waited (before the key's first replace).
    may_spread_update: bool,
    step: Step,
}

struct BatchRun {
    queue: VecDeque<(MappingKey, AppSet)>,
    active: usize,
    results: HashMap<MappingKey, KeyResult>,
}

struct Node {
    deb: Debouncer,
    cache: Cache,
    rng: SplitMix64,
    /// GCRA theoretical arrival time of the client-side limiter.
    tat: Us,
    wake_at: Option<Us>,
    batches: BTreeMap<BatchId, BatchRun>,
}

struct Sim<'a> {
    c: &'a Cluster,
    ar: ApiResource,
    queue: BinaryHeap<Reverse<(Us, u64)>>,
    events: HashMap<u64, Event>,
    seq: u64,
    nodes: Vec<Node>,
    /// Nodes whose pods register each interface.
    interested: Vec<Vec<u32>>,
    runs: HashMap<u64, KeyRun>,
    next_run: u64,
    /// The API server: objects by name, with their `resourceVersion`.
    objects: HashMap<String, DynamicObject>,
    rv: u64,
    server_free: Us,
    stored_pairs: u64,
    report: ClusterReport,
    rng: SplitMix64,
}

/// The interfaces application `app` provides.
fn app_interfaces(c: &Cluster, app: u32) -> impl Iterator<Item = u32> + '_ {
    let stride = u64::from(c.interfaces) / u64::from(c.apps.max(1));
    let base = u64::from(app) * stride.max(1);
    (0..c.interfaces_per_app)
        .map(move |j| u32::try_from((base + u64::from(j)) % u64::from(c.interfaces)).unwrap_or(0))
}

/// The name of the `i`-th interface.
pub fn interface_name(i: u32) -> String {
    format!("org.example.cluster.Service{i:05}")
}

fn app_name(a: u32) -> String {
    format!("app-{a:05}")
}

fn spec_apps(obj: &DynamicObject) -> usize {
    cache::read_spec(obj).map_or(0, |(_, apps)| apps.len())
}

impl Sim<'_> {
    fn push(&mut self, at: Us, e: Event) {
        self.seq += 1;
        self.events.insert(self.seq, e);
        self.queue.push(Reverse((at, self.seq)));
    }

    fn arm(&mut self, node: u32, now: Us) {
        let n = &mut self.nodes[node as usize];
        let next = n.deb.next_wakeup().map(|at| (at.as_millis() * MS).max(now));
        if next.is_some() && next != n.wake_at {
            n.wake_at = next;
            if let Some(at) = next {
                self.push(at, Event::Wake { node });
            }
        } else if next.is_none() {
            n.wake_at = None;
        }
    }

    fn poll(&mut self, node: u32, now: Us) {
        let t = Instant::from_millis(now / MS);
        while let Some(batch) = self.nodes[node as usize].deb.poll(t) {
            self.report.batches += 1;
            let run = BatchRun {
                queue: batch
                    .mappings
                    .iter()
                    .map(|(k, a)| (k.clone(), a.clone()))
                    .collect(),
                active: 0,
                results: HashMap::new(),
            };
            self.nodes[node as usize].batches.insert(batch.id, run);
            self.start_keys(node, batch.id, now);
        }
        self.arm(node, now);
    }

    /// Starts keys of a batch up to the store's write concurrency; completes the batch
    /// once every key has an outcome.
    fn start_keys(&mut self, node: u32, id: BatchId, now: Us) {
        loop {
            let Some(b) = self.nodes[node as usize].batches.get_mut(&id) else {
                return;
            };
            if b.active >= WRITE_CONCURRENCY {
                return;
            }
            let Some((key, want)) = b.queue.pop_front() else {
                if b.active == 0 {
                    self.complete_batch(node, id, now);
                }
                return;
            };
            b.active += 1;
            self.next_run += 1;
            let run = self.next_run;
            self.runs.insert(
                run,
                KeyRun {
                    node,
                    batch: id,
                    key,
                    want,
                    tries: 0,
                    conflicts: 0,
                    may_spread_update: !self.c.update_spread.is_zero(),
                    step: Step::Plan,
                },
            );
            self.advance(run, now);
        }
    }

    fn complete_batch(&mut self, node: u32, id: BatchId, now: Us) {
        let n = &mut self.nodes[node as usize];
        let Some(mut b) = n.batches.remove(&id) else {
            return;
        };
        let t = Instant::from_millis(now / MS);
        n.deb.complete_with(t, id, |k| {
            b.results.remove(k).unwrap_or(KeyResult::Transient)
        });
        self.report.end_ms = self.report.end_ms.max(now / MS);
        self.poll(node, now);
    }

    fn finish(&mut self, run: u64, result: KeyResult, now: Us) {
        let Some(r) = self.runs.remove(&run) else {
            return;
        };
        if let Some(b) = self.nodes[r.node as usize].batches.get_mut(&r.batch) {
            b.active -= 1;
            b.results.insert(r.key, result);
        }
        self.start_keys(r.node, r.batch, now);
    }

    /// Sends `req` for key run `run` through its node's rate limiter.
    fn send(&mut self, run: u64, req: Request, now: Us) {
        let Some(node) = self.runs.get(&run).map(|r| r.node as usize) else {
            return;
        };
        let at = if self.c.qps > 0.0 && self.c.qps.is_finite() {
            let period = (1e6 / self.c.qps) as Us;
            let tolerance = period * u64::from(self.c.burst.max(1) - 1);
            let n = &mut self.nodes[node];
            let at = now.max(n.tat.saturating_sub(tolerance));
            n.tat = n.tat.max(at) + period;
            at
        } else {
            now
        };
        match &req {
            Request::Create(_) => self.report.creates += 1,
            Request::Replace(_) => self.report.updates += 1,
            Request::Get(_) => self.report.gets += 1,
        }
        // Arrives at the server, waits for the server's rate, is acted on halfway.
        let arrive = at + self.c.request_ms * MS / 2;
        let serve = if self.c.server_qps > 0.0 && self.c.server_qps.is_finite() {
            let s = arrive.max(self.server_free);
            self.server_free = s + (1e6 / self.c.server_qps) as Us;
            s
        } else {
            arrive
        };
        self.report.max_server_wait_ms = self.report.max_server_wait_ms.max((serve - arrive) / MS);
        self.push(serve, Event::Serve { run, req });
    }

    /// The API server acts on a request.
    fn serve(&mut self, run: u64, req: Request, now: Us) {
        let reply = match req {
            Request::Get(name) => Reply::Got(self.objects.get(&name).cloned()),
            Request::Create(mut obj) => {
                let name = obj.metadata.name.clone().unwrap_or_default();
                if self.objects.contains_key(&name) {
                    self.report.already_exists += 1;
                    Reply::AlreadyExists
                } else {
                    self.rv += 1;
                    obj.metadata.resource_version = Some(self.rv.to_string());
                    self.stored(None, &obj, now);
                    self.objects.insert(name, obj.clone());
                    Reply::Object(obj)
                }
            }
            Request::Replace(mut obj) => {
                let name = obj.metadata.name.clone().unwrap_or_default();
                match self.objects.get(&name) {
                    None => Reply::NotFound,
                    Some(cur) if cur.metadata.resource_version != obj.metadata.resource_version => {
                        self.report.conflicts += 1;
                        Reply::Conflict
                    }
                    Some(cur) => {
                        let before = spec_apps(cur);
                        self.rv += 1;
                        obj.metadata.resource_version = Some(self.rv.to_string());
                        self.stored(Some(before), &obj, now);
                        self.objects.insert(name, obj.clone());
                        Reply::Object(obj)
                    }
                }
            }
        };
        self.push(
            now + self.c.request_ms * MS / 2,
            Event::Answer { run, reply },
        );
    }

    /// Counts what a write stored and sends it to the watches.
    fn stored(&mut self, before: Option<usize>, obj: &DynamicObject, now: Us) {
        let after = spec_apps(obj);
        self.stored_pairs += (after - before.unwrap_or(0).min(after)) as u64;
        if self.report.all_stored_ms.is_none() && self.stored_pairs >= self.report.mappings {
            self.report.all_stored_ms = Some(now / MS);
        }
        let iface = cache::read_spec(obj)
            .and_then(|(i, _)| i.strip_prefix("org.example.cluster.Service")?.parse().ok())
            .unwrap_or(u32::MAX);
        let Some(nodes) = self.interested.get(iface as usize).cloned() else {
            return;
        };
        let obj = Arc::new(obj.clone());
        for node in nodes {
            let delay = self.c.watch_ms * MS + self.rng.next_u64() % (self.c.watch_ms * MS + 1);
            self.push(
                now + delay,
                Event::Watch {
                    node,
                    obj: obj.clone(),
                },
            );
        }
    }

    fn pause(&mut self, run: u64, d: Duration, now: Us) {
        self.push(now + us(d), Event::Resume { run });
    }

    /// Takes key run `run` one round on: its next request, a pause, or its end.
    fn advance(&mut self, run: u64, now: Us) {
        let Some(r) = self.runs.get_mut(&run) else {
            return;
        };
        let node = &mut self.nodes[r.node as usize];
        match r.step {
            Step::Plan => {}
            Step::Spread => {
                // Look again: another shim's object may have arrived by watch.
                if matches!(node.cache.plan(&r.key, &r.want, &self.ar), Plan::Nothing) {
                    self.report.noop_skips += 1;
                    return self.finish(run, KeyResult::Stored, now);
                }
                r.tries += 1;
                r.step = Step::Plan;
            }
            Step::Pause => {
                r.tries += 1;
                r.step = Step::Plan;
            }
            Step::Retry {
                ref name,
                ref stale,
            } => {
                if node.cache.moved_past(&r.key, name, stale.as_deref()) {
                    r.tries += 1;
                    r.step = Step::Plan;
                } else {
                    let (name, pause) = (name.clone(), stale.is_some());
                    r.step = Step::Reread {
                        name: name.clone(),
                        pause,
                    };
                    return self.send(run, Request::Get(name), now);
                }
            }
            Step::Write { .. } | Step::Reread { .. } => return,
        }
        match node.cache.plan(&r.key, &r.want, &self.ar) {
            Plan::Nothing => {
                if r.tries == 0 {
                    self.report.noop_skips += 1;
                }
                self.finish(run, KeyResult::Stored, now);
            }
            _ if r.tries >= MAX_TRIES_PER_KEY => {
                self.report.contended += 1;
                self.finish(run, KeyResult::Transient, now);
            }
            Plan::NoName => {
                let result = KeyResult::Permanent {
                    reason: "no_name".into(),
                    message: format!("every candidate object name for {} is taken", r.key),
                };
                self.finish(run, result, now);
            }
            Plan::Update { ref name, ref body }
                if r.may_spread_update
                    && node.cache.updates_another_writers(NAMESPACE, name, body) =>
            {
                r.may_spread_update = false;
                r.step = Step::Spread;
                let d = spread_delay(self.c.update_spread, &mut node.rng);
                self.pause(run, d, now);
            }
            Plan::Update { name, body } => {
                r.may_spread_update = false;
                r.step = Step::Write {
                    name,
                    stale: Some(body.metadata.resource_version.clone().unwrap_or_default()),
                };
                self.send(run, Request::Replace(*body), now);
            }
            Plan::Refresh { name } => {
                r.step = Step::Reread {
                    name: name.clone(),
                    pause: false,
                };
                self.send(run, Request::Get(name), now);
            }
            Plan::Create { .. } if r.tries == 0 && !self.c.create_spread.is_zero() => {
                r.may_spread_update = false;
                r.step = Step::Spread;
                let d = spread_delay(self.c.create_spread, &mut node.rng);
                self.pause(run, d, now);
            }
            Plan::Create { name } => match new_object(&self.ar, &name, &r.key, &r.want) {
                Ok(body) => {
                    r.step = Step::Write { name, stale: None };
                    self.send(run, Request::Create(body), now);
                }
                Err(_) => self.finish(run, KeyResult::Transient, now),
            },
        }
    }

    fn answer(&mut self, run: u64, reply: Reply, now: Us) {
        let Some(r) = self.runs.get_mut(&run) else {
            return;
        };
        let node = &mut self.nodes[r.node as usize];
        let step = std::mem::replace(&mut r.step, Step::Plan);
        match (step, reply) {
            (Step::Write { .. }, Reply::Object(obj)) => {
                node.cache.apply_own(obj);
                r.tries += 1;
            }
            (Step::Write { name, stale }, Reply::Conflict | Reply::AlreadyExists) => {
                r.conflicts += 1;
                // The first 409 with an update spread: spread, then the watch cache.
                if r.conflicts == 1 && !self.c.update_spread.is_zero() {
                    r.step = Step::Retry { name, stale };
                    let d = spread_delay(self.c.update_spread, &mut node.rng);
                    return self.pause(run, d, now);
                }
                // Read it again; after a Conflict pause, after AlreadyExists go on at once.
                r.step = Step::Reread {
                    name: name.clone(),
                    pause: stale.is_some(),
                };
                return self.send(run, Request::Get(name), now);
            }
            (Step::Write { name, .. }, _) => {
                // Deleted meanwhile (not in this model): forget it; the next round creates.
                node.cache.remove(NAMESPACE, &name, None);
                r.tries += 1;
            }
            (Step::Reread { name, pause }, Reply::Got(obj)) => {
                match obj {
                    Some(obj) => {
                        node.cache.apply(obj);
                    }
                    None => {
                        node.cache.remove(NAMESPACE, &name, None);
                    }
                }
                if pause {
                    r.step = Step::Pause;
                    let d = conflict_pause(r.conflicts, &mut node.rng);
                    return self.pause(run, d, now);
                }
                r.tries += 1;
            }
            (step, _) => {
                r.step = step;
                return;
            }
        }
        self.advance(run, now);
    }

    fn run(mut self) -> ClusterReport {
        while let Some(Reverse((now, seq))) = self.queue.pop() {
            if now > MAX_TIME {
                break;
            }
            let Some(event) = self.events.remove(&seq) else {
                continue;
            };
            match event {
                Event::Call { node, iface, app } => {
                    self.report.calls += 1;
                    self.report.last_call_ms = now / MS;
                    let t = Instant::from_millis(now / MS);
                    let deb = &mut self.nodes[node as usize].deb;
                    // Limits are far above what the workload offers.
                    let _ = deb.offer(t, NAMESPACE, &interface_name(iface), &app_name(app));
                    self.arm(node, now);
                }
                Event::Wake { node } => {
                    if self.nodes[node as usize].wake_at == Some(now) {
                        self.nodes[node as usize].wake_at = None;
                        self.poll(node, now);
                    }
                }
                Event::Serve { run, req } => self.serve(run, req, now),
                Event::Answer { run, reply } => self.answer(run, reply, now),
                Event::Resume { run } => self.advance(run, now),
                Event::Watch { node, obj } => {
                    let obj = Arc::unwrap_or_clone(obj);
                    self.nodes[node as usize].cache.apply(obj);
                }
            }
        }
        self.report
    }
}

/// The shim's debouncer settings (`snp-shim serve` defaults) with a node's own seed.
fn shim_debounce(seed: u64) -> DebounceConfig {
    DebounceConfig {
        // The store's cache skips what it holds; the shim keeps no acknowledged set.
        suppress_acked_for: Duration::ZERO,
        max_apps_per_key: 65_536,
        seed,
        ..DebounceConfig::default()
    }
}

/// Plays the rollout of `c` out. `None` if the cluster is empty.
pub fn simulate(c: &Cluster) -> Option<ClusterReport> {
    if c.nodes == 0 || c.pods == 0 || c.apps == 0 || c.interfaces == 0 {
        return None;
    }
    let mut rng = SplitMix64::new(c.seed);
    let nodes: Vec<Node> = (0..c.nodes)
        .map(|i| Node {
            deb: Debouncer::new(shim_debounce(c.seed ^ (u64::from(i) << 20))),
            cache: Cache::default(),
            rng: SplitMix64::new(
                c.seed
                    .wrapping_add(u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            ),
            tat: 0,
            wake_at: None,
            batches: BTreeMap::new(),
        })
        .collect();
    let mut interested: Vec<Vec<u32>> = vec![Vec::new(); c.interfaces as usize];
    let mut pairs: std::collections::HashSet<(u32, u32)> = std::collections::HashSet::new();
    let mut calls: Vec<(Us, u32, u32, u32)> = Vec::new();
    for p in 0..c.pods {
        let app = p % c.apps;
        let node = if c.round_robin {
            p % c.nodes
        } else {
            u32::try_from(rng.next_u64() % u64::from(c.nodes)).unwrap_or(0)
        };
        let start = rng.next_u64() % (c.over_ms + 1);
        for (j, iface) in app_interfaces(c, app).enumerate() {
            pairs.insert((iface, app));
            let list = &mut interested[iface as usize];
            if !list.contains(&node) {
                list.push(node);
            }
            calls.push(((start + j as u64 * c.call_gap_ms) * MS, node, iface, app));
        }
    }
    calls.sort_unstable();
    let mut sim = Sim {
        c,
        ar: crd::api_resource(crd::DEFAULT_GROUP, crd::DEFAULT_VERSION),
        queue: BinaryHeap::new(),
        events: HashMap::new(),
        seq: 0,
        nodes,
        interested,
        runs: HashMap::new(),
        next_run: 0,
        objects: HashMap::new(),
        rv: 0,
        server_free: 0,
        stored_pairs: 0,
        report: ClusterReport {
            mappings: pairs.len() as u64,
            ..ClusterReport::default()
        },
        rng,
    };
    for (at, node, iface, app) in calls {
        sim.push(at, Event::Call { node, iface, app });
    }
    Some(sim.run())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(nodes: u32, spread_ms: u64) -> Cluster {
        Cluster {
            nodes,
            pods: 400,
            apps: 20,
            interfaces: 40,
            over_ms: 5_000,
            create_spread: Duration::from_millis(spread_ms),
            update_spread: Duration::from_millis(spread_ms),
            ..Cluster::default()
        }
    }

    #[test]
    fn every_mapping_is_stored_and_the_run_is_deterministic() {
        let c = small(8, 500);
        let a = simulate(&c).unwrap();
        assert_eq!(a.mappings, 80);
        assert!(a.all_stored_ms.is_some(), "{a:?}");
        assert_eq!(a.calls, 400 * 4);
        assert_eq!(a.contended, 0);
        assert_eq!(simulate(&c).unwrap(), a);
        // At least one write per key, far fewer than one per registration.
        assert!(a.creates >= 40 && a.writes() < a.calls / 4, "{a:?}");
    }

    #[test]
    fn racing_creates_meet_409s_that_the_spread_removes() {
        // Every node flushes the same new keys at once.
        let burst = |spread| Cluster {
            over_ms: 100,
            ..small(20, spread)
        };
        let none = simulate(&burst(0)).unwrap();
        let spread = simulate(&burst(2_000)).unwrap();
        assert!(none.already_exists > 20, "{none:?}");
        assert!(
            spread.already_exists * 4 < none.already_exists,
            "{none:?} {spread:?}"
        );
        assert!(spread.all_stored_ms.is_some());
    }

    #[test]
    fn racing_updates_meet_409s_that_the_update_spread_cuts() {
        // Every node flushes the same keys at once, each with its own applications: one
        // node creates each object and the others all add theirs.
        let burst = |update_ms| Cluster {
            over_ms: 100,
            apps: 10,
            interfaces: 10,
            interfaces_per_app: 10,
            update_spread: Duration::from_millis(update_ms),
            round_robin: true,
            ..small(10, 500)
        };
        let none = simulate(&burst(0)).unwrap();
        let spread = simulate(&burst(2_000)).unwrap();
        assert_eq!(none.mappings, 100);
        assert!(none.conflicts > 20, "{none:?}");
        // The create spread already sets the writers apart; those that still collide
        // spread again and take the winner's version from the watch: fewer repeated
        // collisions, and hardly a GET.
        assert!(spread.conflicts * 2 < none.conflicts, "{none:?} {spread:?}");
        assert!(spread.gets * 4 < none.gets, "{none:?} {spread:?}");
        assert!(spread.updates < none.updates, "{none:?} {spread:?}");
        assert!(spread.all_stored_ms.is_some() && none.all_stored_ms.is_some());
        // Each object needs one create and nine updates, whoever writes them.
        assert!(spread.writes() >= 100, "{spread:?}");
    }

    #[test]
    fn one_node_never_conflicts() {
        let r = simulate(&small(1, 500)).unwrap();
        assert_eq!(r.all_409s(), 0);
        assert_eq!(r.creates, 40);
    }
}
