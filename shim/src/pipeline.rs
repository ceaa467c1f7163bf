//! The write pipeline: one task owns the [`Debouncer`] and drives it with tokio timers.
//!
//! Every source (registration calls of both flavours, `PushMappings` batches from filters)
//! offers into one debouncer, so a storm from all of them is merged into few store writes.
//! Callers talk to the task through a bounded channel ([`Pipeline`]), so a flood of calls
//! waits for room instead of growing memory. The task:
//!
//! * answers each offer with the debouncer's verdict (`RESOURCE_EXHAUSTED` material when
//!   pending state is full);
//! * hands due batches to [`Store::merge_keys`], at most as many at once as the debouncer
//!   allows, and reports each key's outcome back (`complete_with`): a key that failed
//!   transiently waits its own backoff and is retried, forever, while the process lives;
//!   a key the store refuses for good is *parked* (see [`ParkedView`]), logged, counted
//!   and probed again on a slow schedule; every other key goes on as if nothing happened;
//! * releases durable waiters (durable-mode registrations, `PushMappings`) once the store's
//!   cache holds all their mappings, and tells them at once when one of their keys is
//!   parked; waiters whose caller went away or timed out are pruned, so memory stays
//!   bounded while batches fail;
//! * on shutdown, flushes everything pending at once and reports when it is idle.
//!
//! Time is an [`snp_core::Instant`]: milliseconds since the task started, read from
//! tokio's clock (so tests can pause it).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use snp_core::debounce::OfferSummary;
use snp_core::{
    AppSet, BatchId, DebounceConfig, Debouncer, KeyResult, MappingKey, Mappings, OfferError,
    Registration,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant as TokioInstant;

use crate::metrics::{Metrics, Outcome, ReasonLabels, ResultLabels};
use crate::store::{KeyOutcome, MergeReport, Store};

/// Room in the command channel. A burst larger than this waits (backpressure), it is not
/// refused.
pub const CHANNEL_CAPACITY: usize = 1024;

/// What to offer.
#[derive(Debug, Clone)]
pub enum Payload {
    /// One registration call: all of its interfaces, or none.
    Registration(Registration),
    /// A batch of mappings (from `PushMappings`).
    Batch(Mappings),
}

impl Payload {
    /// The mappings it carries.
    pub fn mappings(&self) -> Mappings {
        match self {
            Payload::Registration(r) => {
                let mut m = Mappings::new();
                for i in &r.interfaces {
                    m.insert(
                        MappingKey::new(r.namespace.as_str(), i.as_str()),
                        &r.application,
                    );
                }
                m
            }
            Payload::Batch(m) => m.clone(),
        }
    }
}

/// A key the store refused for good, as callers are told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} cannot be stored: {message}")]
pub struct ParkedKey {
    /// Which key.
    pub key: MappingKey,
    /// Short reason code (e.g. `namespace_not_found`).
    pub reason: String,
    /// What failed and why, as the store said.
    pub message: String,
}

/// How a durable wait ends: every mapping stored, or one of its keys parked.
pub type DurableResult = Result<(), ParkedKey>;

/// The pipeline's answer to an offer.
#[derive(Debug)]
pub struct Accepted {
    /// `(key, app)` pairs accepted (queued, joined to a parked key, or already acknowledged).
    pub entries: usize,
    /// Keys of the offer that are parked: the store refused them for good. Their
    /// applications were joined to the parked key (probed again later), but the caller
    /// should be told now.
    pub parked: Vec<ParkedKey>,
    /// With a durable offer: resolves once every mapping is durable in the store, or, for
    /// a registration, as soon as one of its keys is parked. For a settle-all offer
    /// (`PushMappings` with results), once each key is stored or parked.
    pub durable: Option<oneshot::Receiver<DurableResult>>,
}

/// Why the pipeline could not take an offer.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Pending state is full (or a key has too many applications).
    #[error(transparent)]
    Full(#[from] OfferError),
    /// The pipeline task has stopped (shutting down).
    #[error("the shim is shutting down")]
    Closed,
}

/// How a durable offer waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// No waiting: answer once accepted.
    No,
    /// Until every key is stored; a parked key ends the wait with its reason at once.
    Stored,
    /// Until every key is stored or parked (the caller reads each key's state then).
    Settled,
}

enum Command {
    Offer {
        payload: Payload,
        wait: Wait,
        reply: oneshot::Sender<Result<Accepted, OfferError>>,
    },
    Flush,
    Drain {
        reply: oneshot::Sender<DrainReport>,
    },
}

/// State of the pipeline when it became idle (or when asked during shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Keys still pending (0 when everything reached the store).
    pub pending_keys: usize,
}

/// One parked key, as `/parked` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParkedEntry {
    /// Namespace of the key.
    pub namespace: String,
    /// Interface of the key.
    pub interface: String,
    /// Applications waiting for it.
    pub applications: Vec<String>,
    /// Short reason code.
    pub reason: String,
    /// What failed and why, as the store said.
    pub message: String,
    /// When it was first parked (RFC 3339).
    pub parked_since: String,
    /// When it was last tried (RFC 3339).
    pub last_tried: String,
    /// When it is probed next (RFC 3339).
    pub next_probe: String,
    /// Attempts refused in a row.
    pub tries: u32,
}

/// The parked keys, shared between the pipeline task (which keeps it current after every
/// batch), the handlers (which answer `PushMappings` results from it) and the operations
/// endpoint (`GET /parked`).
#[derive(Debug, Clone, Default)]
pub struct ParkedView(Arc<RwLock<BTreeMap<MappingKey, ParkedEntry>>>);

impl ParkedView {
    /// The parked record of `key`.
    pub fn get(&self, key: &MappingKey) -> Option<ParkedEntry> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Every parked key, sorted.
    pub fn list(&self) -> Vec<ParkedEntry> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The first `n` parked keys, sorted (without copying the rest).
    pub fn first(&self, n: usize) -> Vec<ParkedEntry> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .take(n)
            .cloned()
            .collect()
    }

    /// Number of parked keys.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no key is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set(&self, key: MappingKey, entry: ParkedEntry) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, entry);
    }

    fn replace(&self, entries: BTreeMap<MappingKey, ParkedEntry>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = entries;
    }
}

/// Journal hook: called with a batch's mappings once the store holds them.
pub type StoredHook = std::sync::Arc<dyn Fn(&Mappings) + Send + Sync>;

/// Handle to the pipeline task (cheap to clone).
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Command>,
    parked: ParkedView,
}

impl Pipeline {
    /// Starts the pipeline task on `store`.
    pub fn spawn<S: Store>(
        store: S,
        cfg: DebounceConfig,
        metrics: Metrics,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        Self::spawn_with(store, cfg, metrics, ParkedView::default(), None)
    }

    /// Starts the pipeline task on `store`, keeping `parked` current and calling
    /// `on_stored` with what the store holds after each batch (the journal forgets it).
    pub fn spawn_with<S: Store>(
        store: S,
        cfg: DebounceConfig,
        metrics: Metrics,
        parked: ParkedView,
        on_stored: Option<StoredHook>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let task = Task {
            debouncer: Debouncer::new(cfg),
            store,
            metrics,
            origin: TokioInstant::now(),
            origin_wall: SystemTime::now(),
            rx,
            in_flight: JoinSet::new(),
            waiters: HashMap::new(),
            by_key: HashMap::new(),
            next_waiter: 0,
            drains: Vec::new(),
            flushing: false,
            closed: false,
            store_was_unready: false,
            parked: parked.clone(),
            last_prune: TokioInstant::now(),
            on_stored,
        };
        (Self { tx, parked }, tokio::spawn(task.run()))
    }

    /// Offers `payload`. With `durable`, the answer carries a receiver that resolves once
    /// the store holds every mapping of it (or one of its keys is parked).
    pub async fn offer(&self, payload: Payload, durable: bool) -> Result<Accepted, PipelineError> {
        let wait = if durable { Wait::Stored } else { Wait::No };
        self.offer_with(payload, wait).await
    }

    /// Offers `payload`, waiting as `wait` says.
    pub async fn offer_with(
        &self,
        payload: Payload,
        wait: Wait,
    ) -> Result<Accepted, PipelineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Offer {
                payload,
                wait,
                reply,
            })
            .await
            .map_err(|_| PipelineError::Closed)?;
        rx.await
            .map_err(|_| PipelineError::Closed)?
            .map_err(PipelineError::Full)
    }

    /// The parked keys.
    pub fn parked(&self) -> &ParkedView {
        &self.parked
    }

    /// Makes everything pending due now, and everything offered from now on as well
    /// (shutdown).
    pub async fn flush(&self) {
        let _ = self.tx.send(Command::Flush).await;
    }

    /// Resolves once nothing is pending or in flight. Call [`Pipeline::flush`] first, or
    /// this waits for the debounce windows.
    pub async fn drain(&self) -> Result<DrainReport, PipelineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Drain { reply })
            .await
            .map_err(|_| PipelineError::Closed)?;
        rx.await.map_err(|_| PipelineError::Closed)
    }
}

/// A caller waiting for its mappings.
struct Waiter {
    /// Keys not yet stored (or parked, for `Wait::Settled`), with their applications.
    remaining: HashMap<MappingKey, AppSet>,
    wait: Wait,
    reply: oneshot::Sender<DurableResult>,
}

type Flight = (BatchId, TokioInstant, usize, MergeReport);

struct Task<S: Store> {
    debouncer: Debouncer,
    store: S,
    metrics: Metrics,
    origin: TokioInstant,
    /// Wall-clock time at `origin`, to show debouncer instants as dates.
    origin_wall: SystemTime,
    rx: mpsc::Receiver<Command>,
    in_flight: JoinSet<Flight>,
    waiters: HashMap<u64, Waiter>,
    /// Waiters by key, for release without scanning every waiter.
    by_key: HashMap<MappingKey, Vec<u64>>,
    next_waiter: u64,
    drains: Vec<oneshot::Sender<DrainReport>>,
    flushing: bool,
    closed: bool,
    /// The store reported not ready while a failed key was backing off. When it is
    /// ready again the backoff is cut short: after an outage the write goes as soon as the
    /// store's watch sees the API again, not up to `--retry-max` later.
    store_was_unready: bool,
    parked: ParkedView,
    last_prune: TokioInstant,
    /// Journal hook: told what each successful batch wrote.
    on_stored: Option<StoredHook>,
}

/// How often readiness is checked while a failed key is backing off.
const READINESS_PROBE: Duration = Duration::from_millis(250);
/// How often waiters whose caller is gone are pruned while any wait.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

impl<S: Store> Task<S> {
    fn now(&self) -> snp_core::Instant {
        let ms = TokioInstant::now()
            .saturating_duration_since(self.origin)
            .as_millis();
        snp_core::Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn deadline(&self, at: snp_core::Instant) -> TokioInstant {
        self.origin + Duration::from_millis(at.as_millis())
    }

    fn wall(&self, at: snp_core::Instant) -> String {
        let t = self.origin_wall + Duration::from_millis(at.as_millis());
        humantime::format_rfc3339_seconds(t).to_string()
    }

    async fn run(mut self) {
        loop {
            self.dispatch();
            self.metrics
                .pending_keys
                .set(i64::try_from(self.debouncer.pending_keys()).unwrap_or(i64::MAX));
            self.metrics.oldest_pending.busy(!self.debouncer.is_idle());
            if self.debouncer.is_idle() && self.in_flight.is_empty() {
                let report = DrainReport { pending_keys: 0 };
                for d in self.drains.drain(..) {
                    let _ = d.send(report);
                }
                if self.closed {
                    return;
                }
            }
            self.metrics
                .batches_in_flight
                .set(i64::try_from(self.in_flight.len()).unwrap_or(i64::MAX));
            let mut wake = self.debouncer.next_wakeup().map(|at| self.deadline(at));
            if self.debouncer.failures() > 0 {
                self.retry_early_if_store_recovered();
                let probe = TokioInstant::now() + READINESS_PROBE;
                wake = Some(wake.map_or(probe, |w| w.min(probe)));
            }
            if !self.waiters.is_empty() {
                if self.last_prune.elapsed() >= PRUNE_EVERY {
                    self.prune_waiters();
                }
                let prune = self.last_prune + PRUNE_EVERY;
                wake = Some(wake.map_or(prune, |w| w.min(prune)));
            }
            tokio::select! {
                cmd = self.rx.recv(), if !self.closed => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => {
                        // Every handle is gone: write what is left, then stop.
                        self.closed = true;
                        self.debouncer.flush();
                    }
                },
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    match done {
                        Ok(flight) => self.completed(flight),
                        Err(e) => tracing::error!(error = %e, "store write task failed"),
                    }
                }
                _ = sleep_until_opt(wake) => {}
            }
        }
    }

    /// Cuts a retry backoff short once the store, seen not ready during it, is ready again.
    fn retry_early_if_store_recovered(&mut self) {
        if !self.store.is_ready() {
            self.store_was_unready = true;
        } else if self.store_was_unready {
            self.store_was_unready = false;
            tracing::info!(
                failures = self.debouncer.failures(),
                "store is reachable again; retrying pending mappings now"
            );
            self.debouncer.retry_now();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Offer {
                payload,
                wait,
                reply,
            } => {
                let result = self.offer(payload, wait);
                if self.flushing {
                    self.debouncer.flush();
                }
                let _ = reply.send(result);
            }
            Command::Flush => {
                if !self.flushing {
                    tracing::info!(
                        pending_keys = self.debouncer.pending_keys(),
                        "flushing pending mappings"
                    );
                }
                self.flushing = true;
                // One immediate attempt even if a retry was backing off.
                self.debouncer.reset_backoff();
            }
            Command::Drain { reply } => self.drains.push(reply),
        }
    }

    fn parked_key(&self, key: &MappingKey) -> Option<ParkedKey> {
        self.debouncer.parked(key).map(|p| ParkedKey {
            key: key.clone(),
            reason: p.reason.clone(),
            message: p.message.clone(),
        })
    }

    fn offer(&mut self, payload: Payload, wait: Wait) -> Result<Accepted, OfferError> {
        let now = self.now();
        let entries = match &payload {
            Payload::Registration(r) => {
                let OfferSummary {
                    pending,
                    acknowledged,
                    in_flight,
                    parked,
                } = self
                    .debouncer
                    .offer_all(now, &r.namespace, &r.application, &r.interfaces)?;
                pending + acknowledged + in_flight + parked
            }
            Payload::Batch(m) => {
                let mut n = 0;
                for (key, apps) in m.iter() {
                    for app in apps.iter() {
                        self.debouncer
                            .offer(now, &key.namespace, &key.interface, app)?;
                        n += 1;
                    }
                }
                n
            }
        };
        self.metrics.registrations.inc_by(entries as u64);
        let mappings = payload.mappings();
        let parked: Vec<ParkedKey> = mappings
            .iter()
            .filter_map(|(k, _)| self.parked_key(k))
            .collect();
        // The applications that joined a parked key show at `/parked` at once.
        for p in &parked {
            if let Some(entry) = self
                .debouncer
                .parked(&p.key)
                .map(|d| self.parked_entry(&p.key, d))
            {
                self.parked.set(p.key.clone(), entry);
            }
        }
        let durable = (wait != Wait::No).then(|| {
            let (tx, rx) = oneshot::channel();
            if wait == Wait::Stored && !parked.is_empty() {
                let _ = tx.send(Err(parked[0].clone()));
                return rx;
            }
            // Keys already stored, or (settling) parked, need no wait.
            let remaining: HashMap<MappingKey, AppSet> = mappings
                .iter()
                .filter(|(k, apps)| {
                    let one: Mappings = std::iter::once(((*k).clone(), (*apps).clone())).collect();
                    let settled = wait == Wait::Settled && self.debouncer.parked(k).is_some();
                    !(settled || self.store.contains_all(&one))
                })
                .map(|(k, a)| (k.clone(), a.clone()))
                .collect();
            if remaining.is_empty() {
                let _ = tx.send(Ok(()));
            } else {
                let id = self.next_waiter;
                self.next_waiter += 1;
                for (k, _) in remaining.iter() {
                    self.by_key.entry(k.clone()).or_default().push(id);
                }
                self.waiters.insert(
                    id,
                    Waiter {
                        remaining,
                        wait,
                        reply: tx,
                    },
                );
                self.metrics.durable_waiters.set(self.waiters.len() as i64);
            }
            rx
        });
        Ok(Accepted {
            entries,
            parked,
            durable,
        })
    }

    /// Hands every due batch to the store.
    fn dispatch(&mut self) {
        let now = self.now();
        while let Some(batch) = self.debouncer.poll(now) {
            if self.debouncer.failures() > 0 {
                self.metrics.retries.inc();
            }
            let keys = batch.mappings.len();
            self.metrics.merged_keys.inc_by(keys as u64);
            let store = self.store.clone();
            let started = TokioInstant::now();
            tracing::debug!(batch = %batch.id, keys, "writing batch");
            self.in_flight.spawn(async move {
                let report = store.merge_keys(&batch.mappings).await;
                (batch.id, started, keys, report)
            });
        }
    }

    fn completed(&mut self, (id, started, keys, report): Flight) {
        let now = self.now();
        let summary = report.summary();
        let ok = summary.transient == 0 && summary.permanent == 0;
        let outcome = if ok { Outcome::Ok } else { Outcome::Error };
        self.metrics
            .batches
            .get_or_create(&ResultLabels { result: outcome })
            .inc();
        self.metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        let first_error = report.keys.iter().find_map(|(_, o)| match o {
            KeyOutcome::Transient(e) | KeyOutcome::Permanent(e) => Some(e.to_string()),
            _ => None,
        });
        self.metrics
            .batch_completed(id.0, started, keys, &summary, first_error);
        let mut outcomes: HashMap<MappingKey, KeyOutcome> = report.keys.into_iter().collect();
        if ok {
            // 409s are counted by the store as it meets them (including those of merges
            // that later failed), so they are only logged here.
            tracing::info!(
                batch = %id,
                keys,
                created = summary.created,
                updated = summary.updated,
                unchanged = summary.unchanged,
                conflicts = summary.conflicts,
                "batch written"
            );
        } else {
            let first_transient = outcomes.values().find_map(|o| match o {
                KeyOutcome::Transient(e) => Some(e.to_string()),
                _ => None,
            });
            let error = first_transient.as_deref().unwrap_or("");
            let (transient, permanent) = (summary.transient, summary.permanent);
            if transient + permanent == keys {
                tracing::warn!(batch = %id, keys, transient, permanent, error, "batch failed; it will be retried");
            } else {
                tracing::warn!(
                    batch = %id,
                    keys,
                    created = summary.created,
                    updated = summary.updated,
                    unchanged = summary.unchanged,
                    transient,
                    permanent,
                    error,
                    "batch partly failed; failed keys back off on their own"
                );
            }
        }
        let Some(done) = self.debouncer.complete_with(now, id, |k| {
            match outcomes.remove(k) {
                Some(KeyOutcome::Written { .. } | KeyOutcome::Unchanged) => KeyResult::Stored,
                Some(KeyOutcome::Permanent(e)) => KeyResult::Permanent {
                    reason: e.reason().to_owned(),
                    message: e.to_string(),
                },
                // Transient, or a key the store did not report: retry it.
                Some(KeyOutcome::Transient(_)) | None => KeyResult::Transient,
            }
        }) else {
            return;
        };
        for key in &done.parked {
            if let Some(p) = self.debouncer.parked(key) {
                if p.tries == 1 {
                    self.metrics
                        .parked
                        .get_or_create(&ReasonLabels {
                            reason: p.reason.clone(),
                        })
                        .inc();
                }
                tracing::warn!(
                    %key,
                    reason = %p.reason,
                    error = %p.message,
                    tries = p.tries,
                    next_probe = %self.wall(p.next_probe),
                    "key parked: the store refuses it for good; probed again later"
                );
            }
        }
        for (key, p) in &done.evicted {
            tracing::error!(
                %key,
                reason = %p.reason,
                applications = p.apps.len(),
                "parked set full: the key parked longest ago is dropped"
            );
        }
        let view_changed = !done.parked.is_empty()
            || !done.evicted.is_empty()
            || self.parked.len() != self.debouncer.parked_keys()
            || done
                .stored
                .iter()
                .any(|(k, _)| self.parked.get(k).is_some());
        if view_changed {
            for (k, _) in done.stored.iter() {
                if self.parked.get(k).is_some() {
                    tracing::info!(key = %k, "parked key stored on its probe; unparked");
                }
            }
            self.refresh_parked_view();
        }
        if let Some(hook) = self.on_stored.as_ref().filter(|_| !done.stored.is_empty()) {
            hook(&done.stored);
        }
        self.release_waiters(&done.stored, &done.parked);
    }

    fn parked_entry(&self, k: &MappingKey, p: &snp_core::Parked) -> ParkedEntry {
        ParkedEntry {
            namespace: k.namespace.clone(),
            interface: k.interface.clone(),
            applications: p.apps.as_slice().to_vec(),
            reason: p.reason.clone(),
            message: p.message.clone(),
            parked_since: self.wall(p.since),
            last_tried: self.wall(p.last_tried),
            next_probe: self.wall(p.next_probe),
            tries: p.tries,
        }
    }

    fn refresh_parked_view(&mut self) {
        let entries: BTreeMap<MappingKey, ParkedEntry> = self
            .debouncer
            .parked_iter()
            .map(|(k, p)| (k.clone(), self.parked_entry(k, p)))
            .collect();
        self.metrics
            .parked_keys
            .set(i64::try_from(entries.len()).unwrap_or(i64::MAX));
        self.parked.replace(entries);
    }

    /// Releases the waiters of `stored` keys the store now holds, and tells the waiters of
    /// `parked` keys.
    fn release_waiters(&mut self, stored: &Mappings, parked: &[MappingKey]) {
        let mut touched: Vec<(u64, MappingKey)> = Vec::new();
        for (key, _) in stored.iter() {
            for id in self.by_key.get(key).into_iter().flatten() {
                touched.push((*id, key.clone()));
            }
        }
        for key in parked {
            for id in self.by_key.get(key).into_iter().flatten() {
                touched.push((*id, key.clone()));
            }
        }
        for (id, key) in touched {
            let Some(w) = self.waiters.get_mut(&id) else {
                continue;
            };
            let Some(apps) = w.remaining.get(&key).cloned() else {
                continue;
            };
            let one: Mappings = std::iter::once((key.clone(), apps)).collect();
            let parked_now = self.debouncer.parked(&key).is_some();
            if self.store.contains_all(&one) || (parked_now && w.wait == Wait::Settled) {
                w.remaining.remove(&key);
            } else if parked_now {
                // A registration with a parked key: tell the caller now.
                if let Some(w) = self.waiters.remove(&id) {
                    let reason = self.parked_key(&key);
                    if let Some(p) = reason {
                        let _ = w.reply.send(Err(p));
                    }
                    self.unindex(id, &w.remaining);
                }
                continue;
            }
            if w.remaining.is_empty() {
                if let Some(w) = self.waiters.remove(&id) {
                    let _ = w.reply.send(Ok(()));
                }
            }
        }
        // Keys of released waiters, and released keys of remaining ones.
        for (key, _) in stored.iter() {
            self.reindex(key);
        }
        for key in parked {
            self.reindex(key);
        }
        self.metrics.durable_waiters.set(self.waiters.len() as i64);
    }

    /// Drops waiter ids of `key` that no longer wait for it.
    fn reindex(&mut self, key: &MappingKey) {
        let waiters = &self.waiters;
        if let Some(ids) = self.by_key.get_mut(key) {
            ids.retain(|id| {
                waiters
                    .get(id)
                    .is_some_and(|w| w.remaining.contains_key(key))
            });
            if ids.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    fn unindex(&mut self, id: u64, remaining: &HashMap<MappingKey, AppSet>) {
        for (key, _) in remaining.iter() {
            if let Some(ids) = self.by_key.get_mut(key) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_key.remove(key);
                }
            }
        }
    }

    /// Forgets waiters whose caller went away or gave up (its receiver is dropped), so
    /// memory stays bounded by live calls while batches fail.
    fn prune_waiters(&mut self) {
        self.last_prune = TokioInstant::now();
        let gone: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.reply.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(w) = self.waiters.remove(&id) {
                self.unindex(id, &w.remaining);
            }
        }
        self.metrics.durable_waiters.set(self.waiters.len() as i64);
    }
}

async fn sleep_until_opt(at: Option<TokioInstant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
