//! The Nacos 2.x config protocol for Dubbo 3's `mapping` group: the shim's third front end.
//!
//! Unmodified Dubbo 3 apps with `dubbo.metadata-report.address=nacos://<node>:8848` publish
//! each "interface → application" mapping as the config `(dataId = interface, group =
//! "mapping")`, a comma-separated list of applications, with a compare-and-swap on its MD5,
//! and consumers read and listen to it. This endpoint serves that over gRPC on the port the
//! client dials (the configured port + 1000, so 9848):
//!
//! * writes go through the registration path (validation, the pipeline's debounce and
//!   merge, the ack of `--ack-mode`), with union semantics: `casMd5` is ignored, a publish
//!   never removes a name, and an accepted publish succeeds. A storm of new applications on
//!   one interface costs few API writes, and no client loses a CAS race;
//! * queries and listens answer from the store's cache plus the accepted, not yet written
//!   mappings ([`view`]), so Dubbo's publish → query sees its own write at once;
//! * listens get a push ([`conn`]) on every change of the mapping, from this shim or any
//!   other writer, fed by the store's change stream (the one behind `WatchMappings`);
//! * the namespace of a call follows a [`identity::NamespacePolicy`];
//! * everything else Dubbo sends is answered so that the app starts and keeps running: the
//!   startup probe `Dubbo-Nacos-Test` and other groups read as "not found", writes to group
//!   `dubbo` (service definitions) are accepted and discarded, other writes and removes get
//!   typed errors (400, never 403), unknown request types an `ErrorResponse` 302.
//!
//! [`model`] holds the JSON bodies; [`proto`] the envelope from Nacos's published proto.

pub mod conn;
pub mod identity;
pub mod metrics;
pub mod model;
pub mod service;
pub mod view;
pub mod wire;

/// The Nacos gRPC envelope (generated from `shim/proto/nacos_grpc_service.proto`).
pub mod proto {
    #![allow(missing_docs, clippy::all, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::grpc::{Shared, MAX_MESSAGE_BYTES};
use crate::store::Store;
use identity::{NamespacePolicy, PodPolicy, Trust};

use crate::identity::CallerResolver;
use proto::bi_request_stream_server::BiRequestStreamServer;
use proto::request_server::RequestServer;
use service::{Endpoint, NacosGrpc};

/// How the namespace of a Nacos call is chosen (see [`identity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NacosIdentity {
    /// The tenant when it is a valid namespace name, else `--nacos-default-namespace`.
    /// Any caller may write into any namespace.
    Trust,
    /// The namespace of the pod at the call's peer address (the shim's pod index, so it
    /// needs `--namespace-policy=pod`): writes go there, and a tenant naming another
    /// namespace is refused; reads of the default tenant read it, and may name another.
    Pod,
}

fn namespace_name(s: &str) -> Result<String, String> {
    if snp_core::validate::is_rfc1123_label(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a valid namespace name (RFC 1123 label)"
        ))
    }
}

/// Flags of the Nacos endpoint.
#[derive(Debug, Clone, Args)]
pub struct NacosArgs {
    /// Serve the Nacos 2.x config protocol for Dubbo's `mapping` group (Dubbo 3 apps with a
    /// `nacos://` metadata report).
    #[arg(long = "nacos", env = "SNP_NACOS", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// gRPC listen address of the Nacos endpoint. Nacos clients dial the configured server
    /// port + 1000: apps configured with `nacos://<node>:8848` reach 9848.
    #[arg(long, env = "SNP_NACOS_ADDR", default_value = "0.0.0.0:9848")]
    pub nacos_addr: SocketAddr,
    /// How the Kubernetes namespace of a Nacos call is chosen.
    #[arg(long, env = "SNP_NACOS_IDENTITY", value_enum, default_value_t = NacosIdentity::Trust)]
    pub nacos_identity: NacosIdentity,
    /// Namespace of the Nacos default tenant ("" or "public") and of tenants that are not
    /// valid namespace names.
    #[arg(long, env = "SNP_NACOS_DEFAULT_NAMESPACE", default_value = "default", value_parser = namespace_name)]
    pub nacos_default_namespace: String,
    /// Also serve a login stub on this address (`POST /nacos/v1/auth/users/login`), for apps
    /// that set a Nacos `username`: they log in over HTTP on the configured port (8848) every
    /// 5 s until they get a token. The token authorises nothing; the shim checks none.
    #[arg(long, env = "SNP_NACOS_LOGIN_ADDR")]
    pub nacos_login_addr: Option<SocketAddr>,
}

impl NacosArgs {
    /// The namespace policy the flags ask for; `pods` resolves peers under `pod` (without
    /// it, every call is refused: `--nacos-identity=pod` needs `--namespace-policy=pod`,
    /// which the flags' validation checks).
    pub fn policy(&self, pods: Option<Arc<dyn CallerResolver>>) -> Arc<dyn NamespacePolicy> {
        match self.nacos_identity {
            NacosIdentity::Trust => Arc::new(Trust::new(self.nacos_default_namespace.clone())),
            NacosIdentity::Pod => Arc::new(PodPolicy::new(pods)),
        }
    }
}

/// The endpoint's bound listeners.
pub struct Listeners {
    grpc: TcpListener,
    login: Option<TcpListener>,
    /// Where gRPC is served.
    pub addr: SocketAddr,
    /// Where the login stub is served.
    pub login_addr: Option<SocketAddr>,
}

async fn bind_one(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let local = l.local_addr()?;
    Ok((l, local))
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum NacosError {
    /// A listener could not be bound.
    #[error("binding the Nacos endpoint on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Registrations must authenticate, and Nacos clients cannot.
    #[error("--nacos cannot be combined with --auth-scope all: Nacos clients present no bearer token or client certificate, so their publishes would bypass the authentication registrations need")]
    Unauthenticated,
}

/// Binds the endpoint's listeners if `--nacos` is on. `registrations_need_auth`: the shim
/// authenticates registrations (`--auth-scope all` with a token or client CA); the Nacos
/// endpoint cannot, so it refuses to start rather than open a way around it.
pub async fn bind(
    args: &NacosArgs,
    registrations_need_auth: bool,
) -> Result<Option<Listeners>, NacosError> {
    if !args.enabled {
        return Ok(None);
    }
    if registrations_need_auth {
        return Err(NacosError::Unauthenticated);
    }
    let bind_err = |addr| move |source| NacosError::Bind { addr, source };
    let (grpc, addr) = bind_one(args.nacos_addr)
        .await
        .map_err(bind_err(args.nacos_addr))?;
    let (login, login_addr) = match args.nacos_login_addr {
        Some(a) => {
            let (l, local) = bind_one(a).await.map_err(bind_err(a))?;
            (Some(l), Some(local))
        }
        None => (None, None),
    };
    Ok(Some(Listeners {
        grpc,
        login,
        addr,
        login_addr,
    }))
}

/// Serves the endpoint on `listeners` until shutdown.
pub async fn serve<S: Store>(
    listeners: Listeners,
    shared: Arc<Shared<S>>,
    args: NacosArgs,
    shutdown: watch::Receiver<bool>,
) {
    let metrics = shared.metrics.nacos.clone();
    let endpoint = Endpoint::new(
        Arc::clone(&shared),
        args.policy(shared.identity.resolver()),
        metrics.clone(),
    );
    tokio::spawn(Arc::clone(&endpoint).run_pushes(shutdown.clone()));
    if let Some(login) = listeners.login {
        tokio::spawn(serve_login(login, metrics.clone(), shutdown.clone()));
    }
    let grpc = NacosGrpc::new(endpoint);
    let router = Server::builder()
        .add_service(RequestServer::new(grpc.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(BiRequestStreamServer::new(grpc).max_decoding_message_size(MAX_MESSAGE_BYTES));
    tracing::info!(
        addr = %listeners.addr,
        identity = ?args.nacos_identity,
        default_namespace = %args.nacos_default_namespace,
        "serving the Nacos config protocol (group mapping)"
    );
    let incoming = TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
    let mut stop = shutdown;
    if let Err(e) = router
        .serve_with_incoming_shutdown(incoming, async move {
            crate::shutdown::signalled(&mut stop).await;
        })
        .await
    {
        tracing::error!(error = %e, "the Nacos endpoint failed");
    }
}

/// The login stub: hands out a token so that apps with a Nacos `username` stop retrying.
async fn serve_login(
    listener: TcpListener,
    metrics: metrics::NacosMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    use axum::routing::post;
    async fn login(
        axum::extract::State(metrics): axum::extract::State<metrics::NacosMetrics>,
    ) -> impl axum::response::IntoResponse {
        metrics.logins.inc();
        let body = serde_json::json!({
            "accessToken": "snp-shim-no-auth",
            "tokenTtl": 18000,
            "globalAdmin": false,
        });
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
    }
    let app = axum::Router::new()
        .route("/nacos/v1/auth/users/login", post(login))
        .with_state(metrics);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { crate::shutdown::signalled(&mut shutdown).await })
        .await
    {
        tracing::error!(error = %e, "the Nacos login stub failed");
    }
}
