//! snp-client: a subscription client for apps, the Nacos client's subscribe API over the
//! shim's `snp.v1.MappingService`.
//!
//! It depends only on the engine ([`snp_core`]), the wire types ([`snp_proto`]) and tonic,
//! so an application pulls in none of the shim's Kubernetes, HTTP or metrics stacks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), snp_client::ClientError> {
//! use snp_client::{ClientConfig, MappingClient};
//! use snp_core::MappingKey;
//! let client = MappingClient::connect("http://127.0.0.1:15051", ClientConfig::default())?;
//! let key = MappingKey::new("default", "org.apache.dubbo.demo.DemoService");
//! let id = client
//!     .subscribe(key.clone(), |key, apps| println!("{key} -> {apps:?}"))
//!     .await?;
//! let apps = client.cached(&key).await?; // the local cache
//! client.unsubscribe(&key, id).await?;
//! # Ok(()) }
//! ```
//!
//! # The example
//!
//! `examples/watch.rs` subscribes to interfaces and prints every change. Against a shim
//! started as the demo (`scripts/demo.sh`) starts it, on the embedded store, but on the
//! default ports:
//!
//! ```sh
//! cargo run -p snp-shim -- --store embedded --data-dir /tmp/snp-data --log-format text &
//! cargo run -p snp-client --example watch -- http://127.0.0.1:15051 default \
//!     org.apache.dubbo.demo.DemoService
//! # in another shell: register an application for the interface
//! grpcurl -plaintext -import-path crates/snp-proto/proto -proto dubbo/networking/v1alpha1/snp.proto \
//!     -d '{"namespace":"default","applicationName":"demo-provider","interfaceNames":["org.apache.dubbo.demo.DemoService"]}' \
//!     127.0.0.1:15051 dubbo.networking.v1alpha1.ServiceNameMappingService/registerServiceAppMapping
//! ```
//!
//! The example prints `default/org.apache.dubbo.demo.DemoService -> ["demo-provider"]` once
//! the shim has written the mapping. `scripts/demo.sh` runs its shim on free ports and logs
//! them in `shim.log` (`grpc_addr`); point the example at that address to watch a demo
//! rollout (`DEMO_INTERFACES` interfaces named as in `scripts/demo_rollout.py`).
//!
//! Behaviour, as the Nacos client's `UpdateTask` (timing from [`snp_core::Scheduler`]):
//!
//! * subscribing starts a task for the key; its first refresh comes after 1 s, then every
//!   6 s; a failure or an empty answer doubles the delay (12, 24, 48 s, capped at 60 s); a
//!   success resets it;
//! * listeners are told only when the content changed (and a late subscriber at once, if
//!   something is cached); a failed or empty answer never clears the cache;
//! * the task stops with its key's last listener.
//!
//! On top of the schedule, the client follows a `WatchMappings` stream per namespace. While
//! the stream is up, changes arrive as they land in the store and refreshes are answered
//! from the stream's view of the namespace, without a call. When the stream breaks, due
//! refreshes go back to `GetMappings`, and the stream is re-opened with backoff (1 s doubling
//! to 30 s, with jitter).
//!
//! Listeners run on the client's task: keep them short, hand work off if it blocks. A
//! listener that panics is logged and does not stop the client.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use snp_core::{
    AppSet, Backoff, MappingKey, Notification, RefreshResult, ScheduleConfig, Scheduler, SplitMix64,
};
use snp_proto::api::mapping_event::Kind;
use snp_proto::api::mapping_service_client::MappingServiceClient;
use snp_proto::api::{GetMappingsRequest, MappingState, WatchMappingsRequest};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant as TokioInstant;
use tonic::transport::{Channel, Endpoint};

/// Settings of a [`MappingClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The refresh schedule (default: Nacos's).
    pub schedule: ScheduleConfig,
    /// Longest a `GetMappings` call may take before it counts as failed (default 3 s).
    pub request_timeout: Duration,
    /// Longest a connection attempt may take (default 1 s).
    pub connect_timeout: Duration,
    /// Follow `WatchMappings` streams (default on).
    pub watch: bool,
    /// Delay between attempts to re-open a broken watch (default 1 s doubling to 30 s,
    /// 20 % jitter).
    pub watch_backoff: Backoff,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            schedule: ScheduleConfig::default(),
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            watch: true,
            watch_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 5)
                .with_jitter(0.2),
        }
    }
}

/// Identifies a listener, for [`MappingClient::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerId(u64);

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not a valid URI.
    #[error("invalid endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    /// The client's task has stopped.
    #[error("the client has stopped")]
    Stopped,
}

/// Counters of what the client did (for tests and diagnostics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// `GetMappings` calls made.
    pub fetches: u64,
    /// `GetMappings` calls that failed (error or timeout).
    pub fetch_failures: u64,
    /// Refreshes answered from a live watch instead of a call.
    pub watch_refreshes: u64,
    /// Watch streams opened (snapshot received).
    pub watch_opened: u64,
    /// Watch streams that broke or failed to open.
    pub watch_broken: u64,
    /// Listener notifications delivered.
    pub notifications: u64,
}

#[derive(Default)]
struct Stats {
    fetches: AtomicU64,
    fetch_failures: AtomicU64,
    watch_refreshes: AtomicU64,
    watch_opened: AtomicU64,
    watch_broken: AtomicU64,
    notifications: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ClientStats {
        ClientStats {
            fetches: self.fetches.load(Ordering::Relaxed),
            fetch_failures: self.fetch_failures.load(Ordering::Relaxed),
            watch_refreshes: self.watch_refreshes.load(Ordering::Relaxed),
            watch_opened: self.watch_opened.load(Ordering::Relaxed),
            watch_broken: self.watch_broken.load(Ordering::Relaxed),
            notifications: self.notifications.load(Ordering::Relaxed),
        }
    }
}

type Listener = Arc<dyn Fn(&MappingKey, &AppSet) + Send + Sync>;

enum Cmd {
    Subscribe {
        key: MappingKey,
        id: ListenerId,
        listener: Listener,
    },
    Unsubscribe {
        key: MappingKey,
        id: ListenerId,
        reply: oneshot::Sender<bool>,
    },
    Cached {
        key: MappingKey,
        reply: oneshot::Sender<Option<AppSet>>,
    },
}

/// A subscription client. Cheap to clone; the background task stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct MappingClient {
    tx: mpsc::Sender<Cmd>,
    stats: Arc<Stats>,
    next_id: Arc<AtomicU64>,
}

impl MappingClient {
    /// A client of the shim at `endpoint` (e.g. `http://127.0.0.1:15051`). Connects lazily
    /// and reconnects by itself; must be called within a tokio runtime.
    pub fn connect(endpoint: impl Into<String>, cfg: ClientConfig) -> Result<Self, ClientError> {
        let channel = Endpoint::from_shared(endpoint.into())?
            .connect_timeout(cfg.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self::with_channel(channel, cfg))
    }

    /// A client on an existing channel.
    pub fn with_channel(channel: Channel, cfg: ClientConfig) -> Self {
        let (tx, rx) = mpsc::channel(256);
        let (watch_tx, watch_rx) = mpsc::channel(256);
        let stats = Arc::new(Stats::default());
        let worker = Worker {
            sched: Scheduler::new(cfg.schedule.clone()),
            listeners: HashMap::new(),
            grpc: MappingServiceClient::new(channel),
            origin: TokioInstant::now(),
            fetches: JoinSet::new(),
            watches: HashMap::new(),
            watch_tx,
            watch_rx,
            rx,
            stats: Arc::clone(&stats),
            cfg,
        };
        tokio::spawn(worker.run());
        Self {
            tx,
            stats,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Subscribes `listener` to `key`. It hears about every change of the key's
    /// applications from now on (at once, if something is cached already).
    pub async fn subscribe(
        &self,
        key: MappingKey,
        listener: impl Fn(&MappingKey, &AppSet) + Send + Sync + 'static,
    ) -> Result<ListenerId, ClientError> {
        let id = ListenerId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.tx
            .send(Cmd::Subscribe {
                key,
                id,
                listener: Arc::new(listener),
            })
            .await
            .map_err(|_| ClientError::Stopped)?;
        Ok(id)
    }

    /// Removes a listener; returns whether it was subscribed to `key`. The key's task stops
    /// with its last listener.
    pub async fn unsubscribe(&self, key: &MappingKey, id: ListenerId) -> Result<bool, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Unsubscribe {
                key: key.clone(),
                id,
                reply,
            })
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// The locally cached applications of a subscribed key.
    pub async fn cached(&self, key: &MappingKey) -> Result<Option<AppSet>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Cached {
                key: key.clone(),
                reply,
            })
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// What the client did so far.
    pub fn stats(&self) -> ClientStats {
        self.stats.snapshot()
    }
}

/// What a namespace's watch task reports.
enum WatchMsg {
    Snapshot(Vec<MappingState>),
    Upsert(Vec<MappingState>),
    Delete(Vec<MappingState>),
    Broken(String),
}

struct WatchState {
    task: AbortHandle,
    live: bool,
    /// The namespace as the stream last described it: interface -> applications.
    view: HashMap<String, AppSet>,
}

type FetchResult = (String, Vec<MappingKey>, Result<Vec<MappingState>, String>);

struct Worker {
    sched: Scheduler<ListenerId>,
    listeners: HashMap<ListenerId, Listener>,
    grpc: MappingServiceClient<Channel>,
    origin: TokioInstant,
    fetches: JoinSet<FetchResult>,
    watches: HashMap<String, WatchState>,
    watch_tx: mpsc::Sender<(String, WatchMsg)>,
    watch_rx: mpsc::Receiver<(String, WatchMsg)>,
    rx: mpsc::Receiver<Cmd>,
    stats: Arc<Stats>,
    cfg: ClientConfig,
}

impl Worker {
    fn now(&self) -> snp_core::Instant {
        let ms = TokioInstant::now()
            .saturating_duration_since(self.origin)
            .as_millis();
        snp_core::Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    async fn run(mut self) {
        loop {
            self.refresh_due();
            let wake = self
                .sched
                .next_wakeup()
                .map(|at| self.origin + Duration::from_millis(at.as_millis()));
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                Some(done) = self.fetches.join_next(), if !self.fetches.is_empty() => {
                    if let Ok(result) = done {
                        self.fetched(result);
                    }
                }
                Some((ns, msg)) = self.watch_rx.recv() => self.watch_event(ns, msg),
                _ = sleep_until_opt(wake) => {}
            }
        }
        for (_, w) in self.watches.drain() {
            w.task.abort();
        }
    }

    fn notify(&self, notes: Vec<Notification<ListenerId>>) {
        for n in notes {
            if let Some(listener) = self.listeners.get(&n.listener) {
                Stats::bump(&self.stats.notifications);
                let call = AssertUnwindSafe(|| listener(&n.key, &n.apps));
                if std::panic::catch_unwind(call).is_err() {
                    tracing::error!(key = %n.key, "a mapping listener panicked");
                }
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Subscribe { key, id, listener } => {
                self.listeners.insert(id, listener);
                let ns = key.namespace.clone();
                let now = self.now();
                let note = self.sched.subscribe(now, key.clone(), id);
                // A live watch may already know the key.
                let known = self
                    .watches
                    .get(&ns)
                    .filter(|w| w.live)
                    .and_then(|w| w.view.get(&key.interface).cloned());
                self.notify(note.into_iter().collect());
                if let Some(apps) = known {
                    let notes = self.sched.apply(now, &key, apps);
                    self.notify(notes);
                }
                self.ensure_watch(&ns);
            }
            Cmd::Unsubscribe { key, id, reply } => {
                let was = self.sched.unsubscribe(&key, &id);
                if was {
                    // Every subscribe call gets its own id: it has no other key.
                    self.listeners.remove(&id);
                    self.stop_watch_if_unused(&key.namespace);
                }
                let _ = reply.send(was);
            }
            Cmd::Cached { key, reply } => {
                let _ = reply.send(self.sched.cached(&key).cloned());
            }
        }
    }

    fn ensure_watch(&mut self, ns: &str) {
        if !self.cfg.watch || self.watches.contains_key(ns) {
            return;
        }
        let task = tokio::spawn(watch_loop(
            self.grpc.clone(),
            ns.to_owned(),
            self.watch_tx.clone(),
            self.cfg.watch_backoff.clone(),
        ));
        self.watches.insert(
            ns.to_owned(),
            WatchState {
                task: task.abort_handle(),
                live: false,
                view: HashMap::new(),
            },
        );
    }

    fn stop_watch_if_unused(&mut self, ns: &str) {
        if self.sched.keys().any(|k| k.namespace == ns) {
            return;
        }
        if let Some(w) = self.watches.remove(ns) {
            w.task.abort();
        }
    }

    /// Starts the refreshes that are due: from a live watch's view, or with a call.
    fn refresh_due(&mut self) {
        let now = self.now();
        let due = self.sched.due(now);
        if due.is_empty() {
            return;
        }
        let mut by_ns: BTreeMap<String, Vec<MappingKey>> = BTreeMap::new();
        for key in due {
            by_ns.entry(key.namespace.clone()).or_default().push(key);
        }
        for (ns, keys) in by_ns {
            if let Some(w) = self.watches.get(&ns).filter(|w| w.live) {
                let answers: Vec<(MappingKey, AppSet)> = keys
                    .into_iter()
                    .map(|k| {
                        let apps = w.view.get(&k.interface).cloned().unwrap_or_default();
                        (k, apps)
                    })
                    .collect();
                for (key, apps) in answers {
                    Stats::bump(&self.stats.watch_refreshes);
                    let notes = self
                        .sched
                        .on_result(now, &key, RefreshResult::Fetched(apps));
                    self.notify(notes);
                }
                continue;
            }
            Stats::bump(&self.stats.fetches);
            let mut grpc = self.grpc.clone();
            let timeout = self.cfg.request_timeout;
            let request = GetMappingsRequest {
                namespace: ns.clone(),
                interface_names: keys.iter().map(|k| k.interface.clone()).collect(),
            };
            self.fetches.spawn(async move {
                let result = match tokio::time::timeout(timeout, grpc.get_mappings(request)).await {
                    Ok(Ok(resp)) => Ok(resp.into_inner().mappings),
                    Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
                    Err(_) => Err("timed out".to_owned()),
                };
                (ns, keys, result)
            });
        }
    }

    fn fetched(&mut self, (ns, keys, result): FetchResult) {
        let now = self.now();
        match result {
            Ok(states) => {
                let mut found: HashMap<String, AppSet> = states
                    .into_iter()
                    .filter(|s| s.namespace == ns)
                    .map(|s| (s.interface_name, s.application_names.into_iter().collect()))
                    .collect();
                for key in keys {
                    let apps = found.remove(&key.interface).unwrap_or_default();
                    let notes = self
                        .sched
                        .on_result(now, &key, RefreshResult::Fetched(apps));
                    self.notify(notes);
                }
            }
            Err(e) => {
                Stats::bump(&self.stats.fetch_failures);
                tracing::debug!(namespace = %ns, error = %e, "refresh failed");
                for key in keys {
                    let notes = self.sched.on_result(now, &key, RefreshResult::Failed);
                    self.notify(notes);
                }
            }
        }
    }

    fn watch_event(&mut self, ns: String, msg: WatchMsg) {
        let now = self.now();
        let Some(w) = self.watches.get_mut(&ns) else {
            return;
        };
        let changed: Vec<(String, AppSet)> = match msg {
            WatchMsg::Snapshot(states) => {
                Stats::bump(&self.stats.watch_opened);
                w.live = true;
                w.view = states
                    .into_iter()
                    .filter(|s| s.namespace == ns)
                    .map(|s| (s.interface_name, s.application_names.into_iter().collect()))
                    .collect();
                w.view.iter().map(|(i, a)| (i.clone(), a.clone())).collect()
            }
            WatchMsg::Upsert(states) => states
                .into_iter()
                .filter(|s| s.namespace == ns)
                .map(|s| {
                    let apps: AppSet = s.application_names.into_iter().collect();
                    w.view.insert(s.interface_name.clone(), apps.clone());
                    (s.interface_name, apps)
                })
                .collect(),
            WatchMsg::Delete(states) => {
                for s in states {
                    w.view.remove(&s.interface_name);
                }
                Vec::new()
            }
            WatchMsg::Broken(reason) => {
                if w.live {
                    tracing::info!(namespace = %ns, %reason, "watch broke; falling back to refreshes");
                }
                Stats::bump(&self.stats.watch_broken);
                w.live = false;
                w.view.clear();
                Vec::new()
            }
        };
        for (interface, apps) in changed {
            let key = MappingKey::new(ns.as_str(), interface);
            let notes = self.sched.apply(now, &key, apps);
            self.notify(notes);
        }
    }
}

/// Follows `WatchMappings` for one namespace, forever: re-opens a broken stream after a
/// backoff that resets once a stream delivered its snapshot.
async fn watch_loop(
    mut grpc: MappingServiceClient<Channel>,
    ns: String,
    tx: mpsc::Sender<(String, WatchMsg)>,
    backoff: Backoff,
) {
    let mut rng =
        SplitMix64::new(u64::from(std::process::id()) ^ (ns.len() as u64).rotate_left(17) ^ 0x5eed);
    let mut failures = 0u32;
    loop {
        let request = WatchMappingsRequest {
            namespace: ns.clone(),
            interface_names: Vec::new(),
        };
        let reason = match grpc.watch_mappings(request).await {
            Err(status) => format!("{}: {}", status.code(), status.message()),
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            let msg = match Kind::try_from(event.kind) {
                                Ok(Kind::Snapshot) => {
                                    failures = 0;
                                    WatchMsg::Snapshot(event.mappings)
                                }
                                Ok(Kind::Upsert) => WatchMsg::Upsert(event.mappings),
                                Ok(Kind::Delete) => WatchMsg::Delete(event.mappings),
                                _ => continue,
                            };
                            if tx.send((ns.clone(), msg)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break "the stream ended".to_owned(),
                        Err(status) => break format!("{}: {}", status.code(), status.message()),
                    }
                }
            }
        };
        if tx
            .send((ns.clone(), WatchMsg::Broken(reason)))
            .await
            .is_err()
        {
            return;
        }
        let delay = backoff.delay_with_jitter(failures, &mut rng);
        failures = backoff.next_failures(failures);
        tokio::time::sleep(delay).await;
    }
}

async fn sleep_until_opt(at: Option<TokioInstant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
