//! The Kubernetes store: `ServiceNameMapping` custom resources (being written).

use std::path::PathBuf;

use snp_core::{MappingKey, Mappings};
use tokio::sync::broadcast;

use super::{Change, Entry, MergeOutcome, Store, StoreError};
use crate::metrics::Metrics;

/// Settings of the Kubernetes store.
#[derive(Debug, Clone)]
pub struct KubeStoreConfig {
    /// Kubeconfig path; `None` means in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
    /// API group of ServiceNameMapping.
    pub group: String,
    /// API version of ServiceNameMapping.
    pub version: String,
    /// Client-side request rate limit (sustained, per second).
    pub qps: f64,
    /// Client-side burst above `qps`.
    pub burst: u32,
    /// Field manager / writer identity (the node name).
    pub writer: String,
}

/// Handle on the Kubernetes store.
#[derive(Clone)]
pub struct KubeStore {
    _changes: broadcast::Sender<Change>,
}

impl KubeStore {
    /// Connects, starts the watch-based cache and returns once it is synced.
    pub async fn connect(_cfg: KubeStoreConfig, _metrics: Metrics) -> Result<Self, StoreError> {
        Err(StoreError::Unavailable(
            "the Kubernetes store is not implemented yet".into(),
        ))
    }
}

impl Store for KubeStore {
    async fn merge(&self, _batch: &Mappings) -> Result<MergeOutcome, StoreError> {
        Err(StoreError::Unavailable(
            "the Kubernetes store is not implemented yet".into(),
        ))
    }
    fn get(&self, _namespace: &str, _interfaces: &[String]) -> Vec<(MappingKey, Entry)> {
        Vec::new()
    }
    fn contains_all(&self, _mappings: &Mappings) -> bool {
        false
    }
    fn changes(&self) -> broadcast::Receiver<Change> {
        self._changes.subscribe()
    }
    fn is_ready(&self) -> bool {
        false
    }
}
