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
//! recomputed from state, not from a timer that can be lost. A failed batch is merged back
//! into the pending set and retried after a [`Backoff`] delay; nothing acknowledged is
//! ever dropped. Memory is bounded per key, not per request.
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
use std::collections::BTreeMap;

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
    /// Retry policy for failed batches (default 500 ms base, so the first retry comes
    /// after 1 s, then 2 s, 4 s ... capped at 30 s, with 20 % jitter).
    pub retry: Backoff,
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
            retry: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(30),
                max_failures: 6,
                jitter: 0.2,
            },
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
    failures: u32,
    retry_at: Option<Instant>,
    in_flight: BTreeMap<BatchId, Mappings>,
    /// Union of the in-flight batches, for allocation-free "already carried" lookups.
    flying: HashMap<MappingKey, AppSet>,
    acked: HashMap<MappingKey, (AppSet, Instant)>,
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
            failures: 0,
            retry_at: None,
            in_flight: BTreeMap::new(),
            flying: HashMap::new(),
            acked: HashMap::new(),
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
        self.insert_pending(now, key, app);
        Ok(Offered::Pending)
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
        let mut new_keys = 0usize;
        for interface in interfaces {
            let key = KeyRef {
                namespace,
                interface: interface.as_ref(),
            };
            if self.is_acked(now, &key, app) || self.is_flying(&key, app) {
                continue;
            }
            match self.pending.get(&key) {
                Some(apps) if !apps.contains(app) && apps.len() >= self.cfg.max_apps_per_key => {
                    return Err(self.too_many_apps(&key));
                }
                Some(_) => {}
                None => new_keys += 1,
            }
        }
        if new_keys > 0 && self.pending.len() + new_keys > self.cfg.max_pending_keys {
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
                self.insert_pending(now, key, app);
                summary.pending += 1;
            }
        }
        Ok(summary)
    }

    fn is_acked(&self, now: Instant, key: &KeyRef<'_>, app: &str) -> bool {
        !self.cfg.suppress_acked_for.is_zero()
            && self.acked.get(key).is_some_and(|(apps, at)| {
                apps.contains(app) && now < *at + self.cfg.suppress_acked_for
            })
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

    fn check_capacity(&self, key: &KeyRef<'_>, app: &str) -> Result<(), OfferError> {
        match self.pending.get(key) {
            Some(apps) if !apps.contains(app) && apps.len() >= self.cfg.max_apps_per_key => {
                Err(self.too_many_apps(key))
            }
            Some(_) => Ok(()),
            None if self.pending.len() >= self.cfg.max_pending_keys => {
                Err(OfferError::PendingFull {
                    limit: self.cfg.max_pending_keys,
                })
            }
            None => Ok(()),
        }
    }

    fn insert_pending(&mut self, now: Instant, key: KeyRef<'_>, app: &str) {
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
    }

    fn in_flight_limit(&self) -> usize {
        if self.cfg.enabled {
            1
        } else {
            self.cfg.max_in_flight.max(1)
        }
    }

    /// When pending mappings become due; `None` if nothing is pending.
    fn due_at(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        if let Some(at) = self.retry_at {
            return Some(at);
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

    /// When the caller should call [`Debouncer::poll`] next. `None` means only a new
    /// offer or a completion can make a batch due. An instant in the past means now.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.in_flight.len() >= self.in_flight_limit() {
            return None;
        }
        self.due_at()
    }

    /// Hands out the next batch if one is due at `now` and a slot is free.
    pub fn poll(&mut self, now: Instant) -> Option<Batch> {
        if self.in_flight.len() >= self.in_flight_limit() || self.due_at()? > now {
            return None;
        }
        let mappings = self.take_pending();
        if self.pending.is_empty() {
            self.burst = None;
            self.ready = false;
        } else {
            self.ready = true;
        }
        let id = BatchId(self.next_id);
        self.next_id += 1;
        for (key, apps) in mappings.iter() {
            union_into(&mut self.flying, key, apps);
        }
        self.in_flight.insert(id, mappings.clone());
        Some(Batch { id, mappings })
    }

    fn take_pending(&mut self) -> Mappings {
        let limit = self.cfg.max_batch_keys.max(1);
        if self.pending.len() <= limit {
            return self.pending.drain().collect();
        }
        let keys: Vec<MappingKey> = self.pending.keys().take(limit).cloned().collect();
        keys.into_iter()
            .filter_map(|k| self.pending.remove(&k).map(|apps| (k, apps)))
            .collect()
    }

    /// Reports the outcome of batch `id`. On success returns its mappings (now durable,
    /// so a caller holding replies can release them). On failure the batch is merged back
    /// into the pending set and retried after the backoff delay. Call
    /// [`Debouncer::poll`] right after: more may be due already.
    pub fn complete(&mut self, now: Instant, id: BatchId, ok: bool) -> Option<Mappings> {
        let mappings = self.in_flight.remove(&id)?;
        self.flying.clear();
        for m in self.in_flight.values() {
            for (key, apps) in m.iter() {
                union_into(&mut self.flying, key, apps);
            }
        }
        if ok {
            self.failures = 0;
            self.retry_at = None;
            self.remember_acked(now, &mappings);
            return Some(mappings);
        }
        self.failures = self.cfg.retry.next_failures(self.failures);
        let delay = self
            .cfg
            .retry
            .delay_with_jitter(self.failures, &mut self.rng);
        self.retry_at = Some(now + delay);
        for (key, apps) in mappings.iter() {
            union_into(&mut self.pending, key, apps);
        }
        if self.burst.is_none() {
            self.burst = Some(Burst {
                start: now,
                last: now,
            });
        }
        None
    }

    fn remember_acked(&mut self, now: Instant, mappings: &Mappings) {
        if self.cfg.suppress_acked_for.is_zero() {
            return;
        }
        let ttl = self.cfg.suppress_acked_for;
        for (key, apps) in mappings.iter() {
            if let Some((known, at)) = self.acked.get_mut(key) {
                known.union(apps);
                *at = now;
                continue;
            }
            if self.acked.len() >= self.cfg.max_pending_keys {
                self.acked.retain(|_, (_, at)| now < *at + ttl);
                if self.acked.len() >= self.cfg.max_pending_keys {
                    continue;
                }
            }
            self.acked.insert(key.clone(), (apps.clone(), now));
        }
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

    /// Skips the rest of a retry delay, so pending batches go at the next poll, but keeps
    /// the failure count: if the receiver fails again, the backoff goes on growing from
    /// where it was. For a caller that learned the receiver is back (e.g. it is ready again).
    pub fn retry_now(&mut self) {
        self.retry_at = None;
        self.flush();
    }

    /// Forgets the failures and any retry delay, so pending batches go at the next poll.
    /// For shutdown, where one last attempt matters more than the backoff.
    pub fn reset_backoff(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.flush();
    }

    /// Whether `key` holds `app` in a pending or in-flight batch.
    pub fn is_pending(&self, key: &MappingKey, app: &str) -> bool {
        self.pending.get(key).is_some_and(|a| a.contains(app))
            || self.flying.get(key).is_some_and(|a| a.contains(app))
    }

    /// Keys waiting for a batch (a gauge for metrics).
    pub fn pending_keys(&self) -> usize {
        self.pending.len()
    }

    /// `(key, app)` pairs waiting for a batch.
    pub fn pending_entries(&self) -> usize {
        self.pending.values().map(AppSet::len).sum()
    }

    /// Batches handed out and not completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Keys remembered as recently acknowledged.
    pub fn acked_keys(&self) -> usize {
        self.acked.len()
    }

    /// Consecutive failed batches (0 after a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether nothing is pending or in flight.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_empty()
    }
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
