//! A rollout on a virtual clock, run through the very [`Debouncer`] the filter and the shim run.
//!
//! An operator describes a rollout ([`Rollout`]): how many replicas start, how many
//! interfaces each registers, how their start times spread, which Envoy sits in front of
//! them (none, a sidecar per replica, or a node proxy with workers), how many nodes, the
//! debounce windows of the filter and of the shim, and the retry backoff. [`simulate`]
//! plays it out with one `Debouncer` per Envoy worker (filter tier) and one per node (shim
//! tier) and a shared store, and reports every batch, the API writes, the conflicts between
//! nodes, and when every mapping was stored ([`Report`]).
//!
//! The simulation is deterministic: same input, same report, natively and in the browser
//! (the status page runs it compiled to wasm; its test compares the two byte for byte).
//!
//! The model, and where it simplifies:
//! * a replica sends one registration call per interface, `call_gap_ms` apart, from its
//!   start time; every replica is one application in namespace `default`;
//! * replica `r` runs on node `r % nodes`; in node-proxy mode its connection lands on
//!   worker `(r / nodes) % workers` of that node's Envoy; a sidecar is one debouncer per replica;
//! * a filter batch reaches the node's shim after `push_latency_ms` and is answered once
//!   the shim's store holds all of it (or after `ack_timeout_ms`, as a failure);
//! * a shim batch costs one API request of `request_ms` per key that needs a write (keys the
//!   store already holds cost none) and applies its writes when it completes; a key that
//!   another node changed in between counts one 409 conflict and one more write (the re-read
//!   and retry take no extra simulated time);
//! * during `outage`, the API answers nothing: batches that start or end in it fail.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snp_core::{Backoff, BatchId, DebounceConfig, Debouncer, Instant, MappingKey, Mappings};

/// Namespace every simulated replica registers into.
pub const NAMESPACE: &str = "default";
/// Application name of the simulated deployment.
pub const APPLICATION: &str = "demo-provider";

/// Largest number of replicas a simulation accepts.
pub const MAX_REPLICAS: u32 = 5_000;
/// Largest number of interfaces per replica (below the debouncer's batch cap, so batches
/// never split and the run is deterministic).
pub const MAX_INTERFACES: u32 = 1_000;
/// Largest number of registration calls in one simulation.
pub const MAX_CALLS: u64 = 500_000;
/// Largest number of nodes, and of workers per node.
pub const MAX_NODES: u32 = 1_000;
/// Virtual time after which a simulation stops (an hour).
pub const MAX_VIRTUAL_MS: u64 = 3_600_000;

/// How replicas' start times spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Evenly spaced over `over_ms`.
    Even,
    /// Uniformly at random over `over_ms` (seeded).
    Random,
    /// In waves of `wave_size` replicas (a rolling update's surge), evenly spaced over `over_ms`.
    Waves,
}

/// Start times of the replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StartSpread {
    /// Shape of the spread.
    pub pattern: Pattern,
    /// Time from the first start to the last.
    pub over_ms: u64,
    /// Replicas per wave (`waves` only).
    pub wave_size: u32,
    /// Seed of `random`.
    pub seed: u64,
}

impl Default for StartSpread {
    fn default() -> Self {
        Self {
            pattern: Pattern::Random,
            over_ms: 10_000,
            wave_size: 20,
            seed: 1,
        }
    }
}

/// What sits between the replicas and the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proxy {
    /// Proxyless: replicas call the node's shim directly.
    None,
    /// An Envoy sidecar per replica, with the snp filter.
    Sidecar,
    /// One Envoy per node with `workers` worker threads, each with its own filter VM.
    Node,
}

/// Debounce windows of one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Windows {
    /// Quiet period that ends a burst.
    pub debounce_after_ms: u64,
    /// Longest a burst is held.
    pub debounce_max_ms: u64,
    /// First check after a burst starts.
    pub first_check_ms: u64,
    /// Repeats of acknowledged mappings absorbed for this long (0: off).
    pub suppress_acked_ms: u64,
}

impl Default for Windows {
    fn default() -> Self {
        let d = DebounceConfig::default();
        Self {
            debounce_after_ms: ms(d.debounce_after),
            debounce_max_ms: ms(d.debounce_max),
            first_check_ms: ms(d.first_check),
            suppress_acked_ms: ms(d.suppress_acked_for),
        }
    }
}

/// Retry backoff of failed batches, in both tiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Unit: the n-th retry waits `base_ms << n`.
    pub base_ms: u64,
    /// Longest delay.
    pub cap_ms: u64,
    /// Fraction of a delay randomly taken off, in `[0, 1]`.
    pub jitter: f64,
}

impl Default for Retry {
    fn default() -> Self {
        let b = DebounceConfig::default().retry;
        Self {
            base_ms: ms(b.base),
            cap_ms: ms(b.cap),
            jitter: b.jitter,
        }
    }
}

/// A window in which the API server answers nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// First millisecond of the outage.
    pub start_ms: u64,
    /// First millisecond after it.
    pub end_ms: u64,
}

impl Outage {
    fn covers(&self, t: u64) -> bool {
        self.start_ms <= t && t < self.end_ms
    }
}

/// A rollout to simulate. Every field has a default (the seed's windows, 200 replicas x 20
/// interfaces over 10 s on 10 nodes with sidecars).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rollout {
    /// Replicas that start.
    pub replicas: u32,
    /// Interfaces each registers (one call each).
    pub interfaces: u32,
    /// Time between one replica's consecutive calls.
    pub call_gap_ms: u64,
    /// How the start times spread.
    pub start: StartSpread,
    /// Envoy in front of the replicas.
    pub proxy: Proxy,
    /// Worker threads per node Envoy (`node` proxy only).
    pub workers: u32,
    /// Nodes (one shim each).
    pub nodes: u32,
    /// One-way latency from a filter to its shim.
    pub push_latency_ms: u64,
    /// Duration of one API write request.
    pub request_ms: u64,
    /// Longest the shim holds a PushMappings call waiting for the store.
    pub ack_timeout_ms: u64,
    /// Windows of the filter's debouncers.
    pub filter: Windows,
    /// Windows of the shims' debouncers.
    pub shim: Windows,
    /// Backoff of failed batches.
    pub retry: Retry,
    /// An API outage, if any.
    pub outage: Option<Outage>,
    /// Seed of the backoff jitter.
    pub seed: u64,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            replicas: 200,
            interfaces: 20,
            call_gap_ms: 2,
            start: StartSpread::default(),
            proxy: Proxy::Sidecar,
            workers: 2,
            nodes: 10,
            push_latency_ms: 1,
            request_ms: 5,
            ack_timeout_ms: 10_000,
            filter: Windows::default(),
            shim: Windows::default(),
            retry: Retry::default(),
            outage: None,
            seed: 0x5eed,
        }
    }
}

/// Why a rollout cannot be simulated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRollout(pub String);

impl core::fmt::Display for InvalidRollout {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidRollout {}

/// One batch of a shim (a node), as the store saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimBatch {
    /// Node index.
    pub node: u32,
    /// When it left the debouncer.
    pub start_ms: u64,
    /// When the store answered.
    pub end_ms: u64,
    /// Keys it carried.
    pub keys: u32,
    /// Objects created.
    pub created: u32,
    /// Objects updated (union).
    pub updated: u32,
    /// Keys the store already held.
    pub unchanged: u32,
    /// 409 conflicts met (each cost one more write).
    pub conflicts: u32,
    /// Whether it succeeded (false: API outage; retried after backoff).
    pub ok: bool,
}

/// One batch of a filter (an Envoy worker), forwarded to its node's shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterBatch {
    /// Node index.
    pub node: u32,
    /// Envoy index on the node (sidecar: the replica; node proxy: the worker).
    pub envoy: u32,
    /// When it left the filter's debouncer.
    pub start_ms: u64,
    /// When the shim's answer reached the filter.
    pub end_ms: u64,
    /// Keys it carried.
    pub keys: u32,
    /// Whether the shim confirmed it.
    pub ok: bool,
}

/// What a rollout did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The input, with every default filled in.
    pub rollout: Rollout,
    /// Registration calls made.
    pub calls: u64,
    /// Time of the last call.
    pub last_call_ms: u64,
    /// Shim batches, in the order they ended.
    pub batches: Vec<ShimBatch>,
    /// Filter batches, in the order they ended (empty without a proxy).
    pub filter_batches: Vec<FilterBatch>,
    /// API write requests (creates, updates, and conflicts' retries).
    pub writes: u64,
    /// Creates.
    pub created: u64,
    /// Updates.
    pub updated: u64,
    /// 409 conflicts.
    pub conflicts: u64,
    /// Failed batches (both tiers).
    pub failed_batches: u64,
    /// When the store first held every mapping (none if it never did within the hour).
    pub all_stored_ms: Option<u64>,
    /// When the last batch ended and nothing was left.
    pub end_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn debounce_config(w: &Windows, retry: &Retry, seed: u64) -> DebounceConfig {
    let base = Duration::from_millis(retry.base_ms.max(1));
    let cap = Duration::from_millis(retry.cap_ms.max(retry.base_ms).max(1));
    let mut max_failures = 1u32;
    while max_failures < 31
        && base
            .checked_mul(1u32 << max_failures)
            .is_some_and(|d| d < cap)
    {
        max_failures += 1;
    }
    DebounceConfig {
        debounce_after: Duration::from_millis(w.debounce_after_ms),
        debounce_max: Duration::from_millis(w.debounce_max_ms),
        first_check: Duration::from_millis(w.first_check_ms),
        suppress_acked_for: Duration::from_millis(w.suppress_acked_ms),
        retry: Backoff::new(base, cap, max_failures).with_jitter(retry.jitter),
        seed,
        ..DebounceConfig::default()
    }
}

impl Rollout {
    /// Checks the limits that keep a run small and exact.
    pub fn validate(&self) -> Result<(), InvalidRollout> {
        let bad = |m: String| Err(InvalidRollout(m));
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return bad(format!("replicas must be 1 to {MAX_REPLICAS}"));
        }
        if self.interfaces == 0 || self.interfaces > MAX_INTERFACES {
            return bad(format!("interfaces must be 1 to {MAX_INTERFACES}"));
        }
        if u64::from(self.replicas) * u64::from(self.interfaces) > MAX_CALLS {
            return bad(format!(
                "replicas x interfaces must be at most {MAX_CALLS} calls"
            ));
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return bad(format!("nodes must be 1 to {MAX_NODES}"));
        }
        if self.proxy == Proxy::Node && (self.workers == 0 || self.workers > MAX_NODES) {
            return bad(format!("workers must be 1 to {MAX_NODES}"));
        }
        if self.start.pattern == Pattern::Waves && self.start.wave_size == 0 {
            return bad("start.wave_size must be at least 1".into());
        }
        if self.start.over_ms > MAX_VIRTUAL_MS / 2 || self.call_gap_ms > 60_000 {
            return bad("start.over_ms must be at most 30 minutes, call_gap_ms 1 minute".into());
        }
        for (tier, w) in [("filter", &self.filter), ("shim", &self.shim)] {
            if w.debounce_max_ms < w.debounce_after_ms {
                return bad(format!(
                    "{tier}.debounce_max_ms must not be below {tier}.debounce_after_ms"
                ));
            }
            if w.debounce_max_ms > 600_000 || w.first_check_ms > 600_000 {
                return bad(format!("{tier} windows must be at most 10 minutes"));
            }
        }
        if !(0.0..=1.0).contains(&self.retry.jitter) {
            return bad("retry.jitter must be within [0, 1]".into());
        }
        if self.retry.cap_ms > 600_000 || self.request_ms > 60_000 || self.push_latency_ms > 60_000
        {
            return bad(
                "retry.cap_ms, request_ms and push_latency_ms must be at most 10 minutes".into(),
            );
        }
        if self.ack_timeout_ms == 0 || self.ack_timeout_ms > 600_000 {
            return bad("ack_timeout_ms must be 1 ms to 10 minutes".into());
        }
        if let Some(o) = self.outage {
            if o.end_ms < o.start_ms {
                return bad("outage.end_ms must not be before outage.start_ms".into());
            }
        }
        Ok(())
    }

    /// Start time of each replica.
    fn starts(&self) -> Vec<u64> {
        let n = u64::from(self.replicas);
        let over = self.start.over_ms;
        match self.start.pattern {
            Pattern::Even => (0..n)
                .map(|r| if n > 1 { over * r / (n - 1) } else { 0 })
                .collect(),
            Pattern::Random => {
                let mut rng = snp_core::SplitMix64::new(self.start.seed);
                (0..n)
                    .map(|_| snp_core::Rng::next_u64(&mut rng) % (over + 1))
                    .collect()
            }
            Pattern::Waves => {
                let size = u64::from(self.start.wave_size.max(1));
                let waves = n.div_ceil(size);
                (0..n)
                    .map(|r| {
                        let w = r / size;
                        if waves > 1 {
                            over * w / (waves - 1)
                        } else {
                            0
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The interface name of the `i`-th interface.
pub fn interface_name(i: u32) -> String {
    format!("org.example.rollout.Service{i:04}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Replica `r` registers interface `i`.
    Call { replica: u32, interface: u32 },
    /// Debouncer `d` may have a batch due.
    Wake { deb: usize },
    /// Filter batch (`deb`, `batch`) reaches its shim.
    PushArrives { deb: usize, batch: u64 },
    /// A shim's answer to filter batch (`deb`, `batch`) reaches the filter.
    PushAnswered { deb: usize, batch: u64, ok: bool },
    /// The shim gives up waiting for the store on filter batch (`deb`, `batch`).
    AckTimeout { deb: usize, batch: u64 },
    /// Shim batch `batch` of node debouncer `deb` completes.
    WriteDone { deb: usize, batch: u64 },
}

struct Flight {
    start: u64,
    mappings: Mappings,
    /// Per key: the store revision read when the batch left (0: absent), and whether a
    /// write request was sent for it.
    seen: Vec<(u64, bool)>,
    fails: bool,
}

struct Waiter {
    deb: usize,
    batch: u64,
    mappings: Mappings,
}

struct Sim<'a> {
    r: &'a Rollout,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    /// Filter debouncers first, then one per node.
    debs: Vec<Debouncer>,
    /// Node of each debouncer, and its Envoy index for filter debouncers.
    place: Vec<(u32, u32)>,
    filters: usize,
    /// When each debouncer's pending wake-up is (to skip stale ones).
    wake_at: Vec<Option<u64>>,
    /// Filter batches in flight: (deb, batch) -> (start, mappings).
    filter_flights: BTreeMap<(usize, u64), (u64, Mappings)>,
    shim_flights: BTreeMap<(usize, u64), Flight>,
    /// Durable waiters per node debouncer.
    waiters: Vec<Vec<Waiter>>,
    store: BTreeMap<MappingKey, (snp_core::AppSet, u64)>,
    revision: u64,
    stored_keys: u64,
    report: Report,
}

impl Sim<'_> {
    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, e)));
    }

    fn shim_of(&self, node: u32) -> usize {
        self.filters + node as usize
    }

    fn in_outage(&self, t: u64) -> bool {
        self.r.outage.is_some_and(|o| o.covers(t))
    }

    /// Re-arms debouncer `d`'s wake-up after something changed it.
    fn arm(&mut self, d: usize, now: u64) {
        let next = self.debs[d].next_wakeup().map(|at| at.as_millis().max(now));
        if next.is_some() && next != self.wake_at[d] {
            self.wake_at[d] = next;
            if let Some(at) = next {
                self.push(at, Event::Wake { deb: d });
            }
        } else if next.is_none() {
            self.wake_at[d] = None;
        }
    }

    fn call(&mut self, now: u64, replica: u32, interface: u32) {
        self.report.calls += 1;
        self.report.last_call_ms = self.report.last_call_ms.max(now);
        let node = replica % self.r.nodes;
        let d = match self.r.proxy {
            Proxy::None => self.shim_of(node),
            Proxy::Sidecar => replica as usize,
            Proxy::Node => {
                (node * self.r.workers + (replica / self.r.nodes) % self.r.workers) as usize
            }
        };
        let iface = interface_name(interface);
        // Limits are far above what a validated rollout offers; a refusal is a lost call.
        let _ = self.debs[d].offer(Instant::from_millis(now), NAMESPACE, &iface, APPLICATION);
        self.arm(d, now);
    }

    fn poll(&mut self, d: usize, now: u64) {
        while let Some(batch) = self.debs[d].poll(Instant::from_millis(now)) {
            if d < self.filters {
                self.filter_flights
                    .insert((d, batch.id.0), (now, batch.mappings));
                self.push(
                    now + self.r.push_latency_ms,
                    Event::PushArrives {
                        deb: d,
                        batch: batch.id.0,
                    },
                );
            } else {
                self.dispatch_write(d, now, batch.id.0, batch.mappings);
            }
        }
        self.arm(d, now);
    }

    fn dispatch_write(&mut self, d: usize, now: u64, batch: u64, mappings: Mappings) {
        let mut seen = Vec::with_capacity(mappings.len());
        let mut requests = 0u32;
        for (key, apps) in mappings.iter() {
            let (rev, sent) = match self.store.get(key) {
                Some((held, rev)) => (*rev, !apps.is_subset(held)),
                None => (0, true),
            };
            requests += u32::from(sent);
            seen.push((rev, sent));
        }
        let fails_now = self.in_outage(now);
        let done = if fails_now {
            now + self.r.request_ms.max(1)
        } else {
            now + u64::from(requests) * self.r.request_ms
        };
        let fails = fails_now || (requests > 0 && self.in_outage(done));
        self.shim_flights.insert(
            (d, batch),
            Flight {
                start: now,
                mappings,
                seen,
                fails,
            },
        );
        self.push(done, Event::WriteDone { deb: d, batch });
    }

    fn write_done(&mut self, now: u64, d: usize, batch: u64) {
        let Some(f) = self.shim_flights.remove(&(d, batch)) else {
            return;
        };
        let node = self.place[d].0;
        let mut out = ShimBatch {
            node,
            start_ms: f.start,
            end_ms: now,
            keys: u32::try_from(f.mappings.len()).unwrap_or(u32::MAX),
            created: 0,
            updated: 0,
            unchanged: 0,
            conflicts: 0,
            ok: !f.fails,
        };
        if !f.fails {
            for ((key, apps), (seen, sent)) in f.mappings.iter().zip(&f.seen) {
                if !*sent {
                    // The store held it when the batch left: no request (union-only, so
                    // it still does).
                    out.unchanged += 1;
                    continue;
                }
                let current = self.store.get(key).map_or(0, |(_, rev)| *rev);
                if current != *seen {
                    // Another node wrote it since: 409, re-read, write again if needed.
                    out.conflicts += 1;
                }
                match self.store.get(key).cloned() {
                    Some((held, _)) if apps.is_subset(&held) => {}
                    Some((mut held, _)) => {
                        held.union(apps);
                        self.revision += 1;
                        self.store.insert(key.clone(), (held, self.revision));
                        out.updated += 1;
                    }
                    None => {
                        self.revision += 1;
                        self.store
                            .insert(key.clone(), (apps.clone(), self.revision));
                        self.stored_keys += 1;
                        out.created += 1;
                    }
                }
            }
            if self.report.all_stored_ms.is_none()
                && self.stored_keys == u64::from(self.r.interfaces)
            {
                self.report.all_stored_ms = Some(now);
            }
        } else {
            self.report.failed_batches += 1;
        }
        self.report.created += u64::from(out.created);
        self.report.updated += u64::from(out.updated);
        self.report.conflicts += u64::from(out.conflicts);
        self.report.writes += u64::from(out.created + out.updated + out.conflicts);
        self.report.batches.push(out);
        self.debs[d].complete(Instant::from_millis(now), BatchId(batch), !f.fails);
        if !f.fails {
            self.release_waiters(d, now);
        }
        self.poll(d, now);
    }

    fn holds_all(&self, mappings: &Mappings) -> bool {
        mappings.iter().all(|(key, apps)| {
            self.store
                .get(key)
                .is_some_and(|(held, _)| apps.is_subset(held))
        })
    }

    fn push_arrives(&mut self, now: u64, deb: usize, batch: u64) {
        let Some((_, mappings)) = self.filter_flights.get(&(deb, batch)) else {
            return;
        };
        let mappings = mappings.clone();
        let reply_at = now + self.r.push_latency_ms;
        if self.holds_all(&mappings) {
            self.push(
                reply_at,
                Event::PushAnswered {
                    deb,
                    batch,
                    ok: true,
                },
            );
            return;
        }
        let shim = self.shim_of(self.place[deb].0);
        let t = Instant::from_millis(now);
        for (key, apps) in mappings.iter() {
            for app in apps.iter() {
                let _ = self.debs[shim].offer(t, &key.namespace, &key.interface, app);
            }
        }
        self.waiters[shim - self.filters].push(Waiter {
            deb,
            batch,
            mappings,
        });
        self.push(
            now + self.r.ack_timeout_ms,
            Event::AckTimeout { deb, batch },
        );
        self.arm(shim, now);
    }

    fn release_waiters(&mut self, shim: usize, now: u64) {
        let idx = shim - self.filters;
        let waiters = std::mem::take(&mut self.waiters[idx]);
        let (done, keep): (Vec<Waiter>, Vec<Waiter>) = waiters
            .into_iter()
            .partition(|w| self.holds_all(&w.mappings));
        self.waiters[idx] = keep;
        for w in done {
            self.push(
                now + self.r.push_latency_ms,
                Event::PushAnswered {
                    deb: w.deb,
                    batch: w.batch,
                    ok: true,
                },
            );
        }
    }

    fn ack_timeout(&mut self, now: u64, deb: usize, batch: u64) {
        let shim = self.shim_of(self.place[deb].0) - self.filters;
        let before = self.waiters[shim].len();
        self.waiters[shim].retain(|w| !(w.deb == deb && w.batch == batch));
        if self.waiters[shim].len() < before {
            self.push(
                now + self.r.push_latency_ms,
                Event::PushAnswered {
                    deb,
                    batch,
                    ok: false,
                },
            );
        }
    }

    fn push_answered(&mut self, now: u64, deb: usize, batch: u64, ok: bool) {
        let Some((start, mappings)) = self.filter_flights.remove(&(deb, batch)) else {
            return;
        };
        let (node, envoy) = self.place[deb];
        self.report.filter_batches.push(FilterBatch {
            node,
            envoy,
            start_ms: start,
            end_ms: now,
            keys: u32::try_from(mappings.len()).unwrap_or(u32::MAX),
            ok,
        });
        if !ok {
            self.report.failed_batches += 1;
        }
        self.debs[deb].complete(Instant::from_millis(now), BatchId(batch), ok);
        self.poll(deb, now);
    }

    fn run(mut self) -> Report {
        let mut calls: Vec<(u64, u32)> = self.r.starts().into_iter().zip(0u32..).collect();
        calls.sort_unstable();
        for (start, replica) in calls {
            for i in 0..self.r.interfaces {
                let at = start + u64::from(i) * self.r.call_gap_ms;
                self.push(
                    at,
                    Event::Call {
                        replica,
                        interface: i,
                    },
                );
            }
        }
        while let Some(Reverse((now, _, event))) = self.queue.pop() {
            if now > MAX_VIRTUAL_MS {
                break;
            }
            self.report.end_ms = now;
            match event {
                Event::Call { replica, interface } => self.call(now, replica, interface),
                Event::Wake { deb } => {
                    if self.wake_at[deb] == Some(now) {
                        self.wake_at[deb] = None;
                        self.poll(deb, now);
                    }
                }
                Event::PushArrives { deb, batch } => self.push_arrives(now, deb, batch),
                Event::PushAnswered { deb, batch, ok } => self.push_answered(now, deb, batch, ok),
                Event::AckTimeout { deb, batch } => self.ack_timeout(now, deb, batch),
                Event::WriteDone { deb, batch } => self.write_done(now, deb, batch),
            }
        }
        self.report
    }
}

/// Plays `rollout` out on a virtual clock.
pub fn simulate(rollout: &Rollout) -> Result<Report, InvalidRollout> {
    rollout.validate()?;
    let r = rollout;
    let mut place = Vec::new();
    match r.proxy {
        Proxy::None => {}
        Proxy::Sidecar => place.extend((0..r.replicas).map(|rep| (rep % r.nodes, rep / r.nodes))),
        Proxy::Node => {
            for node in 0..r.nodes {
                place.extend((0..r.workers).map(|w| (node, w)));
            }
        }
    }
    let filters = place.len();
    place.extend((0..r.nodes).map(|n| (n, 0)));
    let mut debs = Vec::with_capacity(place.len());
    for (i, _) in place.iter().enumerate() {
        let (w, seed) = if i < filters {
            (&r.filter, r.seed ^ (i as u64).wrapping_mul(0x9e37_79b9))
        } else {
            (&r.shim, r.seed ^ ((i as u64) << 32))
        };
        debs.push(Debouncer::new(debounce_config(w, &r.retry, seed)));
    }
    let sim = Sim {
        r,
        queue: BinaryHeap::new(),
        seq: 0,
        wake_at: vec![None; debs.len()],
        debs,
        place,
        filters,
        filter_flights: BTreeMap::new(),
        shim_flights: BTreeMap::new(),
        waiters: (0..r.nodes).map(|_| Vec::new()).collect(),
        store: BTreeMap::new(),
        revision: 0,
        stored_keys: 0,
        report: Report {
            rollout: r.clone(),
            calls: 0,
            last_call_ms: 0,
            batches: Vec::new(),
            filter_batches: Vec::new(),
            writes: 0,
            created: 0,
            updated: 0,
            conflicts: 0,
            failed_batches: 0,
            all_stored_ms: None,
            end_ms: 0,
        },
    };
    Ok(sim.run())
}

/// [`simulate`] from JSON to JSON: what the browser and the native CLI both call, so
/// their outputs can be compared byte for byte.
pub fn simulate_json(input: &str) -> Result<String, String> {
    let rollout: Rollout = if input.trim().is_empty() {
        Rollout::default()
    } else {
        serde_json::from_str(input).map_err(|e| format!("invalid rollout: {e}"))?
    };
    let report = simulate(&rollout).map_err(|e| format!("invalid rollout: {e}"))?;
    serde_json::to_string(&report).map_err(|e| format!("encoding the report: {e}"))
}

/// The default [`Rollout`] as JSON.
pub fn default_rollout_json() -> String {
    serde_json::to_string(&Rollout::default()).unwrap_or_default()
}
