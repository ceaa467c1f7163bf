//! The operations endpoint (plain HTTP/1.1, separate port from gRPC):
//!
//! * `GET /metrics`: every metric in the Prometheus/OpenMetrics text format;
//! * `GET /healthz`: 200 while the process serves (liveness);
//! * `GET /readyz`: 200 once the store has been reachable and its cache synced, and from
//!   then on through store outages (the shim buffers and retries); 503 before the first
//!   sync and during shutdown (readiness). `snp_store_ready` shows the live state.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Tells whether the shim is ready.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct Ops {
    registry: Arc<Registry>,
    ready: Readiness,
}

/// The router of the operations endpoint.
pub fn router(registry: Arc<Registry>, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ops { registry, ready })
}

/// Serves the operations endpoint, and `extra` routes (the status page), on `listener`
/// until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, ready).merge(extra))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &ops.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}

async fn readyz(State(ops): State<Ops>) -> Response {
    if (ops.ready)() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}
