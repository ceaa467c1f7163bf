//! The operations endpoint (plain HTTP/1.1, separate port from gRPC):
//!
//! * `GET /metrics`: every metric in the Prometheus/OpenMetrics text format;
//! * `GET /healthz`: 200 while the process serves (liveness);
//! * `GET /readyz`: 200 once the store has been reachable and its cache synced, and from
//!   then on through store outages (the shim buffers and retries); 503 before the first
//!   sync and during shutdown (readiness). `snp_store_ready` shows the live state;
//! * `GET /parked`: the keys the store refuses for good (missing or terminating namespace,
//!   RBAC, admission, quota, size), as JSON: `{"parked": [{namespace, interface,
//!   applications, reason, message, parked_since, last_tried, next_probe, tries}]}`.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::pipeline::ParkedView;

/// Tells whether the shim is ready.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct Ops {
    registry: Arc<Registry>,
    ready: Readiness,
    parked: ParkedView,
}

/// The router of the operations endpoint.
pub fn router(registry: Arc<Registry>, ready: Readiness, parked: ParkedView) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/parked", get(parked_keys))
        .with_state(Ops {
            registry,
            ready,
            parked,
        })
}

/// Serves the operations endpoint, and `extra` routes (the status page), on `listener`
/// until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
    parked: ParkedView,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, ready, parked).merge(extra))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn parked_keys(State(ops): State<Ops>) -> Response {
    let body = serde_json::json!({ "parked": ops.parked.list() });
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
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
