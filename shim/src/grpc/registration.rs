//! The registration API, both flavours: `registerServiceAppMapping`.
//!
//! Each flavour is its own tonic service (it has its own service name), generic over
//! [`Flavour`] markers. Requests are taken as bytes ([`BytesCodec`]) and decoded with
//! [`RawServiceMappingRequest`], then validated by the same `snp-core` code as in the
//! filter, so both paths give the same `INVALID_ARGUMENT` messages.
//!
//! Answers, as the seed: immediately once the debouncer accepted the registration
//! (`--ack-mode immediate`), or once it is durable in the store (`--ack-mode durable`).
//! Flavour A answers with an empty message, flavour B with `{success: true, message:
//! "success"}`.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use snp_core::request::{
    self, check_headers, check_prefix, decode_body, Rejection, RequestHeaders,
};
use snp_core::{Limits, Registration};
use snp_proto::Flavour;
use tonic::body::Body as TonicBody;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::codec::BytesCodec;
use super::{offer_and_wait, Shared};
use crate::auth::Action;
use crate::config::AckMode;
use crate::metrics::{Api, Outcome};
use crate::pipeline::Payload;
use crate::store::Store;

/// A registration API flavour, as a type.
pub trait FlavourSpec: Send + Sync + 'static {
    /// gRPC service name.
    const NAME: &'static str;
    /// Which flavour.
    const FLAVOUR: Flavour;
    /// Metrics label.
    const API: Api;
}

/// Flavour A: `dubbo.networking.v1alpha1.ServiceNameMappingService`.
#[derive(Debug)]
pub enum DubboFlavour {}

/// Flavour B: dubbo-admin's `v1alpha1.ServiceNameMappingService`.
#[derive(Debug)]
pub enum AdminFlavour {}

impl FlavourSpec for DubboFlavour {
    const NAME: &'static str = "dubbo.networking.v1alpha1.ServiceNameMappingService";
    const FLAVOUR: Flavour = Flavour::Dubbo;
    const API: Api = Api::Dubbo;
}

impl FlavourSpec for AdminFlavour {
    const NAME: &'static str = "v1alpha1.ServiceNameMappingService";
    const FLAVOUR: Flavour = Flavour::Admin;
    const API: Api = Api::Admin;
}

/// The tonic service of one flavour.
pub struct RegistrationServer<S: Store, F> {
    shared: Arc<Shared<S>>,
    _flavour: PhantomData<fn() -> F>,
}

impl<S: Store, F> RegistrationServer<S, F> {
    /// A service answering from `shared`.
    pub fn new(shared: Arc<Shared<S>>) -> Self {
        Self {
            shared,
            _flavour: PhantomData,
        }
    }
}

impl<S: Store, F> Clone for RegistrationServer<S, F> {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.shared))
    }
}

impl<S: Store, F: FlavourSpec> NamedService for RegistrationServer<S, F> {
    const NAME: &'static str = F::NAME;
}

impl<S, F, B> Service<http::Request<B>> for RegistrationServer<S, F>
where
    S: Store,
    F: FlavourSpec,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // `path()` has no query string: `...?x=1` is this method, as in the filter
        // (`snp_proto::path`), and gets the same checks.
        if req.uri().path() != F::FLAVOUR.path() {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let shared = Arc::clone(&self.shared);
        let method = Register::<S, F> {
            shared: Arc::clone(&self.shared),
            _flavour: PhantomData,
        };
        let max = self.shared.max_message_bytes;
        Box::pin(async move {
            // The filter's checks, in the filter's order, with the filter's answers
            // (`snp_core::request`): headers, then the body as it arrives, then the whole.
            let req = match validate(req, &shared.limits).await {
                Ok(req) => req,
                Err(r) => {
                    shared.metrics.invalid(r.reason.as_str());
                    let answer = rejection_response(&r);
                    let status = Status::new(grpc_code(r.code), r.message);
                    shared.metrics.call(F::API, outcome_of(&status));
                    return Ok(answer);
                }
            };
            let mut grpc =
                tonic::server::Grpc::new(BytesCodec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.unary(method, req).await)
        })
    }
}

/// The largest registration body, as the filter's default `max_body_bytes`.
pub const MAX_REGISTRATION_BODY_BYTES: usize = 64 * 1024;

/// The gRPC code of a shared rejection.
fn grpc_code(code: request::Code) -> tonic::Code {
    tonic::Code::from_i32(code.as_u32() as i32)
}

/// The answer to a refused call: as the filter's `reply_rejection`, an HTTP 415 for a call
/// that is not gRPC, a trailers-only gRPC status otherwise.
fn rejection_response(r: &Rejection) -> http::Response<TonicBody> {
    if r.reason == request::Reason::NotGrpc {
        let mut resp = http::Response::new(TonicBody::new(http_body_util::Full::new(Bytes::from(
            r.message.clone(),
        ))));
        *resp.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        return resp;
    }
    Status::new(grpc_code(r.code), r.message.clone()).into_http()
}

/// Runs the shared checks on a registration call and, if it passes, hands tonic the same
/// request with its body buffered and the validated [`Registration`] in its extensions.
async fn validate<B>(
    req: http::Request<B>,
    limits: &Limits,
) -> Result<http::Request<TonicBody>, Rejection>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let (parts, body) = req.into_parts();
    let header = |name: &str| parts.headers.get(name).map(|v| v.as_bytes().to_vec());
    let headers = RequestHeaders {
        method: Some(parts.method.as_str().as_bytes().to_vec()),
        content_type: header("content-type"),
        grpc_encoding: header("grpc-encoding"),
        content_length: header("content-length"),
        protocol: Some(format!("{:?}", parts.version).into_bytes()),
    };
    check_headers(&headers, MAX_REGISTRATION_BODY_BYTES)?;
    let mut body = std::pin::pin!(body);
    let mut buf = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let Ok(frame) = frame else {
            // The client reset the stream: nobody to answer, nothing to store.
            return Err(Rejection::new(
                request::Code::InvalidArgument,
                request::Reason::TruncatedFrame,
                "the request body could not be read",
            ));
        };
        if let Ok(mut data) = frame.into_data() {
            while data.has_remaining() {
                let chunk = data.chunk();
                let n = chunk.len();
                buf.extend_from_slice(chunk);
                data.advance(n);
            }
            check_prefix(
                &buf[..buf.len().min(5)],
                buf.len(),
                MAX_REGISTRATION_BODY_BYTES,
            )?;
        }
    }
    let registration = decode_body(&buf, MAX_REGISTRATION_BODY_BYTES, limits)?;
    let mut req = http::Request::from_parts(
        parts,
        TonicBody::new(http_body_util::Full::new(Bytes::from(buf))),
    );
    req.extensions_mut().insert(registration);
    Ok(req)
}

struct Register<S: Store, F> {
    shared: Arc<Shared<S>>,
    _flavour: PhantomData<fn() -> F>,
}

impl<S: Store, F: FlavourSpec> UnaryService<Bytes> for Register<S, F> {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let result = register(&shared, F::FLAVOUR, request).await;
            let outcome = match &result {
                Ok(_) => Outcome::Ok,
                Err(s) => outcome_of(s),
            };
            shared.metrics.call(F::API, outcome);
            result.map(Response::new)
        })
    }
}

/// The metrics outcome of a failed call.
pub(crate) fn outcome_of(status: &Status) -> Outcome {
    match status.code() {
        tonic::Code::InvalidArgument => Outcome::Invalid,
        tonic::Code::Unauthenticated => Outcome::Unauthenticated,
        tonic::Code::ResourceExhausted => Outcome::Overloaded,
        _ => Outcome::Error,
    }
}

async fn register<S: Store>(
    shared: &Shared<S>,
    flavour: Flavour,
    request: Request<Bytes>,
) -> Result<Bytes, Status> {
    shared.auth.check_request(Action::Register, &request)?;
    // Decoded and validated in `validate`, by the filter's code.
    let Some(mut registration) = request.extensions().get::<Registration>().cloned() else {
        return Err(Status::internal("the registration was not validated"));
    };
    if let Some(from) = shared
        .identity
        .enforce(&crate::identity::Peer::of(&request), &mut registration)?
    {
        tracing::info!(from = %from, to = %registration.namespace, "namespace rewritten to the caller's");
    }
    tracing::debug!(
        namespace = %registration.namespace,
        application = %registration.application,
        interfaces = registration.interfaces.len(),
        "registration"
    );
    let durable = shared.ack_mode == AckMode::Durable;
    // Journal hook: an immediate OK waits until the registration is on disk.
    let journaled = (!durable)
        .then_some(shared.journal.as_ref())
        .flatten()
        .map(|j| (j, registration.clone()));
    offer_and_wait(shared, Payload::Registration(registration), durable).await?;
    if let Some((journal, registration)) = journaled {
        journal.record(&shared.store, &registration).await?;
    }
    Ok(Bytes::from(flavour.ok_response()))
}

/// Refuses spellings of the registration paths that are not the exact one, with
/// the filter's status and message (`snp_proto::path`), before tonic routes the call. tonic
/// would answer UNIMPLEMENTED; a proxy that normalises paths could route them to the method.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathGuardLayer;

impl<S> tower_layer::Layer<S> for PathGuardLayer {
    type Service = PathGuard<S>;

    fn layer(&self, inner: S) -> PathGuard<S> {
        PathGuard { inner }
    }
}

/// The service of [`PathGuardLayer`].
#[derive(Debug, Clone)]
pub struct PathGuard<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for PathGuard<S>
where
    S: Service<http::Request<B>, Response = http::Response<TonicBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<TonicBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let known = [Flavour::Dubbo.path(), Flavour::Admin.path()];
        let path = req.uri().path().as_bytes();
        if let snp_proto::path::PathMatch::Variant(canonical) =
            snp_proto::path::classify(path, known)
        {
            let r = Rejection::new(
                request::Code::InvalidArgument,
                request::Reason::NonCanonicalPath,
                snp_proto::path::variant_message(path, canonical),
            );
            let answer = rejection_response(&r);
            return Box::pin(async move { Ok(answer) });
        }
        Box::pin(self.inner.call(req))
    }
}
