//! The registration debouncer: the seed server's storm absorber as a sans-io state machine.
//!
//! Every replica of a deployment registers the same mappings within seconds. The debouncer
//! merges them per `(namespace, interface)` and releases them as batches:
//!
//! * a burst starts with the first registration while nothing is pending;
//! * the first check is `first_check` (200 ms) after the burst starts;
//! * the batch goes once the burst has been quiet for `debounce_after` (100 ms), or is
//!   `debounce_max` (1 s) old, whichever comes first.
//!
//! At most one batch is in flight. Unlike the seed, whose timer could fire during a push
//! and leave later registrations stranded until the next burst, the caller asks again
//! ([`Debouncer::poll`]) right after every [`Debouncer::complete`], and the deadline is
//! recomputed from state, not from a timer that can be lost. Memory is bounded per key,
//! not per request.
//!
//! # Outcomes are per key
//!
//! The receiver reports each key of a batch ([`Debouncer::complete_with`]):
//!
//! * **stored**: done;
//! * **transient** failure: the key waits its *own* [`Backoff`] delay (keys that failed
//!   together with the same failure count share one jittered delay, so they retry as one
//!   batch) and then goes in the next batch; every other key goes in the next batch as if
//!   nothing happened. Nothing acknowledged is ever dropped;
//! * **permanent** failure: the key is *parked*. It leaves the pending set and waits in a
//!   bounded parked set with its reason and when it was last tried, and is probed again on
//!   a slow schedule (`park_probe`, default 5 min). Offers for a parked key join it and
//!   are answered [`Offered::Parked`], so callers can be told at once. When the parked set
//!   is full, the key parked longest ago is dropped (reported by `complete_with`).
//!
//! [`Debouncer::complete`] is the whole-batch form (every key stored, or every key
//! transient).
//!
//! Driving loop (filter `on_tick`, shim task):
//! ```
//! # use snp_core::{Debouncer, DebounceConfig, Instant};
//! let mut d = Debouncer::new(DebounceConfig::default());
//! d.offer(Instant::from_millis(0), "default", "org.example.Greeter", "greeter").unwrap();
//! assert!(d.poll(Instant::from_millis(150)).is_none()); // before the first check
//! let batch = d.poll(Instant::from_millis(200)).unwrap();
//! // ... send batch.mappings, then report the outcome and poll again at once:
//! d.complete(Instant::from_millis(230), batch.id, true);
//! assert!(d.poll(Instant::from_millis(230)).is_none());
//! ```

use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use hashbrown::{Equivalent, HashMap};

use crate::backoff::{Backoff, SplitMix64};
use crate::model::{AppSet, MappingKey, Mappings};
use crate::time::Instant;

/// Tuning of a [`Debouncer`]. The defaults are the seed server's, except where noted.
#[derive(Debug, Clone, PartialEq)]
pub struct DebounceConfig {
    /// Debounce at all. When off, whatever is pending goes out at once, up to
    /// `max_in_flight` batches concurrently (default: on, as in the seed).
    pub enabled: bool,
    /// Quiet period that ends a burst (default 100 ms).
    pub debounce_after: Duration,
    /// Longest a burst is held (default 1 s).
    pub debounce_max: Duration,
    /// Delay of the first check after a burst starts (default 200 ms).
    pub first_check: Duration,
    /// Concurrent batches when debouncing is off (default 4). With debouncing on, 1.
    pub max_in_flight: usize,
    /// Distinct keys that may be pending; new keys beyond it are refused (default 100,000).
    pub max_pending_keys: usize,
    /// Application names per key; new names beyond it are refused (default 1,024).
    pub max_apps_per_key: usize,
    /// Keys per batch, so one message stays small (default 2,048). The rest follows at once.
    pub max_batch_keys: usize,
    /// After a batch is acknowledged, repeats of its mappings within this window are
    /// absorbed without another batch (default 60 s; zero disables). Not in the seed: it
    /// turns a rollout's thousands of identical calls into one batch instead of one per
    /// window. The store is union-only, so a repeat could not change it anyway.
    pub suppress_acked_for: Duration,
    /// `(key, application)` pairs remembered as acknowledged at most (default 65,536);
    /// beyond it the pair acknowledged longest ago is forgotten first. Each pair expires
    /// `suppress_acked_for` after its own acknowledgement, so memory stays bounded however
    /// busy a key is.
    pub max_acked_entries: usize,
    /// Retry policy of a key that failed transiently (default 500 ms base, so its first
    /// retry comes after 1 s, then 2 s, 4 s ... capped at 30 s, with 20 % jitter).
    pub retry: Backoff,
    /// How often a parked key (a permanent failure) is tried again (default 5 min).
    pub park_probe: Duration,
    /// Parked keys kept at most (default 10,000); beyond it the key parked longest ago is
    /// dropped.
    pub max_parked_keys: usize,
    /// Seed of the jitter generator.
    pub seed: u64,
}

impl Default for DebounceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            debounce_after: Duration::from_millis(100),
            debounce_max: Duration::from_secs(1),
            first_check: Duration::from_millis(200),
            max_in_flight: 4,
            max_pending_keys: 100_000,
            max_apps_per_key: 1024,
            max_batch_keys: 2048,
            suppress_acked_for: Duration::from_secs(60),
            max_acked_entries: 65_536,
            retry: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(30),
                max_failures: 6,
                jitter: 0.2,
            },
            park_probe: Duration::from_secs(300),
            max_parked_keys: 10_000,
            seed: 0x5eed,
        }
    }
}

/// Identifies a batch handed out by [`Debouncer::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(pub u64);

impl core::fmt::Display for BatchId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Merged mappings to deliver, then report with [`Debouncer::complete`].
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Its id, for `complete`.
    pub id: BatchId,
    /// What to deliver.
    pub mappings: Mappings,
}

/// Why a registration was refused. Nothing of a refused registration is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The pending set holds `max_pending_keys` keys and this one is new.
    #[error("too many pending mappings ({limit} keys); retry later")]
    PendingFull {
        /// The configured limit.
        limit: usize,
    },
    /// The key holds `max_apps_per_key` applications and this one is new.
    #[error("interface {key} already has {limit} pending applications")]
    TooManyApps {
        /// The key.
        key: String,
        /// The configured limit.
        limit: usize,
    },
}

/// What became of an accepted registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued for the next batch (new, or merged with what is pending).
    Pending,
    /// Already acknowledged by the receiver recently; nothing to send.
    Acknowledged,
    /// Carried by a batch in flight: nothing to queue. It is acknowledged with that batch,
    /// or merged back and retried if the batch fails. Re-queuing it would only open another
    /// burst, and another batch, for nothing.
    InFlight,
    /// The key is parked after a permanent failure: the registration joins it and is tried
    /// with the next probe. See [`Debouncer::parked`] for why.
    Parked,
}

/// Counts of an accepted multi-interface registration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OfferSummary {
    /// Interfaces queued.
    pub pending: usize,
    /// Interfaces already acknowledged.
    pub acknowledged: usize,
    /// Interfaces carried by a batch in flight.
    pub in_flight: usize,
    /// Interfaces whose key is parked.
    pub parked: usize,
}

/// What the receiver did with one key of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyResult {
    /// The receiver holds it.
    Stored,
    /// Not stored; a retry may succeed.
    Transient,
    /// Not stored, and retrying will not help until someone changes the receiver's world.
    Permanent {
        /// A short, stable reason code (for metrics).
        reason: String,
        /// What failed and why (for logs and callers).
        message: String,
    },
}

/// A key parked after a permanent failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// Applications waiting for the key.
    pub apps: AppSet,
    /// Reason code of the last failure.
    pub reason: String,
    /// What failed and why, as the receiver said.
    pub message: String,
    /// When it was first parked.
    pub since: Instant,
    /// When it was last tried.
    pub last_tried: Instant,
    /// When it is probed next.
    pub next_probe: Instant,
    /// Attempts that failed permanently in a row.
    pub tries: u32,
}

/// What [`Debouncer::complete_with`] did with a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completed {
    /// Mappings now held by the receiver (a caller holding replies can release them).
    pub stored: Mappings,
    /// Keys that failed transiently and wait their backoff.
    pub retrying: Vec<MappingKey>,
    /// Keys parked now (newly, or again after a probe).
    pub parked: Vec<MappingKey>,
    /// Keys dropped from a full parked set, with their applications.
    pub evicted: Vec<(MappingKey, Parked)>,
}

/// A key waiting its own backoff after a transient failure.
#[derive(Debug, Clone)]
struct Retry {
    apps: AppSet,
    failures: u32,
    at: Instant,
}

/// A batch handed out and not completed.
#[derive(Debug)]
struct Flight {
    mappings: Mappings,
    /// Failure counts of the keys that had failed before.
    failures: HashMap<MappingKey, u32>,
    /// Parked keys being probed, as they were parked.
    probing: HashMap<MappingKey, Parked>,
}

/// Borrowed form of [`MappingKey`] for allocation-free lookups. Its derived `Hash`
/// equals `MappingKey`'s, field for field, as hashbrown requires.
#[derive(Hash)]
struct KeyRef<'a> {
    namespace: &'a str,
    interface: &'a str,
}

impl Equivalent<MappingKey> for KeyRef<'_> {
    fn equivalent(&self, key: &MappingKey) -> bool {
        self.namespace == key.namespace && self.interface == key.interface
    }
}

/// Mappings the receiver acknowledged recently, per application: each `(key, app)` pair
/// expires on its own, so a key that keeps gaining applications does not keep the old
/// ones alive, and at most `max_acked_entries` pairs are kept, oldest dropped first.
#[derive(Debug, Default)]
struct Acked {
    pairs: HashMap<MappingKey, BTreeMap<String, Instant>>,
    /// Acknowledgements, oldest first. An entry whose pair was acknowledged again later
    /// (its time no longer matches) is stale and skipped.
    order: VecDeque<(Instant, MappingKey, String)>,
    /// Pairs in `pairs`.
    live: usize,
}

impl Acked {
    fn at(&self, key: &KeyRef<'_>, app: &str) -> Option<Instant> {
        self.pairs.get(key).and_then(|apps| apps.get(app)).copied()
    }

    fn remember(&mut self, now: Instant, mappings: &Mappings, max: usize) {
        for (key, apps) in mappings.iter() {
            let known = self.pairs.entry(key.clone()).or_default();
            for app in apps.iter() {
                if known.insert(app.to_owned(), now).is_none() {
                    self.live += 1;
                }
                self.order.push_back((now, key.clone(), app.to_owned()));
            }
        }
        while self.live > max {
            if !self.pop_oldest() {
                break;
            }
        }
        // Stale entries (pairs acknowledged again) are dropped when they outnumber the live.
        if self.order.len() > 2 * self.live + 64 {
            let pairs = &self.pairs;
            self.order.retain(|(at, key, app)| {
                pairs.get(key).and_then(|a| a.get(app.as_str())) == Some(at)
            });
        }
    }

    /// Forgets pairs acknowledged `ttl` or longer before `now`.
    fn expire(&mut self, now: Instant, ttl: Duration) {
        while self.order.front().is_some_and(|(at, ..)| *at + ttl <= now) {
            self.pop_oldest();
        }
    }

    /// Drops the oldest entry, and its pair if the entry is its latest acknowledgement.
    fn pop_oldest(&mut self) -> bool {
        let Some((at, key, app)) = self.order.pop_front() else {
            return false;
        };
        if let Some(apps) = self.pairs.get_mut(&key) {
            if apps.get(app.as_str()) == Some(&at) {
                apps.remove(app.as_str());
                self.live = self.live.saturating_sub(1);
                if apps.is_empty() {
                    self.pairs.remove(&key);
                }
            }
        }
        true
    }
}

#[derive(Debug, Clone, Copy)]
struct Burst {
    start: Instant,
    last: Instant,
}

/// The debouncer. See the module docs.
#[derive(Debug)]
pub struct Debouncer {
    cfg: DebounceConfig,
    pending: HashMap<MappingKey, AppSet>,
    burst: Option<Burst>,
    /// Pending entries are due regardless of the windows (leftover of a capped batch,
    /// or a flush).
    ready: bool,
    /// Keys backing off after a transient failure (not in `pending`).
    retrying: HashMap<MappingKey, Retry>,
    /// Retry times, earliest first (entries whose key moved on are skipped).
    retry_queue: BTreeMap<Instant, Vec<MappingKey>>,
    /// Keys parked after a permanent failure (not in `pending` nor `retrying`).
    parked: HashMap<MappingKey, Parked>,
    /// Probe times of parked keys, earliest first (stale entries skipped).
    probe_queue: BTreeMap<Instant, Vec<MappingKey>>,
    in_flight: BTreeMap<BatchId, Flight>,
    /// How many keys (backing off or in flight) have each failure count, so the highest
    /// is known without a scan.
    failure_counts: BTreeMap<u32, usize>,
    /// Union of the in-flight batches, for allocation-free "already carried" lookups.
    flying: HashMap<MappingKey, AppSet>,
    acked: Acked,
    next_id: u64,
    rng: SplitMix64,
}

impl Debouncer {
    /// A debouncer with nothing pending.
    pub fn new(cfg: DebounceConfig) -> Self {
        let rng = SplitMix64::new(cfg.seed);
        Self {
            cfg,
            pending: HashMap::new(),
            burst: None,
            ready: false,
            retrying: HashMap::new(),
            retry_queue: BTreeMap::new(),
            parked: HashMap::new(),
            probe_queue: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            failure_counts: BTreeMap::new(),
            flying: HashMap::new(),
            acked: Acked::default(),
            next_id: 1,
            rng,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DebounceConfig {
        &self.cfg
    }

    /// Accepts one `(namespace, interface) <- app` registration.
    pub fn offer(
        &mut self,
        now: Instant,
        namespace: &str,
        interface: &str,
        app: &str,
    ) -> Result<Offered, OfferError> {
        self.acked.expire(now, self.cfg.suppress_acked_for);
        let key = KeyRef {
            namespace,
            interface,
        };
        if self.is_acked(now, &key, app) {
            return Ok(Offered::Acknowledged);
        }
        if self.is_flying(&key, app) {
            return Ok(Offered::InFlight);
        }
        self.check_capacity(&key, app)?;
        Ok(self.insert_pending(now, key, app))
    }

    /// Accepts a registration of several interfaces for one application: all of them, or
    /// none if any would exceed a limit.
    pub fn offer_all<S: AsRef<str>>(
        &mut self,
        now: Instant,
        namespace: &str,
        app: &str,
        interfaces: &[S],
    ) -> Result<OfferSummary, OfferError> {
        self.acked.expire(now, self.cfg.suppress_acked_for);
        let mut new_keys = 0usize;
        for interface in interfaces {
            let key = KeyRef {
                namespace,
                interface: interface.as_ref(),
            };
            if self.is_acked(now, &key, app) || self.is_flying(&key, app) {
                continue;
            }
            match self.waiting_apps(&key) {
                Some(apps) if !apps.contains(app) && apps.len() >= self.cfg.max_apps_per_key => {
                    return Err(self.too_many_apps(&key));
                }
                Some(_) => {}
                None => new_keys += 1,
            }
        }
        if new_keys > 0 && self.waiting_keys() + new_keys > self.cfg.max_pending_keys {
            return Err(OfferError::PendingFull {
                limit: self.cfg.max_pending_keys,
            });
        }
        let mut summary = OfferSummary::default();
        for interface in interfaces {
            let key = KeyRef {
                namespace,
                interface: interface.as_ref(),
            };
            if self.is_acked(now, &key, app) {
                summary.acknowledged += 1;
            } else if self.is_flying(&key, app) {
                summary.in_flight += 1;
            } else {
                match self.insert_pending(now, key, app) {
                    Offered::Parked => summary.parked += 1,
                    _ => summary.pending += 1,
                }
            }
        }
        Ok(summary)
    }

    fn is_acked(&self, now: Instant, key: &KeyRef<'_>, app: &str) -> bool {
        !self.cfg.suppress_acked_for.is_zero()
            && self
                .acked
                .at(key, app)
                .is_some_and(|at| now < at + self.cfg.suppress_acked_for)
    }

    fn is_flying(&self, key: &KeyRef<'_>, app: &str) -> bool {
        !self.flying.is_empty() && self.flying.get(key).is_some_and(|apps| apps.contains(app))
    }

    fn too_many_apps(&self, key: &KeyRef<'_>) -> OfferError {
        OfferError::TooManyApps {
            key: format!("{}/{}", key.namespace, key.interface),
            limit: self.cfg.max_apps_per_key,
        }
    }

    /// The applications waiting for `key`: pending, backing off, or parked.
    fn waiting_apps(&self, key: &KeyRef<'_>) -> Option<&AppSet> {
        self.pending
            .get(key)
            .or_else(|| self.retrying.get(key).map(|r| &r.apps))
            .or_else(|| self.parked.get(key).map(|p| &p.apps))
    }

    /// Keys that count against `max_pending_keys`: pending and backing off.
    fn waiting_keys(&self) -> usize {
        self.pending.len() + self.retrying.len()
    }

    fn check_capacity(&self, key: &KeyRef<'_>, app: &str) -> Result<(), OfferError> {
        match self.waiting_apps(key) {
            Some(apps) if !apps.contains(app) && apps.len() >= self.cfg.max_apps_per_key => {
                Err(self.too_many_apps(key))
            }
            Some(_) => Ok(()),
            None if self.waiting_keys() >= self.cfg.max_pending_keys => {
                Err(OfferError::PendingFull {
                    limit: self.cfg.max_pending_keys,
                })
            }
            None => Ok(()),
        }
    }

    fn insert_pending(&mut self, now: Instant, key: KeyRef<'_>, app: &str) -> Offered {
        if let Some(p) = self.parked.get_mut(&key) {
            p.apps.insert(app);
            return Offered::Parked;
        }
        if let Some(r) = self.retrying.get_mut(&key) {
            // It goes with the key's retry.
            r.apps.insert(app);
            return Offered::Pending;
        }
        match self.pending.get_mut(&key) {
            Some(apps) => {
                apps.insert(app);
            }
            None => {
                let mut apps = AppSet::new();
                apps.insert(app);
                self.pending
                    .insert(MappingKey::new(key.namespace, key.interface), apps);
            }
        }
        // Every registration is activity, as in the seed: a storm keeps the burst open
        // until it is quiet or `debounce_max` old.
        match &mut self.burst {
            Some(b) => b.last = now,
            None => {
                self.burst = Some(Burst {
                    start: now,
                    last: now,
                })
            }
        }
        Offered::Pending
    }

    fn in_flight_limit(&self) -> usize {
        if self.cfg.enabled {
            1
        } else {
            self.cfg.max_in_flight.max(1)
        }
    }

    /// When the pending set (fresh keys) becomes due; `None` if it is empty.
    fn burst_due_at(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        let burst = self.burst?;
        if self.ready || !self.cfg.enabled {
            return Some(burst.start);
        }
        let first = burst.start + self.cfg.first_check;
        let quiet = burst.last + self.cfg.debounce_after;
        let cap = burst.start + self.cfg.debounce_max;
        Some(first.max(quiet.min(cap)))
    }

    /// When anything becomes due: fresh keys, a retry, or a probe.
    fn due_at(&self) -> Option<Instant> {
        let retry = self.retry_queue.keys().next().copied();
        let probe = self.probe_queue.keys().next().copied();
        [self.burst_due_at(), retry, probe]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the caller should call [`Debouncer::poll`] next. `None` means only a new
    /// offer or a completion can make a batch due. An instant in the past means now.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.in_flight.len() >= self.in_flight_limit() {
            return None;
        }
        self.due_at()
    }

    /// Hands out the next batch if one is due at `now` and a slot is free: keys whose
    /// retry or probe time has come, and the pending set if its windows allow.
    pub fn poll(&mut self, now: Instant) -> Option<Batch> {
        if self.in_flight.len() >= self.in_flight_limit() || self.due_at()? > now {
            return None;
        }
        let limit = self.cfg.max_batch_keys.max(1);
        let mut flight = Flight {
            mappings: Mappings::new(),
            failures: HashMap::new(),
            probing: HashMap::new(),
        };
        self.take_retries(now, limit, &mut flight);
        self.take_probes(now, limit, &mut flight);
        if self.burst_due_at().is_some_and(|at| at <= now) && flight.mappings.len() < limit {
            let room = limit - flight.mappings.len();
            let fresh = self.take_pending(room);
            flight.mappings.union_owned(fresh);
            if self.pending.is_empty() {
                self.burst = None;
                self.ready = false;
            } else {
                self.ready = true;
            }
        }
        if flight.mappings.is_empty() {
            return None;
        }
        let id = BatchId(self.next_id);
        self.next_id += 1;
        for (key, apps) in flight.mappings.iter() {
            union_into(&mut self.flying, key, apps);
        }
        let mappings = flight.mappings.clone();
        self.in_flight.insert(id, flight);
        Some(Batch { id, mappings })
    }

    fn take_retries(&mut self, now: Instant, limit: usize, flight: &mut Flight) {
        let room = limit.saturating_sub(flight.mappings.len());
        for (at, key) in pop_due(&mut self.retry_queue, now, room) {
            // Only if the key still waits for this very time (else the entry is stale).
            if self.retrying.get(&key).is_some_and(|r| r.at == at) {
                if let Some(r) = self.retrying.remove(&key) {
                    flight.failures.insert(key.clone(), r.failures);
                    flight.mappings.insert_set(key, &r.apps);
                }
            }
        }
    }

    fn take_probes(&mut self, now: Instant, limit: usize, flight: &mut Flight) {
        let room = limit.saturating_sub(flight.mappings.len());
        for (at, key) in pop_due(&mut self.probe_queue, now, room) {
            if self.parked.get(&key).is_some_and(|p| p.next_probe == at) {
                if let Some(p) = self.parked.remove(&key) {
                    flight.mappings.insert_set(key.clone(), &p.apps);
                    flight.probing.insert(key, p);
                }
            }
        }
    }

    fn take_pending(&mut self, limit: usize) -> Mappings {
        if self.pending.len() <= limit {
            return self.pending.drain().collect();
        }
        let keys: Vec<MappingKey> = self.pending.keys().take(limit).cloned().collect();
        keys.into_iter()
            .filter_map(|k| self.pending.remove(&k).map(|apps| (k, apps)))
            .collect()
    }

    /// Reports batch `id` as a whole: every key stored (`ok`), or every key failed
    /// transiently. On success returns its mappings (now durable, so a caller holding
    /// replies can release them). Call [`Debouncer::poll`] right after: more may be due.
    pub fn complete(&mut self, now: Instant, id: BatchId, ok: bool) -> Option<Mappings> {
        let result = if ok {
            KeyResult::Stored
        } else {
            KeyResult::Transient
        };
        let done = self.complete_with(now, id, |_| result.clone())?;
        ok.then_some(done.stored)
    }

    /// Reports batch `id` key by key: `result` says what became of each key. Stored keys
    /// are done; transient ones wait their own backoff; permanent ones are parked. `None`
    /// for an unknown batch. Call [`Debouncer::poll`] right after: more may be due.
    pub fn complete_with(
        &mut self,
        now: Instant,
        id: BatchId,
        mut result: impl FnMut(&MappingKey) -> KeyResult,
    ) -> Option<Completed> {
        let Flight {
            mappings,
            failures,
            mut probing,
        } = self.in_flight.remove(&id)?;
        self.flying.clear();
        for f in self.in_flight.values() {
            for (key, apps) in f.mappings.iter() {
                union_into(&mut self.flying, key, apps);
            }
        }
        for n in failures.values() {
            self.count_failure(*n, false);
        }
        let mut done = Completed::default();
        // One jittered delay per failure count, so keys that failed together retry together.
        let mut delays: BTreeMap<u32, Instant> = BTreeMap::new();
        for (key, apps) in mappings.iter() {
            match result(key) {
                KeyResult::Stored => {
                    done.stored.insert_set(key.clone(), apps);
                }
                KeyResult::Transient => {
                    let prev = failures.get(key).copied().unwrap_or(0);
                    let n = self.cfg.retry.next_failures(prev);
                    self.count_failure(n, true);
                    let at = match delays.get(&n) {
                        Some(at) => *at,
                        None => {
                            let at = now + self.cfg.retry.delay_with_jitter(n, &mut self.rng);
                            delays.insert(n, at);
                            at
                        }
                    };
                    let mut all = apps.clone();
                    if let Some(more) = self.pending.remove(key) {
                        all.union(&more);
                    }
                    if let Some(p) = probing.remove(key) {
                        all.union(&p.apps);
                    }
                    self.retrying.insert(
                        key.clone(),
                        Retry {
                            apps: all,
                            failures: n,
                            at,
                        },
                    );
                    self.retry_queue.entry(at).or_default().push(key.clone());
                    done.retrying.push(key.clone());
                }
                KeyResult::Permanent { reason, message } => {
                    let mut all = apps.clone();
                    if let Some(more) = self.pending.remove(key) {
                        all.union(&more);
                    }
                    let before = probing.remove(key);
                    let next_probe = now + self.cfg.park_probe;
                    let parked = Parked {
                        apps: all,
                        reason,
                        message,
                        since: before.as_ref().map_or(now, |p| p.since),
                        last_tried: now,
                        next_probe,
                        tries: before.as_ref().map_or(1, |p| p.tries.saturating_add(1)),
                    };
                    if let Some(evicted) = self.make_room_in_parked() {
                        done.evicted.push(evicted);
                    }
                    self.parked.insert(key.clone(), parked);
                    self.probe_queue
                        .entry(next_probe)
                        .or_default()
                        .push(key.clone());
                    done.parked.push(key.clone());
                }
            }
        }
        if self.pending.is_empty() {
            self.burst = None;
            self.ready = false;
        }
        self.remember_acked(now, &done.stored);
        Some(done)
    }

    /// Counts one more (`add`) or one less key with `n` failures.
    fn count_failure(&mut self, n: u32, add: bool) {
        if n == 0 {
            return;
        }
        if add {
            *self.failure_counts.entry(n).or_default() += 1;
        } else if let Some(c) = self.failure_counts.get_mut(&n) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.failure_counts.remove(&n);
            }
        }
    }

    /// Drops the key parked longest ago if the parked set is full.
    fn make_room_in_parked(&mut self) -> Option<(MappingKey, Parked)> {
        if self.parked.len() < self.cfg.max_parked_keys.max(1) {
            return None;
        }
        let oldest = self
            .parked
            .iter()
            .min_by_key(|(_, p)| (p.since, p.last_tried))
            .map(|(k, _)| k.clone())?;
        let p = self.parked.remove(&oldest)?;
        Some((oldest, p))
    }

    fn remember_acked(&mut self, now: Instant, mappings: &Mappings) {
        if self.cfg.suppress_acked_for.is_zero() {
            return;
        }
        self.acked.expire(now, self.cfg.suppress_acked_for);
        self.acked
            .remember(now, mappings, self.cfg.max_acked_entries);
    }

    /// Makes everything pending due at once, ignoring the debounce windows (not a retry
    /// backoff). For shutdown: flush, then poll until idle.
    pub fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.ready = true;
            if self.burst.is_none() {
                self.burst = Some(Burst {
                    start: Instant::ZERO,
                    last: Instant::ZERO,
                });
            }
        }
    }

    /// Moves every backing-off key's retry to the start of time, so it goes at the next
    /// poll; `forget` also clears the failure counts.
    fn retry_all_now(&mut self, forget: bool) {
        self.retry_queue.clear();
        let mut keys = Vec::with_capacity(self.retrying.len());
        for (key, r) in &mut self.retrying {
            r.at = Instant::ZERO;
            if forget {
                r.failures = 0;
            }
            keys.push(key.clone());
        }
        if !keys.is_empty() {
            self.retry_queue.insert(Instant::ZERO, keys);
        }
        if forget {
            // Only the keys in flight keep a count.
            let counts: Vec<u32> = self
                .in_flight
                .values()
                .flat_map(|f| f.failures.values().copied())
                .collect();
            self.failure_counts.clear();
            for n in counts {
                self.count_failure(n, true);
            }
        }
    }

    /// Skips the rest of every retry delay, so backing-off keys go at the next poll, but
    /// keeps their failure counts: if the receiver fails again, the backoff goes on growing
    /// from where it was. For a caller that learned the receiver is back (e.g. it is ready
    /// again). Parked keys keep their slow schedule.
    pub fn retry_now(&mut self) {
        self.retry_all_now(false);
        self.flush();
    }

    /// Forgets the failures and any retry delay, so pending batches go at the next poll.
    /// For shutdown, where one last attempt matters more than the backoff.
    pub fn reset_backoff(&mut self) {
        self.retry_all_now(true);
        self.flush();
    }

    /// Whether `key` holds `app` in a pending, backing-off or in-flight batch.
    pub fn is_pending(&self, key: &MappingKey, app: &str) -> bool {
        self.pending.get(key).is_some_and(|a| a.contains(app))
            || self.retrying.get(key).is_some_and(|r| r.apps.contains(app))
            || self.flying.get(key).is_some_and(|a| a.contains(app))
    }

    /// Whether `key <- app` was acknowledged within `suppress_acked_for` of `now` (a repeat
    /// of it is absorbed).
    pub fn is_acknowledged(&self, now: Instant, key: &MappingKey, app: &str) -> bool {
        let key = KeyRef {
            namespace: &key.namespace,
            interface: &key.interface,
        };
        self.is_acked(now, &key, app)
    }

    /// The parked record of `key`, if it is parked.
    pub fn parked(&self, key: &MappingKey) -> Option<&Parked> {
        self.parked.get(key)
    }

    /// Every parked key.
    pub fn parked_iter(&self) -> impl Iterator<Item = (&MappingKey, &Parked)> + '_ {
        self.parked.iter()
    }

    /// Keys parked after a permanent failure (a gauge for metrics).
    pub fn parked_keys(&self) -> usize {
        self.parked.len()
    }

    /// Keys waiting for a batch: fresh and backing off (a gauge for metrics).
    pub fn pending_keys(&self) -> usize {
        self.waiting_keys()
    }

    /// Keys backing off after a transient failure.
    pub fn retrying_keys(&self) -> usize {
        self.retrying.len()
    }

    /// `(key, app)` pairs waiting for a batch (fresh and backing off).
    pub fn pending_entries(&self) -> usize {
        self.pending.values().map(AppSet::len).sum::<usize>()
            + self.retrying.values().map(|r| r.apps.len()).sum::<usize>()
    }

    /// Batches handed out and not completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Keys remembered as recently acknowledged.
    pub fn acked_keys(&self) -> usize {
        self.acked.pairs.len()
    }

    /// `(key, application)` pairs remembered as recently acknowledged (expired ones are
    /// dropped at the next offer or acknowledgement).
    pub fn acked_entries(&self) -> usize {
        self.acked.live
    }

    /// The highest failure count of a key backing off or being retried (0 when no key
    /// has failed transiently since it was last stored).
    pub fn failures(&self) -> u32 {
        self.failure_counts.keys().next_back().copied().unwrap_or(0)
    }

    /// Whether nothing is pending, backing off or in flight (parked keys wait on their
    /// own slow schedule and do not count).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.retrying.is_empty() && self.in_flight.is_empty()
    }
}

/// Takes up to `room` keys whose time in `queue` is `now` or earlier, earliest first, with
/// their time.
fn pop_due(
    queue: &mut BTreeMap<Instant, Vec<MappingKey>>,
    now: Instant,
    room: usize,
) -> Vec<(Instant, MappingKey)> {
    let mut out = Vec::new();
    while out.len() < room {
        let Some(mut entry) = queue.first_entry() else {
            break;
        };
        let at = *entry.key();
        if at > now {
            break;
        }
        let keys = entry.get_mut();
        while out.len() < room {
            match keys.pop() {
                Some(key) => out.push((at, key)),
                None => break,
            }
        }
        if keys.is_empty() {
            entry.remove();
        }
    }
    out
}

/// Unions `apps` into `map[key]`.
fn union_into(map: &mut HashMap<MappingKey, AppSet>, key: &MappingKey, apps: &AppSet) {
    match map.get_mut(key) {
        Some(known) => {
            known.union(apps);
        }
        None => {
            map.insert(key.clone(), apps.clone());
        }
    }
}
