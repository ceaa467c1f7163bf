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
use tokio::sync::watch;
use tonic::Status;

use crate::auth::Auth;
use crate::config::AckMode;
use crate::metrics::Metrics;
use crate::pipeline::{Payload, Pipeline, PipelineError};
use crate::store::Store;

/// Largest request message the shim decodes (bytes). The registration limits (1,000
/// interfaces of at most 1 KiB) fit well within it; anything larger gets
/// `OUT_OF_RANGE` from tonic before it is buffered whole.
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
    /// Input limits (the filter's).
    pub limits: Limits,
    /// Whose namespace a registration may name (issue 13).
    pub identity: crate::identity::Identity,
    /// Becomes `true` when the shim shuts down; open watches end then.
    pub shutdown: watch::Receiver<bool>,
}

/// The status of an offer the pipeline refused.
fn pipeline_status(e: PipelineError) -> Status {
    match e {
        PipelineError::Full(e) => Status::resource_exhausted(e.to_string()),
        PipelineError::Closed => Status::unavailable(e.to_string()),
    }
}

/// Offers `payload` to the pipeline and, with `durable`, waits until the store holds it
/// (up to the ack timeout). Both registration flavours and PushMappings answer through here.
async fn offer_and_wait<S: Store>(
    shared: &Shared<S>,
    payload: Payload,
    durable: bool,
) -> Result<(), Status> {
    let accepted = shared
        .pipeline
        .offer(payload, durable)
        .await
        .map_err(pipeline_status)?;
    if let Some(done) = accepted.durable {
        match tokio::time::timeout(shared.ack_timeout, done).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Status::unavailable("the shim is shutting down")),
            Err(_) => return Err(not_durable(shared.ack_timeout)),
        }
    }
    Ok(())
}

/// The status of a call whose mappings did not become durable in time.
fn not_durable(timeout: Duration) -> Status {
    Status::unavailable(format!(
        "the store did not confirm the write within {}; the mappings are kept and retried, resend later",
        humantime::format_duration(timeout)
    ))
}
