//! Where mappings live: the [`Store`] contract and its two implementations.
//!
//! * [`kube`]: `ServiceNameMapping` custom resources through the Kubernetes API.
//! * [`embedded`]: a directory of the same objects as YAML manifests, for runs without a
//!   cluster (`kubectl apply -f` works on it).
//!
//! Both are union-only: a merge adds application names and never removes one, so merges
//! commute and a batch can be retried or duplicated safely. Both keep what the store
//! holds in one shared [`index::MappingIndex`] (by `(namespace, spec.interfaceName)` and
//! by object name, with the one name chooser), so a mapping already present costs no
//! write, and lookups and watches are served from memory.
//!
//! # Outcomes are per key
//!
//! A merge never fails as a whole: [`Store::merge_keys`] reports a [`KeyOutcome`] for each
//! key of the batch. A key that cannot be written (its namespace is missing, admission
//! refuses it) must not hold up the other keys of its batch, and the caller needs to know
//! which failures a retry can fix ([`StoreError::is_permanent`]).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod crd;
pub mod embedded;
pub mod index;
pub mod kube;
pub mod observe;

pub use observe::{Observer, RequestResult, Verb};

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

/// Counts of a merge.
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
    /// Keys that failed in a way a retry may fix.
    pub transient: usize,
    /// Keys that failed for good (until someone changes the cluster).
    pub permanent: usize,
}

impl MergeOutcome {
    /// Keys that needed a write.
    pub fn written(&self) -> usize {
        self.created + self.updated
    }
}

/// What a merge did for one key.
#[derive(Debug)]
pub enum KeyOutcome {
    /// The store holds the key's applications now, after a write.
    Written {
        /// A new object (else an update of an existing one).
        created: bool,
    },
    /// The store already held every application: nothing was written.
    Unchanged,
    /// Not written; a later retry may succeed (no answer, 5xx, 429, conflicts that did not
    /// settle, local I/O).
    Transient(StoreError),
    /// Not written, and retrying the same request will not help until someone changes the
    /// cluster (missing or terminating namespace, RBAC, admission, quota, size).
    Permanent(StoreError),
}

impl KeyOutcome {
    /// The outcome of a failed key, classified by its error.
    pub fn failed(e: StoreError) -> Self {
        if e.is_permanent() {
            Self::Permanent(e)
        } else {
            Self::Transient(e)
        }
    }

    /// Whether the store holds the key now.
    pub fn is_stored(&self) -> bool {
        matches!(self, Self::Written { .. } | Self::Unchanged)
    }

    /// The error of a failed key.
    pub fn error(&self) -> Option<&StoreError> {
        match self {
            Self::Transient(e) | Self::Permanent(e) => Some(e),
            _ => None,
        }
    }
}

/// What a merge did, key by key.
#[derive(Debug, Default)]
pub struct MergeReport {
    /// One outcome per key of the batch, in no particular order.
    pub keys: Vec<(MappingKey, KeyOutcome)>,
    /// 409 Conflicts met (and resolved) on the way.
    pub conflicts: usize,
}

impl MergeReport {
    /// Every key of `batch` failed with the same (transient or permanent) reason, e.g. the
    /// store is not synced yet.
    pub fn all_failed(batch: &Mappings, e: impl Fn() -> StoreError) -> Self {
        Self {
            keys: batch
                .iter()
                .map(|(k, _)| (k.clone(), KeyOutcome::failed(e())))
                .collect(),
            conflicts: 0,
        }
    }

    /// The counts.
    pub fn summary(&self) -> MergeOutcome {
        let mut out = MergeOutcome {
            conflicts: self.conflicts,
            ..MergeOutcome::default()
        };
        for (_, o) in &self.keys {
            match o {
                KeyOutcome::Written { created: true } => out.created += 1,
                KeyOutcome::Written { created: false } => out.updated += 1,
                KeyOutcome::Unchanged => out.unchanged += 1,
                KeyOutcome::Transient(_) => out.transient += 1,
                KeyOutcome::Permanent(_) => out.permanent += 1,
            }
        }
        out
    }

    /// The outcome of `key`.
    pub fn outcome(&self, key: &MappingKey) -> Option<&KeyOutcome> {
        self.keys.iter().find(|(k, _)| k == key).map(|(_, o)| o)
    }

    /// The counts if every key is stored, else the error a retry is least likely to fix
    /// (a permanent one before contention before unavailability). For callers that still
    /// think in whole batches (tools, tests).
    pub fn into_result(self) -> Result<MergeOutcome, StoreError> {
        let summary = self.summary();
        let rank = |e: &StoreError| {
            if e.is_permanent() {
                2
            } else if matches!(e, StoreError::Contended(_)) {
                1
            } else {
                0
            }
        };
        let mut worst: Option<StoreError> = None;
        for (_, o) in self.keys {
            if let KeyOutcome::Transient(e) | KeyOutcome::Permanent(e) = o {
                if worst.as_ref().is_none_or(|w| rank(&e) > rank(w)) {
                    worst = Some(e);
                }
            }
        }
        match worst {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}

/// Why a key (or the store) failed. Each message says what failed and why.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend gave no answer, answered 5xx or 429, or timed out. Transient.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Conflicts kept recurring within one merge; a later retry re-reads. Transient.
    #[error("conflicts on {0} did not settle")]
    Contended(String),
    /// Local I/O failed (embedded store). Transient unless the file system refuses the
    /// name or the input itself.
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The key's namespace does not exist (404 on create). Permanent.
    #[error("namespace {namespace} does not exist: {detail}")]
    NamespaceNotFound {
        /// The namespace.
        namespace: String,
        /// The API server's message.
        detail: String,
    },
    /// The key's namespace is being deleted (403 on create). Permanent.
    #[error("namespace {namespace} is terminating: {detail}")]
    NamespaceTerminating {
        /// The namespace.
        namespace: String,
        /// The API server's message.
        detail: String,
    },
    /// RBAC refused the request (403). Permanent.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A ResourceQuota refused the object (403 "exceeded quota"). Permanent.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The schema or an admission webhook refused the object (422, 400). Permanent.
    #[error("the object was refused as invalid: {0}")]
    Invalid(String),
    /// The object is over the size limit (413, "too large"). Permanent.
    #[error("the object is too large: {0}")]
    TooLarge(String),
    /// Every candidate object name holds another interface (an 80-bit hash collision).
    /// Permanent.
    #[error("no object name is free: {0}")]
    NoName(String),
    /// Any other refusal (4xx). Permanent.
    #[error("store rejected the write: {0}")]
    Rejected(String),
    /// The store could not be set up (kubeconfig, client). Not a per-key outcome.
    #[error("store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether retrying the same write cannot succeed until someone changes the cluster
    /// (or the file system).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::Contended(_) => false,
            Self::Io(e) => io_is_permanent(e),
            Self::NamespaceNotFound { .. }
            | Self::NamespaceTerminating { .. }
            | Self::Forbidden(_)
            | Self::QuotaExceeded(_)
            | Self::Invalid(_)
            | Self::TooLarge(_)
            | Self::NoName(_)
            | Self::Rejected(_)
            | Self::Config(_) => true,
        }
    }

    /// A short, stable reason code (a metrics label, and the parked set's `reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Contended(_) => "contended",
            Self::Io(_) => "io",
            Self::NamespaceNotFound { .. } => "namespace_not_found",
            Self::NamespaceTerminating { .. } => "namespace_terminating",
            Self::Forbidden(_) => "forbidden",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::Invalid(_) => "invalid",
            Self::TooLarge(_) => "too_large",
            Self::NoName(_) => "no_name",
            Self::Rejected(_) => "rejected",
            Self::Config(_) => "config",
        }
    }
}

/// I/O errors a retry cannot fix: the file system refuses the name or the data.
fn io_is_permanent(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    // ENAMETOOLONG is 36 on Linux; its ErrorKind is not stable on every supported toolchain.
    matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::InvalidData)
        || e.raw_os_error() == Some(36)
}

/// A mapping store. Implementations are cheap to clone handles on shared state.
pub trait Store: Clone + Send + Sync + 'static {
    /// Union-merges `batch` into the store and reports, per key, whether the store holds
    /// it now (durably) or why not. Keys the cache already holds cost no write. One key's
    /// failure never stops the others, except that once the backend stops answering at all
    /// the keys not yet tried are reported as transient failures without a request.
    fn merge_keys(&self, batch: &Mappings) -> impl Future<Output = MergeReport> + Send;

    /// [`Store::merge_keys`] seen as one result: the counts if every key is stored, else
    /// the worst error. Retrying the whole batch is safe.
    fn merge(
        &self,
        batch: &Mappings,
    ) -> impl Future<Output = Result<MergeOutcome, StoreError>> + Send {
        async move { self.merge_keys(batch).await.into_result() }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_count_and_pick_the_worst_error() {
        let k = |i: &str| MappingKey::new("ns", i);
        let r = MergeReport {
            keys: vec![
                (k("a"), KeyOutcome::Written { created: true }),
                (k("b"), KeyOutcome::Unchanged),
                (
                    k("c"),
                    KeyOutcome::failed(StoreError::Unavailable("503".into())),
                ),
                (
                    k("d"),
                    KeyOutcome::failed(StoreError::NamespaceNotFound {
                        namespace: "ns".into(),
                        detail: "404".into(),
                    }),
                ),
            ],
            conflicts: 2,
        };
        let s = r.summary();
        assert_eq!(
            (
                s.created,
                s.unchanged,
                s.transient,
                s.permanent,
                s.conflicts
            ),
            (1, 1, 1, 1, 2)
        );
        assert!(r.outcome(&k("b")).unwrap().is_stored());
        let e = r.into_result().unwrap_err();
        assert_eq!(e.reason(), "namespace_not_found");
        assert_eq!(e.to_string(), "namespace ns does not exist: 404");
    }

    #[test]
    fn io_errors_are_transient_unless_the_name_or_data_is_refused() {
        let disk_full = std::io::Error::other("no space left on device");
        assert!(!StoreError::Io(disk_full).is_permanent());
        let too_long = std::io::Error::from_raw_os_error(36);
        assert!(StoreError::Io(too_long).is_permanent());
    }
}
