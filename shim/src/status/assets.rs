//! The page's files, compiled into the binary. The simulator's wasm and its wasm-bindgen
//! glue come from `build.rs` (see there); the rest lives in `web/`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Whether `build.rs` found the simulator's wasm (else the glue says how to build it).
pub const SIMULATOR_BUILT: bool = include!(concat!(env!("OUT_DIR"), "/sim_built.rs"));

const INDEX: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE: &str = include_str!("web/style.css");
const SIM_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/snp_sim_wasm.js"));
const SIM_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/snp_sim_wasm_bg.wasm"));

/// Served as is: no inline script is needed, so the policy forbids every other origin.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
                   style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn file(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub fn page() -> Response {
    let mut r = file("text/html; charset=utf-8", INDEX);
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

/// `GET /status/assets/{name}`.
pub fn asset(name: &str) -> Response {
    match name {
        "app.js" => file("text/javascript; charset=utf-8", APP_JS),
        "style.css" => file("text/css; charset=utf-8", STYLE),
        "snp_sim_wasm.js" => file("text/javascript; charset=utf-8", SIM_JS),
        "snp_sim_wasm_bg.wasm" => file("application/wasm", SIM_WASM),
        _ => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}
