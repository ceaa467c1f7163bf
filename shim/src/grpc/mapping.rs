//! `snp.v1.MappingService`: batches in, lookups and change streams out.
//!
//! * `PushMappings` validates each mapping on its own with `snp-core`, so one bad mapping
//!   never rejects its batch: the valid ones are offered to the debouncer either way.
//!   Mappings the store already holds cost nothing (a resend is free). A sender that sets
//!   `want_results` gets OK with a result per mapping (STORED, PENDING, or REJECTED with a
//!   reason: invalid, or parked because the store refuses it for good) once each one is
//!   settled or at the ack deadline. Older senders get OK only when every mapping is
//!   stored, `FAILED_PRECONDITION` at once when one is parked, `INVALID_ARGUMENT` naming
//!   an invalid one (after the valid ones are stored), `UNAVAILABLE` at the deadline.
//!   Union semantics make it idempotent. Under `--push-namespace-policy pod`, a batch whose
//!   sender presents no credential may only carry its pod's namespace: each mapping outside
//!   it is REJECTED (`namespace_denied`; PERMISSION_DENIED for older senders), the others
//!   are stored. Under `--namespace-policy peer`, a batch sent with a client certificate
//!   may carry only the certificate's namespace: another is that mapping's REJECTED
//!   (`namespace_mismatch`) or PERMISSION_DENIED, or is rewritten. A batch sent with the
//!   bearer token is not checked (a node proxy or gateway carries many namespaces).
//! * `GetMappings` answers from the store's cache.
//! * `WatchMappings` sends a `SNAPSHOT`, then `UPSERT`/`DELETE` events for the selected
//!   mappings as the store reports them (this shim's writes and other writers' alike). A
//!   watcher that falls behind the store's change channel gets a fresh `SNAPSHOT` instead
//!   of a gap. Each stream is fed through a bounded channel.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use snp_core::validate::{validate_application, validate_interface, validate_namespace, Field};
use snp_core::{AppSet, MappingKey, Mappings, ValidationError};
use snp_proto::api::mapping_event::Kind;
use snp_proto::api::mapping_result::Status as ResultStatus;
use snp_proto::api::mapping_service_server::MappingService;
use snp_proto::api::{
    GetMappingsRequest, GetMappingsResponse, MappingEvent, MappingResult, MappingState,
    PushMappingsRequest, PushMappingsResponse, WatchMappingsRequest,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::registration::outcome_of;
use super::{parked_status, pipeline_status, wait_durable, Shared};
use crate::auth::{Action, Authenticated};
use crate::identity::{Caller, NamespacePolicy, Peer, PushPolicy, PushScope};
use crate::metrics::{Api, Outcome};
use crate::pipeline::{Payload, PipelineError, Wait};
use crate::store::{Change, Entry, Store};

/// Events buffered per watch stream before the stream waits for its client.
const WATCH_BUFFER: usize = 64;
/// Changes coalesced into one `UPSERT` event at most.
const MAX_EVENT_MAPPINGS: usize = 512;

/// The `snp.v1.MappingService` implementation.
pub struct MappingApi<S: Store> {
    shared: Arc<Shared<S>>,
}

impl<S: Store> MappingApi<S> {
    /// A service answering from `shared`.
    pub fn new(shared: Arc<Shared<S>>) -> Self {
        Self { shared }
    }
}

fn invalid<S: Store>(shared: &Shared<S>, reason: &str, message: String) -> Status {
    shared.metrics.invalid(reason);
    Status::invalid_argument(message)
}

/// Validates a namespace and interface list of a lookup or watch.
fn validate_selector<S: Store>(
    shared: &Shared<S>,
    namespace: &str,
    interfaces: &[String],
) -> Result<(), Status> {
    validate_namespace(namespace).map_err(|e| invalid(shared, e.reason(), e.to_string()))?;
    for (i, name) in interfaces.iter().enumerate() {
        validate_interface(name, Field::InterfaceName(i), &shared.limits)
            .map_err(|e| invalid(shared, e.reason(), e.to_string()))?;
    }
    Ok(())
}

/// A mapping of a pushed batch that is not offered: invalid, or outside the namespaces its
/// sender may write into.
struct Invalid {
    reason: &'static str,
    message: String,
    /// Refused by a namespace policy (PERMISSION_DENIED), not for its content.
    denied: bool,
}

/// Reason of a mapping outside the sending pod's namespace (a result's `reason`, and the
/// `snp_invalid_calls_total` label).
const NAMESPACE_DENIED: &str = "namespace_denied";
/// Reason of a PENDING result whose key found no room in the shim (retry later).
const OVERLOADED: &str = "overloaded";

/// Whether the call carries a credential: a bearer token, or a client certificate the TLS
/// layer verified. Only such a call is checked as a credential holder under
/// `--push-namespace-policy pod`; any other is checked by its pod.
fn presents_credential<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key("authorization")
        || request.peer_certs().is_some_and(|c| !c.is_empty())
}

/// Validates one mapping (the `i`-th of its batch) and turns it into a key and its
/// applications.
fn validate_mapping<S: Store>(
    shared: &Shared<S>,
    i: usize,
    m: &snp_proto::api::Mapping,
) -> Result<(MappingKey, AppSet), Invalid> {
    let at = |e: ValidationError, what: &str| {
        let message = match &e {
            ValidationError::InvalidInterface { name, reason, .. } => {
                format!(
                    "mappings[{i}].interface_name {name} is not a valid interface name: {reason}"
                )
            }
            other => format!("mappings[{i}]{what}: {other}"),
        };
        Invalid {
            reason: e.reason(),
            message,
            denied: false,
        }
    };
    validate_namespace(&m.namespace).map_err(|e| at(e, ""))?;
    validate_interface(&m.interface_name, Field::InterfaceName(0), &shared.limits)
        .map_err(|e| at(e, ""))?;
    if m.application_names.is_empty() {
        return Err(Invalid {
            reason: "empty_application",
            message: format!("mappings[{i}].application_names is empty"),
            denied: false,
        });
    }
    for (j, app) in m.application_names.iter().enumerate() {
        validate_application(app, &shared.limits)
            .map_err(|e| at(e, &format!(".application_names[{j}]")))?;
    }
    let apps: AppSet = m.application_names.iter().collect();
    if apps.len() > shared.max_apps_per_key {
        return Err(Invalid {
            reason: "too_many_applications",
            message: format!(
                "mappings[{i}] has {} applications; at most {} per interface",
                apps.len(),
                shared.max_apps_per_key
            ),
            denied: false,
        });
    }
    Ok((
        MappingKey::new(m.namespace.as_str(), m.interface_name.as_str()),
        apps,
    ))
}

/// Which namespaces one `PushMappings` batch may write into, decided once per call from
/// its credential, its pod and its certificate; then applied to each mapping on its own, so
/// a mapping outside them is that mapping's outcome, never the batch's.
struct PushGate {
    /// `--push-namespace-policy pod` for a sender without a credential: its pod's
    /// namespace only (`Any` otherwise).
    pod: PushScope,
    /// Under `--namespace-policy peer`, a sender with a client certificate: the namespace
    /// of its SPIFFE ID, with the policy's reject or rewrite (`None`: not checked).
    caller: Option<Caller>,
}

impl PushGate {
    /// The gate of `request`; `Err` when its credential is invalid or, under `peer`, its
    /// certificate names no caller.
    fn of<S: Store, T>(shared: &Shared<S>, request: &Request<T>) -> Result<Self, Status> {
        // Under `--push-namespace-policy pod`, a sender without a credential (a sidecar) is
        // checked by its pod instead of being refused; a credential, when presented, must
        // be valid either way.
        let pod_checked =
            shared.identity.push_policy() == PushPolicy::Pod && !presents_credential(request);
        let by = if pod_checked {
            None
        } else {
            Some(shared.auth.check_request(Action::Push, request)?)
        };
        // Under `peer`, a batch sent with a client certificate may only carry its own
        // namespace; one sent with the bearer token (a node proxy or gateway that carries
        // many namespaces) is not checked.
        let caller = match (shared.identity.policy(), by) {
            (NamespacePolicy::Peer, Some(Authenticated::Token)) => None,
            (NamespacePolicy::Peer, Some(_)) => shared.identity.caller(&Peer::of(request))?,
            _ => None,
        };
        let credentialed = !pod_checked && shared.auth.enabled();
        let pod = shared
            .identity
            .push_scope(request.remote_addr(), credentialed);
        Ok(Self { pod, caller })
    }

    /// Lets the valid `i`-th mapping through, rewritten to the caller's namespace if the
    /// policy says so, or refuses it.
    fn admit<S: Store>(
        &self,
        shared: &Shared<S>,
        i: usize,
        (key, apps): (MappingKey, AppSet),
    ) -> Result<(MappingKey, AppSet), Invalid> {
        if let Some(why) = self.pod.denies(&key.namespace) {
            return Err(Invalid {
                reason: NAMESPACE_DENIED,
                message: format!("mappings[{i}]: {why}"),
                denied: true,
            });
        }
        let Some(caller) = &self.caller else {
            return Ok((key, apps));
        };
        let mut namespace = key.namespace.clone();
        match shared.identity.enforce_namespace(caller, &mut namespace) {
            Ok(None) => Ok((key, apps)),
            Ok(Some(from)) => {
                tracing::info!(from = %from, to = %namespace, interface = %key.interface, "mapping namespace rewritten to the caller's");
                Ok((MappingKey::new(namespace, key.interface), apps))
            }
            Err(status) => Err(Invalid {
                reason: "namespace_mismatch",
                message: format!("mappings[{i}]: {}", status.message()),
                denied: true,
            }),
        }
    }
}

fn state(key: MappingKey, entry: Entry) -> MappingState {
    MappingState {
        namespace: key.namespace,
        interface_name: key.interface,
        application_names: entry.apps.into_vec(),
        revision: entry.revision,
    }
}

fn snapshot<S: Store>(store: &S, namespace: &str, interfaces: &[String]) -> MappingEvent {
    MappingEvent {
        kind: Kind::Snapshot as i32,
        mappings: store
            .get(namespace, interfaces)
            .into_iter()
            .map(|(k, e)| state(k, e))
            .collect(),
    }
}

fn result(status: ResultStatus, reason: &str, message: String) -> MappingResult {
    MappingResult {
        status: status as i32,
        reason: reason.to_owned(),
        message,
    }
}

impl<S: Store> MappingApi<S> {
    async fn push(
        &self,
        request: Request<PushMappingsRequest>,
    ) -> Result<PushMappingsResponse, Status> {
        let shared = &self.shared;
        let gate = PushGate::of(shared, &request)?;
        let req = request.into_inner();
        let checked: Vec<Result<(MappingKey, AppSet), Invalid>> = req
            .mappings
            .iter()
            .enumerate()
            .map(|(i, m)| gate.admit(shared, i, validate_mapping(shared, i, m)?))
            .collect();
        let mut unchanged = 0u32;
        let mut offer = Mappings::new();
        // Keys the pipeline had no room for: answered PENDING with why.
        let mut refused: HashMap<MappingKey, String> = HashMap::new();
        for (key, apps) in checked.iter().flatten() {
            let one: Mappings = std::iter::once((key.clone(), apps.clone())).collect();
            if shared.store.contains_all(&one) {
                unchanged += 1;
            } else {
                offer.insert_set(key.clone(), apps);
            }
        }
        for bad in checked.iter().filter_map(|c| c.as_ref().err()) {
            shared.metrics.invalid(bad.reason);
            if bad.denied {
                tracing::warn!(batch = %req.batch_id, source = %req.source, error = %bad.message, "mapping outside the sender's namespace");
            } else {
                tracing::debug!(batch = %req.batch_id, source = %req.source, error = %bad.message, "invalid mapping");
            }
        }
        if offer.is_empty() {
            tracing::debug!(batch = %req.batch_id, source = %req.source, "batch already in the store");
        } else {
            tracing::debug!(batch = %req.batch_id, source = %req.source, keys = offer.len(), "batch");
            let wait = if req.want_results {
                Wait::Settled
            } else {
                Wait::Stored
            };
            let accepted = match shared
                .pipeline
                .offer_with(Payload::Batch(offer.clone()), wait)
                .await
            {
                Ok(a) => vec![a],
                // A limit one key hit (the pending set is full, or the key holds too many
                // applications) must not refuse the batch's other keys: offer them one by
                // one, and answer the refused ones PENDING (the sender retries them).
                Err(PipelineError::Full(_)) if req.want_results => {
                    let mut accepted = Vec::new();
                    for (key, apps) in offer.iter() {
                        let mut one = Mappings::new();
                        one.insert_set(key.clone(), apps);
                        match shared.pipeline.offer_with(Payload::Batch(one), wait).await {
                            Ok(a) => accepted.push(a),
                            Err(PipelineError::Full(e)) => {
                                refused.insert(key.clone(), e.to_string());
                            }
                            Err(e) => return Err(pipeline_status(e)),
                        }
                    }
                    accepted
                }
                Err(e) => return Err(pipeline_status(e)),
            };
            if !req.want_results {
                if let Some(p) = accepted.iter().find_map(|a| a.parked.first()) {
                    return Err(parked_status(p));
                }
            }
            // With results, the deadline answers the rest as PENDING. The waits run at
            // once, so the call waits one deadline in all.
            let waits = accepted
                .into_iter()
                .filter_map(|a| a.durable)
                .map(|done| wait_durable(shared, done, req.want_results));
            for waited in futures::future::join_all(waits).await {
                waited?;
            }
        }
        if !req.want_results {
            if let Some(bad) = checked.iter().find_map(|c| c.as_ref().err()) {
                return Err(if bad.denied {
                    Status::permission_denied(bad.message.clone())
                } else {
                    Status::invalid_argument(bad.message.clone())
                });
            }
        }
        let mut stored = 0u32;
        let results: Vec<MappingResult> = checked
            .into_iter()
            .map(|c| match c {
                Err(bad) => result(ResultStatus::Rejected, bad.reason, bad.message),
                Ok((key, apps)) => {
                    let one: Mappings = std::iter::once((key.clone(), apps)).collect();
                    if let Some(why) = refused.get(&key) {
                        result(ResultStatus::Pending, OVERLOADED, format!("{key}: {why}"))
                    } else if shared.store.contains_all(&one) {
                        stored += 1;
                        result(ResultStatus::Stored, "", String::new())
                    } else if let Some(p) = shared.pipeline.parked().get(&key) {
                        result(
                            ResultStatus::Rejected,
                            &p.reason,
                            format!("{key} cannot be stored: {}", p.message),
                        )
                    } else {
                        result(ResultStatus::Pending, "", String::new())
                    }
                }
            })
            .collect();
        Ok(PushMappingsResponse {
            batch_id: req.batch_id,
            unchanged,
            written: stored.saturating_sub(unchanged),
            results: if req.want_results {
                results
            } else {
                Vec::new()
            },
        })
    }
}

#[tonic::async_trait]
impl<S: Store> MappingService for MappingApi<S> {
    async fn push_mappings(
        &self,
        request: Request<PushMappingsRequest>,
    ) -> Result<Response<PushMappingsResponse>, Status> {
        let result = self.push(request).await;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(s) => outcome_of(s),
        };
        self.shared.metrics.call(Api::Push, outcome);
        result.map(Response::new)
    }

    async fn get_mappings(
        &self,
        request: Request<GetMappingsRequest>,
    ) -> Result<Response<GetMappingsResponse>, Status> {
        let req = request.into_inner();
        validate_selector(&self.shared, &req.namespace, &req.interface_names)?;
        let mappings = self
            .shared
            .store
            .get(&req.namespace, &req.interface_names)
            .into_iter()
            .map(|(k, e)| state(k, e))
            .collect();
        Ok(Response::new(GetMappingsResponse { mappings }))
    }

    type WatchMappingsStream = ReceiverStream<Result<MappingEvent, Status>>;

    async fn watch_mappings(
        &self,
        request: Request<WatchMappingsRequest>,
    ) -> Result<Response<Self::WatchMappingsStream>, Status> {
        let req = request.into_inner();
        validate_selector(&self.shared, &req.namespace, &req.interface_names)?;
        if *self.shared.shutdown.borrow() {
            return Err(Status::unavailable("the shim is shutting down"));
        }
        // Subscribe before the snapshot, so no change falls between the two.
        let changes = self.shared.store.changes();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(watch(shared, req, changes, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn watch<S: Store>(
    shared: Arc<Shared<S>>,
    req: WatchMappingsRequest,
    mut changes: broadcast::Receiver<Change>,
    tx: mpsc::Sender<Result<MappingEvent, Status>>,
) {
    shared.metrics.watchers.inc();
    let mut shutdown = shared.shutdown.clone();
    let selected: HashSet<&str> = req.interface_names.iter().map(String::as_str).collect();
    let wanted = |key: &MappingKey| {
        key.namespace == req.namespace
            && (selected.is_empty() || selected.contains(key.interface.as_str()))
    };
    let mut next = Some(snapshot(
        &shared.store,
        &req.namespace,
        &req.interface_names,
    ));
    loop {
        if let Some(event) = next.take() {
            tokio::select! {
                sent = tx.send(Ok(event)) => if sent.is_err() { break },
                _ = crate::shutdown::signalled(&mut shutdown) => break,
            }
        }
        let first = tokio::select! {
            r = changes.recv() => r,
            _ = tx.closed() => break,
            _ = crate::shutdown::signalled(&mut shutdown) => break,
        };
        let mut batch = Vec::new();
        match first {
            Ok(change) => batch.push(change),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "watcher lagged; sending a fresh snapshot");
                next = Some(snapshot(
                    &shared.store,
                    &req.namespace,
                    &req.interface_names,
                ));
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
        // Coalesce what is already queued into one event per kind.
        let mut lagged = false;
        while batch.len() < MAX_EVENT_MAPPINGS {
            match changes.try_recv() {
                Ok(change) => batch.push(change),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    lagged = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if lagged {
            next = Some(snapshot(
                &shared.store,
                &req.namespace,
                &req.interface_names,
            ));
            continue;
        }
        // Consecutive changes of one kind go out as one event; order is kept.
        let mut events: Vec<MappingEvent> = Vec::new();
        for change in batch {
            let (kind, mapping) = match change {
                Change::Upsert { key, entry } if wanted(&key) => (Kind::Upsert, state(key, entry)),
                Change::Delete { key } if wanted(&key) => (
                    Kind::Delete,
                    MappingState {
                        namespace: key.namespace,
                        interface_name: key.interface,
                        application_names: Vec::new(),
                        revision: String::new(),
                    },
                ),
                _ => continue,
            };
            match events.last_mut() {
                Some(last) if last.kind == kind as i32 => last.mappings.push(mapping),
                _ => events.push(MappingEvent {
                    kind: kind as i32,
                    mappings: vec![mapping],
                }),
            }
        }
        let mut closed = false;
        for event in events {
            tokio::select! {
                sent = tx.send(Ok(event)) => if sent.is_err() { closed = true; break },
                _ = crate::shutdown::signalled(&mut shutdown) => { closed = true; break },
            }
        }
        if closed {
            break;
        }
    }
    shared.metrics.watchers.dec();
}
