//! Where mappings live: the [`Store`] contract and its two implementations.
//!
//! * [`kube`]: `ServiceNameMapping` custom resources through the Kubernetes API.
//! * [`embedded`]: a directory of the same objects as YAML manifests, for runs without a
//!   cluster (`kubectl apply -f` works on it).
//!
//! Both are union-only: a merge adds application names and never removes one, so merges
//! commute and a batch can be retried or duplicated safely. Both keep a cache of what the
//! store holds, so a mapping already present costs no write, and lookups and watches are
//! served from memory.

pub mod embedded;
pub mod kube;

use std::future::Future;

use snp_core::{AppSet, MappingKey, Mappings};
use tokio::sync::broadcast;

/// What the store holds for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Application names, sorted.
    pub apps: AppSet,
    /// Revision of the object that holds them (resourceVersion, or a file generation).
    pub revision: String,
}

/// A change to the store, from this shim or any other writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Created or changed.
    Upsert {
        /// Which mapping.
        key: MappingKey,
        /// Its new content.
        entry: Entry,
    },
    /// Removed (e.g. an operator deleted the object).
    Delete {
        /// Which mapping.
        key: MappingKey,
    },
}

/// What a merge did, per key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Keys whose content was already in the store: no write.
    pub unchanged: usize,
    /// Keys that got a new object.
    pub created: usize,
    /// Keys whose object was updated (union of names).
    pub updated: usize,
    /// 409 Conflicts met (and resolved) on the way.
    pub conflicts: usize,
}

impl MergeOutcome {
    /// Keys that needed a write.
    pub fn written(&self) -> usize {
        self.created + self.updated
    }
}

/// Why a merge did not complete. The caller keeps the batch and retries it later.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or answered with a server error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Conflicts kept recurring within one merge; a later retry will re-read.
    #[error("conflicts on {0} did not settle")]
    Contended(String),
    /// Local I/O failed (embedded store).
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The backend rejected the request (e.g. invalid object, forbidden).
    #[error("store rejected the write: {0}")]
    Rejected(String),
}

/// A mapping store. Implementations are cheap to clone handles on shared state.
pub trait Store: Clone + Send + Sync + 'static {
    /// Union-merges `batch` into the store and returns once every mapping in it is durable.
    /// Mappings the cache already holds cost no write. On error, some keys may have been
    /// written; retrying the whole batch is safe.
    fn merge(
        &self,
        batch: &Mappings,
    ) -> impl Future<Output = Result<MergeOutcome, StoreError>> + Send;

    /// Cached content of `namespace`, limited to `interfaces` unless that is empty.
    fn get(&self, namespace: &str, interfaces: &[String]) -> Vec<(MappingKey, Entry)>;

    /// Whether the cache already holds every `(key, app)` of `mappings`.
    fn contains_all(&self, mappings: &Mappings) -> bool;

    /// Changes from now on, including other writers'. A receiver that lags is told so by
    /// the channel and must re-read with [`Store::get`].
    fn changes(&self) -> broadcast::Receiver<Change>;

    /// Whether the store is reachable and its cache synced (for `/readyz`).
    fn is_ready(&self) -> bool;

    /// Namespaces the cache holds mappings in, sorted (the status page's browser).
    fn namespaces(&self) -> Vec<String>;
}
