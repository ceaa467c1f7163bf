//! The Kubernetes store: `ServiceNameMapping` custom resources.
//!
//! # Reads
//!
//! One watch over all namespaces (kube-runtime's `watcher`: list, then watch from the
//! list's resourceVersion, resuming or re-listing after errors) feeds an in-memory index
//! ([`cache`]) by `(namespace, spec.interfaceName)` and by object name. Lookups, watches
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
//! Each successful write is put in the cache at once (the watch brings the same
//! resourceVersion later and is ignored), so merging the same batch again sends nothing.
//! Every request except the watch takes a token from a client-side rate limiter
//! ([`limit`]).

mod cache;
mod limit;

use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use ::kube::api::{Api, DynamicObject, ListParams, PostParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::core::ApiResource;
use ::kube::runtime::watcher::{self, Event};
use ::kube::{Client, Config};
use futures::StreamExt;
use snp_core::{AppSet, Backoff, MappingKey, Mappings, SplitMix64};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use self::cache::{Cache, Plan};
use self::limit::Limiter;
use super::{Change, Entry, MergeOutcome, Store, StoreError};
use crate::crd;
use crate::metrics::{Metrics, Outcome, Verb};

/// Settings of the Kubernetes store.
#[derive(Debug, Clone)]
pub struct KubeStoreConfig {
    /// Kubeconfig path; `None` means in-cluster configuration.
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
}

/// Keys of one batch written at the same time.
const WRITE_CONCURRENCY: usize = 8;
/// Requests (writes and re-reads) one key may take within one merge before the merge
/// gives up with [`StoreError::Contended`]; the caller retries the batch later.
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

/// Pause between attempts to restore the watch after an error.
fn watch_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(5), 5).with_jitter(0.3)
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
    metrics: Metrics,
    post: PostParams,
    rng: Mutex<SplitMix64>,
    create_spread: Duration,
}

/// How one API request failed.
#[derive(Debug)]
enum ApiError {
    /// 409 Conflict: a stale resourceVersion.
    Conflict,
    /// 409 AlreadyExists: the name is taken.
    AlreadyExists,
    /// 404.
    NotFound,
    /// Any other 4xx except 429: retrying the same request won't help.
    Rejected(String),
    /// Transport errors, timeouts, 5xx, 429.
    Unavailable(String),
}

impl ApiError {
    fn classify(e: ::kube::Error) -> Self {
        match e {
            ::kube::Error::Api(s) => match s.code {
                409 if s.reason == "AlreadyExists" => Self::AlreadyExists,
                409 => Self::Conflict,
                404 => Self::NotFound,
                429 => Self::Unavailable(format!("429 {}", s.message)),
                400..=499 => Self::Rejected(format!("{} {}: {}", s.code, s.reason, s.message)),
                _ => Self::Unavailable(format!("{} {}: {}", s.code, s.reason, s.message)),
            },
            other => Self::Unavailable(other.to_string()),
        }
    }

    fn outcome(&self) -> Outcome {
        match self {
            Self::Rejected(_) => Outcome::Invalid,
            _ => Outcome::Error,
        }
    }

    fn into_store(self, key: &MappingKey) -> StoreError {
        match self {
            Self::Rejected(m) => StoreError::Rejected(format!("{key}: {m}")),
            Self::Unavailable(m) => StoreError::Unavailable(m),
            // Only a create gets here with 404: the namespace does not exist (a real
            // cluster checks; a client may send a made-up namespace) or the resource is
            // not served (yet). Other keys of the batch go on; the caller retries this one.
            Self::NotFound => StoreError::Rejected(format!(
                "{key}: 404 Not Found (no such namespace, or the CRD is not served)"
            )),
            Self::Conflict | Self::AlreadyExists => StoreError::Contended(key.to_string()),
        }
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
    pub async fn connect(cfg: KubeStoreConfig, metrics: Metrics) -> Result<Self, StoreError> {
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
            metrics,
            post: PostParams {
                dry_run: false,
                field_manager: Some(identity(&cfg.writer, 128)),
            },
            rng: Mutex::new(SplitMix64::new(seed(&cfg.writer))),
            create_spread: cfg.create_spread,
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

    async fn merge_key(&self, key: MappingKey, want: AppSet) -> Result<(Done, usize), StoreError> {
        let inner = &*self.inner;
        let api: Api<DynamicObject> =
            Api::namespaced_with(inner.client.clone(), &key.namespace, &inner.ar);
        let mut done = Done::Unchanged;
        let mut conflicts = 0usize;
        for tries in 0..=MAX_TRIES_PER_KEY {
            let plan = inner.read().plan(&key, &want, &inner.ar);
            match plan {
                Plan::Nothing => {
                    if tries == 0 {
                        inner.metrics.noop_skips.inc();
                    }
                    return Ok((done, conflicts));
                }
                _ if tries == MAX_TRIES_PER_KEY => break,
                Plan::NoName => {
                    let msg = format!("{key}: every candidate object name holds another interface");
                    tracing::error!(%key, "{msg}");
                    return Err(StoreError::Rejected(msg));
                }
                Plan::Update { name, body } => {
                    match inner
                        .call(Verb::Update, api.replace(&name, &inner.post, &body))
                        .await
                    {
                        Ok(obj) => {
                            inner.absorb(obj);
                            done = Done::Updated;
                        }
                        Err(ApiError::Conflict) => {
                            conflicts += 1;
                            inner.metrics.conflicts.inc();
                            tracing::debug!(%key, %name, conflicts, "409 Conflict; re-reading");
                            inner.refresh(&api, &key, &name).await?;
                            let pause = inner.pause(conflicts);
                            tokio::time::sleep(pause).await;
                        }
                        Err(ApiError::NotFound) => {
                            // Deleted meanwhile: forget it; the next round creates.
                            inner.forget(&key.namespace, &name);
                        }
                        Err(e) => return Err(inner.fail(&key, "update", e)),
                    }
                }
                Plan::Create { .. } if tries == 0 && !inner.create_spread.is_zero() => {
                    let pause = inner.spread();
                    tracing::debug!(%key, ?pause, "new key: spreading the create");
                    tokio::time::sleep(pause).await;
                    // Look again: another shim's object may have arrived by watch.
                    if let Plan::Nothing = inner.read().plan(&key, &want, &inner.ar) {
                        inner.metrics.noop_skips.inc();
                        return Ok((done, conflicts));
                    }
                }
                Plan::Create { name } => {
                    let body = new_object(&inner.ar, &name, &key, &want)
                        .map_err(|e| StoreError::Rejected(format!("{key}: {e}")))?;
                    match inner
                        .call(Verb::Create, api.create(&inner.post, &body))
                        .await
                    {
                        Ok(obj) => {
                            inner.absorb(obj);
                            done = Done::Created;
                        }
                        Err(ApiError::AlreadyExists) => {
                            // Someone created it first (another shim, or an object our
                            // cache has not seen yet): read it; the next round either
                            // updates it (same interface) or takes the next candidate.
                            conflicts += 1;
                            inner.metrics.conflicts.inc();
                            tracing::debug!(%key, %name, "409 AlreadyExists; re-reading");
                            inner.refresh(&api, &key, &name).await?;
                        }
                        Err(e) => return Err(inner.fail(&key, "create", e)),
                    }
                }
            }
        }
        tracing::warn!(%key, conflicts, "conflicts did not settle; the batch will be retried");
        Err(StoreError::Contended(key.to_string()))
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
    ) -> Result<(), StoreError> {
        match self.call(Verb::Get, api.get_opt(name)).await {
            Ok(Some(obj)) => self.absorb(obj),
            Ok(None) => self.forget(&key.namespace, name),
            Err(e) => return Err(self.fail(key, "get", e)),
        }
        Ok(())
    }

    /// One API request: waits for a rate-limit token, bounds the time, counts it.
    async fn call<T>(
        &self,
        verb: Verb,
        request: impl std::future::Future<Output = Result<T, ::kube::Error>>,
    ) -> Result<T, ApiError> {
        self.limiter.acquire().await;
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(r) => r.map_err(ApiError::classify),
            Err(_) => Err(ApiError::Unavailable(format!(
                "no answer within {REQUEST_TIMEOUT:?}"
            ))),
        };
        match &result {
            Ok(_) => {
                self.metrics.store_write(verb, Outcome::Ok);
                self.api_ok.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.store_write(verb, e.outcome());
                // Any answer, even a refusal, shows the server is there.
                self.api_ok
                    .store(!matches!(e, ApiError::Unavailable(_)), Ordering::Relaxed);
            }
        }
        result
    }

    fn fail(&self, key: &MappingKey, what: &str, e: ApiError) -> StoreError {
        match &e {
            ApiError::Rejected(m) => {
                tracing::error!(%key, op = what, error = %m, "API server rejected the request")
            }
            ApiError::Unavailable(m) => {
                tracing::warn!(%key, op = what, error = %m, "API server unavailable")
            }
            ApiError::NotFound => tracing::error!(
                %key,
                op = what,
                "404 Not Found: no such namespace, or the CRD is not served"
            ),
            _ => {}
        }
        e.into_store(key)
    }

    /// A uniform random delay in `(0, create_spread]` (a backoff that is all jitter).
    fn spread(&self) -> Duration {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        Backoff::new(self.create_spread, self.create_spread, 0)
            .with_jitter(1.0)
            .delay_with_jitter(0, &mut *rng)
    }

    fn pause(&self, conflicts: usize) -> Duration {
        let failures = u32::try_from(conflicts.saturating_sub(1)).unwrap_or(u32::MAX);
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        conflict_backoff().delay_with_jitter(failures, &mut *rng)
    }
}

impl Store for KubeStore {
    async fn merge(&self, batch: &Mappings) -> Result<MergeOutcome, StoreError> {
        if !*self.inner.synced.borrow() {
            return Err(StoreError::Unavailable(
                "ServiceNameMapping cache not synced yet".into(),
            ));
        }
        // Owned work items: the stream must be `Send` for any caller.
        let work: Vec<(MappingKey, AppSet)> =
            batch.iter().map(|(k, a)| (k.clone(), a.clone())).collect();
        let abort = Arc::new(AtomicBool::new(false));
        let store = self.clone();
        let results: Vec<Result<(Done, usize), StoreError>> =
            futures::stream::iter(work.into_iter().map(move |(key, apps)| {
                let (store, abort) = (store.clone(), abort.clone());
                async move {
                    if abort.load(Ordering::Relaxed) {
                        return Err(StoreError::Unavailable(
                            "skipped after an earlier error".into(),
                        ));
                    }
                    let r = store.merge_key(key, apps).await;
                    if matches!(r, Err(StoreError::Unavailable(_))) {
                        abort.store(true, Ordering::Relaxed);
                    }
                    r
                }
            }))
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        let mut out = MergeOutcome::default();
        let mut error: Option<StoreError> = None;
        for r in results {
            match r {
                Ok((done, conflicts)) => {
                    out.conflicts += conflicts;
                    match done {
                        Done::Unchanged => out.unchanged += 1,
                        Done::Created => out.created += 1,
                        Done::Updated => out.updated += 1,
                    }
                }
                Err(e) => {
                    // Report the error a retry is most likely to fix last: unavailable,
                    // then contended, then rejected.
                    let rank = |e: &StoreError| match e {
                        StoreError::Unavailable(_) => 0,
                        StoreError::Contended(_) => 1,
                        _ => 2,
                    };
                    if error.as_ref().is_none_or(|prev| rank(&e) < rank(prev)) {
                        error = Some(e);
                    }
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(out),
        }
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

    fn is_ready(&self) -> bool {
        *self.inner.synced.borrow()
            && self.inner.watch_ok.load(Ordering::Relaxed)
            && self.inner.api_ok.load(Ordering::Relaxed)
    }
}

/// Keeps the cache in step with the API server, forever (the task is aborted when the
/// last store handle goes).
async fn watch_loop(inner: Arc<Inner>) {
    let api: Api<DynamicObject> = Api::all_with(inner.client.clone(), &inner.ar);
    let mut stream = pin!(watcher::watcher(api.clone(), watcher::Config::default()));
    let mut listed: Vec<DynamicObject> = Vec::new();
    let mut failures = 0u32;
    let backoff = watch_backoff();
    let mut rng = SplitMix64::new(seed("watch"));
    while let Some(event) = stream.next().await {
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
                tracing::warn!(error = %e, "ServiceNameMapping watch failed{hint}; retrying");
                // Wait until the API server answers a cheap list before restarting the
                // watch, so that readiness comes back even if nothing changes.
                loop {
                    tokio::time::sleep(backoff.delay_with_jitter(failures, &mut rng)).await;
                    failures = backoff.next_failures(failures);
                    let params = ListParams::default().limit(1);
                    if inner.call(Verb::List, api.list(&params)).await.is_ok() {
                        inner.watch_ok.store(true, Ordering::Relaxed);
                        break;
                    }
                }
                continue;
            }
        };
        failures = 0;
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

/// A kube client from the kubeconfig file, or the in-cluster configuration, identifying
/// itself as `snp-shim/<writer>`.
pub(crate) async fn client(cfg: &KubeStoreConfig) -> Result<Client, StoreError> {
    let mut config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| {
                StoreError::Unavailable(format!("kubeconfig {}: {e}", path.display()))
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    StoreError::Unavailable(format!("kubeconfig {}: {e}", path.display()))
                })?
        }
        None => Config::incluster().map_err(|e| {
            StoreError::Unavailable(format!(
                "no --kubeconfig and no in-cluster configuration: {e}"
            ))
        })?,
    };
    if let Ok(ua) = http::HeaderValue::from_str(&identity(&cfg.writer, 256)) {
        config.headers.push((http::header::USER_AGENT, ua));
    }
    Client::try_from(config).map_err(|e| StoreError::Unavailable(format!("kube client: {e}")))
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
        let api = |code: u16, reason: &str| {
            ApiError::classify(::kube::Error::Api(Box::new(
                ::kube::core::Status::failure("m", reason).with_code(code),
            )))
        };
        assert!(matches!(api(409, "Conflict"), ApiError::Conflict));
        assert!(matches!(api(409, "AlreadyExists"), ApiError::AlreadyExists));
        assert!(matches!(api(404, "NotFound"), ApiError::NotFound));
        assert!(matches!(api(422, "Invalid"), ApiError::Rejected(_)));
        assert!(matches!(api(403, "Forbidden"), ApiError::Rejected(_)));
        assert!(matches!(
            api(429, "TooManyRequests"),
            ApiError::Unavailable(_)
        ));
        assert!(matches!(
            api(503, "ServiceUnavailable"),
            ApiError::Unavailable(_)
        ));
        assert!(matches!(
            api(500, "InternalError"),
            ApiError::Unavailable(_)
        ));
    }
}
