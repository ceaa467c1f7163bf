//! The per-stream state machine and the response rewriting.
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
//! ```text
//! Pass ── registration path ──> Reading ── invalid / denied / full ──> Done (local reply)
//!                                  │
//!                                  ├── accepted (immediate) ──> Forwarded ──┐
//!                                  └── accepted (durable) ──> Held ─────────┤ released by the root
//!                                                                            v
//!                              response from the ack listener ──> Rewriting ──> Done
//! ```
//!
//! Request headers are read only in [`Stream::on_request_headers`]: a later read panics the
//! SDK, so everything needed later is read there once.

use std::rc::Rc;

use snp_proto::Flavour;

use crate::config::{Config, NamespacePolicy};
use crate::engine::Accepted;
use crate::host::{Action, Buffer, Host, LogLevel, Map};
use crate::metrics::Counter;
use crate::policy::{enforce, spiffe_namespace, Enforced};
use crate::request::{
    check_headers, check_prefix, decode_body, Code, Reason, Rejection, RequestHeaders,
};
use crate::root::{Plugin, Worker};

/// Where a stream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not a registration call (or not configured): untouched.
    Pass,
    /// Headers held, body being buffered.
    Reading {
        /// The intercepted path's flavour.
        flavour: Flavour,
        /// The caller's namespace from the peer certificate (policy `peer`).
        caller: Option<String>,
    },
    /// Durable mode: headers and body held until the root context releases or expires us.
    Held {
        /// The call's flavour.
        flavour: Flavour,
    },
    /// Sent to the ack route; the response is rewritten if it carries the ack marker.
    Forwarded {
        /// The call's flavour.
        flavour: Flavour,
    },
    /// Rewriting the ack listener's response body.
    Rewriting {
        /// The call's flavour.
        flavour: Flavour,
    },
    /// Answered or finished; nothing more to do.
    Done,
}

/// Answers the effective stream with a local reply, and counts it.
pub(crate) fn reply_rejection(host: &impl Host, plugin: &Plugin, r: &Rejection) {
    plugin.metrics.rejected(host, r);
    if r.reason == Reason::NotGrpc {
        // Not a gRPC request: an HTTP answer, as the gRPC spec asks (415).
        host.send_http_reply(415, &[("content-type", "text/plain")], r.message.as_bytes());
    } else {
        host.send_grpc_reply(r.code, &r.message);
    }
}

/// Routes the effective stream, whose request headers are held, to the ack listener: the
/// filter-state property [`ACK_PROPERTY`] selects the route (a client cannot set filter
/// state, unlike a header), the content type makes the internal listener answer as plain
/// HTTP. Changing a header also makes Envoy recompute the route, so the property is set
/// first. A client-sent `ack_header` is removed: it selects nothing any more, and nothing
/// downstream should see it.
pub(crate) fn mark_for_ack(host: &impl Host, cfg: &Config) {
    host.set_property(&[ACK_PROPERTY], b"1");
    host.remove_header(Map::RequestHeaders, &cfg.ack_header);
    host.set_header(
        Map::RequestHeaders,
        "content-type",
        "application/octet-stream",
    );
}

/// The property whose filter state (`wasm.snp_ack`, value `1`) the ack routes match.
pub const ACK_PROPERTY: &str = "snp_ack";

/// The filter of one HTTP stream.
pub struct Stream<H: Host> {
    id: u32,
    host: Rc<H>,
    plugin: Option<Rc<Plugin>>,
    worker: Option<Rc<Worker>>,
    phase: Phase,
    buffered: usize,
}

impl<H: Host> Stream<H> {
    pub(crate) fn new(
        id: u32,
        host: Rc<H>,
        plugin: Option<Rc<Plugin>>,
        worker: Option<Rc<Worker>>,
    ) -> Self {
        Self {
            id,
            host,
            plugin,
            worker,
            phase: Phase::Pass,
            buffered: 0,
        }
    }

    /// Where the stream is.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    fn reject(&mut self, plugin: &Plugin, r: &Rejection) -> Action {
        reply_rejection(&*self.host, plugin, r);
        self.phase = Phase::Done;
        Action::Pause
    }

    /// Validates, enforces, queues, and answers or holds the call.
    fn finish(&mut self, body: &[u8]) -> Action {
        let (Some(plugin), Some(worker)) = (self.plugin.clone(), self.worker.clone()) else {
            return Action::Continue;
        };
        let Phase::Reading { flavour, caller } = core::mem::replace(&mut self.phase, Phase::Done)
        else {
            return Action::Continue;
        };
        let host = &*self.host;
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
                plugin.metrics.inc(host, Counter::RegistrationsRewritten);
                host.log(
                    LogLevel::Info,
                    &format!(
                        "namespace {from:?} of application {:?} rewritten to the caller's {:?}",
                        reg.application, reg.namespace
                    ),
                );
            }
            Err(r) => return self.reject(&plugin, &r),
        }
        let now = worker.now(host);
        if let Some(outbox) = &plugin.outbox {
            // A mapping this worker has not seen goes to the Envoy-wide outbox before the
            // call is answered: host-side, it outlives this VM. Repeats cost nothing here.
            let fresh = worker
                .engine
                .try_borrow()
                .map(|e| e.fresh_keys(now, &reg))
                .unwrap_or_default();
            if !fresh.is_empty() {
                match outbox.hand(host, &fresh, &reg.application) {
                    Ok(w) => {
                        plugin
                            .metrics
                            .add(host, Counter::SharedHanded, w.pairs as u64);
                        plugin
                            .metrics
                            .add(host, Counter::SharedConflicts, w.conflicts as u64);
                    }
                    Err(r) => return self.reject(&plugin, &r),
                }
            }
        }
        let accepted = match worker.engine.try_borrow_mut() {
            Ok(mut e) => e.offer(now, self.id, &reg),
            Err(_) => Err(Rejection::new(
                Code::ResourceExhausted,
                Reason::PendingFull,
                "the filter is busy; retry",
            )),
        };
        match accepted {
            Ok(Accepted::Reply) => {
                plugin.metrics.inc(host, Counter::RegistrationsOk);
                mark_for_ack(host, cfg);
                self.phase = Phase::Forwarded { flavour };
                Action::Continue
            }
            Ok(Accepted::Hold) => {
                plugin.metrics.inc(host, Counter::RegistrationsHeld);
                self.phase = Phase::Held { flavour };
                Action::Pause
            }
            Err(r) => self.reject(&plugin, &r),
        }
    }

    /// `on_http_request_headers`.
    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let Some(plugin) = self.plugin.clone() else {
            return Action::Continue;
        };
        let host = &*self.host;
        let Some(path) = host.header(Map::RequestHeaders, ":path") else {
            return Action::Continue;
        };
        let flavour = match plugin.cfg.classify(&path) {
            Ok(Some(f)) => f,
            Ok(None) => {
                plugin.metrics.inc(host, Counter::RequestsPassed);
                return Action::Continue;
            }
            Err(r) => return self.reject(&plugin, &r),
        };
        // Everything needed later is read now: request headers can't be read afterwards.
        let headers = RequestHeaders {
            method: host.header(Map::RequestHeaders, ":method"),
            content_type: host.header(Map::RequestHeaders, "content-type"),
            grpc_encoding: host.header(Map::RequestHeaders, "grpc-encoding"),
            content_length: host.header(Map::RequestHeaders, "content-length"),
            protocol: host.property(&["request", "protocol"]),
        };
        if let Err(r) = check_headers(&headers, plugin.cfg.max_body_bytes) {
            return self.reject(&plugin, &r);
        }
        let caller = match plugin.cfg.namespace_policy {
            NamespacePolicy::Peer => host
                .property(&["connection", "uri_san_peer_certificate"])
                .and_then(|uri| spiffe_namespace(&uri).map(str::to_owned)),
            _ => None,
        };
        self.phase = Phase::Reading { flavour, caller };
        if end_of_stream {
            return self.finish(&[]);
        }
        Action::Pause
    }

    /// `on_http_request_body`: `body_size` is the size buffered so far.
    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
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
        let prefix = self
            .host
            .body(Buffer::RequestBody, 0, 5)
            .unwrap_or_default();
        if let Err(r) = check_prefix(&prefix, body_size, plugin.cfg.max_body_bytes) {
            return self.reject(&plugin, &r);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self
            .host
            .body(Buffer::RequestBody, 0, body_size)
            .unwrap_or_default();
        self.finish(&body)
    }

    /// `on_http_request_trailers`: the body is complete.
    pub fn on_request_trailers(&mut self) -> Action {
        match self.phase {
            Phase::Reading { .. } => {
                let body = self
                    .host
                    .body(Buffer::RequestBody, 0, self.buffered)
                    .unwrap_or_default();
                self.finish(&body)
            }
            Phase::Held { .. } | Phase::Done => Action::Pause,
            _ => Action::Continue,
        }
    }

    /// `on_http_response_headers`: rewrites the ack listener's answer into a gRPC one.
    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        let flavour = match self.phase {
            Phase::Forwarded { flavour } | Phase::Held { flavour } => flavour,
            _ => return Action::Continue,
        };
        let Some(plugin) = self.plugin.clone() else {
            return Action::Continue;
        };
        let host = &*self.host;
        let marker = &plugin.cfg.ack_response_header;
        if host.header(Map::ResponseHeaders, marker).is_none() {
            // A local reply (timeout, no route ...) or someone else's answer: untouched.
            self.phase = Phase::Done;
            return Action::Continue;
        }
        host.remove_header(Map::ResponseHeaders, marker);
        host.remove_header(Map::ResponseHeaders, "content-length");
        host.set_header(Map::ResponseHeaders, "content-type", "application/grpc");
        if end_of_stream {
            // The ack listener always sends a body; without one, a trailers-only OK is all
            // that can be said.
            host.set_header(Map::ResponseHeaders, "grpc-status", "0");
            self.phase = Phase::Done;
            return Action::Continue;
        }
        self.phase = Phase::Rewriting { flavour };
        Action::Continue
    }

    /// `on_http_response_body`: at the end, the flavour's OK message and `grpc-status: 0`.
    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Phase::Rewriting { flavour } = self.phase else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let host = &*self.host;
        host.set_body(
            Buffer::ResponseBody,
            0,
            body_size,
            &flavour.ok_response_frame(),
        );
        host.add_header(Map::ResponseTrailers, "grpc-status", "0");
        self.phase = Phase::Done;
        Action::Continue
    }
}

impl<H: Host> Drop for Stream<H> {
    /// The stream is gone (finished, or reset by the client while held): stop holding a
    /// reply for it.
    fn drop(&mut self) {
        if let (Phase::Held { .. }, Some(worker)) = (&self.phase, &self.worker) {
            if let Ok(mut e) = worker.engine.try_borrow_mut() {
                e.forget(self.id);
            }
        }
    }
}
