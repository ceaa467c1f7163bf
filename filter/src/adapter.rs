//! The thin proxy-wasm adapter: Envoy callbacks in, host calls out. Every decision is made
//! by the host-agnostic modules; this file only moves bytes between them and Envoy.
//!
//! Answering inside Envoy (see `envoy/README.md`): a valid call's request headers are held
//! (`allow_on_headers_stop_iteration: true`) until the body is validated; the filter then
//! sets `content-type: application/octet-stream` and the ack header, so the route sends
//! the call to an internal listener that answers `200` with an empty gRPC frame. On the way
//! back the filter sees the ack listener's marker header, restores
//! `content-type: application/grpc`, replaces the body with the flavour's response
//! message and adds the trailer `grpc-status: 0`. Invalid calls get local gRPC replies
//! and never reach the ack route.
//!
//! Host calls of the SDK panic on statuses they don't expect; each one here is made only
//! where Envoy is known to accept it (request headers while they are held, response
//! trailers at the end of the response body, ...). The SDK's `String` header getters and
//! `get_grpc_status` (which panic on non-UTF-8) are never used.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls as hc;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action, BufferType, ContextType, GrpcStatusCode, LogLevel, MapType, MetricType,
};
use snp_core::Instant;
use snp_proto::Flavour;

use crate::clock::MonoClock;
use crate::config::{Config, NamespacePolicy};
use crate::engine::{Accepted, Engine};
use crate::metrics::{reason_name, Counter, Gauge, GaugeShare};
use crate::policy::{enforce, node_namespace, spiffe_namespace, Enforced};
use crate::request::{
    check_headers, check_prefix, decode_body, Code, Reason, Rejection, RequestHeaders,
};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root::new(id)) });
}}

const SERVICE: &str = "snp.v1.MappingService";
const METHOD: &str = "PushMappings";

fn log(level: LogLevel, msg: &str) {
    let _ = hc::log(level, msg);
}

thread_local! {
    /// One VM runs on one thread: one clock for all its contexts.
    static CLOCK: Cell<MonoClock> = Cell::new(MonoClock::default());
}

/// Monotonic milliseconds (see [`MonoClock`]).
fn now() -> Instant {
    let wall = hc::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    CLOCK.with(|c| {
        let mut clock = c.get();
        let t = clock.at(wall);
        c.set(clock);
        t
    })
}

/// A property of the Envoy node: `xds.node.<path>` (Envoy >= 1.3x), else the older
/// `node.<path>` (still what some builds, Istio's among them, expose).
fn node_property(path: &[&str]) -> Option<Vec<u8>> {
    ["xds", "node"].iter().find_map(|root| {
        let mut full: Vec<&str> = Vec::with_capacity(path.len() + 2);
        if *root == "xds" {
            full.extend(["xds", "node"]);
        } else {
            full.push("node");
        }
        full.extend_from_slice(path);
        hc::get_property(full).ok().flatten()
    })
}

fn request_header(name: &str) -> Option<Vec<u8>> {
    hc::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// Metric ids, defined once per root context. A failed definition only loses the metric.
struct Metrics {
    counters: Vec<Option<u32>>,
    gauges: Vec<Option<u32>>,
    reasons: Vec<Option<u32>>,
}

impl Metrics {
    fn define() -> Self {
        let def = |t, n: &str| hc::define_metric(t, n).ok();
        Self {
            counters: Counter::ALL
                .iter()
                .map(|c| def(MetricType::Counter, c.name()))
                .collect(),
            gauges: Gauge::ALL
                .iter()
                .map(|g| def(MetricType::Gauge, g.name()))
                .collect(),
            reasons: Reason::ALL
                .iter()
                .map(|r| def(MetricType::Counter, &reason_name(*r)))
                .collect(),
        }
    }

    fn add(&self, c: Counter, n: u64) {
        let id = Counter::ALL
            .iter()
            .position(|x| *x == c)
            .and_then(|i| self.counters.get(i).copied().flatten());
        if let (Some(id), Ok(n @ 1..)) = (id, i64::try_from(n)) {
            let _ = hc::increment_metric(id, n);
        }
    }

    fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    fn rejected(&self, r: &Rejection) {
        self.inc(Counter::for_code(r.code));
        let id = Reason::ALL
            .iter()
            .position(|x| *x == r.reason)
            .and_then(|i| self.reasons.get(i).copied().flatten());
        if let Some(id) = id {
            let _ = hc::increment_metric(id, 1);
        }
    }

    fn gauge_delta(&self, g: Gauge, delta: i64) {
        let id = Gauge::ALL
            .iter()
            .position(|x| *x == g)
            .and_then(|i| self.gauges.get(i).copied().flatten());
        if let (Some(id), true) = (id, delta != 0) {
            let _ = hc::increment_metric(id, delta);
        }
    }
}

/// What every context of one plugin shares. Immutable after `on_configure`.
struct Plugin {
    cfg: Config,
    metrics: Metrics,
    /// The caller's namespace from node metadata (policy `node`).
    node_ns: Option<String>,
}

fn grpc_status(code: Code) -> GrpcStatusCode {
    match code {
        Code::InvalidArgument => GrpcStatusCode::InvalidArgument,
        Code::PermissionDenied => GrpcStatusCode::PermissionDenied,
        Code::ResourceExhausted => GrpcStatusCode::ResourceExhausted,
        Code::Unimplemented => GrpcStatusCode::Unimplemented,
        Code::Unavailable => GrpcStatusCode::Unavailable,
    }
}

/// Answers the current (effective) stream with a local reply.
fn reply_rejection(plugin: &Plugin, r: &Rejection) {
    plugin.metrics.rejected(r);
    if r.reason == Reason::NotGrpc {
        // Not a gRPC request: an HTTP answer, as the gRPC spec asks (415).
        let _ = hc::send_http_response(
            415,
            vec![("content-type", "text/plain")],
            Some(r.message.as_bytes()),
        );
    } else {
        let _ = hc::send_grpc_response(grpc_status(r.code), Some(&r.message), vec![]);
    }
}

/// Routes the current (effective) stream, whose request headers are held, to the ack
/// listener: the content type makes the internal listener answer as plain HTTP, the
/// header selects the route.
fn mark_for_ack(cfg: &Config) {
    let _ = hc::set_map_value(
        MapType::HttpRequestHeaders,
        "content-type",
        Some("application/octet-stream"),
    );
    let _ = hc::set_map_value(MapType::HttpRequestHeaders, &cfg.ack_header, Some("1"));
}

struct Root {
    id: u32,
    plugin: Option<Rc<Plugin>>,
    engine: Option<Rc<RefCell<Engine>>>,
    shares: [GaugeShare; 2],
    /// Envoy asked this root context to finish (its configuration was replaced or
    /// removed): flush what is pending and report `done` once the shim has it all.
    draining: bool,
}

impl Root {
    fn new(id: u32) -> Self {
        Self {
            id,
            plugin: None,
            engine: None,
            shares: [GaugeShare::default(); 2],
            draining: false,
        }
    }

    fn is_idle(&self) -> bool {
        self.engine
            .as_ref()
            .is_none_or(|e| e.try_borrow().is_ok_and(|e| e.is_idle()))
    }

    /// While draining: everything pending is due at once (retries still back off), and
    /// the context reports `done` once nothing is pending or in flight.
    fn drain_step(&mut self) {
        if !self.draining {
            return;
        }
        if let Some(Ok(mut e)) = self.engine.as_ref().map(|e| e.try_borrow_mut()) {
            e.flush();
        }
        if self.is_idle() {
            self.draining = false;
            let _ = hc::done();
        }
    }

    fn configure(&mut self) -> Result<(), String> {
        let bytes = hc::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .map_err(|s| format!("cannot read the plugin configuration: {s:?}"))?
            .unwrap_or_default();
        let cfg = Config::parse(&bytes).map_err(|e| e.to_string())?;
        let node_ns = match cfg.namespace_policy {
            NamespacePolicy::Node => {
                let v = node_property(&["metadata", &cfg.node_namespace_key]);
                let ns = v.as_deref().and_then(node_namespace);
                if ns.is_none() {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "namespace_policy is node but node metadata {} holds no valid namespace; registrations will be denied",
                            cfg.node_namespace_key
                        ),
                    );
                }
                ns
            }
            _ => None,
        };
        let source = match &cfg.source {
            Some(s) => s.clone(),
            None => node_property(&["id"])
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "envoy".to_owned()),
        };
        // Batch ids must be unique per sender: each worker VM adds the nanosecond it was
        // configured at.
        let nanos = hc::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let source = format!("{source}/{nanos:x}-{}", self.id);
        let engine = Engine::new(
            cfg.debounce.clone(),
            cfg.ack_mode,
            cfg.durable_timeout,
            source,
        );
        hc::set_tick_period(cfg.tick).map_err(|s| format!("cannot set the tick period: {s:?}"))?;
        log(
            LogLevel::Info,
            &format!(
                "configured: {} paths, namespace_policy {:?}, on_mismatch {:?}, ack_mode {:?}, shim cluster {}",
                cfg.paths.len(),
                cfg.namespace_policy,
                cfg.on_mismatch,
                cfg.ack_mode,
                cfg.shim_cluster
            ),
        );
        self.plugin = Some(Rc::new(Plugin {
            cfg,
            metrics: Metrics::define(),
            node_ns,
        }));
        if self.is_idle() {
            self.engine = Some(Rc::new(RefCell::new(engine)));
        } else {
            log(
                LogLevel::Warn,
                "reconfigured while mappings are pending: they keep the previous debounce settings",
            );
        }
        Ok(())
    }

    /// Expires held replies, sends due batches, updates gauges.
    fn drive(&mut self) {
        let (Some(plugin), Some(engine)) = (self.plugin.clone(), self.engine.clone()) else {
            return;
        };
        let now = now();
        let expired = match engine.try_borrow_mut() {
            Ok(mut e) => e.expired(now),
            Err(_) => return,
        };
        // Send batches first: a callout must belong to the root context, not to a stream
        // made effective below.
        self.send_due(&plugin, &engine, now);
        let mut switched = false;
        for ctx in expired {
            if hc::set_effective_context(ctx).is_ok() {
                switched = true;
                let r = Rejection::new(
                    Code::Unavailable,
                    Reason::NotAcknowledged,
                    "the mapping was not yet acknowledged by the shim; it stays pending and will be delivered",
                );
                reply_rejection(&plugin, &r);
            }
        }
        if switched {
            let _ = hc::set_effective_context(self.id);
        }
        self.update_gauges(&plugin, &engine);
    }

    fn send_due(&mut self, plugin: &Plugin, engine: &RefCell<Engine>, now: Instant) {
        let cfg = &plugin.cfg;
        let bearer = cfg.auth_token.as_ref().map(|t| format!("Bearer {t}"));
        loop {
            let Ok(mut e) = engine.try_borrow_mut() else {
                return;
            };
            let Some(batch) = e.next_batch(now) else {
                return;
            };
            let mut metadata: Vec<(&str, &[u8])> = Vec::new();
            if let Some(b) = &bearer {
                metadata.push(("authorization", b.as_bytes()));
            }
            match hc::dispatch_grpc_call(
                &cfg.shim_cluster,
                SERVICE,
                METHOD,
                metadata,
                Some(&batch.payload),
                cfg.push_timeout,
            ) {
                Ok(token) => {
                    e.sent(token, batch.id);
                    plugin.metrics.inc(Counter::BatchesSent);
                    log(
                        LogLevel::Debug,
                        &format!(
                            "sent batch {} ({} keys, {} mappings)",
                            batch.label, batch.keys, batch.entries
                        ),
                    );
                }
                Err(s) => {
                    e.send_failed(now, batch.id);
                    plugin.metrics.inc(Counter::BatchesFailed);
                    log(
                        LogLevel::Warn,
                        &format!(
                            "cannot send batch {} to cluster {}: {s:?}; will retry",
                            batch.label, cfg.shim_cluster
                        ),
                    );
                }
            }
        }
    }

    fn update_gauges(&mut self, plugin: &Plugin, engine: &RefCell<Engine>) {
        let Ok(e) = engine.try_borrow() else { return };
        let values = [e.pending_keys() as u64, e.held() as u64];
        drop(e);
        for (i, g) in Gauge::ALL.iter().enumerate() {
            if let (Some(share), Some(v)) = (self.shares.get_mut(i), values.get(i)) {
                plugin.metrics.gauge_delta(*g, share.update(*v));
            }
        }
    }
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, _response_size: usize) {
        let (Some(plugin), Some(engine)) = (self.plugin.clone(), self.engine.clone()) else {
            return;
        };
        let now = now();
        let done = match engine.try_borrow_mut() {
            Ok(mut e) => e.completed(now, token_id, status_code == 0),
            Err(_) => None,
        };
        let Some(done) = done else { return };
        if done.ok {
            plugin.metrics.inc(Counter::BatchesAcked);
            plugin
                .metrics
                .add(Counter::MappingsAcked, done.acked_entries as u64);
        } else {
            plugin.metrics.inc(Counter::BatchesFailed);
            log(
                LogLevel::Warn,
                &format!(
                    "batch to {} failed with gRPC status {status_code}; merged back for a retry",
                    plugin.cfg.shim_cluster
                ),
            );
        }
        // More may be due at once (a capped batch's rest, registrations that came in
        // while this one was in flight): send before switching to held streams.
        self.send_due(&plugin, &engine, now);
        let mut switched = false;
        for ctx in done.released {
            if hc::set_effective_context(ctx).is_ok() {
                switched = true;
                mark_for_ack(&plugin.cfg);
                let _ = hc::resume_http_request();
                plugin.metrics.inc(Counter::RegistrationsOk);
            }
        }
        if switched {
            let _ = hc::set_effective_context(self.id);
        }
        self.update_gauges(&plugin, &engine);
        self.drain_step();
    }

    fn on_done(&mut self) -> bool {
        if self.is_idle() {
            return true;
        }
        log(
            LogLevel::Info,
            "stopping: flushing pending mappings to the shim first",
        );
        self.draining = true;
        self.drain_step();
        self.drive();
        false
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match self.configure() {
            Ok(()) => true,
            Err(e) => {
                log(LogLevel::Error, &e);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.drain_step();
        self.drive();
        self.drain_step();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            id: context_id,
            plugin: self.plugin.clone(),
            engine: self.engine.clone(),
            phase: Phase::Pass,
            buffered: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Debug, Clone)]
enum Phase {
    /// Not a registration call (or not configured): untouched.
    Pass,
    /// Headers held, body being buffered.
    Reading {
        flavour: Flavour,
        caller: Option<String>,
    },
    /// Durable mode: headers and body held until the root context releases or expires us.
    Held { flavour: Flavour },
    /// Sent to the ack route; the response is rewritten if it carries the ack marker.
    Forwarded { flavour: Flavour },
    /// Rewriting the ack listener's response body.
    Rewriting { flavour: Flavour },
    /// Answered or finished; nothing more to do.
    Done,
}

struct Stream {
    id: u32,
    plugin: Option<Rc<Plugin>>,
    engine: Option<Rc<RefCell<Engine>>>,
    phase: Phase,
    buffered: usize,
}

impl Stream {
    fn reject(&mut self, plugin: &Plugin, r: &Rejection) -> Action {
        reply_rejection(plugin, r);
        self.phase = Phase::Done;
        Action::Pause
    }

    /// Validates, enforces, queues, and answers or holds the call.
    fn finish(&mut self, body: &[u8]) -> Action {
        let (Some(plugin), Some(engine)) = (self.plugin.clone(), self.engine.clone()) else {
            return Action::Continue;
        };
        let Phase::Reading { flavour, caller } = core::mem::replace(&mut self.phase, Phase::Done)
        else {
            return Action::Continue;
        };
        let cfg = &plugin.cfg;
        let mut reg = match decode_body(body, cfg.max_body_bytes, &cfg.limits) {
            Ok(r) => r,
            Err(r) => return self.reject(&plugin, &r),
        };
        let caller = match cfg.namespace_policy {
            NamespacePolicy::Node => plugin.node_ns.as_deref(),
            _ => caller.as_deref(),
        };
        match enforce(cfg.namespace_policy, cfg.on_mismatch, caller, &mut reg) {
            Ok(Enforced::Unchanged) => {}
            Ok(Enforced::Rewritten { from }) => {
                plugin.metrics.inc(Counter::RegistrationsRewritten);
                log(
                    LogLevel::Info,
                    &format!(
                        "namespace {from:?} of application {:?} rewritten to the caller's {:?}",
                        reg.application, reg.namespace
                    ),
                );
            }
            Err(r) => return self.reject(&plugin, &r),
        }
        let accepted = match engine.try_borrow_mut() {
            Ok(mut e) => e.offer(now(), self.id, &reg),
            Err(_) => Err(Rejection::new(
                Code::ResourceExhausted,
                Reason::PendingFull,
                "the filter is busy; retry",
            )),
        };
        match accepted {
            Ok(Accepted::Reply) => {
                plugin.metrics.inc(Counter::RegistrationsOk);
                mark_for_ack(cfg);
                self.phase = Phase::Forwarded { flavour };
                Action::Continue
            }
            Ok(Accepted::Hold) => {
                plugin.metrics.inc(Counter::RegistrationsHeld);
                self.phase = Phase::Held { flavour };
                Action::Pause
            }
            Err(r) => self.reject(&plugin, &r),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let (Phase::Held { .. }, Some(engine)) = (&self.phase, &self.engine) {
            if let Ok(mut e) = engine.try_borrow_mut() {
                e.forget(self.id);
            }
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(plugin) = self.plugin.clone() else {
            return Action::Continue;
        };
        let Some(path) = request_header(":path") else {
            return Action::Continue;
        };
        let Some(flavour) = plugin.cfg.flavour_for(&path) else {
            return Action::Continue;
        };
        // Everything needed later is read now: request headers can't be read afterwards.
        let headers = RequestHeaders {
            method: request_header(":method"),
            content_type: request_header("content-type"),
            grpc_encoding: request_header("grpc-encoding"),
            content_length: request_header("content-length"),
        };
        if let Err(r) = check_headers(&headers, plugin.cfg.max_body_bytes) {
            return self.reject(&plugin, &r);
        }
        let caller = match plugin.cfg.namespace_policy {
            NamespacePolicy::Peer => {
                hc::get_property(vec!["connection", "uri_san_peer_certificate"])
                    .ok()
                    .flatten()
                    .and_then(|uri| spiffe_namespace(&uri).map(str::to_owned))
            }
            _ => None,
        };
        self.phase = Phase::Reading { flavour, caller };
        if end_of_stream {
            return self.finish(&[]);
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !matches!(self.phase, Phase::Reading { .. }) {
            return match self.phase {
                Phase::Held { .. } | Phase::Done => Action::Pause,
                _ => Action::Continue,
            };
        }
        let Some(plugin) = self.plugin.clone() else {
            return Action::Continue;
        };
        self.buffered = body_size;
        let prefix = hc::get_buffer(BufferType::HttpRequestBody, 0, 5)
            .ok()
            .flatten()
            .unwrap_or_default();
        if let Err(r) = check_prefix(&prefix, body_size, plugin.cfg.max_body_bytes) {
            return self.reject(&plugin, &r);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = hc::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.finish(&body)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.phase {
            Phase::Reading { .. } => {
                let body = hc::get_buffer(BufferType::HttpRequestBody, 0, self.buffered)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                self.finish(&body)
            }
            Phase::Held { .. } | Phase::Done => Action::Pause,
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let flavour = match self.phase {
            Phase::Forwarded { flavour } | Phase::Held { flavour } => flavour,
            _ => return Action::Continue,
        };
        let Some(plugin) = self.plugin.clone() else {
            return Action::Continue;
        };
        let marker = &plugin.cfg.ack_response_header;
        let from_ack_listener = hc::get_map_value_bytes(MapType::HttpResponseHeaders, marker)
            .ok()
            .flatten()
            .is_some();
        if !from_ack_listener {
            // A local reply (timeout, no route ...) or someone else's answer: untouched.
            self.phase = Phase::Done;
            return Action::Continue;
        }
        let _ = hc::remove_map_value(MapType::HttpResponseHeaders, marker);
        let _ = hc::remove_map_value(MapType::HttpResponseHeaders, "content-length");
        let _ = hc::set_map_value(
            MapType::HttpResponseHeaders,
            "content-type",
            Some("application/grpc"),
        );
        if end_of_stream {
            // The ack listener always sends a body; without one, a trailers-only OK is all
            // that can be said.
            let _ = hc::set_map_value(MapType::HttpResponseHeaders, "grpc-status", Some("0"));
            self.phase = Phase::Done;
            return Action::Continue;
        }
        self.phase = Phase::Rewriting { flavour };
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Phase::Rewriting { flavour } = self.phase else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let _ = hc::set_buffer(
            BufferType::HttpResponseBody,
            0,
            body_size,
            &flavour.ok_response_frame(),
        );
        let _ = hc::add_map_value(MapType::HttpResponseTrailers, "grpc-status", "0");
        self.phase = Phase::Done;
        Action::Continue
    }
}
