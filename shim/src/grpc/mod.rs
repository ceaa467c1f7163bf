//! The gRPC services of the shim, all on one port:
//!
//! * [`registration`]: the registration API, flavour A (`dubbo.networking.v1alpha1`) and
//!   flavour B (dubbo-admin `v1alpha1`), byte-compatible with the seed server. This is the
//!   path for apps without a sidecar.
//! * [`mapping`]: `snp.v1.MappingService`: `PushMappings` from filters, and `GetMappings` /
//!   `WatchMappings` for consumers, served from the store's cache.
//!
//! [`Shared`] holds what every handler needs.

pub mod codec;
pub mod mapping;
pub mod registration;

use std::time::Duration;

use snp_core::Limits;
use tokio::sync::{oneshot, watch};
use tonic::Status;

use crate::auth::Auth;
use crate::config::AckMode;
use crate::metrics::Metrics;
use crate::pipeline::{DurableResult, ParkedKey, Payload, Pipeline, PipelineError};
use crate::store::Store;

/// Default of the largest request message the shim decodes (bytes, `--max-message-bytes`).
/// The registration limits (1,000 interfaces of at most 1 KiB) fit well within it;
/// anything larger gets `OUT_OF_RANGE` from tonic before it is buffered whole.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// State shared by the handlers.
pub struct Shared<S: Store> {
    /// The store (for its cache).
    pub store: S,
    /// The write pipeline.
    pub pipeline: Pipeline,
    /// Metrics.
    pub metrics: Metrics,
    /// Authentication policy.
    pub auth: Auth,
    /// When registration calls are answered.
    pub ack_mode: AckMode,
    /// Longest a call waits for durability.
    pub ack_timeout: Duration,
    /// Input limits (`--max-interface-len` and the filter's others).
    pub limits: Limits,
    /// Most applications one key may hold pending (`--max-apps-per-key`).
    pub max_apps_per_key: usize,
    /// Largest request message decoded (`--max-message-bytes`).
    pub max_message_bytes: usize,
    /// Whose namespace a registration may name.
    pub identity: crate::identity::Identity,
    /// Becomes `true` when the shim shuts down; open watches end then.
    pub shutdown: watch::Receiver<bool>,
    /// The journal that makes immediate acks durable (`None` with `--journal=false`).
    pub journal: Option<crate::journal::ShimJournal>,
}

/// The status of an offer the pipeline refused.
pub(crate) fn pipeline_status(e: PipelineError) -> Status {
    match e {
        PipelineError::Full(e) => Status::resource_exhausted(e.to_string()),
        PipelineError::Closed => Status::unavailable(e.to_string()),
    }
}

/// The status of a call with a parked key: the store refuses it for good, so the caller is
/// told at once (its applications stay joined to the parked key, which is probed again).
pub(crate) fn parked_status(p: &ParkedKey) -> Status {
    Status::failed_precondition(format!(
        "{p} (reason {}; the shim retries it on a slow schedule; see /parked)",
        p.reason
    ))
}

/// Offers `payload` to the pipeline and, with `durable`, waits until the store holds it
/// (up to the ack timeout). Both registration flavours, PushMappings and Nacos publishes
/// answer through here. A key the store refuses for good (parked) ends the call at once
/// with `FAILED_PRECONDITION`, whatever the ack mode: its registration is not stored.
pub(crate) async fn offer_and_wait<S: Store>(
    shared: &Shared<S>,
    payload: Payload,
    durable: bool,
) -> Result<(), Status> {
    let accepted = shared
        .pipeline
        .offer(payload, durable)
        .await
        .map_err(pipeline_status)?;
    if let Some(p) = accepted.parked.first() {
        return Err(parked_status(p));
    }
    if let Some(done) = accepted.durable {
        wait_durable(shared, done, false).await?;
    }
    Ok(())
}

/// Waits up to the ack timeout for a durable offer to settle: `Ok(true)` once settled,
/// `Ok(false)` when the deadline came first and `pending_ok` (else `UNAVAILABLE`), and
/// `FAILED_PRECONDITION` when a key of it was parked.
pub(crate) async fn wait_durable<S: Store>(
    shared: &Shared<S>,
    done: oneshot::Receiver<DurableResult>,
    pending_ok: bool,
) -> Result<bool, Status> {
    match tokio::time::timeout(shared.ack_timeout, done).await {
        Ok(Ok(Ok(()))) => Ok(true),
        Ok(Ok(Err(parked))) => Err(parked_status(&parked)),
        Ok(Err(_)) => Err(Status::unavailable("the shim is shutting down")),
        Err(_) if pending_ok => Ok(false),
        Err(_) => Err(not_durable(shared.ack_timeout)),
    }
}

/// The status of a call whose mappings did not become durable in time.
fn not_durable(timeout: Duration) -> Status {
    Status::unavailable(format!(
        "the store did not confirm the write within {}; the mappings are kept and retried, resend later",
        humantime::format_duration(timeout)
    ))
}
