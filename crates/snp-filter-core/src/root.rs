//! The root context: configuration, the tick that sends due batches and expires held
//! replies, batch completions that release held streams, and the drain when Envoy stops
//! the plugin.
//!
//! One root context runs per plugin configuration and Envoy worker (one VM per worker), so
//! each worker has its own [`Engine`]. Streams share it (`Worker`). With the shared outbox
//! ([`crate::shared`]) only the lease holder sends: the others' batches are "handed" (their
//! mappings went to the outbox when answered) and complete once the outbox shows them
//! stored or parked.

use core::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use prost::Message;
use snp_core::debounce::Offered;
use snp_core::{Instant, MappingKey};
use snp_proto::api::mapping_result::Status as ResultStatus;
use snp_proto::api::{Mapping, MappingResult, PushMappingsRequest, PushMappingsResponse};

use crate::clock::MonoClock;
use crate::config::{Config, NamespacePolicy, SHIM_ACK_TIMEOUT_MS};
use crate::engine::{Completed, Engine};
use crate::host::{GrpcCall, Host, LogLevel};
use crate::metrics::{Counter, Gauge, GaugeShare, Metrics};
use crate::policy::node_namespace;
use crate::request::{Code, Reason, Rejection};
use crate::shared::{shard_of, LeaseState, Outbox, ParkedKey, Shard, SHARDS};
use crate::stream::{mark_for_ack, reply_rejection, Stream};

/// The shim's batch API.
pub const PUSH_SERVICE: &str = "snp.v1.MappingService";
/// Its method.
pub const PUSH_METHOD: &str = "PushMappings";

/// What every context of one configuration shares. Immutable once configured.
#[derive(Debug)]
pub(crate) struct Plugin {
    pub(crate) cfg: Config,
    pub(crate) metrics: Metrics,
    /// The caller's namespace from node metadata (policy `node`).
    pub(crate) node_ns: Option<String>,
    /// `authorization` of every batch: from `auth_token`, or the VM's `auth_token_env`.
    pub(crate) bearer: Option<String>,
    /// The Envoy-wide outbox (`shared_batch`), if on.
    pub(crate) outbox: Option<Outbox>,
}

/// Tokens of batches handed to the shared outbox rather than sent: above any callout token
/// Envoy hands out.
const HANDED_TOKEN_BASE: u32 = 0x8000_0000;

/// This worker's part in the Envoy-wide outbox.
#[derive(Debug, Default)]
struct Relay {
    /// This worker holds the lease: it sends for the whole Envoy.
    sender: bool,
    /// Who this worker is in the lease (its batch source, unique per VM).
    holder: String,
    /// Batches of this worker not sent but handed over: their mappings went to the outbox
    /// when their calls were answered. Each completes once the sender has them stored (or
    /// the shim rejected them for good), as the outbox shows.
    handed: BTreeMap<u32, Vec<Mapping>>,
    next_token: u32,
    /// Version of each shard when the sender last took from it (unchanged: skipped).
    seen: [u32; SHARDS],
    /// Wall-clock ms before which the lease need not be looked at.
    lease_until: u64,
    /// The sender reads every shard at its next tick, flag or not (it just took the lease).
    retake: bool,
    /// Ticks as the sender.
    ticks: u64,
    /// The outbox's `settled` value when this worker last looked at its handed batches.
    settled: Option<Vec<u8>>,
    /// A batch was handed since: look at the shards whatever `settled` says.
    recheck: bool,
}

/// The sender reads every shard this often (ticks) even if no worker flagged an addition.
const FULL_READ_TICKS: u64 = 20;

/// One worker's engine and the monotonic clock it runs on, shared by the root context and
/// its streams.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) engine: RefCell<Engine>,
    clock: Cell<MonoClock>,
}

impl Worker {
    fn new(engine: Engine) -> Self {
        Self {
            engine: RefCell::new(engine),
            clock: Cell::new(MonoClock::default()),
        }
    }

    /// Monotonic milliseconds from the host's wall clock (see [`MonoClock`]).
    pub(crate) fn now(&self, host: &impl Host) -> Instant {
        let wall = u64::try_from(host.wall_clock_nanos() / 1_000_000).unwrap_or(u64::MAX);
        let mut clock = self.clock.get();
        let t = clock.at(wall);
        self.clock.set(clock);
        t
    }

    fn is_idle(&self) -> bool {
        self.engine.try_borrow().is_ok_and(|e| e.is_idle())
    }
}

/// A property of the Envoy node: `xds.node.<path>` (Envoy >= 1.3x), else the older
/// `node.<path>` (still what some builds, Istio's among them, expose).
fn node_property(host: &impl Host, path: &[&str]) -> Option<Vec<u8>> {
    let mut xds = vec!["xds", "node"];
    xds.extend_from_slice(path);
    let mut plain = vec!["node"];
    plain.extend_from_slice(path);
    host.property(&xds).or_else(|| host.property(&plain))
}

/// The root context of one plugin configuration on one worker.
pub struct Root<H: Host> {
    id: u32,
    host: Rc<H>,
    plugin: Option<Rc<Plugin>>,
    worker: Option<Rc<Worker>>,
    shares: [GaugeShare; 4],
    relay: Relay,
    /// Envoy asked this root context to finish (its configuration was replaced or
    /// removed, or Envoy is stopping): flush what is pending and report `done` once the
    /// shim has it all, or at this deadline.
    draining: Option<Instant>,
}

/// How long a stopping root context waits for its last batches: one push timeout, so a
/// batch sent at once can still be answered, then Envoy may go.
/// The `authorization` value of batches. A token from the VM's environment is read once per
/// configuration (Envoy fixes a VM's environment when it starts it). An unset or empty
/// variable means no token, not an error: one filter configuration serves sidecars, which
/// have none (the shim checks their batches by pod), and gateways, which do.
fn bearer_of(host: &impl Host, cfg: &Config) -> Result<Option<String>, String> {
    if let Some(t) = &cfg.auth_token {
        return Ok(Some(format!("Bearer {t}")));
    }
    let Some(name) = &cfg.auth_token_env else {
        return Ok(None);
    };
    let token = host.env(name);
    let token = token.as_deref().map(str::trim).unwrap_or_default();
    if token.is_empty() {
        host.log(
            LogLevel::Info,
            &format!(
                "auth_token_env {name} is unset or empty in the VM: batches are sent without a token"
            ),
        );
        return Ok(None);
    }
    if !crate::config::is_token(token) {
        return Err(format!(
            "invalid snp filter configuration: the environment variable {name} (auth_token_env) must hold printable ASCII"
        ));
    }
    Ok(Some(format!("Bearer {token}")))
}

fn drain_deadline(cfg: Option<&Config>) -> core::time::Duration {
    cfg.map_or(core::time::Duration::from_secs(5), |c| c.push_timeout)
}

/// How long Istio's pilot-agent drains a sidecar before it kills Envoy (SIGKILL, so
/// `on_done` never runs): its default `terminationDrainDuration`. What the filter holds is
/// delivered by its own timers within that window, or not at all.
pub const SIDECAR_DRAIN: core::time::Duration = core::time::Duration::from_secs(5);

/// Time kept in the drain window for the batch itself to be sent and answered.
const DRAIN_SLACK: core::time::Duration = core::time::Duration::from_secs(1);

/// The longest a fresh registration is held before its batch goes, when that leaves no
/// room for the batch within a sidecar's drain.
fn drain_risk(cfg: &Config) -> Option<core::time::Duration> {
    let d = &cfg.debounce;
    let hold = d.first_check.max(d.debounce_max) + cfg.tick;
    (d.enabled && hold + DRAIN_SLACK > SIDECAR_DRAIN).then_some(hold)
}

impl<H: Host> Root<H> {
    /// A root context, not yet configured: its streams pass everything through.
    pub fn new(id: u32, host: Rc<H>) -> Self {
        Self {
            id,
            host,
            plugin: None,
            worker: None,
            shares: [GaugeShare::default(); 4],
            relay: Relay::default(),
            draining: None,
        }
    }

    /// The filter of a new stream.
    pub fn create_stream(&self, id: u32) -> Stream<H> {
        Stream::new(
            id,
            Rc::clone(&self.host),
            self.plugin.clone(),
            self.worker.clone(),
        )
    }

    /// Reads and applies the plugin configuration; `false` (logged) refuses it.
    pub fn on_configure(&mut self) -> bool {
        match self.configure() {
            Ok(()) => true,
            Err(e) => {
                self.host.log(LogLevel::Error, &e);
                false
            }
        }
    }

    /// The periodic tick.
    pub fn on_tick(&mut self) {
        self.drain_step();
        self.lead();
        self.drive();
        self.resolve_handed();
        self.drain_step();
    }

    /// Envoy stops this root context (Envoy drains or stops, or the configuration is
    /// replaced). `true`: done now; `false`: draining, [`Host::done`] follows once nothing
    /// is pending or in flight, or after one push timeout.
    pub fn on_done(&mut self) -> bool {
        if self.is_idle() {
            self.release_lease();
            return true;
        }
        self.host.log(
            LogLevel::Info,
            "stopping: flushing pending mappings to the shim first",
        );
        let now = self.worker.as_ref().map(|w| w.now(&*self.host));
        let deadline = drain_deadline(self.plugin.as_ref().map(|p| &p.cfg));
        self.draining = Some(now.unwrap_or(Instant::ZERO) + deadline);
        // Another configuration's workers (a replaced configuration) take over at once.
        self.release_lease();
        // A stopping worker sends its own mappings, lease or not: what it handed over is
        // merged back and goes at once. One last attempt matters more than the backoff.
        self.reclaim(now.unwrap_or(Instant::ZERO));
        if let Some(Ok(mut e)) = self.worker.as_ref().map(|w| w.engine.try_borrow_mut()) {
            e.reset_backoff();
        }
        self.drain_step();
        self.drive();
        false
    }

    /// A batch callout finished with gRPC `status` (0: the shim answered) and a response
    /// message of `size` bytes (per-mapping results).
    pub fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let (Some(plugin), Some(worker)) = (self.plugin.clone(), self.worker.clone()) else {
            return;
        };
        let host = &*self.host;
        let now = worker.now(host);
        let body = if status == 0 && size > 0 {
            host.grpc_response_body(size).unwrap_or_default()
        } else {
            Vec::new()
        };
        let done = match worker.engine.try_borrow_mut() {
            Ok(mut e) => e.completed(now, token, status == 0, &body),
            Err(_) => None,
        };
        let Some(done) = done else { return };
        if let Some(outbox) = &plugin.outbox {
            // The shim has these now (or refused them for good): they leave the outbox.
            let rejected: Vec<(MappingKey, ParkedKey)> = done
                .rejected
                .iter()
                .map(|r| {
                    (
                        r.key.clone(),
                        ParkedKey {
                            reason: r.reason.clone(),
                            message: r.message.clone(),
                        },
                    )
                })
                .collect();
            let w = outbox.settle(host, &done.stored, &rejected);
            plugin
                .metrics
                .add(host, Counter::SharedConflicts, w.conflicts as u64);
        }
        self.apply(&plugin, &worker, now, done, Some(status));
        // Workers' handed batches the sender just completed, including its own.
        self.resolve_handed();
    }

    /// Acts on a completed batch: counts it (`status`: a real callout's gRPC status;
    /// `None`: a handed batch, counted by the sender), sends what is due, answers held
    /// streams.
    fn apply(
        &mut self,
        plugin: &Rc<Plugin>,
        worker: &Rc<Worker>,
        now: Instant,
        done: Completed,
        status: Option<u32>,
    ) {
        let host = &*Rc::clone(&self.host);
        if let Some(status) = status {
            self.count(plugin, &done, status);
        }
        // More may be due at once (a capped batch's rest, registrations that came in
        // while this one was in flight): send before switching to held streams.
        self.send_due(plugin, worker, now);
        let mut switched = false;
        for ctx in done.released {
            if host.set_effective_context(ctx) {
                switched = true;
                mark_for_ack(host, &plugin.cfg);
                host.resume_request();
                plugin.metrics.inc(host, Counter::RegistrationsOk);
            }
        }
        for (ctx, r) in &done.failed {
            if host.set_effective_context(*ctx) {
                switched = true;
                reply_rejection(host, plugin, r);
            }
        }
        if switched {
            host.set_effective_context(self.id);
        }
        self.update_gauges(plugin, worker);
        self.drain_step();
    }

    fn count(&self, plugin: &Plugin, done: &Completed, status: u32) {
        let host = &*self.host;
        for r in &done.rejected {
            plugin.metrics.inc(host, Counter::MappingsRejected);
            // Once per key: a parked key probed and refused again is only a debug line.
            let level = if r.first {
                LogLevel::Warn
            } else {
                LogLevel::Debug
            };
            host.log(
                level,
                &format!(
                    "the shim rejected mapping {} ({}): {}; dropped, not resent",
                    r.key, r.reason, r.message
                ),
            );
        }
        if done.ok {
            plugin.metrics.inc(host, Counter::BatchesAcked);
            plugin
                .metrics
                .add(host, Counter::MappingsAcked, done.acked_entries as u64);
        } else {
            plugin.metrics.inc(host, Counter::BatchesFailed);
            host.log(
                LogLevel::Warn,
                &format!(
                    "batch to {} failed with gRPC status {status}; merged back for a retry",
                    plugin.cfg.shim_cluster
                ),
            );
        }
    }

    fn is_idle(&self) -> bool {
        self.worker.as_ref().is_none_or(|w| w.is_idle())
    }

    /// While draining: everything pending is due at once, and the context reports `done`
    /// once nothing is pending or in flight, or at the deadline (what is left is logged).
    fn drain_step(&mut self) {
        let Some(deadline) = self.draining else {
            return;
        };
        if let Some(Ok(mut e)) = self.worker.as_ref().map(|w| w.engine.try_borrow_mut()) {
            e.flush();
        }
        let now = self.worker.as_ref().map(|w| w.now(&*self.host));
        let late = now.is_some_and(|n| n >= deadline);
        if late {
            let left = self
                .worker
                .as_ref()
                .and_then(|w| w.engine.try_borrow().ok().map(|e| e.pending_keys()))
                .unwrap_or(0);
            self.host.log(
                LogLevel::Warn,
                &format!(
                    "stopping: {left} keys not acknowledged by the shim before the drain deadline"
                ),
            );
        }
        if late || self.is_idle() {
            self.draining = None;
            self.release_lease();
            self.host.done();
        }
    }

    fn release_lease(&mut self) {
        if let (Some(outbox), true) = (
            self.plugin.as_ref().and_then(|p| p.outbox.as_ref()),
            self.relay.sender,
        ) {
            outbox.release(&*self.host, &self.relay.holder);
        }
        self.relay.sender = false;
    }

    /// Whether this worker sends its batches itself: without the shared outbox, as the
    /// lease holder, or while stopping.
    fn sends(&self, plugin: &Plugin) -> bool {
        plugin.outbox.is_none() || self.relay.sender || self.draining.is_some()
    }

    /// Takes or renews the lease; as the sender, takes what other workers added to the
    /// outbox into its own batches.
    fn lead(&mut self) {
        let (Some(plugin), Some(worker)) = (self.plugin.clone(), self.worker.clone()) else {
            return;
        };
        let Some(outbox) = &plugin.outbox else {
            return;
        };
        // A stopping worker gave the lease up and sends only its own mappings.
        if self.draining.is_some() {
            return;
        }
        let host = &*Rc::clone(&self.host);
        let now_ms = u64::try_from(host.wall_clock_nanos() / 1_000_000).unwrap_or(u64::MAX);
        let was = self.relay.sender;
        // The lease is looked at only when it may change hands: at renewal time for the
        // sender, when it may expire for the others.
        let state = if now_ms < self.relay.lease_until {
            None
        } else {
            Some(outbox.lease_step(host, &self.relay.holder, now_ms))
        };
        match state {
            None => {}
            Some(LeaseState::Held { taken, until }) => {
                self.relay.sender = true;
                self.relay.lease_until = until;
                if taken {
                    plugin.metrics.inc(host, Counter::SharedLeaseTaken);
                    host.log(
                        LogLevel::Info,
                        &format!(
                            "this worker ({}) now sends the batches of every worker of this Envoy",
                            self.relay.holder
                        ),
                    );
                }
            }
            Some(LeaseState::Other { until }) => {
                self.relay.sender = false;
                self.relay.lease_until = until;
            }
        }
        let now = worker.now(host);
        if !self.relay.sender {
            return;
        }
        let became = !was;
        if became {
            self.relay.seen = [0; SHARDS];
            self.relay.retake = true;
        }
        // The shards are read when a worker added something, when this worker just took the
        // lease, and once a lease period anyway.
        self.relay.ticks = self.relay.ticks.wrapping_add(1);
        let periodic = self.relay.ticks.is_multiple_of(FULL_READ_TICKS);
        let dirty = outbox.take_dirty(host);
        if !(dirty || periodic || core::mem::take(&mut self.relay.retake)) {
            return;
        }
        for i in 0..SHARDS {
            let Some((shard, cas)) = outbox.read(host, i) else {
                continue;
            };
            if cas == self.relay.seen.get(i).copied().unwrap_or(0) {
                continue;
            }
            let (taken, stale, full) = take_shard(&worker, now, &shard);
            if let Some(seen) = self.relay.seen.get_mut(i) {
                // What could not be taken (the engine is full) or removed is looked at
                // again with the next addition or the periodic read, not on every tick: a
                // full outbox during a shim outage must not be decoded 20 times a second.
                *seen = if full || !stale.is_empty() { 0 } else { cas };
            }
            plugin.metrics.add(host, Counter::SharedTaken, taken as u64);
            if !stale.is_empty() {
                let w = outbox.forget(host, i, &stale);
                plugin
                    .metrics
                    .add(host, Counter::SharedConflicts, w.conflicts as u64);
            }
        }
        if became {
            // After what the others left (the previous sender may have died with it in
            // flight): this worker's own handed mappings and all of that go at once, in one
            // batch.
            self.reclaim(now);
        }
    }

    /// This worker sends from now on: its handed batches are merged back into its pending
    /// set, and everything pending goes at the next poll.
    fn reclaim(&mut self, now: Instant) {
        if self.relay.handed.is_empty() {
            return;
        }
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Ok(mut e) = worker.engine.try_borrow_mut() else {
            return;
        };
        for token in core::mem::take(&mut self.relay.handed).into_keys() {
            let _ = e.completed(now, token, false, &[]);
        }
        e.reset_backoff();
    }

    /// Completes the handed batches whose every mapping has left the outbox: stored by the
    /// sender, or parked there after the shim rejected its key.
    fn resolve_handed(&mut self) {
        if self.relay.handed.is_empty() {
            return;
        }
        let (Some(plugin), Some(worker)) = (self.plugin.clone(), self.worker.clone()) else {
            return;
        };
        let Some(outbox) = &plugin.outbox else {
            return;
        };
        let host = &*Rc::clone(&self.host);
        // Only when mappings left the outbox since the last look, or a batch was handed.
        let settled = outbox.settled(host);
        if !core::mem::take(&mut self.relay.recheck) && settled == self.relay.settled {
            return;
        }
        self.relay.settled = settled;
        let mut shards: BTreeMap<usize, Option<Shard>> = BTreeMap::new();
        let mut resolved = Vec::new();
        for (token, mappings) in &self.relay.handed {
            let mut results = Vec::with_capacity(mappings.len());
            for m in mappings {
                let key = MappingKey::new(m.namespace.as_str(), m.interface_name.as_str());
                let i = shard_of(&key);
                let shard = shards
                    .entry(i)
                    .or_insert_with(|| outbox.read(host, i).map(|(s, _)| s));
                // A shard that cannot be read proves nothing: keep waiting, and look again.
                let Some(shard) = shard else {
                    self.relay.recheck = true;
                    break;
                };
                if let Some(p) = shard.parked(&key) {
                    results.push(MappingResult {
                        status: ResultStatus::Rejected as i32,
                        reason: p.reason.clone(),
                        message: p.message.clone(),
                    });
                } else if m.application_names.iter().any(|a| shard.holds(&key, a)) {
                    break;
                } else {
                    results.push(MappingResult {
                        status: ResultStatus::Stored as i32,
                        ..MappingResult::default()
                    });
                }
            }
            if results.len() == mappings.len() {
                let body = PushMappingsResponse {
                    results,
                    ..PushMappingsResponse::default()
                }
                .encode_to_vec();
                resolved.push((*token, body));
            }
        }
        if resolved.is_empty() {
            return;
        }
        let now = worker.now(host);
        for (token, body) in resolved {
            self.relay.handed.remove(&token);
            let done = match worker.engine.try_borrow_mut() {
                Ok(mut e) => e.completed(now, token, true, &body),
                Err(_) => None,
            };
            if let Some(done) = done {
                self.apply(&plugin, &worker, now, done, None);
            }
        }
    }

    fn configure(&mut self) -> Result<(), String> {
        let host = &*self.host;
        let bytes = host
            .plugin_configuration()
            .map_err(|s| format!("cannot read the plugin configuration: {s}"))?;
        let cfg = Config::parse(&bytes).map_err(|e| e.to_string())?;
        let node_ns = match cfg.namespace_policy {
            NamespacePolicy::Node => {
                let v = node_property(host, &["metadata", &cfg.node_namespace_key]);
                let ns = v.as_deref().and_then(node_namespace);
                if ns.is_none() {
                    host.log(
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
        let bearer = bearer_of(host, &cfg)?;
        let source = match &cfg.source {
            Some(s) => s.clone(),
            None => node_property(host, &["id"])
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "envoy".to_owned()),
        };
        // Batch ids must be unique per sender: each worker VM adds the nanosecond it was
        // configured at.
        let nanos = host.wall_clock_nanos();
        let mut source = format!("{source}/{nanos:x}-{}", self.id);
        let outbox = cfg.shared_batch.then(|| {
            let o = Outbox::new(
                u64::try_from(cfg.shared_lease.as_millis()).unwrap_or(u64::MAX),
                &cfg.debounce,
            );
            o.ensure(host);
            o
        });
        if let Some(o) = &outbox {
            if self.relay.holder.is_empty() {
                source = format!("{source}-w{}", o.register(host));
                self.relay.holder = source.clone();
            }
        }
        let mut engine = Engine::new(
            cfg.debounce.clone(),
            cfg.ack_mode,
            cfg.durable_timeout,
            source,
        );
        engine.set_max_push_bytes(cfg.max_push_bytes);
        engine.set_max_push_apps_per_key(cfg.max_push_apps_per_key);
        if cfg.push_timeout <= core::time::Duration::from_millis(SHIM_ACK_TIMEOUT_MS) {
            host.log(
                LogLevel::Warn,
                &format!(
                    "push_timeout_ms {} is not above the shim's default --ack-timeout (4 s): the filter may give up before the shim answers, unless the shim's --ack-timeout is lower",
                    cfg.push_timeout.as_millis()
                ),
            );
        }
        if let Some(hold) = drain_risk(&cfg) {
            host.log(
                LogLevel::Warn,
                &format!(
                    "the debounce windows hold a registration up to {} ms: a sidecar is drained for {} s (Istio's default terminationDrainDuration) and then killed without on_done, so mappings still held then are lost; keep first_check_ms and debounce_max_ms below {} ms, or use ack_mode durable",
                    hold.as_millis(),
                    SIDECAR_DRAIN.as_secs(),
                    (SIDECAR_DRAIN - DRAIN_SLACK).as_millis()
                ),
            );
        }
        host.set_tick_period(cfg.tick)
            .map_err(|s| format!("cannot set the tick period: {s}"))?;
        host.log(
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
            metrics: Metrics::define(host),
            node_ns,
            bearer,
            outbox,
        }));
        if !self.is_idle() {
            host.log(
                LogLevel::Warn,
                "reconfigured while mappings are pending: they keep the previous debounce settings",
            );
            return Ok(());
        }
        // Replaced in place, so that streams created before still reach the engine this
        // root context drives.
        let mut engine = Some(engine);
        if let Some(Ok(mut e)) = self.worker.as_ref().map(|w| w.engine.try_borrow_mut()) {
            if let Some(new) = engine.take() {
                *e = new;
            }
        }
        if let Some(new) = engine {
            self.worker = Some(Rc::new(Worker::new(new)));
        }
        // The lease is taken on the tick, not here: Envoy also configures the plugin in VMs
        // on its main thread, which never tick and would hold the lease for nothing.
        Ok(())
    }

    /// Expires held replies, sends due batches, updates gauges.
    fn drive(&mut self) {
        let (Some(plugin), Some(worker)) = (self.plugin.clone(), self.worker.clone()) else {
            return;
        };
        let host = &*Rc::clone(&self.host);
        let now = worker.now(host);
        let expired = match worker.engine.try_borrow_mut() {
            Ok(mut e) => e.expired(now),
            Err(_) => return,
        };
        // Send batches first: a callout must belong to the root context, not to a stream
        // made effective below.
        self.send_due(&plugin, &worker, now);
        let mut switched = false;
        for ctx in expired {
            if host.set_effective_context(ctx) {
                switched = true;
                let r = Rejection::new(
                    Code::Unavailable,
                    Reason::NotAcknowledged,
                    "the mapping was not yet acknowledged by the shim; it stays pending and will be delivered",
                );
                reply_rejection(host, &plugin, &r);
            }
        }
        if switched {
            host.set_effective_context(self.id);
        }
        self.update_gauges(&plugin, &worker);
    }

    fn send_due(&mut self, plugin: &Plugin, worker: &Worker, now: Instant) {
        let host = &*Rc::clone(&self.host);
        let cfg = &plugin.cfg;
        let bearer = plugin.bearer.as_deref();
        let sends = self.sends(plugin);
        loop {
            let Ok(mut e) = worker.engine.try_borrow_mut() else {
                return;
            };
            let Some(batch) = e.next_batch(now) else {
                return;
            };
            if !sends {
                // Its mappings are in the outbox already: the sender sends them.
                let mappings = PushMappingsRequest::decode(batch.payload.as_slice())
                    .map(|r| r.mappings)
                    .unwrap_or_default();
                self.relay.next_token = self.relay.next_token.wrapping_add(1);
                let token = HANDED_TOKEN_BASE | (self.relay.next_token & !HANDED_TOKEN_BASE);
                e.sent(token, batch);
                self.relay.handed.insert(token, mappings);
                self.relay.recheck = true;
                continue;
            }
            let mut metadata: Vec<(&str, &[u8])> = Vec::new();
            if let Some(b) = bearer {
                metadata.push(("authorization", b.as_bytes()));
            }
            let call = GrpcCall {
                cluster: &cfg.shim_cluster,
                service: PUSH_SERVICE,
                method: PUSH_METHOD,
                metadata,
                message: &batch.payload,
                timeout: cfg.push_timeout,
            };
            match host.dispatch_grpc_call(&call) {
                Ok(token) => {
                    plugin.metrics.inc(host, Counter::BatchesSent);
                    host.log(
                        LogLevel::Debug,
                        &format!(
                            "sent batch {} ({} keys, {} mappings)",
                            batch.label, batch.keys, batch.entries
                        ),
                    );
                    e.sent(token, batch);
                }
                Err(s) => {
                    plugin.metrics.inc(host, Counter::BatchesFailed);
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "cannot send batch {} to cluster {}: {s}; will retry",
                            batch.label, cfg.shim_cluster
                        ),
                    );
                    e.send_failed(now, batch);
                }
            }
        }
    }

    fn update_gauges(&mut self, plugin: &Plugin, worker: &Worker) {
        let Ok(e) = worker.engine.try_borrow() else {
            return;
        };
        // With the shared outbox, the sender's engine holds every worker's pending and
        // parked keys: the others' copies are not counted again.
        let whole = plugin.outbox.is_none() || self.relay.sender;
        let values = [
            if whole { e.pending_keys() as u64 } else { 0 },
            e.held() as u64,
            if whole { e.parked_keys() as u64 } else { 0 },
            u64::from(self.relay.sender),
        ];
        drop(e);
        for (i, g) in Gauge::ALL.iter().enumerate() {
            if let (Some(share), Some(v)) = (self.shares.get_mut(i), values.get(i)) {
                plugin
                    .metrics
                    .gauge_delta(&*self.host, *g, share.update(*v));
            }
        }
    }
}

/// Takes a shard's mappings into the sender's engine: how many were new to it, the pairs
/// to remove from the outbox (acknowledged already, or joined to a parked key), and
/// whether the engine was full.
fn take_shard(
    worker: &Worker,
    now: Instant,
    shard: &Shard,
) -> (usize, Vec<(MappingKey, String)>, bool) {
    let mut taken = 0;
    let mut stale = Vec::new();
    let Ok(mut e) = worker.engine.try_borrow_mut() else {
        return (0, stale, true);
    };
    let mut full = false;
    for (k, apps) in &shard.pending {
        for a in apps {
            match e.take(now, k, a) {
                Ok(Offered::Pending) => taken += 1,
                Ok(Offered::Acknowledged | Offered::Parked) => stale.push((k.clone(), a.clone())),
                Ok(Offered::InFlight) => {}
                Err(_) => full = true,
            }
        }
    }
    (taken, stale, full)
}
