//! The write pipeline: one task owns the [`Debouncer`] and drives it with tokio timers.
//!
//! Every source (registration calls of both flavours, `PushMappings` batches from filters)
//! offers into one debouncer, so a storm from all of them is merged into few store writes.
//! Callers talk to the task through a bounded channel ([`Pipeline`]), so a flood of calls
//! waits for room instead of growing memory. The task:
//!
//! * answers each offer with the debouncer's verdict (`RESOURCE_EXHAUSTED` material when
//!   pending state is full);
//! * hands due batches to [`Store::merge`], at most as many at once as the debouncer
//!   allows, and reports the outcome back (`complete`), so failed batches are merged back
//!   and retried with backoff, forever, while the process lives;
//! * releases durable waiters (durable-mode registrations, `PushMappings`) once the store's
//!   cache holds all their mappings;
//! * on shutdown, flushes everything pending at once and reports when it is idle.
//!
//! Time is an [`snp_core::Instant`]: milliseconds since the task started, read from
//! tokio's clock (so tests can pause it).

use std::time::Duration;

use snp_core::debounce::OfferSummary;
use snp_core::{
    BatchId, DebounceConfig, Debouncer, MappingKey, Mappings, OfferError, Registration,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant as TokioInstant;

use crate::metrics::{Metrics, Outcome, ResultLabels};
use crate::store::{MergeOutcome, Store, StoreError};

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

/// The pipeline's answer to an offer.
#[derive(Debug)]
pub struct Accepted {
    /// `(key, app)` pairs accepted (queued or already acknowledged).
    pub entries: usize,
    /// With a durable offer: resolves once every mapping is durable in the store.
    pub durable: Option<oneshot::Receiver<()>>,
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

enum Command {
    Offer {
        payload: Payload,
        durable: bool,
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

/// Journal hook: called with a batch's mappings once the store holds them.
pub type StoredHook = std::sync::Arc<dyn Fn(&Mappings) + Send + Sync>;

/// Handle to the pipeline task (cheap to clone).
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Command>,
}

impl Pipeline {
    /// Starts the pipeline task on `store`.
    pub fn spawn<S: Store>(
        store: S,
        cfg: DebounceConfig,
        metrics: Metrics,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        Self::spawn_with_hook(store, cfg, metrics, None)
    }

    /// [`Pipeline::spawn`], calling `on_stored` with each batch the store wrote (journal
    /// hook).
    pub fn spawn_with_hook<S: Store>(
        store: S,
        cfg: DebounceConfig,
        metrics: Metrics,
        on_stored: Option<StoredHook>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let task = Task {
            debouncer: Debouncer::new(cfg),
            store,
            metrics,
            origin: TokioInstant::now(),
            rx,
            in_flight: JoinSet::new(),
            waiters: Vec::new(),
            drains: Vec::new(),
            flushing: false,
            closed: false,
            store_was_unready: false,
            on_stored,
        };
        (Self { tx }, tokio::spawn(task.run()))
    }

    /// Offers `payload`. With `durable`, the answer carries a receiver that resolves once
    /// the store holds every mapping of it.
    pub async fn offer(&self, payload: Payload, durable: bool) -> Result<Accepted, PipelineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Offer {
                payload,
                durable,
                reply,
            })
            .await
            .map_err(|_| PipelineError::Closed)?;
        rx.await
            .map_err(|_| PipelineError::Closed)?
            .map_err(PipelineError::Full)
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

struct Waiter {
    mappings: Mappings,
    reply: oneshot::Sender<()>,
}

type Flight = (
    BatchId,
    TokioInstant,
    usize,
    Result<MergeOutcome, StoreError>,
);

struct Task<S: Store> {
    debouncer: Debouncer,
    store: S,
    metrics: Metrics,
    origin: TokioInstant,
    rx: mpsc::Receiver<Command>,
    in_flight: JoinSet<Flight>,
    waiters: Vec<Waiter>,
    drains: Vec<oneshot::Sender<DrainReport>>,
    flushing: bool,
    closed: bool,
    /// The store reported not ready while a failed batch was backing off. When it is
    /// ready again the backoff is cut short: after an outage the write goes as soon as the
    /// store's watch sees the API again, not up to `--retry-max` later.
    store_was_unready: bool,
    /// Journal hook: told what each successful batch wrote.
    on_stored: Option<StoredHook>,
}

/// How often readiness is checked while a failed batch is backing off.
const READINESS_PROBE: Duration = Duration::from_millis(250);

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

    async fn run(mut self) {
        loop {
            self.dispatch();
            self.metrics
                .pending_keys
                .set(i64::try_from(self.debouncer.pending_keys()).unwrap_or(i64::MAX));
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
                durable,
                reply,
            } => {
                let result = self.offer(payload, durable);
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

    fn offer(&mut self, payload: Payload, durable: bool) -> Result<Accepted, OfferError> {
        let now = self.now();
        let entries = match &payload {
            Payload::Registration(r) => {
                let OfferSummary {
                    pending,
                    acknowledged,
                    in_flight,
                } = self
                    .debouncer
                    .offer_all(now, &r.namespace, &r.application, &r.interfaces)?;
                pending + acknowledged + in_flight
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
        let durable = durable.then(|| {
            let (tx, rx) = oneshot::channel();
            let mappings = payload.mappings();
            if self.store.contains_all(&mappings) {
                let _ = tx.send(());
            } else {
                self.waiters.push(Waiter {
                    mappings,
                    reply: tx,
                });
                self.metrics.durable_waiters.set(self.waiters.len() as i64);
            }
            rx
        });
        Ok(Accepted { entries, durable })
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
            let on_stored = self.on_stored.clone();
            self.in_flight.spawn(async move {
                let result = store.merge(&batch.mappings).await;
                // Journal hook: the store holds these now.
                if let (Ok(_), Some(hook)) = (&result, &on_stored) {
                    hook(&batch.mappings);
                }
                (batch.id, started, keys, result)
            });
        }
    }

    fn completed(&mut self, (id, started, keys, result): Flight) {
        let now = self.now();
        let ok = result.is_ok();
        let outcome = if ok { Outcome::Ok } else { Outcome::Error };
        self.metrics
            .batches
            .get_or_create(&ResultLabels { result: outcome })
            .inc();
        match &result {
            Ok(out) => {
                self.metrics
                    .flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                // 409s are counted by the store as it meets them (including those of
                // merges that later failed), so they are only logged here.
                tracing::info!(
                    batch = %id,
                    keys,
                    created = out.created,
                    updated = out.updated,
                    unchanged = out.unchanged,
                    conflicts = out.conflicts,
                    "batch written"
                );
            }
            Err(e) => {
                tracing::warn!(batch = %id, keys, error = %e, "batch failed; it will be retried");
            }
        }
        self.debouncer.complete(now, id, ok);
        if ok {
            self.release_waiters();
        }
    }

    fn release_waiters(&mut self) {
        let store = &self.store;
        self.waiters.retain_mut(|w| {
            if w.reply.is_closed() {
                return false;
            }
            if store.contains_all(&w.mappings) {
                let (tx, _) = oneshot::channel();
                let reply = std::mem::replace(&mut w.reply, tx);
                let _ = reply.send(());
                return false;
            }
            true
        });
        self.metrics.durable_waiters.set(self.waiters.len() as i64);
    }
}

async fn sleep_until_opt(at: Option<TokioInstant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
