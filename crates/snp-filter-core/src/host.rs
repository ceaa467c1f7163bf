//! What the filter needs from its host (Envoy through proxy-wasm, or a mock in tests).
//!
//! The trait mirrors the proxy-wasm ABI closely, so the real implementation is a line per
//! method: calls that act on a stream act on the *effective* context, which the root
//! context switches with [`Host::set_effective_context`] before answering a held stream.
//! Every method is infallible or returns what failed: the SDK panics on statuses it does
//! not expect, and a panic kills the VM, so the implementation swallows errors instead and
//! the filter only calls where Envoy is known to accept the call.

use core::time::Duration;

use crate::request::Code;

/// Log levels, as proxy-wasm has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Per-batch detail.
    Debug,
    /// Configuration and lifecycle.
    Info,
    /// Something the operator should look at.
    Warn,
    /// The configuration was refused.
    Error,
}

/// The header maps of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Map {
    /// Request headers (readable only in `on_http_request_headers`, writable while held).
    RequestHeaders,
    /// Response headers.
    ResponseHeaders,
    /// Response trailers (added at the end of the response body).
    ResponseTrailers,
}

/// The body buffers of a stream, and the plugin configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Buffer {
    /// The request body buffered so far.
    RequestBody,
    /// The response body buffered so far.
    ResponseBody,
}

/// Metric kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic.
    Counter,
    /// Up and down; each worker adds its own share.
    Gauge,
}

/// What a stream callback tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the stream go on.
    Continue,
    /// Hold the stream (headers or body) until resumed or answered.
    Pause,
}

/// A gRPC call to dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall<'a> {
    /// Envoy cluster of the receiver.
    pub cluster: &'a str,
    /// Fully qualified service name.
    pub service: &'a str,
    /// Method name.
    pub method: &'a str,
    /// Initial metadata (header name, value).
    pub metadata: Vec<(&'a str, &'a [u8])>,
    /// The encoded request message (unframed).
    pub message: &'a [u8],
    /// Deadline of the call.
    pub timeout: Duration,
}

/// Why a write to shared data was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedSetError {
    /// The value changed since it was read (its `cas` is stale): read it again.
    CasMismatch,
    /// The host refused the write for another reason.
    Refused,
}

/// The host as the filter sees it.
pub trait Host {
    /// Writes a log line.
    fn log(&self, level: LogLevel, message: &str);

    /// Wall-clock time in nanoseconds since the Unix epoch (0 if unknown).
    fn wall_clock_nanos(&self) -> u128;

    /// A property (`["xds", "node", "id"]`, `["connection", "uri_san_peer_certificate"]`,
    /// ...), as raw bytes; `None` if absent.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;

    /// The plugin configuration, as given (may be empty).
    fn plugin_configuration(&self) -> Result<Vec<u8>, String>;

    /// An environment variable of the VM (Envoy: `vm_config.environment_variables`), if set.
    fn env(&self, name: &str) -> Option<String>;

    /// Sets the period of `on_tick`.
    fn set_tick_period(&self, period: Duration) -> Result<(), String>;

    /// Defines a metric; `None` if the host refused (the metric is then lost, nothing else).
    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32>;

    /// Adds `delta` to a metric.
    fn increment_metric(&self, id: u32, delta: i64);

    /// A header of the effective stream, as raw bytes (never through a `String` getter,
    /// which panics on non-UTF-8 values).
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>>;

    /// Sets a property (Envoy: filter state `wasm.<path>`) of the effective stream. Only
    /// filters can write filter state, so a route that matches it cannot be chosen by a
    /// client (the ack route).
    fn set_property(&self, path: &[&str], value: &[u8]);

    /// Sets (replaces) a header of the effective stream.
    fn set_header(&self, map: Map, name: &str, value: &str);

    /// Adds a header (or trailer) to the effective stream.
    fn add_header(&self, map: Map, name: &str, value: &str);

    /// Removes a header of the effective stream.
    fn remove_header(&self, map: Map, name: &str);

    /// `len` bytes from `start` of a body buffer of the effective stream.
    fn body(&self, buffer: Buffer, start: usize, len: usize) -> Option<Vec<u8>>;

    /// Replaces `len` bytes from `start` of a body buffer with `data`.
    fn set_body(&self, buffer: Buffer, start: usize, len: usize, data: &[u8]);

    /// Answers the effective stream with a gRPC status and message (a local reply).
    fn send_grpc_reply(&self, code: Code, message: &str);

    /// Answers the effective stream with a plain HTTP response (a local reply).
    fn send_http_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]);

    /// Resumes the effective stream's held request.
    fn resume_request(&self);

    /// Dispatches a gRPC call from the root context; its token, or why it failed at once.
    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> Result<u32, String>;

    /// The first `len` bytes of the response message of the gRPC call being completed
    /// (only inside `on_grpc_call_response`).
    fn grpc_response_body(&self, len: usize) -> Option<Vec<u8>>;

    /// Makes context `id` the effective one; `false` if it is gone.
    fn set_effective_context(&self, id: u32) -> bool;

    /// Tells the host a draining root context has finished.
    fn done(&self);

    /// A value of the host's shared data and its version (`cas`), `None` if the key is
    /// absent. Envoy keeps shared data per `vm_id` in the process, outside any VM: every
    /// worker's VM of that `vm_id` reads the same store, and a VM that dies or restarts
    /// loses none of it.
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)>;

    /// Writes a value of the shared data if its version is still `cas` (0: whatever it
    /// is). As in proxy-wasm-cpp-host, a key that is absent is written whatever `cas` says.
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedSetError>;
}
