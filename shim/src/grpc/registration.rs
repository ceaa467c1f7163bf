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

use bytes::Bytes;
use snp_core::Registration;
use snp_proto::{Flavour, RawServiceMappingRequest};
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
        if req.uri().path() != F::FLAVOUR.path() {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let method = Register::<S, F> {
            shared: Arc::clone(&self.shared),
            _flavour: PhantomData,
        };
        let max = self.shared.max_message_bytes;
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(BytesCodec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.unary(method, req).await)
        })
    }
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
    let body = request.into_inner();
    let raw = RawServiceMappingRequest::decode_bytes(&body).map_err(|e| {
        shared.metrics.invalid("not_protobuf");
        Status::invalid_argument(format!(
            "the request is not a protobuf ServiceMappingRequest: {e}"
        ))
    })?;
    let registration = Registration::from_raw(
        raw.namespace,
        raw.application_name,
        raw.interface_names,
        &shared.limits,
    )
    .map_err(|e| {
        shared.metrics.invalid(e.reason());
        tracing::debug!(error = %e, "invalid registration");
        Status::invalid_argument(e.to_string())
    })?;
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
