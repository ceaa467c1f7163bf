//! The status page: `GET /` on the HTTP port, for the people who run the shim.
//!
//! One page, every asset built into the binary (no CDN, no external font: it must work in
//! an air-gapped cluster). It shows the store, what is pending, a live timeline of batches,
//! a browser of the mappings, a live feed of changes, and a debounce simulator that runs
//! `snp-core`'s `Debouncer` in the browser (the `snp-sim-wasm` crate, embedded by
//! `build.rs` when `scripts/build-sim-wasm.sh` has built it).
//!
//! Routes (all `GET`):
//! * `/`: the page; `/status/assets/*`: its script, style and the simulator's wasm;
//! * `/status/api/status`: the [`StatusDoc`] as JSON;
//! * `/status/api/mappings`: every cached mapping, namespace by namespace;
//! * `/status/events`: server-sent events. `status` (the [`StatusDoc`]) first and once a
//!   second, `batch` for each batch the pipeline completes (from the same channel the
//!   pipeline publishes to), `change` for each store change (from the store's change
//!   channel, the one `WatchMappings` reads), and `resync` when this client fell behind
//!   and must re-read the mappings. The page never reads `/metrics`.
//!
//! The document also carries the parked keys with their reasons (the same records `GET
//! /parked` lists, the first [`PARKED_SHOWN`] of them) and the journal's size; the page hides
//! the journal's section when the shim runs without one (`--journal=false`).

mod assets;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use snp_core::MappingKey;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::ServeArgs;
use crate::http::Readiness;
use crate::metrics::{BatchEvent, Metrics, Outcome, ResultLabels, Verb, WriteLabels};
use crate::pipeline::{ParkedEntry, ParkedView};
use crate::store::{Change, Entry, Store};

/// Batches the page's timeline starts with.
const RECENT_BATCHES: usize = 200;
/// How often the `status` event repeats (pending keys and readiness move without batches).
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Events buffered per page before the feed waits for it.
const FEED_BUFFER: usize = 256;
/// Parked keys the document lists (the page is for people; `/parked` lists them all).
pub const PARKED_SHOWN: usize = 100;

/// Which store the shim runs on, for the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreInfo {
    /// `embedded` or `kubernetes`.
    pub kind: &'static str,
    /// The embedded store's directory, or the resource's `group/version`.
    pub location: String,
}

/// The store as the page sees it (object-safe, so the page can be served before the store
/// exists: the Kubernetes store connects after the HTTP port is up).
trait StoreView: Send + Sync {
    fn info(&self) -> &StoreInfo;
    fn ready(&self) -> bool;
    fn namespaces(&self) -> Vec<String>;
    fn get(&self, namespace: &str) -> Vec<(MappingKey, Entry)>;
    fn changes(&self) -> broadcast::Receiver<Change>;
}

struct Attached<S: Store> {
    store: S,
    info: StoreInfo,
}

impl<S: Store> StoreView for Attached<S> {
    fn info(&self) -> &StoreInfo {
        &self.info
    }
    fn ready(&self) -> bool {
        self.store.is_ready()
    }
    fn namespaces(&self) -> Vec<String> {
        self.store.namespaces()
    }
    fn get(&self, namespace: &str) -> Vec<(MappingKey, Entry)> {
        self.store.get(namespace, &[])
    }
    fn changes(&self) -> broadcast::Receiver<Change> {
        self.store.changes()
    }
}

/// The store section of the status document.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    /// `embedded`, `kubernetes`, or `connecting` before the store is up.
    pub kind: &'static str,
    /// Directory or group/version.
    pub location: String,
    /// Reachable and its cache synced right now (`snp_store_ready`).
    pub ready: bool,
    /// Synced at least once (`/readyz`, which stays ready through later outages).
    pub cache_synced: bool,
    /// Namespaces with mappings.
    pub namespaces: usize,
    /// Mappings (namespace, interface) held.
    pub mappings: usize,
    /// (mapping, application) pairs held.
    pub applications: usize,
}

/// Counters, as `/metrics` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct Counters {
    /// `snp_registrations_total`.
    pub registrations: u64,
    /// `snp_batches_total{result="ok"}`.
    pub batches_ok: u64,
    /// `snp_batches_total{result="error"}`.
    pub batches_error: u64,
    /// `snp_store_writes_total{verb="create",result="ok"}`.
    pub creates: u64,
    /// `snp_store_writes_total{verb="update",result="ok"}`.
    pub updates: u64,
    /// `snp_store_writes_total{verb=~"create|update",result="error"}`.
    pub write_errors: u64,
    /// `snp_store_conflicts_total`.
    pub conflicts: u64,
    /// `snp_batch_retries_total`.
    pub retries: u64,
    /// `snp_noop_skips_total`.
    pub noop_skips: u64,
}

/// The debounce settings of this shim (the simulator starts from them).
#[derive(Debug, Clone, Serialize)]
pub struct DebounceStatus {
    /// Debouncing on.
    pub enabled: bool,
    /// `--debounce-after`, ms.
    pub debounce_after_ms: u64,
    /// `--debounce-max`, ms.
    pub debounce_max_ms: u64,
    /// `--debounce-first-check`, ms.
    pub first_check_ms: u64,
    /// `--retry-base`, ms.
    pub retry_base_ms: u64,
    /// `--retry-max`, ms.
    pub retry_max_ms: u64,
}

/// The parked keys: how many, and the first [`PARKED_SHOWN`] in key order.
#[derive(Debug, Clone, Serialize)]
pub struct ParkedStatus {
    /// Parked keys (`snp_parked_keys`).
    pub total: usize,
    /// The first of them, each with the store's reason and when it is probed next.
    pub keys: Vec<ParkedEntry>,
}

/// The journal's size (what `snp_journal_*` shows).
#[derive(Debug, Clone, Serialize)]
pub struct JournalStatus {
    /// Its directory.
    pub dir: String,
    /// Acknowledged mappings the store does not hold yet (`snp_journal_live_entries`).
    pub live_entries: u64,
    /// Bytes of the current segment (`snp_journal_segment_bytes`).
    pub segment_bytes: u64,
    /// Records appended since start (`snp_journal_records`).
    pub records: u64,
    /// Group commits since start, one `fdatasync` each (`snp_journal_syncs`).
    pub syncs: u64,
    /// Compactions since start (`snp_journal_rotations`).
    pub rotations: u64,
}

/// What `/status/api/status` and the `status` event carry.
#[derive(Debug, Clone, Serialize)]
pub struct StatusDoc {
    /// `snp-shim` version.
    pub version: &'static str,
    /// `--node-name`.
    pub node: String,
    /// Seconds since the shim started.
    pub uptime_seconds: u64,
    /// Shutting down.
    pub stopping: bool,
    /// The store.
    pub store: StoreStatus,
    /// `snp_pending_keys`.
    pub pending_keys: i64,
    /// `snp_oldest_pending_age_seconds`.
    pub oldest_pending_age_seconds: f64,
    /// `snp_batches_in_flight`.
    pub batches_in_flight: i64,
    /// `snp_durable_waiters`.
    pub durable_waiters: i64,
    /// `snp_watchers`.
    pub watchers: i64,
    /// Parked keys with their reasons.
    pub parked: ParkedStatus,
    /// The journal, when the shim runs with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalStatus>,
    /// Counters.
    pub counters: Counters,
    /// Debounce settings.
    pub debounce: DebounceStatus,
    /// Whether the simulator's wasm is built into this binary.
    pub simulator: bool,
    /// The latest batches, oldest first (only in the first document a page gets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_batches: Option<Vec<BatchEvent>>,
}

/// One mapping in `/status/api/mappings`.
#[derive(Debug, Clone, Serialize)]
struct MappingView {
    interface: String,
    applications: Vec<String>,
    revision: String,
}

/// One namespace in `/status/api/mappings`.
#[derive(Debug, Clone, Serialize)]
struct NamespaceView {
    namespace: String,
    mappings: Vec<MappingView>,
}

/// A store change, as the `change` event carries it.
#[derive(Debug, Clone, Serialize)]
struct ChangeView<'a> {
    kind: &'static str,
    namespace: &'a str,
    interface: &'a str,
    applications: &'a [String],
    revision: &'a str,
}

struct Hub {
    metrics: Metrics,
    node: String,
    debounce: DebounceStatus,
    started: std::time::Instant,
    synced: Readiness,
    store: watch::Sender<Option<Arc<dyn StoreView>>>,
    recent: Mutex<VecDeque<BatchEvent>>,
    parked: ParkedView,
    journal: Option<snp_journal::Journal>,
    /// `true` once the shim shuts down: every feed ends, so the HTTP server can stop.
    stop: watch::Sender<bool>,
}

/// The status page's state: cheap to clone; one per shim.
#[derive(Clone)]
pub struct StatusHub(Arc<Hub>);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl StatusHub {
    /// A hub for a shim started with `args`; `synced` is its `/readyz` readiness, `parked`
    /// the pipeline's parked keys and `journal` its journal, if any. Starts recording the
    /// pipeline's batches for the timeline.
    pub fn new(
        metrics: Metrics,
        args: &ServeArgs,
        synced: Readiness,
        parked: ParkedView,
        journal: Option<snp_journal::Journal>,
    ) -> Self {
        let hub = Arc::new(Hub {
            node: args.node_name.clone(),
            debounce: DebounceStatus {
                enabled: args.debounce,
                debounce_after_ms: millis(args.debounce_after),
                debounce_max_ms: millis(args.debounce_max),
                first_check_ms: millis(args.debounce_first_check),
                retry_base_ms: millis(args.retry_base),
                retry_max_ms: millis(args.retry_max),
            },
            started: std::time::Instant::now(),
            synced,
            store: watch::channel(None).0,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_BATCHES)),
            parked,
            journal,
            stop: watch::channel(false).0,
            metrics,
        });
        tokio::spawn(record_batches(
            Arc::downgrade(&hub),
            hub.metrics.batch_events.subscribe(),
            hub.stop.subscribe(),
        ));
        Self(hub)
    }

    /// Shows `store` on the page from now on.
    pub fn attach<S: Store>(&self, store: S, info: StoreInfo) {
        let view: Arc<dyn StoreView> = Arc::new(Attached { store, info });
        self.0.store.send_replace(Some(view));
    }

    /// Ends every live feed (the shim is stopping; the HTTP server waits for open streams).
    pub fn close(&self) {
        self.0.stop.send_replace(true);
    }

    /// The page's routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(index))
            .route("/status/assets/{file}", get(asset))
            .route("/status/api/status", get(status))
            .route("/status/api/mappings", get(mappings))
            .route("/status/events", get(events))
            .with_state(self.clone())
    }

    /// The status document now.
    pub fn status(&self, with_batches: bool) -> StatusDoc {
        let hub = &self.0;
        let m = &hub.metrics;
        let view = hub.store.borrow().clone();
        let store = match &view {
            Some(v) => {
                let (mut mappings, mut applications) = (0, 0);
                let namespaces = v.namespaces();
                for ns in &namespaces {
                    for (_, entry) in v.get(ns) {
                        mappings += 1;
                        applications += entry.apps.len();
                    }
                }
                StoreStatus {
                    kind: v.info().kind,
                    location: v.info().location.clone(),
                    ready: v.ready(),
                    cache_synced: (hub.synced)(),
                    namespaces: namespaces.len(),
                    mappings,
                    applications,
                }
            }
            None => StoreStatus {
                kind: "connecting",
                location: String::new(),
                ready: false,
                cache_synced: false,
                namespaces: 0,
                mappings: 0,
                applications: 0,
            },
        };
        let batches = |result| m.batches.get_or_create(&ResultLabels { result }).get();
        let writes = |verb, result| {
            m.store_writes
                .get_or_create(&WriteLabels { verb, result })
                .get()
        };
        StatusDoc {
            version: env!("CARGO_PKG_VERSION"),
            node: hub.node.clone(),
            uptime_seconds: hub.started.elapsed().as_secs(),
            stopping: *hub.stop.borrow(),
            store,
            pending_keys: m.pending_keys.get(),
            oldest_pending_age_seconds: m.oldest_pending.seconds(),
            batches_in_flight: m.batches_in_flight.get(),
            durable_waiters: m.durable_waiters.get(),
            watchers: m.watchers.get(),
            parked: ParkedStatus {
                total: hub.parked.len(),
                keys: hub.parked.first(PARKED_SHOWN),
            },
            journal: hub.journal.as_ref().map(|j| {
                let s = j.stats();
                JournalStatus {
                    dir: j.dir().display().to_string(),
                    live_entries: s.live_entries,
                    segment_bytes: s.segment_bytes,
                    records: s.records,
                    syncs: s.syncs,
                    rotations: s.rotations,
                }
            }),
            counters: Counters {
                registrations: m.registrations.get(),
                batches_ok: batches(Outcome::Ok),
                batches_error: batches(Outcome::Error),
                creates: writes(Verb::Create, Outcome::Ok),
                updates: writes(Verb::Update, Outcome::Ok),
                write_errors: writes(Verb::Create, Outcome::Error)
                    + writes(Verb::Update, Outcome::Error),
                conflicts: m.conflicts.get(),
                retries: m.retries.get(),
                noop_skips: m.noop_skips.get(),
            },
            debounce: hub.debounce.clone(),
            simulator: assets::SIMULATOR_BUILT,
            recent_batches: with_batches.then(|| {
                hub.recent
                    .lock()
                    .map(|r| r.iter().cloned().collect())
                    .unwrap_or_default()
            }),
        }
    }

    fn mappings(&self) -> Vec<NamespaceView> {
        let Some(view) = self.0.store.borrow().clone() else {
            return Vec::new();
        };
        view.namespaces()
            .into_iter()
            .map(|ns| NamespaceView {
                mappings: view
                    .get(&ns)
                    .into_iter()
                    .map(|(k, e)| MappingView {
                        interface: k.interface,
                        applications: e.apps.into_vec(),
                        revision: e.revision,
                    })
                    .collect(),
                namespace: ns,
            })
            .collect()
    }
}

/// Keeps the latest batches for pages that open later.
async fn record_batches(
    hub: std::sync::Weak<Hub>,
    mut batches: broadcast::Receiver<BatchEvent>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            e = batches.recv() => e,
            _ = stop.wait_for(|s| *s) => return,
        };
        match event {
            Ok(e) => {
                let Some(hub) = hub.upgrade() else { return };
                if let Ok(mut recent) = hub.recent.lock() {
                    if recent.len() == RECENT_BATCHES {
                        recent.pop_front();
                    }
                    recent.push_back(e);
                };
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn json(body: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

fn encode<T: Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => json(body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn index() -> Response {
    assets::page()
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    assets::asset(&file)
}

async fn status(State(hub): State<StatusHub>) -> Response {
    encode(&hub.status(true))
}

async fn mappings(State(hub): State<StatusHub>) -> Response {
    encode(&hub.mappings())
}

fn event<T: Serialize>(name: &str, value: &T) -> Option<Event> {
    serde_json::to_string(value)
        .ok()
        .map(|data| Event::default().event(name).data(data))
}

async fn events(State(hub): State<StatusHub>) -> Response {
    let (tx, rx) = mpsc::channel(FEED_BUFFER);
    tokio::spawn(feed(hub, tx));
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One page's live feed. Subscribes before it sends the first `status`, so nothing falls
/// between the document and the events.
async fn feed(hub: StatusHub, tx: mpsc::Sender<Result<Event, Infallible>>) {
    let mut batches = hub.0.metrics.batch_events.subscribe();
    let mut store = hub.0.store.subscribe();
    let mut stop = hub.0.stop.subscribe();
    let mut changes = store.borrow_and_update().as_ref().map(|v| v.changes());
    let send = |e: Option<Event>| {
        let tx = tx.clone();
        async move {
            match e {
                Some(e) => tx.send(Ok(e)).await.is_ok(),
                None => true,
            }
        }
    };
    if !send(event("status", &hub.status(true))).await {
        return;
    }
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        let next = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tx.closed() => return,
            b = batches.recv() => match b {
                Ok(b) => event("batch", &b),
                Err(broadcast::error::RecvError::Lagged(_)) => event("status", &hub.status(true)),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            c = recv_change(&mut changes) => match c {
                Ok(Change::Upsert { key, entry }) => event("change", &ChangeView {
                    kind: "upsert",
                    namespace: &key.namespace,
                    interface: &key.interface,
                    applications: entry.apps.as_slice(),
                    revision: &entry.revision,
                }),
                Ok(Change::Delete { key }) => event("change", &ChangeView {
                    kind: "delete",
                    namespace: &key.namespace,
                    interface: &key.interface,
                    applications: &[],
                    revision: "",
                }),
                Err(broadcast::error::RecvError::Lagged(_)) => event("resync", &()),
                Err(broadcast::error::RecvError::Closed) => {
                    changes = None;
                    None
                }
            },
            r = store.changed() => {
                if r.is_err() {
                    return;
                }
                // The store came up: follow its changes; the page re-reads the mappings.
                changes = store.borrow_and_update().as_ref().map(|v| v.changes());
                event("resync", &())
            }
            _ = tick.tick() => event("status", &hub.status(false)),
        };
        if !send(next).await {
            return;
        }
    }
}

async fn recv_change(
    changes: &mut Option<broadcast::Receiver<Change>>,
) -> Result<Change, broadcast::error::RecvError> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
