//! The Nacos endpoint: unary dispatch, the bi-stream, and the task that turns store
//! changes into pushes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use snp_core::validate::{validate_interface, Field};
use snp_core::{AppSet, MappingKey, Registration};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::conn::{Connections, ListenId, Outbox, STREAM_BUFFER};
use super::identity::NamespacePolicy;
use super::metrics::{CallResult, NacosMetrics};
use super::model::*;
use super::proto::bi_request_stream_server::BiRequestStream;
use super::proto::request_server::Request as RequestService;
use super::proto::Payload;
use super::view::{content, decode_data_id, md5_hex, parse_content, View};
use super::wire;
use crate::config::AckMode;
use crate::grpc::{offer_and_wait, Shared};
use crate::pipeline::Payload as Offer;
use crate::store::{Change, Store};

/// The group Dubbo keeps interface → application mappings in.
pub const GROUP_MAPPING: &str = "mapping";
/// The group Dubbo writes service definitions to by default: accepted and discarded.
pub const GROUP_DUBBO: &str = "dubbo";
/// How often orphaned connections and the overlay are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Overlay changes buffered for the push task before it rescans everything.
const LOCAL_CHANGES: usize = 4096;
/// Application names one publish may carry (the debouncer's bound of names per key).
pub const MAX_APPS_PER_PUBLISH: usize = 1024;

/// The endpoint's state, shared by both services and the push task.
pub struct Endpoint<S: Store> {
    shared: Arc<Shared<S>>,
    view: View<S>,
    conns: Connections,
    policy: Arc<dyn NamespacePolicy>,
    metrics: NacosMetrics,
    local: broadcast::Sender<MappingKey>,
}

type Answer = (CallResult, Payload);

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn fail(kind: &str, result: CallResult, rid: Option<String>, code: i32, msg: String) -> Answer {
    (
        result,
        wire::payload(kind, &ResponseHead::fail(rid, code, msg)),
    )
}

fn not_found(rid: Option<String>) -> Answer {
    let body = ConfigQueryResponse {
        head: ResponseHead::fail(rid, ERROR_NOT_FOUND, "config data not exist"),
        ..Default::default()
    };
    (
        CallResult::NotFound,
        wire::payload(types::CONFIG_QUERY_RESPONSE, &body),
    )
}

impl<S: Store> Endpoint<S> {
    /// An endpoint writing through `shared` and resolving namespaces with `policy`.
    pub fn new(
        shared: Arc<Shared<S>>,
        policy: Arc<dyn NamespacePolicy>,
        metrics: NacosMetrics,
    ) -> Arc<Self> {
        let (local, _) = broadcast::channel(LOCAL_CHANGES);
        Arc::new(Self {
            view: View::new(shared.store.clone()),
            shared,
            conns: Connections::new(metrics.clone()),
            policy,
            metrics,
            local,
        })
    }

    /// The read-your-writes view.
    pub fn view(&self) -> &View<S> {
        &self.view
    }

    /// Answers one unary request.
    pub async fn handle(&self, peer: Option<SocketAddr>, payload: Payload) -> Payload {
        let kind = wire::kind(&payload).to_owned();
        let (result, response) = match kind.as_str() {
            types::SERVER_CHECK => self.server_check(peer, &payload),
            types::HEALTH_CHECK => match wire::decode::<BareRequest>(&payload) {
                Ok(r) => (
                    CallResult::Ok,
                    wire::payload(
                        types::HEALTH_CHECK_RESPONSE,
                        &ResponseHead::ok(r.request_id),
                    ),
                ),
                Err(e) => undecodable(&kind, &e),
            },
            types::CONFIG_QUERY => self.query(peer, &payload),
            types::CONFIG_PUBLISH => self.publish(peer, &payload).await,
            types::CONFIG_REMOVE => self.remove(&payload),
            types::CONFIG_BATCH_LISTEN => self.listen(peer, &payload),
            other => {
                tracing::debug!(r#type = %other, "no handler for a Nacos request type");
                let rid = wire::decode::<BareRequest>(&payload)
                    .ok()
                    .and_then(|r| r.request_id);
                fail(
                    types::ERROR_RESPONSE,
                    CallResult::Refused,
                    rid,
                    ERROR_NO_HANDLER,
                    format!("no handler for request type {other:?}: this endpoint serves Dubbo's mapping configs only"),
                )
            }
        };
        self.metrics.call(&kind, result);
        response
    }

    fn server_check(&self, peer: Option<SocketAddr>, payload: &Payload) -> Answer {
        let rid = wire::decode::<BareRequest>(payload)
            .ok()
            .and_then(|r| r.request_id);
        let connection_id = peer.map(|p| self.conns.id(p));
        let body = ServerCheckResponse {
            head: ResponseHead::ok(rid),
            connection_id,
            support_ability_negotiation: false,
        };
        (
            CallResult::Ok,
            wire::payload(types::SERVER_CHECK_RESPONSE, &body),
        )
    }

    /// The mapping a read of `(tenant, data_id)` names, if it can name one.
    fn read_key(
        &self,
        peer: Option<SocketAddr>,
        tenant: &str,
        data_id: &str,
    ) -> Option<MappingKey> {
        let namespace = self.policy.read_namespace(peer, tenant).ok()?;
        let interface = decode_data_id(data_id);
        validate_interface(&interface, Field::InterfaceName(0), &self.shared.limits).ok()?;
        Some(MappingKey::new(namespace, interface))
    }

    fn query(&self, peer: Option<SocketAddr>, payload: &Payload) -> Answer {
        let req: ConfigQueryRequest = match wire::decode(payload) {
            Ok(r) => r,
            Err(e) => return undecodable(types::CONFIG_QUERY, &e),
        };
        let rid = req.key.request_id.clone();
        // Everything but the mapping group (the startup probe `Dubbo-Nacos-Test`, service
        // definitions) reads as "not found", never as an error: Dubbo re-throws errors.
        if req.key.group() != GROUP_MAPPING {
            return not_found(rid);
        }
        let Some(key) = self.read_key(peer, req.key.tenant(), req.key.data_id()) else {
            return not_found(rid);
        };
        let apps = self.view.apps(&key);
        if apps.is_empty() {
            return not_found(rid);
        }
        let text = content(&apps);
        let body = ConfigQueryResponse {
            head: ResponseHead::ok(rid),
            md5: Some(md5_hex(&text)),
            content: Some(text),
            content_type: Some("text".into()),
            last_modified: now_millis(),
            beta: false,
        };
        (
            CallResult::Ok,
            wire::payload(types::CONFIG_QUERY_RESPONSE, &body),
        )
    }

    async fn publish(&self, peer: Option<SocketAddr>, payload: &Payload) -> Answer {
        const KIND: &str = types::CONFIG_PUBLISH_RESPONSE;
        let req: ConfigPublishRequest = match wire::decode(payload) {
            Ok(r) => r,
            Err(e) => return undecodable(types::CONFIG_PUBLISH, &e),
        };
        let rid = req.key.request_id.clone();
        match req.key.group() {
            GROUP_MAPPING => {}
            GROUP_DUBBO => {
                // Service definitions: Dubbo retries a refused one every 3 s, 100 times.
                tracing::debug!(data_id = %req.key.data_id(), "discarding a write to group dubbo");
                return (
                    CallResult::Discarded,
                    wire::payload(KIND, &ResponseHead::ok(rid)),
                );
            }
            other => {
                return fail(
                    KIND,
                    CallResult::Refused,
                    rid,
                    ERROR_INVALID,
                    format!("group {other:?} is not served: this endpoint keeps Dubbo's interface-to-application mappings (group \"mapping\") only"),
                );
            }
        }
        let namespace = match self.policy.write_namespace(peer, req.key.tenant()) {
            Ok(ns) => ns,
            Err(e) => return fail(KIND, CallResult::Invalid, rid, ERROR_INVALID, e.0),
        };
        let interface = decode_data_id(req.key.data_id());
        let text = req.content.as_deref().unwrap_or_default();
        let names = parse_content(text);
        if names.is_empty() {
            return fail(
                KIND,
                CallResult::Invalid,
                rid,
                ERROR_INVALID,
                "the content names no application".into(),
            );
        }
        if names.len() > MAX_APPS_PER_PUBLISH {
            return fail(
                KIND,
                CallResult::Invalid,
                rid,
                ERROR_INVALID,
                format!(
                    "the content names {} applications; at most {MAX_APPS_PER_PUBLISH} are allowed",
                    names.len()
                ),
            );
        }
        let apps: AppSet = names.iter().copied().collect();
        // The same validation, and so the same messages, as the registration API.
        let mut registrations = Vec::with_capacity(apps.len());
        for name in apps.iter() {
            match Registration::new(
                namespace.clone(),
                name.to_owned(),
                vec![interface.clone()],
                &self.shared.limits,
            ) {
                Ok(r) => registrations.push(r),
                Err(e) => {
                    self.shared.metrics.invalid(e.reason());
                    return fail(KIND, CallResult::Invalid, rid, ERROR_INVALID, e.to_string());
                }
            }
        }
        let key = MappingKey::new(namespace, interface);
        // Union semantics: casMd5 is ignored, nothing is removed, only new names are offered.
        registrations.retain(|r| {
            let one: AppSet = std::iter::once(r.application.as_str()).collect();
            !self.view.stored(&key, &one)
        });
        let durable = self.shared.ack_mode == AckMode::Durable;
        let offers = registrations
            .into_iter()
            .map(|r| offer_and_wait(&self.shared, Offer::Registration(r), durable));
        for result in futures::future::join_all(offers).await {
            if let Err(status) = result {
                let (result, code) = match status.code() {
                    tonic::Code::ResourceExhausted => (CallResult::Overloaded, ERROR_OVERLOADED),
                    tonic::Code::InvalidArgument => (CallResult::Invalid, ERROR_INVALID),
                    _ => (CallResult::Error, ERROR_SERVER),
                };
                return fail(KIND, result, rid, code, status.message().to_owned());
            }
        }
        if self.view.accept(&key, &apps) {
            let _ = self.local.send(key);
        }
        (CallResult::Ok, wire::payload(KIND, &ResponseHead::ok(rid)))
    }

    fn remove(&self, payload: &Payload) -> Answer {
        const KIND: &str = types::CONFIG_REMOVE_RESPONSE;
        let req: ConfigRemoveRequest = match wire::decode(payload) {
            Ok(r) => r,
            Err(e) => return undecodable(types::CONFIG_REMOVE, &e),
        };
        let rid = req.key.request_id.clone();
        match req.key.group() {
            GROUP_DUBBO => (CallResult::Discarded, wire::payload(KIND, &ResponseHead::ok(rid))),
            GROUP_MAPPING => fail(
                KIND,
                CallResult::Refused,
                rid,
                ERROR_INVALID,
                "mappings are never removed: an interface keeps every application that ever provided it".into(),
            ),
            other => fail(
                KIND,
                CallResult::Refused,
                rid,
                ERROR_INVALID,
                format!("group {other:?} is not served: this endpoint keeps Dubbo's interface-to-application mappings (group \"mapping\") only"),
            ),
        }
    }

    fn listen(&self, peer: Option<SocketAddr>, payload: &Payload) -> Answer {
        const KIND: &str = types::CONFIG_BATCH_LISTEN_RESPONSE;
        let req: ConfigBatchListenRequest = match wire::decode(payload) {
            Ok(r) => r,
            Err(e) => return undecodable(types::CONFIG_BATCH_LISTEN, &e),
        };
        let rid = req.request_id.clone();
        let listen = req.listen.unwrap_or(true);
        let mut changed = Vec::new();
        for ctx in req.config_listen_contexts.unwrap_or_default() {
            let id = ListenId {
                group: ctx.group.clone().unwrap_or_default(),
                data_id: ctx.data_id.clone().unwrap_or_default(),
                tenant: ctx.tenant.clone().unwrap_or_default(),
            };
            if !listen {
                if let Some(peer) = peer {
                    self.conns.unlisten(peer, &id);
                }
                continue;
            }
            let key = (id.group == GROUP_MAPPING)
                .then(|| self.read_key(peer, &id.tenant, &id.data_id))
                .flatten();
            let current = key
                .as_ref()
                .map(|k| md5_hex(&content(&self.view.apps(k))))
                .unwrap_or_default();
            if ctx.md5.as_deref().unwrap_or_default() != current {
                changed.push(ChangedConfig {
                    group: ctx.group,
                    data_id: ctx.data_id,
                    tenant: ctx.tenant,
                });
            }
            // Only mappings ever change; other groups have nothing to push.
            if let (Some(key), Some(peer)) = (key, peer) {
                if let Err(e) = self.conns.listen(peer, id, key, current) {
                    return fail(
                        KIND,
                        CallResult::Overloaded,
                        rid,
                        ERROR_OVERLOADED,
                        e.to_string(),
                    );
                }
            }
        }
        let body = ConfigChangeBatchListenResponse {
            head: ResponseHead::ok(rid),
            changed_configs: changed,
        };
        (CallResult::Ok, wire::payload(KIND, &body))
    }

    /// One message the client sent on its bi-stream.
    fn stream_message(&self, outbox: &Outbox, payload: &Payload) {
        let kind = wire::kind(payload);
        let result = match kind {
            types::CONNECTION_SETUP => match wire::decode::<ConnectionSetupRequest>(payload) {
                Ok(setup) => {
                    tracing::debug!(
                        client_version = setup.client_version.as_deref().unwrap_or_default(),
                        tenant = setup.tenant.as_deref().unwrap_or_default(),
                        "Nacos connection set up"
                    );
                    CallResult::Ok
                }
                Err(_) => CallResult::Invalid,
            },
            types::CONFIG_CHANGE_NOTIFY_RESPONSE => match wire::decode::<PlainResponse>(payload) {
                Ok(ack) => {
                    if outbox.ack(ack.request_id.as_deref().unwrap_or_default()) {
                        self.metrics.acks.inc();
                    }
                    CallResult::Ok
                }
                Err(_) => CallResult::Invalid,
            },
            other => {
                tracing::debug!(r#type = %other, "ignoring a message on the Nacos stream");
                CallResult::Refused
            }
        };
        self.metrics.call(kind, result);
    }

    fn push_key(&self, key: &MappingKey) {
        let md5 = md5_hex(&content(&self.view.apps(key)));
        self.conns.changed(key, &md5);
    }

    fn push_all(&self) {
        self.view.prune_all();
        for key in self.conns.listened() {
            self.push_key(&key);
        }
    }

    /// Turns store changes (this shim's writes and other writers') and accepted publishes
    /// into pushes, and sweeps, until shutdown.
    pub async fn run_pushes(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut store = self.shared.store.changes();
        let mut local = self.local.subscribe();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                r = store.recv() => match r {
                    Ok(Change::Upsert { key, .. } | Change::Delete { key }) => {
                        self.view.prune(&key);
                        self.push_key(&key);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.push_all(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                r = local.recv() => match r {
                    Ok(key) => self.push_key(&key),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.push_all(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = sweep.tick() => {
                    self.conns.sweep();
                    self.view.prune_all();
                }
                () = crate::shutdown::signalled(&mut shutdown) => return,
            }
        }
    }
}

fn undecodable(kind: &str, e: &serde_json::Error) -> Answer {
    fail(
        types::ERROR_RESPONSE,
        CallResult::Invalid,
        None,
        ERROR_INVALID,
        format!("the body of a {kind} is not valid JSON for it: {e}"),
    )
}

/// Both gRPC services over one [`Endpoint`].
pub struct NacosGrpc<S: Store> {
    endpoint: Arc<Endpoint<S>>,
}

impl<S: Store> NacosGrpc<S> {
    /// Services answering from `endpoint`.
    pub fn new(endpoint: Arc<Endpoint<S>>) -> Self {
        Self { endpoint }
    }
}

impl<S: Store> Clone for NacosGrpc<S> {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.endpoint))
    }
}

#[tonic::async_trait]
impl<S: Store> RequestService for NacosGrpc<S> {
    async fn request(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let peer = request.remote_addr();
        let payload = request.into_inner();
        Ok(Response::new(self.endpoint.handle(peer, payload).await))
    }
}

type PushStream = Pin<Box<dyn Stream<Item = Result<Payload, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<S: Store> BiRequestStream for NacosGrpc<S> {
    type requestBiStreamStream = PushStream;

    async fn request_bi_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<Self::requestBiStreamStream>, Status> {
        let Some(peer) = request.remote_addr() else {
            return Err(Status::failed_precondition(
                "the Nacos stream needs a TCP peer address",
            ));
        };
        if *self.endpoint.shared.shutdown.borrow() {
            return Err(Status::unavailable("the shim is shutting down"));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let outbox = Outbox::new(tx);
        let endpoint = Arc::clone(&self.endpoint);
        endpoint.conns.open(peer, Arc::clone(&outbox));
        tokio::spawn(
            Arc::clone(&outbox).run(endpoint.metrics.clone(), endpoint.shared.shutdown.clone()),
        );
        tokio::spawn(async move {
            let mut shutdown = endpoint.shared.shutdown.clone();
            loop {
                let next = tokio::select! {
                    m = inbound.next() => m,
                    () = crate::shutdown::signalled(&mut shutdown) => None,
                };
                match next {
                    Some(Ok(payload)) => endpoint.stream_message(&outbox, &payload),
                    Some(Err(status)) => {
                        tracing::debug!(%peer, %status, "Nacos stream failed");
                        break;
                    }
                    None => break,
                }
            }
            endpoint.conns.close(peer, &outbox);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
