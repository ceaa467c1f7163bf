//! The Kubernetes store: `ServiceNameMapping` custom resources.
//!
//! # Reads
//!
//! One watch over all namespaces (kube-runtime's `watcher` with its stream backoff: list,
//! then watch from the list's resourceVersion, resuming or re-listing after errors) feeds
//! the shared [`crate::index::MappingIndex`] by `(namespace, spec.interfaceName)` and by
//! object name. (A kube-runtime `reflector` is not used: its store is keyed by object, and
//! the cache needs the key index and the differences a re-list makes, as [`Change`]s.) Lookups, watches
//! and the "already there" check are served from it, so a mapping the cluster already
//! holds costs no API call. Every applied or deleted object is broadcast as a
//! [`Change`].
//!
//! # Writes
//!
//! Per key, bounded concurrency across the keys of a batch:
//!
//! * the cache holds every application: nothing is sent;
//! * the cache knows an object for the key (whatever its name, so objects of the seed
//!   server are reused): `PUT` the cached object with the union of names and its
//!   `resourceVersion`. On 409 Conflict: `GET` it, union again, retry after a short
//!   jittered backoff. Never a merge patch: a JSON merge patch replaces the list;
//! * no object: create one under the first of `snp_core::naming::candidate_names` that is
//!   free or already holds this interface. On 409 AlreadyExists: `GET` the name; if it
//!   holds this interface, union-update it, else take the next candidate.
//!
//! Shims on many nodes flush the same keys at about the same time in a rollout. Before a
//! key's first create, or else before its first update of an object another writer wrote
//! last, a merge waits a random spread (`create_spread`, `update_spread`) and plans again
//! from the cache: the first writer to wake writes, and the others see its object through
//! the watch and either find every application they would add there (nothing is sent)
//! or update from its fresh `resourceVersion`, instead of all writing at once and all but
//! one getting 409. Writers that still collide (their wake-ups closer than the watch's
//! delay) spread once more after their first 409 and take the winner's version from the
//! watch, with a GET only if it has not arrived.
//!
//! Each successful write is put in the cache at once (the watch brings the same
//! resourceVersion later and is ignored), so merging the same batch again sends nothing.
//! Every request except the watch takes a token from a client-side rate limiter
//! ([`limit`]).
//!
//! # Outcomes
//!
//! Each key gets its own [`KeyOutcome`]. 409s are retried inside the merge. 429, 5xx,
//! 401, 408, timeouts and connection errors are transient; a missing namespace (404 on
//! create), a terminating namespace or RBAC (403), schema or admission (422, 400), an
//! object too large (413, or any answer saying "too large") and an exceeded quota (403)
//! are permanent. Once a request of a batch gets no answer at all, the keys not yet tried
//! are reported transient without a request, so an outage costs one timeout, not one per
//! key.

mod cache;
mod limit;
pub mod sim;

use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use ::kube::api::{Api, DynamicObject, ListParams, PostParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::core::ApiResource;
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Client, Config};
use futures::StreamExt;
use snp_core::{AppSet, Backoff, MappingKey, Mappings, SplitMix64};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use self::cache::{Cache, Plan};
use self::limit::Limiter;
use crate::crd;
use crate::observe::{Observer, RequestResult, Verb};
use crate::{Change, Entry, KeyOutcome, MergeReport, Store, StoreError};

/// Settings of the Kubernetes store.
#[derive(Debug, Clone)]
pub struct KubeStoreConfig {
    /// Kubeconfig path; `None` means what `kube::Config::infer` finds: `KUBECONFIG`,
    /// `~/.kube/config`, else the in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
    /// API group of ServiceNameMapping.
    pub group: String,
    /// API version of ServiceNameMapping.
    pub version: String,
    /// Client-side request rate limit (sustained, per second). Not positive: unlimited.
    pub qps: f64,
    /// Client-side burst above `qps`.
    pub burst: u32,
    /// Field manager / writer identity (the node name).
    pub writer: String,
    /// Before creating an object for a key the cache has never seen, wait a random delay
    /// up to this long and look again: when every node's shim flushes the same new key at
    /// once, the first to wake creates it and the others see it through their watch
    /// instead of all POSTing (and all but one getting 409). Zero disables.
    pub create_spread: Duration,
    /// Before the first update of an object that another writer wrote last, wait a random
    /// delay up to this long and look again: shims that all add applications to the same
    /// object take turns, each updating from the last one's version (or finding its
    /// applications already there), instead of all PUTting the same `resourceVersion`.
    /// Objects this writer wrote last are updated at once, and a key that has just waited
    /// the create spread does not wait again. After a key's first 409 the merge waits it
    /// again and takes the winner's version from the watch cache (a GET only if it has not
    /// arrived). Zero disables.
    pub update_spread: Duration,
}

/// Keys of one batch written at the same time.
const WRITE_CONCURRENCY: usize = 8;
/// Requests (writes and re-reads) one key may take within one merge before the merge
/// gives up on it with [`StoreError::Contended`] (transient); the caller retries it later.
const MAX_TRIES_PER_KEY: u32 = 16;
/// Longest one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest [`KubeStore::connect`] waits for the first full list.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Buffered changes per subscriber before it lags.
const CHANGE_BUFFER: usize = 4096;

/// Pause between retries after a 409 Conflict: 50 ms doubling to 2 s, up to half of it
/// taken off at random so that writers that collided don't collide again.
fn conflict_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(2), 6).with_jitter(0.5)
}

/// The pause after the `conflicts`-th 409 Conflict of a key (see [`conflict_backoff`]).
fn conflict_pause(conflicts: usize, rng: &mut dyn snp_core::Rng) -> Duration {
    let failures = u32::try_from(conflicts.saturating_sub(1)).unwrap_or(u32::MAX);
    conflict_backoff().delay_with_jitter(failures, rng)
}

/// A uniform random delay in `(0, spread]` before a key's first create or update (a
/// backoff that is all jitter).
fn spread_delay(spread: Duration, rng: &mut dyn snp_core::Rng) -> Duration {
    Backoff::new(spread, spread, 0)
        .with_jitter(1.0)
        .delay_with_jitter(0, rng)
}

/// How often the API server is probed while the watch is down, so readiness comes back
/// even if no object changes once the watch has resumed.
const WATCH_PROBE: Duration = Duration::from_secs(1);

/// The watcher's backoff after errors: 250 ms doubling to 5 s, up to 30 % off at random,
/// reset by the next event. Shorter than kube-runtime's default (800 ms to 30 s): a node's
/// shim should see the API server again within seconds of an outage, and one watch per
/// node is cheap for the server.
struct WatchBackoff {
    policy: Backoff,
    failures: u32,
    rng: SplitMix64,
}

impl WatchBackoff {
    fn new() -> Self {
        Self {
            policy: Backoff::new(Duration::from_millis(250), Duration::from_secs(5), 5)
                .with_jitter(0.3),
            failures: 0,
            rng: SplitMix64::new(seed("watch")),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.policy.delay_with_jitter(self.failures, &mut self.rng);
        self.failures = self.policy.next_failures(self.failures);
        Some(delay)
    }
}

impl ::kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Handle on the Kubernetes store. Clones share the cache and the watch; the watch stops
/// when the last clone is dropped.
#[derive(Clone)]
pub struct KubeStore {
    inner: Arc<Inner>,
    _watch: Arc<AbortOnDrop>,
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Inner {
    client: Client,
    ar: ApiResource,
    cache: RwLock<Cache>,
    changes: broadcast::Sender<Change>,
    synced: tokio::sync::watch::Sender<bool>,
    /// Whether the last API request (write, read or probe) got an answer.
    api_ok: AtomicBool,
    /// Whether the watch is up (false from a watch error until a probe succeeds).
    watch_ok: AtomicBool,
    limiter: Limiter,
    metrics: Arc<dyn Observer>,
    post: PostParams,
    rng: Mutex<SplitMix64>,
    create_spread: Duration,
    update_spread: Duration,
}

/// How one API request failed.
#[derive(Debug)]
enum ApiError {
    /// 409 Conflict: a stale resourceVersion.
    Conflict,
    /// 409 AlreadyExists: the name is taken.
    AlreadyExists,
    /// 404 (with the server's message and whether it names a missing namespace).
    NotFound { detail: String, namespace: bool },
    /// An answer that ends this key's merge (transient or permanent).
    Fail(StoreError),
    /// No answer at all: connection refused or reset, timeout. Transient, and the rest of
    /// the batch is not tried.
    NoAnswer(String),
}

impl ApiError {
    /// Classifies a kube error of request `op` (e.g. "create x") in namespace `namespace`.
    fn classify(e: ::kube::Error, op: &str, namespace: &str) -> Self {
        let s = match e {
            ::kube::Error::Api(s) => s,
            other => return Self::NoAnswer(format!("{op}: {other}")),
        };
        let detail = if s.reason.is_empty() {
            format!("{op}: {} {}", s.code, s.message)
        } else {
            format!("{op}: {} {}: {}", s.code, s.reason, s.message)
        };
        let msg = s.message.to_ascii_lowercase();
        let ns = || namespace.to_owned();
        match s.code {
            409 if s.reason == "AlreadyExists" => Self::AlreadyExists,
            409 => Self::Conflict,
            404 => {
                let kind = s.details.as_ref().map(|d| d.kind.as_str());
                let namespace = kind == Some("namespaces")
                    || msg.contains(&format!("namespaces \"{namespace}\""));
                Self::NotFound { detail, namespace }
            }
            413 => Self::Fail(StoreError::TooLarge(detail)),
            _ if msg.contains("too large") => Self::Fail(StoreError::TooLarge(detail)),
            403 if msg.contains("exceeded quota") => Self::Fail(StoreError::QuotaExceeded(detail)),
            403 if msg.contains("being terminated") => {
                Self::Fail(StoreError::NamespaceTerminating {
                    namespace: ns(),
                    detail,
                })
            }
            403 => Self::Fail(StoreError::Forbidden(detail)),
            400 | 422 => Self::Fail(StoreError::Invalid(detail)),
            // 401: credentials expire and are refreshed; 408: the server timed out.
            401 | 408 | 429 => Self::Fail(StoreError::Unavailable(detail)),
            400..=499 => Self::Fail(StoreError::Rejected(detail)),
            _ => Self::Fail(StoreError::Unavailable(detail)),
        }
    }

    fn outcome(&self) -> RequestResult {
        match self {
            // 409s and 404s are part of the merge protocol: counted as errors, as before.
            Self::Fail(e) if e.is_permanent() => RequestResult::Rejected,
            _ => RequestResult::Failed,
        }
    }

    /// Whether the server answered (even with a refusal).
    fn answered(&self) -> bool {
        !matches!(self, Self::NoAnswer(_))
            && !matches!(self, Self::Fail(StoreError::Unavailable(_)))
    }
}

/// How one key's merge ended: what it did and the conflicts it met, or why it failed.
type KeyResult = Result<(Done, usize), KeyFail>;

/// Why one key's merge ended without the key stored.
#[derive(Debug)]
enum KeyFail {
    /// The backend did not answer: stop the batch.
    NoAnswer(StoreError),
    /// This key only.
    Key(StoreError),
}

impl From<StoreError> for KeyFail {
    fn from(e: StoreError) -> Self {
        Self::Key(e)
    }
}

/// What a merge did for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Unchanged,
    Created,
    Updated,
}

impl KubeStore {
    /// Connects, starts the watch-based cache and returns once it is synced. If the first
    /// list does not complete within 30 s the store is returned anyway: it keeps trying,
    /// reports not ready, and refuses merges (`Unavailable`) until it has synced.
    pub async fn connect(cfg: KubeStoreConfig, metrics: impl Observer) -> Result<Self, StoreError> {
        let client = client(&cfg).await?;
        let ar = crd::api_resource(&cfg.group, &cfg.version);
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let (synced, mut synced_rx) = tokio::sync::watch::channel(false);
        let inner = Arc::new(Inner {
            client,
            ar,
            cache: RwLock::new(Cache::default()),
            changes,
            synced,
            api_ok: AtomicBool::new(true),
            watch_ok: AtomicBool::new(true),
            limiter: Limiter::new(cfg.qps, cfg.burst),
            metrics: Arc::new(metrics),
            post: PostParams {
                dry_run: false,
                field_manager: Some(identity(&cfg.writer, 128)),
            },
            rng: Mutex::new(SplitMix64::new(seed(&cfg.writer))),
            create_spread: cfg.create_spread,
            update_spread: cfg.update_spread,
        });
        let task = tokio::spawn(watch_loop(inner.clone()));
        let store = Self {
            inner,
            _watch: Arc::new(AbortOnDrop(task.abort_handle())),
        };
        match tokio::time::timeout(SYNC_TIMEOUT, synced_rx.wait_for(|s| *s)).await {
            Ok(Ok(_)) => tracing::info!(
                group = %cfg.group,
                version = %cfg.version,
                keys = store.inner.read().len(),
                "ServiceNameMapping cache synced"
            ),
            _ => tracing::warn!(
                group = %cfg.group,
                version = %cfg.version,
                "ServiceNameMapping cache not synced yet; retrying in the background"
            ),
        }
        Ok(store)
    }

    async fn merge_key(&self, key: MappingKey, want: AppSet) -> Result<(Done, usize), KeyFail> {
        let inner = &*self.inner;
        let api: Api<DynamicObject> =
            Api::namespaced_with(inner.client.clone(), &key.namespace, &inner.ar);
        let mut done = Done::Unchanged;
        let mut conflicts = 0usize;
        // The update spread is waited at most once, before the key's first PUT.
        let mut may_spread_update = !inner.update_spread.is_zero();
        for tries in 0..=MAX_TRIES_PER_KEY {
            let plan = inner.read().plan(&key, &want, &inner.ar);
            match plan {
                Plan::Nothing => {
                    if tries == 0 {
                        inner.metrics.noop_skips(1);
                    }
                    return Ok((done, conflicts));
                }
                _ if tries == MAX_TRIES_PER_KEY => break,
                Plan::NoName => {
                    let e = StoreError::NoName(format!(
                        "every candidate object name for {key} holds another interface"
                    ));
                    tracing::error!(%key, error = %e, "cannot name the object");
                    return Err(KeyFail::Key(e));
                }
                Plan::Update { ref name, ref body }
                    if may_spread_update
                        && inner
                            .read()
                            .updates_another_writers(&key.namespace, name, body) =>
                {
                    may_spread_update = false;
                    let pause = inner.spread(inner.update_spread);
                    tracing::debug!(%key, %name, ?pause, "another writer's object: spreading the update");
                    tokio::time::sleep(pause).await;
                    // Look again: other shims' updates may have arrived by watch.
                    if let Plan::Nothing = inner.read().plan(&key, &want, &inner.ar) {
                        inner.metrics.noop_skips(1);
                        return Ok((done, conflicts));
                    }
                }
                Plan::Update { name, body } => {
                    may_spread_update = false;
                    let op = format!("update of ServiceNameMapping {}/{name}", key.namespace);
                    match inner
                        .call(
                            Verb::Update,
                            &op,
                            &key.namespace,
                            api.replace(&name, &inner.post, &body),
                        )
                        .await
                    {
                        Ok(obj) => {
                            inner.absorb_own(obj);
                            done = Done::Updated;
                        }
                        Err(ApiError::Conflict) => {
                            conflicts += 1;
                            inner.metrics.conflict();
                            let stale = body.metadata.resource_version.as_deref();
                            inner
                                .after_conflict(
                                    &api,
                                    &key,
                                    &name,
                                    Some(stale.unwrap_or_default()),
                                    conflicts,
                                )
                                .await?;
                        }
                        Err(ApiError::NotFound { .. }) => {
                            // Deleted meanwhile: forget it; the next round creates.
                            inner.forget(&key.namespace, &name);
                        }
                        Err(e) => return Err(inner.fail(&key, e)),
                    }
                }
                Plan::Refresh { name } => {
                    tracing::warn!(%key, %name, "the cached object cannot be read back; re-reading it");
                    inner.refresh(&api, &key, &name).await?;
                }
                Plan::Create { .. } if tries == 0 && !inner.create_spread.is_zero() => {
                    // One spread before a key's first write: this one already sets the
                    // writers apart for the update that may follow.
                    may_spread_update = false;
                    let pause = inner.spread(inner.create_spread);
                    tracing::debug!(%key, ?pause, "new key: spreading the create");
                    tokio::time::sleep(pause).await;
                    // Look again: another shim's object may have arrived by watch.
                    if let Plan::Nothing = inner.read().plan(&key, &want, &inner.ar) {
                        inner.metrics.noop_skips(1);
                        return Ok((done, conflicts));
                    }
                }
                Plan::Create { name } => {
                    let body = new_object(&inner.ar, &name, &key, &want).map_err(|e| {
                        StoreError::Invalid(format!("building the object for {key}: {e}"))
                    })?;
                    let op = format!("create of ServiceNameMapping {}/{name}", key.namespace);
                    match inner
                        .call(
                            Verb::Create,
                            &op,
                            &key.namespace,
                            api.create(&inner.post, &body),
                        )
                        .await
                    {
                        Ok(obj) => {
                            inner.absorb_own(obj);
                            done = Done::Created;
                        }
                        Err(ApiError::AlreadyExists) => {
                            // Someone created it first (another shim, or an object our
                            // cache has not seen yet): read it; the next round either
                            // updates it (same interface) or takes the next candidate.
                            conflicts += 1;
                            inner.metrics.conflict();
                            inner
                                .after_conflict(&api, &key, &name, None, conflicts)
                                .await?;
                        }
                        Err(ApiError::NotFound { detail, namespace }) => {
                            // A create gets 404 when the namespace does not exist (for
                            // good, until someone creates it), or when the resource is not
                            // served (yet): the CRD is missing, which the watch reports too.
                            let e = if namespace {
                                StoreError::NamespaceNotFound {
                                    namespace: key.namespace.clone(),
                                    detail,
                                }
                            } else {
                                StoreError::Unavailable(format!(
                                    "{detail} (is the ServiceNameMapping CRD installed?)"
                                ))
                            };
                            return Err(inner.fail(&key, ApiError::Fail(e)));
                        }
                        Err(e) => return Err(inner.fail(&key, e)),
                    }
                }
            }
        }
        tracing::warn!(%key, conflicts, "conflicts did not settle; the key will be retried");
        Err(KeyFail::Key(StoreError::Contended(key.to_string())))
    }
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, changes: Vec<Change>) {
        for c in changes {
            // No subscriber is not an error.
            let _ = self.changes.send(c);
        }
    }

    /// Puts an object the server returned into the cache.
    fn absorb(&self, obj: DynamicObject) {
        let changes = self.write().apply(obj);
        self.publish(changes);
    }

    /// Puts the server's answer to this writer's own write into the cache.
    fn absorb_own(&self, obj: DynamicObject) {
        let changes = self.write().apply_own(obj);
        self.publish(changes);
    }

    fn forget(&self, namespace: &str, name: &str) {
        let changes = self.write().remove(namespace, name, None);
        self.publish(changes);
    }

    /// Re-reads object `name` into the cache.
    async fn refresh(
        &self,
        api: &Api<DynamicObject>,
        key: &MappingKey,
        name: &str,
    ) -> Result<(), KeyFail> {
        let op = format!("get of ServiceNameMapping {}/{name}", key.namespace);
        match self
            .call(Verb::Get, &op, &key.namespace, api.get_opt(name))
            .await
        {
            Ok(Some(obj)) => self.absorb(obj),
            Ok(None) => self.forget(&key.namespace, name),
            Err(e) => return Err(self.fail(key, e)),
        }
        Ok(())
    }

    /// After a 409 on object `name` of `key` (`stale`: the version an update was refused
    /// for; `None` after AlreadyExists). On the key's first 409, with an update spread:
    /// other writers are writing the object right now, so wait a random spread and take
    /// the winner's version from the watch cache if it has arrived. Otherwise (or if the
    /// watch has not brought it) re-read the object with a GET, and after a Conflict pause
    /// a jittered backoff.
    async fn after_conflict(
        &self,
        api: &Api<DynamicObject>,
        key: &MappingKey,
        name: &str,
        stale: Option<&str>,
        conflicts: usize,
    ) -> Result<(), KeyFail> {
        if conflicts == 1 && !self.update_spread.is_zero() {
            let pause = self.spread(self.update_spread);
            tracing::debug!(%key, %name, ?pause, "409; spreading the retry");
            tokio::time::sleep(pause).await;
            if self.read().moved_past(key, name, stale) {
                return Ok(());
            }
        }
        tracing::debug!(%key, %name, conflicts, "409; re-reading");
        self.refresh(api, key, name).await?;
        if stale.is_some() {
            tokio::time::sleep(self.pause(conflicts)).await;
        }
        Ok(())
    }

    /// One API request: waits for a rate-limit token, bounds the time, counts it.
    async fn call<T>(
        &self,
        verb: Verb,
        op: &str,
        namespace: &str,
        request: impl std::future::Future<Output = Result<T, ::kube::Error>>,
    ) -> Result<T, ApiError> {
        self.limiter.acquire().await;
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(r) => r.map_err(|e| ApiError::classify(e, op, namespace)),
            Err(_) => Err(ApiError::NoAnswer(format!(
                "{op}: no answer within {REQUEST_TIMEOUT:?}"
            ))),
        };
        match &result {
            Ok(_) => {
                self.metrics.request(verb, RequestResult::Ok);
                self.api_ok.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.request(verb, e.outcome());
                // Any answer, even a refusal, shows the server is there.
                self.api_ok.store(e.answered(), Ordering::Relaxed);
            }
        }
        result
    }

    /// Logs a failed request of `key` and turns it into the key's failure.
    fn fail(&self, key: &MappingKey, e: ApiError) -> KeyFail {
        match e {
            ApiError::NoAnswer(m) => {
                tracing::warn!(%key, error = %m, "API server did not answer");
                KeyFail::NoAnswer(StoreError::Unavailable(m))
            }
            ApiError::Fail(e) => {
                if e.is_permanent() {
                    tracing::error!(%key, reason = e.reason(), error = %e, "API server refused the write");
                } else {
                    tracing::warn!(%key, reason = e.reason(), error = %e, "API server unavailable");
                }
                KeyFail::Key(e)
            }
            ApiError::NotFound { detail, .. } => KeyFail::Key(StoreError::Unavailable(detail)),
            ApiError::Conflict | ApiError::AlreadyExists => {
                KeyFail::Key(StoreError::Contended(key.to_string()))
            }
        }
    }

    /// A uniform random delay in `(0, spread]` (a backoff that is all jitter).
    fn spread(&self, spread: Duration) -> Duration {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        spread_delay(spread, &mut *rng)
    }

    fn pause(&self, conflicts: usize) -> Duration {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        conflict_pause(conflicts, &mut *rng)
    }
}

impl Store for KubeStore {
    async fn merge_keys(&self, batch: &Mappings) -> MergeReport {
        if !*self.inner.synced.borrow() {
            return MergeReport::all_failed(batch, || {
                StoreError::Unavailable("ServiceNameMapping cache not synced yet".into())
            });
        }
        // While the watch is down (an outage, or a server still starting), nothing is
        // written: a server that has just come back may refuse with 403 until its
        // authorizer has loaded the RBAC rules, and such a refusal would park keys that
        // are in fact allowed. Writes resume once the watch (or its list probe) is served.
        if !self.inner.watch_ok.load(Ordering::Relaxed) {
            return MergeReport::all_failed(batch, || {
                StoreError::Unavailable("the API server is not serving the watch yet".into())
            });
        }
        // Owned work items: the stream must be `Send` for any caller.
        let work: Vec<(MappingKey, AppSet)> =
            batch.iter().map(|(k, a)| (k.clone(), a.clone())).collect();
        let abort = Arc::new(AtomicBool::new(false));
        let store = self.clone();
        let results: Vec<(MappingKey, KeyResult)> =
            futures::stream::iter(work.into_iter().map(move |(key, apps)| {
                let (store, abort) = (store.clone(), abort.clone());
                async move {
                    if abort.load(Ordering::Relaxed) {
                        let e = StoreError::Unavailable(
                            "not tried: the API server did not answer an earlier request of this batch"
                                .into(),
                        );
                        return (key, Err(KeyFail::NoAnswer(e)));
                    }
                    let r = store.merge_key(key.clone(), apps).await;
                    if matches!(r, Err(KeyFail::NoAnswer(_))) {
                        abort.store(true, Ordering::Relaxed);
                    }
                    (key, r)
                }
            }))
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        let mut report = MergeReport::default();
        for (key, r) in results {
            let outcome = match r {
                Ok((done, conflicts)) => {
                    report.conflicts += conflicts;
                    match done {
                        Done::Unchanged => KeyOutcome::Unchanged,
                        Done::Created => KeyOutcome::Written { created: true },
                        Done::Updated => KeyOutcome::Written { created: false },
                    }
                }
                Err(KeyFail::NoAnswer(e) | KeyFail::Key(e)) => KeyOutcome::failed(e),
            };
            report.keys.push((key, outcome));
        }
        report
    }

    fn get(&self, namespace: &str, interfaces: &[String]) -> Vec<(MappingKey, Entry)> {
        self.inner.read().get(namespace, interfaces)
    }

    fn contains_all(&self, mappings: &Mappings) -> bool {
        self.inner.read().contains_all(mappings)
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    fn namespaces(&self) -> Vec<String> {
        self.inner.read().namespaces()
    }

    fn is_ready(&self) -> bool {
        *self.inner.synced.borrow()
            && self.inner.watch_ok.load(Ordering::Relaxed)
            && self.inner.api_ok.load(Ordering::Relaxed)
    }
}

/// Keeps the cache in step with the API server, forever (the task is aborted when the
/// last store handle goes). The watcher retries by itself with kube-runtime's stream
/// backoff ([`WatchBackoff`]); while it is down, a cheap list probes the server so readiness comes back
/// as soon as the server answers, even if no object changes.
async fn watch_loop(inner: Arc<Inner>) {
    let api: Api<DynamicObject> = Api::all_with(inner.client.clone(), &inner.ar);
    let mut stream = pin!(
        watcher::watcher(api.clone(), watcher::Config::default()).backoff(WatchBackoff::new())
    );
    let mut listed: Vec<DynamicObject> = Vec::new();
    let mut logged_down = false;
    loop {
        let down = !inner.watch_ok.load(Ordering::Relaxed);
        let event = tokio::select! {
            event = stream.next() => match event {
                Some(event) => event,
                None => return,
            },
            _ = tokio::time::sleep(WATCH_PROBE), if down => {
                let params = ListParams::default().limit(1);
                if inner.call(Verb::List, "list of ServiceNameMappings", "", api.list(&params)).await.is_ok() {
                    inner.watch_ok.store(true, Ordering::Relaxed);
                }
                continue;
            }
        };
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                inner.watch_ok.store(false, Ordering::Relaxed);
                let hint = match &e {
                    watcher::Error::InitialListFailed(::kube::Error::Api(s)) if s.code == 404 => {
                        " (is the CustomResourceDefinition installed? `snp-shim crd | kubectl apply -f -`)"
                    }
                    _ => "",
                };
                if logged_down {
                    tracing::debug!(error = %e, "ServiceNameMapping watch still failing{hint}");
                } else {
                    tracing::warn!(error = %e, "ServiceNameMapping watch failed{hint}; retrying with backoff");
                    logged_down = true;
                }
                continue;
            }
        };
        if logged_down {
            tracing::info!("ServiceNameMapping watch restored");
            logged_down = false;
        }
        inner.watch_ok.store(true, Ordering::Relaxed);
        match event {
            Event::Init => listed.clear(),
            Event::InitApply(mut obj) => {
                obj.metadata.managed_fields = None;
                listed.push(obj);
            }
            Event::InitDone => {
                let objs = std::mem::take(&mut listed);
                let n = objs.len();
                let changes = inner.write().replace_all(objs);
                inner.publish(changes);
                inner.synced.send_replace(true);
                tracing::debug!(objects = n, "ServiceNameMapping list complete");
            }
            Event::Apply(obj) => inner.absorb(obj),
            Event::Delete(obj) => {
                if let (Some(ns), Some(name)) = (&obj.metadata.namespace, &obj.metadata.name) {
                    let changes =
                        inner
                            .write()
                            .remove(ns, name, obj.metadata.resource_version.as_deref());
                    inner.publish(changes);
                }
            }
        }
    }
}

/// A kube client identifying itself as `snp-shim/<writer>`: from `--kubeconfig` if given,
/// else from what `kube::Config::infer` finds (`KUBECONFIG`, `~/.kube/config`, the
/// in-cluster service account), logging which one it used.
pub async fn client(cfg: &KubeStoreConfig) -> Result<Client, StoreError> {
    let mut config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| {
                StoreError::Config(format!("reading kubeconfig {}: {e}", path.display()))
            })?;
            let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| StoreError::Config(format!("kubeconfig {}: {e}", path.display())))?;
            tracing::info!(kubeconfig = %path.display(), cluster = %config.cluster_url, "Kubernetes client from --kubeconfig");
            config
        }
        None => {
            let config = Config::infer().await.map_err(|e| {
                StoreError::Config(format!(
                    "no --kubeconfig, and neither KUBECONFIG, ~/.kube/config nor the in-cluster configuration works: {e}"
                ))
            })?;
            tracing::info!(
                source = config_source(),
                cluster = %config.cluster_url,
                "Kubernetes client configuration inferred"
            );
            config
        }
    };
    if let Ok(ua) = http::HeaderValue::from_str(&identity(&cfg.writer, 256)) {
        config.headers.push((http::header::USER_AGENT, ua));
    }
    // No retries inside the client: a 429 or 503 is a transient outcome of its key, which
    // then waits its own backoff in the debouncer. The client's own retry (up to 15 times,
    // backing off to minutes) would hold the whole batch in one request instead.
    config.default_retry = false;
    Client::try_from(config).map_err(|e| StoreError::Config(format!("kube client: {e}")))
}

/// Where `Config::infer` took its configuration from (it tries a kubeconfig first).
fn config_source() -> &'static str {
    if std::env::var_os("KUBECONFIG").is_some() {
        "KUBECONFIG"
    } else if default_kubeconfig().is_some_and(|p| p.exists()) {
        "~/.kube/config"
    } else {
        "in-cluster service account"
    }
}

/// `~/.kube/config`, if a home directory is known.
pub fn default_kubeconfig() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config"))
}

/// `snp-shim/<writer>`, cut to `max` bytes and to printable ASCII (a field manager may be
/// at most 128 characters; a header value must be visible ASCII).
fn identity(writer: &str, max: usize) -> String {
    let mut s = String::from("snp-shim/");
    for c in writer.chars() {
        if s.len() >= max {
            break;
        }
        s.push(if c.is_ascii_graphic() { c } else { '_' });
    }
    s
}

/// A jitter seed that differs between writers and runs.
fn seed(writer: &str) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    writer
        .bytes()
        .fold(now ^ u64::from(std::process::id()), |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

/// The create body: a typed `ServiceNameMapping` (labels from `snp_core::naming`) as a
/// dynamic object.
fn new_object(
    ar: &ApiResource,
    name: &str,
    key: &MappingKey,
    apps: &AppSet,
) -> Result<DynamicObject, serde_json::Error> {
    serde_json::to_value(crd::new_object(ar, name, key, apps)).and_then(serde_json::from_value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_a_valid_field_manager_and_header() {
        assert_eq!(identity("node-1", 128), "snp-shim/node-1");
        let long = identity(&"n".repeat(500), 128);
        assert_eq!(long.len(), 128);
        let odd = identity("nöde 1", 128);
        assert!(http::HeaderValue::from_str(&odd).is_ok());
    }

    #[test]
    fn create_bodies_are_typed_and_labelled() {
        let ar = crd::api_resource("dubbo.apache.org", "v1beta1");
        let key = MappingKey::new("ns", "com.acme.Outer$Inner");
        let apps: AppSet = ["b", "a"].into_iter().collect();
        let obj = new_object(&ar, "x", &key, &apps).unwrap();
        let v = serde_json::to_value(&obj).unwrap();
        assert_eq!(v["apiVersion"], "dubbo.apache.org/v1beta1");
        assert_eq!(v["kind"], "ServiceNameMapping");
        assert_eq!(v["metadata"]["namespace"], "ns");
        assert_eq!(v["spec"]["interfaceName"], "com.acme.Outer$Inner");
        assert_eq!(v["spec"]["applicationNames"], serde_json::json!(["a", "b"]));
        assert!(v["metadata"]["labels"][snp_core::naming::LABEL_INTERFACE_HASH].is_string());
        assert!(v["metadata"]["labels"].get("interface").is_none());
    }

    #[test]
    fn errors_are_classified() {
        let api = |code: u16, reason: &str, msg: &str| {
            ApiError::classify(
                ::kube::Error::Api(Box::new(
                    ::kube::core::Status::failure(msg, reason).with_code(code),
                )),
                "create of ServiceNameMapping ns/x",
                "ns",
            )
        };
        let reason = |e: ApiError| match e {
            ApiError::Fail(e) => (e.reason(), e.is_permanent()),
            other => panic!("{other:?}"),
        };
        assert!(matches!(api(409, "Conflict", "m"), ApiError::Conflict));
        assert!(matches!(
            api(409, "AlreadyExists", "m"),
            ApiError::AlreadyExists
        ));
        assert!(matches!(
            api(404, "NotFound", "namespaces \"ns\" not found"),
            ApiError::NotFound {
                namespace: true,
                ..
            }
        ));
        assert!(matches!(
            api(
                404,
                "NotFound",
                "the server could not find the requested resource"
            ),
            ApiError::NotFound {
                namespace: false,
                ..
            }
        ));
        assert_eq!(reason(api(422, "Invalid", "m")), ("invalid", true));
        assert_eq!(reason(api(400, "BadRequest", "m")), ("invalid", true));
        assert_eq!(reason(api(403, "Forbidden", "m")), ("forbidden", true));
        assert_eq!(
            reason(api(
                403,
                "Forbidden",
                "unable to create new content in namespace ns because it is being terminated"
            )),
            ("namespace_terminating", true)
        );
        assert_eq!(
            reason(api(
                403,
                "Forbidden",
                "exceeded quota: q, requested: count/x=1"
            )),
            ("quota_exceeded", true)
        );
        assert_eq!(
            reason(api(413, "RequestEntityTooLarge", "m")),
            ("too_large", true)
        );
        assert_eq!(
            reason(api(
                500,
                "InternalError",
                "etcdserver: request is too large"
            )),
            ("too_large", true)
        );
        assert_eq!(
            reason(api(405, "MethodNotAllowed", "m")),
            ("rejected", true)
        );
        for code in [401, 408, 429, 500, 502, 503, 504] {
            assert_eq!(
                reason(api(code, "x", "m")),
                ("unavailable", false),
                "{code}"
            );
        }
        let e = api(422, "Invalid", "spec.applicationNames: Invalid value");
        let ApiError::Fail(e) = e else { panic!() };
        assert_eq!(
            e.to_string(),
            "the object was refused as invalid: create of ServiceNameMapping ns/x: 422 Invalid: spec.applicationNames: Invalid value"
        );
    }
}
