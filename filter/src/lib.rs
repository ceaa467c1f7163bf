//! snp's proxy-wasm filter: the `.wasm` Envoy loads. All of its logic is in
//! `snp-filter-core`; this crate implements that crate's [`Host`] trait with proxy-wasm
//! host calls and forwards Envoy's callbacks.
//!
//! Host calls of the SDK panic on statuses they don't expect, and a panic kills the VM:
//! every call here swallows its error (the core only calls where Envoy accepts the call),
//! and the SDK's `String` header getters and `get_grpc_status` (which panic on non-UTF-8)
//! are never used.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls as hc;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{self as pw, BufferType, ContextType, MapType, MetricType};
use snp_filter_core::host::{Buffer, GrpcCall, LogLevel, Map, MetricKind};
use snp_filter_core::request::Code;
use snp_filter_core::{Action, Host, Root, SharedSetError, Stream};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(pw::LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(RootCtx(Root::new(id, Rc::new(Envoy))))
    });
}}

/// Envoy, through the proxy-wasm ABI.
struct Envoy;

fn map_type(map: Map) -> MapType {
    match map {
        Map::RequestHeaders => MapType::HttpRequestHeaders,
        Map::ResponseHeaders => MapType::HttpResponseHeaders,
        Map::ResponseTrailers => MapType::HttpResponseTrailers,
    }
}

fn buffer_type(buffer: Buffer) -> BufferType {
    match buffer {
        Buffer::RequestBody => BufferType::HttpRequestBody,
        Buffer::ResponseBody => BufferType::HttpResponseBody,
    }
}

fn action(a: Action) -> pw::Action {
    match a {
        Action::Continue => pw::Action::Continue,
        Action::Pause => pw::Action::Pause,
    }
}

impl Host for Envoy {
    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Debug => pw::LogLevel::Debug,
            LogLevel::Info => pw::LogLevel::Info,
            LogLevel::Warn => pw::LogLevel::Warn,
            LogLevel::Error => pw::LogLevel::Error,
        };
        let _ = hc::log(level, message);
    }

    fn wall_clock_nanos(&self) -> u128 {
        hc::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos())
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hc::get_property(path.to_vec()).ok().flatten()
    }

    fn set_property(&self, path: &[&str], value: &[u8]) {
        let _ = hc::set_property(path.to_vec(), Some(value));
    }

    fn plugin_configuration(&self) -> Result<Vec<u8>, String> {
        hc::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .map(Option::unwrap_or_default)
            .map_err(|s| format!("{s:?}"))
    }

    fn env(&self, name: &str) -> Option<String> {
        // WASI environ: Envoy fills it from vm_config.environment_variables.
        std::env::var(name).ok()
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), String> {
        hc::set_tick_period(period).map_err(|s| format!("{s:?}"))
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
        };
        hc::define_metric(kind, name).ok()
    }

    fn increment_metric(&self, id: u32, delta: i64) {
        let _ = hc::increment_metric(id, delta);
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        hc::get_map_value_bytes(map_type(map), name).ok().flatten()
    }

    fn set_header(&self, map: Map, name: &str, value: &str) {
        let _ = hc::set_map_value(map_type(map), name, Some(value));
    }

    fn add_header(&self, map: Map, name: &str, value: &str) {
        let _ = hc::add_map_value(map_type(map), name, value);
    }

    fn remove_header(&self, map: Map, name: &str) {
        let _ = hc::remove_map_value(map_type(map), name);
    }

    fn body(&self, buffer: Buffer, start: usize, len: usize) -> Option<Vec<u8>> {
        hc::get_buffer(buffer_type(buffer), start, len)
            .ok()
            .flatten()
    }

    fn set_body(&self, buffer: Buffer, start: usize, len: usize, data: &[u8]) {
        let _ = hc::set_buffer(buffer_type(buffer), start, len, data);
    }

    fn send_grpc_reply(&self, code: Code, message: &str) {
        let _ = hc::send_grpc_response(grpc_status(code), Some(message), vec![]);
    }

    fn send_http_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        let _ = hc::send_http_response(status, headers.to_vec(), Some(body));
    }

    fn resume_request(&self) {
        let _ = hc::resume_http_request();
    }

    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> Result<u32, String> {
        hc::dispatch_grpc_call(
            call.cluster,
            call.service,
            call.method,
            call.metadata.clone(),
            Some(call.message),
            call.timeout,
        )
        .map_err(|s| format!("{s:?}"))
    }

    fn grpc_response_body(&self, len: usize) -> Option<Vec<u8>> {
        hc::get_buffer(BufferType::GrpcReceiveBuffer, 0, len)
            .ok()
            .flatten()
    }

    fn set_effective_context(&self, id: u32) -> bool {
        hc::set_effective_context(id).is_ok()
    }

    fn done(&self) {
        let _ = hc::done();
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        // Ok or NotFound are the only statuses Envoy returns for a valid key; a value
        // written empty comes back as no bytes with its cas.
        match hc::get_shared_data(key) {
            Ok((value, Some(cas))) => Some((value.unwrap_or_default(), cas)),
            _ => None,
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedSetError> {
        let cas = (cas != 0).then_some(cas);
        match hc::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(pw::Status::CasMismatch) => Err(SharedSetError::CasMismatch),
            Err(_) => Err(SharedSetError::Refused),
        }
    }
}

fn grpc_status(code: Code) -> pw::GrpcStatusCode {
    match code {
        Code::InvalidArgument => pw::GrpcStatusCode::InvalidArgument,
        Code::PermissionDenied => pw::GrpcStatusCode::PermissionDenied,
        Code::ResourceExhausted => pw::GrpcStatusCode::ResourceExhausted,
        Code::FailedPrecondition => pw::GrpcStatusCode::FailedPrecondition,
        Code::Unimplemented => pw::GrpcStatusCode::Unimplemented,
        Code::Unavailable => pw::GrpcStatusCode::Unavailable,
    }
}

struct RootCtx(Root<Envoy>);

impl Context for RootCtx {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.0
            .on_grpc_call_response(token_id, status_code, response_size);
    }

    fn on_done(&mut self) -> bool {
        self.0.on_done()
    }
}

impl RootContext for RootCtx {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.0.on_configure()
    }

    fn on_tick(&mut self) {
        self.0.on_tick();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(StreamCtx(self.0.create_stream(context_id))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct StreamCtx(Stream<Envoy>);

impl Context for StreamCtx {}

impl HttpContext for StreamCtx {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> pw::Action {
        action(self.0.on_request_headers(end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> pw::Action {
        action(self.0.on_request_body(body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> pw::Action {
        action(self.0.on_request_trailers())
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> pw::Action {
        action(self.0.on_response_headers(end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> pw::Action {
        action(self.0.on_response_body(body_size, end_of_stream))
    }
}
