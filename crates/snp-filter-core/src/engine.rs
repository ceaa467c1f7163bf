//! One worker's state, host-agnostic: the `snp-core` debouncer, the batches in flight to
//! the shim, and (durable mode) the replies held until the shim acknowledges them.
//!
//! Each [`crate::Root`] (one per plugin configuration and Envoy worker VM) owns one `Engine`
//! and drives it from `on_tick` and from callout completions; tests drive it on a virtual
//! clock.

use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use prost::Message;
use snp_core::debounce::{BatchId, KeyResult, Offered, Parked};
use snp_core::{
    DebounceConfig, Debouncer, Instant, MappingKey, Mappings, OfferError, Registration,
};
use snp_proto::api::mapping_result::Status as ResultStatus;
use snp_proto::api::{Mapping, PushMappingsRequest, PushMappingsResponse};

use crate::config::{AckMode, DEFAULT_PUSH_APPS_PER_KEY, SHIM_DEFAULT_MAX_APPS_PER_KEY};
use crate::request::{Code, Reason, Rejection};

/// What to do with an accepted registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Answer OK now.
    Reply,
    /// Durable mode: hold the reply until [`Engine`] releases or expires the stream.
    Hold,
}

/// A batch ready to send as `PushMappings`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The debouncer's id, for [`Engine::sent`] / [`Engine::send_failed`].
    pub id: BatchId,
    /// `batch_id` of the request: `<source>/<seq>`.
    pub label: String,
    /// The encoded `PushMappingsRequest` (unframed: the gRPC client frames it).
    pub payload: Vec<u8>,
    /// Keys in the batch.
    pub keys: usize,
    /// `(key, app)` pairs in the batch.
    pub entries: usize,
    /// The key of each mapping of the request, in request order (results come back in it).
    pub order: Vec<MappingKey>,
}

/// A mapping the shim rejected for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedKey {
    /// Which key.
    pub key: MappingKey,
    /// The shim's reason code.
    pub reason: String,
    /// The shim's message.
    pub message: String,
    /// First time this key was rejected since it was parked (log it once).
    pub first: bool,
}

/// The outcome of a completed batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completed {
    /// Whether the shim acknowledged it.
    pub ok: bool,
    /// Acknowledged `(key, app)` pairs (0 on failure).
    pub acked_entries: usize,
    /// Held streams whose every mapping is now acknowledged: answer them OK.
    pub released: Vec<u32>,
    /// Held streams with a mapping the shim rejected for good: answer them this.
    pub failed: Vec<(u32, Rejection)>,
    /// Mappings the shim rejected (dropped from the pending set, parked).
    pub rejected: Vec<RejectedKey>,
    /// Mappings the shim now holds (they leave the shared outbox).
    pub stored: Mappings,
}

#[derive(Debug, Clone)]
struct Waiter {
    pairs: Vec<(MappingKey, String)>,
    deadline: Instant,
}

/// One worker's debounce, batch and held-reply state.
#[derive(Debug)]
pub struct Engine {
    debouncer: Debouncer,
    ack_mode: AckMode,
    durable_timeout: Duration,
    source: String,
    seq: u64,
    /// Callout token -> batch, and its keys in request order.
    in_flight: BTreeMap<u32, (BatchId, Vec<MappingKey>)>,
    /// Held stream (context id) -> what it waits for.
    waiters: BTreeMap<u32, Waiter>,
    /// Largest request sent (the shim refuses larger ones): batches are split below it.
    max_push_bytes: usize,
    /// Most applications of one key in one request (the shim refuses a mapping with more
    /// than its `--max-apps-per-key`): a key with more goes in pieces.
    max_push_apps: usize,
    /// Parts of a split batch not yet handed out. A part waits while a part holding
    /// another piece of one of its keys is in flight.
    queue: VecDeque<Outgoing>,
    /// Batches handed out in parts, until every part is back.
    gathering: BTreeMap<BatchId, Gather>,
}

/// The shim's default `--max-message-bytes`: no request may be larger.
pub const SHIM_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Room kept in a request for its `batch_id` and `source` (each at most a few hundred
/// bytes) and their framing.
const REQUEST_SLACK: usize = 2048;

/// Encodes mappings as a `PushMappingsRequest`.
fn encode_request(label: &str, source: &str, mappings: Vec<Mapping>) -> Vec<u8> {
    PushMappingsRequest {
        batch_id: label.to_owned(),
        source: source.to_owned(),
        mappings,
        // Per-mapping results: a shim that knows them answers STORED, PENDING or REJECTED
        // for each, so one bad mapping never fails its batch.
        want_results: true,
    }
    .encode_to_vec()
}

/// Encodes a batch as one `PushMappingsRequest` (whatever its size).
pub fn encode_push(label: &str, source: &str, mappings: &Mappings) -> Vec<u8> {
    let list = mappings
        .iter()
        .map(|(k, apps)| Mapping {
            namespace: k.namespace.clone(),
            interface_name: k.interface.clone(),
            application_names: apps.as_slice().to_vec(),
        })
        .collect();
    encode_request(label, source, list)
}

/// A mapping's size inside the request: the message, its tag and its length.
fn framed_len(len: usize) -> usize {
    len + 1 + prost::encoding::encoded_len_varint(len as u64)
}

/// Splits a batch into requests of at most `budget` bytes of mappings each. A key's
/// applications are cut into pieces of at most `max_apps` applications (and `budget`
/// bytes); the shim merges by union, so the pieces add up to the whole. The first pieces of
/// all keys are packed into the first requests, the second pieces into the next ones, and
/// so on: a request never holds two pieces of one key.
fn split(mappings: &Mappings, budget: usize, max_apps: usize) -> Vec<Vec<Mapping>> {
    let max_apps = max_apps.max(1);
    let mut rounds: Vec<Vec<Mapping>> = Vec::new();
    let mut place = |round: usize, m: Mapping| {
        while rounds.len() <= round {
            rounds.push(Vec::new());
        }
        if let Some(r) = rounds.get_mut(round) {
            r.push(m);
        }
    };
    for (k, apps) in mappings.iter() {
        let empty = Mapping {
            namespace: k.namespace.clone(),
            interface_name: k.interface.clone(),
            application_names: Vec::new(),
        };
        let mut m = empty.clone();
        let mut len = empty.encoded_len();
        let mut round = 0;
        for app in apps.as_slice() {
            let add = framed_len(app.len());
            let full = m.application_names.len() >= max_apps || framed_len(len + add) > budget;
            if !m.application_names.is_empty() && full {
                place(round, core::mem::replace(&mut m, empty.clone()));
                round += 1;
                len = empty.encoded_len();
            }
            len += add;
            m.application_names.push(app.clone());
        }
        place(round, m);
    }
    let mut parts: Vec<Vec<Mapping>> = Vec::new();
    for round in rounds {
        let mut part: Vec<Mapping> = Vec::new();
        let mut size = 0usize;
        for m in round {
            let len = framed_len(m.encoded_len());
            if !part.is_empty() && size + len > budget {
                parts.push(core::mem::take(&mut part));
                size = 0;
            }
            size += len;
            part.push(m);
        }
        if !part.is_empty() {
            parts.push(part);
        }
    }
    parts
}

/// Keeps the worst outcome of a key sent in several parts.
fn merge_result(out: &mut BTreeMap<MappingKey, KeyResult>, key: &MappingKey, this: KeyResult) {
    let rank = |r: &KeyResult| match r {
        KeyResult::Stored => 0,
        KeyResult::Transient => 1,
        KeyResult::Permanent { .. } => 2,
    };
    match out.get(key) {
        Some(prev) if rank(prev) >= rank(&this) => {}
        _ => {
            out.insert(key.clone(), this);
        }
    }
}

/// The parts of a batch still out, and the results of those back.
#[derive(Debug, Default)]
struct Gather {
    left: usize,
    results: BTreeMap<MappingKey, KeyResult>,
}

fn offer_rejection(e: &OfferError) -> Rejection {
    Rejection::new(Code::ResourceExhausted, Reason::PendingFull, e.to_string())
}

/// Reasons the shim gives for a mapping it finds invalid (its validation, not its store's
/// refusal): those are not parked on the shim's side.
const INVALID_REASONS: [&str; 6] = [
    "invalid_utf8",
    "invalid_namespace",
    "empty_application",
    "invalid_application",
    "invalid_interface",
    "too_many_applications",
];

/// Longest message passed on from the shim: more than a parked key's (the key, at most
/// 63 + 1 + 1024 bytes, and the store's shortened error), which the shim sends whole.
const SHIM_MESSAGE_MAX: usize = 4096;

/// The answer to a caller whose mapping the shim rejected: FAILED_PRECONDITION, worded as
/// the shim words its own answer, so both doors say the same (not cut to the filter's own
/// 256-byte messages: a parked key's message names the whole interface).
pub fn rejected_status(reason: &str, message: &str) -> Rejection {
    let message = if INVALID_REASONS.contains(&reason) {
        format!("{message} (reason {reason})")
    } else {
        format!("{message} (reason {reason}; the shim retries it on a slow schedule; see /parked)")
    };
    Rejection {
        code: Code::FailedPrecondition,
        reason: Reason::StoreRejected,
        message: crate::request::ascii_message_within(&message, SHIM_MESSAGE_MAX),
    }
}

fn parked_rejection(p: &Parked) -> Rejection {
    rejected_status(&p.reason, &p.message)
}

/// The per-key results of a completed batch: from the shim's answer, or, from a shim that
/// sends none (older ones), the whole batch's status for every key.
fn key_results(order: &[MappingKey], ok: bool, body: &[u8]) -> BTreeMap<MappingKey, KeyResult> {
    let whole = if ok {
        KeyResult::Stored
    } else {
        KeyResult::Transient
    };
    let results = if ok {
        PushMappingsResponse::decode(body)
            .map(|r| r.results)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut out: BTreeMap<MappingKey, KeyResult> = BTreeMap::new();
    if results.len() != order.len() {
        for k in order {
            out.insert(k.clone(), whole.clone());
        }
        return out;
    }
    for (k, r) in order.iter().zip(results) {
        let this = match ResultStatus::try_from(r.status) {
            Ok(ResultStatus::Stored) => KeyResult::Stored,
            Ok(ResultStatus::Rejected) => KeyResult::Permanent {
                reason: if r.reason.is_empty() {
                    "rejected".to_owned()
                } else {
                    r.reason
                },
                message: r.message,
            },
            _ => KeyResult::Transient,
        };
        // A key sent in several parts takes its worst outcome.
        merge_result(&mut out, k, this);
    }
    out
}

impl Engine {
    /// A worker engine. `source` labels its batches.
    pub fn new(
        debounce: DebounceConfig,
        ack_mode: AckMode,
        durable_timeout: Duration,
        source: String,
    ) -> Self {
        Self {
            debouncer: Debouncer::new(debounce),
            ack_mode,
            durable_timeout,
            source,
            seq: 0,
            in_flight: BTreeMap::new(),
            waiters: BTreeMap::new(),
            max_push_bytes: SHIM_MAX_MESSAGE_BYTES,
            max_push_apps: DEFAULT_PUSH_APPS_PER_KEY,
            queue: VecDeque::new(),
            gathering: BTreeMap::new(),
        }
    }

    /// Caps each request at `bytes` (at most the shim's 4 MiB default; larger batches go
    /// in several requests).
    pub fn set_max_push_bytes(&mut self, bytes: usize) {
        self.max_push_bytes = bytes.clamp(REQUEST_SLACK * 2, SHIM_MAX_MESSAGE_BYTES);
    }

    /// Caps the applications of one key in one request at `apps` (at most the shim's
    /// default `--max-apps-per-key`; a key with more goes in pieces, one after another).
    pub fn set_max_push_apps_per_key(&mut self, apps: usize) {
        let cap = usize::try_from(SHIM_DEFAULT_MAX_APPS_PER_KEY).unwrap_or(usize::MAX);
        self.max_push_apps = apps.clamp(1, cap);
    }

    /// Queues a validated registration from stream `ctx`. All of its interfaces are
    /// accepted, or none (the call is then answered RESOURCE_EXHAUSTED).
    pub fn offer(
        &mut self,
        now: Instant,
        ctx: u32,
        reg: &Registration,
    ) -> Result<Accepted, Rejection> {
        // Mappings already acknowledged, or carried by a batch in flight, queue nothing
        // (the debouncer tells them apart); the rest join the pending set.
        let summary = self
            .debouncer
            .offer_all(now, &reg.namespace, &reg.application, &reg.interfaces)
            .map_err(|e| offer_rejection(&e))?;
        if summary.parked > 0 {
            // The shim refused one of these keys for good: say so at once, in either
            // mode, as the shim does (the application joins the parked key's probe).
            let parked = reg.interfaces.iter().find_map(|i| {
                self.debouncer
                    .parked(&MappingKey::new(reg.namespace.as_str(), i.as_str()))
            });
            if let Some(p) = parked {
                return Err(parked_rejection(p));
            }
        }
        if self.ack_mode == AckMode::Immediate {
            return Ok(Accepted::Reply);
        }
        let pairs: Vec<(MappingKey, String)> = reg
            .interfaces
            .iter()
            .map(|i| MappingKey::new(reg.namespace.as_str(), i.as_str()))
            .filter(|k| self.debouncer.is_pending(k, &reg.application))
            .map(|k| (k, reg.application.clone()))
            .collect();
        if pairs.is_empty() {
            return Ok(Accepted::Reply);
        }
        self.waiters.insert(
            ctx,
            Waiter {
                pairs,
                deadline: now + self.durable_timeout,
            },
        );
        Ok(Accepted::Hold)
    }

    /// The keys of `reg` whose mapping this worker has not seen: not acknowledged
    /// recently, not pending or in flight, not parked. Only those cost a write to the
    /// shared outbox; repeats are answered from this worker's memory.
    pub fn fresh_keys(&self, now: Instant, reg: &Registration) -> Vec<MappingKey> {
        reg.interfaces
            .iter()
            .map(|i| MappingKey::new(reg.namespace.as_str(), i.as_str()))
            .filter(|k| {
                !self.debouncer.is_pending(k, &reg.application)
                    && !self.debouncer.is_acknowledged(now, k, &reg.application)
                    && self.debouncer.parked(k).is_none()
            })
            .collect()
    }

    /// Takes `key <- app` from the shared outbox into this (sending) worker's batches.
    /// Only a pair not already pending here starts or extends a burst.
    pub fn take(
        &mut self,
        now: Instant,
        key: &MappingKey,
        app: &str,
    ) -> Result<Offered, OfferError> {
        if self.debouncer.is_pending(key, app) {
            return Ok(Offered::InFlight);
        }
        self.debouncer
            .offer(now, &key.namespace, &key.interface, app)
    }

    /// The next batch due at `now`, if any. Report it with [`Engine::sent`] or
    /// [`Engine::send_failed`].
    /// A batch too large for one request comes as several parts, each its own call; the
    /// pieces of one key go one after another (the next once the previous is answered), so
    /// the shim never holds more than one piece of a key from this worker at once.
    pub fn next_batch(&mut self, now: Instant) -> Option<Outgoing> {
        if let Some(part) = self.next_part() {
            return Some(part);
        }
        let batch = self.debouncer.poll(now)?;
        let parts = split(
            &batch.mappings,
            self.max_push_bytes.saturating_sub(REQUEST_SLACK),
            self.max_push_apps,
        );
        self.gathering.insert(
            batch.id,
            Gather {
                left: parts.len(),
                results: BTreeMap::new(),
            },
        );
        for list in parts {
            self.seq += 1;
            let label = format!("{}/{}", self.source, self.seq);
            let order: Vec<MappingKey> = list
                .iter()
                .map(|m| MappingKey::new(m.namespace.as_str(), m.interface_name.as_str()))
                .collect();
            let keys = order.len();
            let entries = list.iter().map(|m| m.application_names.len()).sum();
            self.queue.push_back(Outgoing {
                id: batch.id,
                payload: encode_request(&label, &self.source, list),
                label,
                keys,
                entries,
                order,
            });
        }
        self.next_part()
    }

    /// The first queued part none of whose keys is in flight.
    fn next_part(&mut self) -> Option<Outgoing> {
        let i = {
            let busy: BTreeSet<&MappingKey> = self
                .in_flight
                .values()
                .flat_map(|(_, order)| order.iter())
                .collect();
            self.queue
                .iter()
                .position(|p| p.order.iter().all(|k| !busy.contains(k)))?
        };
        self.queue.remove(i)
    }

    /// The batch (or part) went out as callout `token`.
    pub fn sent(&mut self, token: u32, batch: Outgoing) {
        self.in_flight.insert(token, (batch.id, batch.order));
    }

    /// The batch (or part) could not even be sent: merged back and retried after the
    /// backoff.
    pub fn send_failed(&mut self, now: Instant, batch: Outgoing) {
        let results = key_results(&batch.order, false, &[]);
        self.settle(now, batch.id, results);
    }

    /// Callout `token` finished (`ok`: gRPC status 0) with response message `body`.
    /// Each key takes the shim's result for it (stored, pending: retried with its own
    /// backoff, rejected: parked and never resent but on the slow probe); a shim that sends
    /// no results settles the whole batch by `ok`. `None` for an unknown token.
    pub fn completed(
        &mut self,
        now: Instant,
        token: u32,
        ok: bool,
        body: &[u8],
    ) -> Option<Completed> {
        let (id, order) = self.in_flight.remove(&token)?;
        let results = key_results(&order, ok, body);
        let mut done = self.settle(now, id, results);
        done.ok = ok;
        Some(done)
    }

    /// One part of batch `id` is back with `results`; once every part is, the debouncer
    /// takes each key's outcome and held streams are released or failed.
    fn settle(
        &mut self,
        now: Instant,
        id: BatchId,
        part: BTreeMap<MappingKey, KeyResult>,
    ) -> Completed {
        let Some(g) = self.gathering.get_mut(&id) else {
            return Completed::default();
        };
        for (k, r) in part {
            merge_result(&mut g.results, &k, r);
        }
        g.left = g.left.saturating_sub(1);
        if g.left > 0 {
            return Completed::default();
        }
        let results = self
            .gathering
            .remove(&id)
            .map(|g| g.results)
            .unwrap_or_default();
        let Some(done) = self.debouncer.complete_with(now, id, |k| {
            results.get(k).cloned().unwrap_or(KeyResult::Transient)
        }) else {
            return Completed::default();
        };
        let mut rejected = Vec::new();
        for key in &done.parked {
            if let Some(KeyResult::Permanent { reason, message }) = results.get(key) {
                let first = self.debouncer.parked(key).is_none_or(|p| p.tries <= 1);
                rejected.push(RejectedKey {
                    key: key.clone(),
                    reason: reason.clone(),
                    message: message.clone(),
                    first,
                });
            }
        }
        let mut released = Vec::new();
        let mut failed = Vec::new();
        self.waiters.retain(|ctx, w| {
            w.pairs.retain(|(k, app)| !done.stored.contains(k, app));
            let bad = rejected
                .iter()
                .find(|r| w.pairs.iter().any(|(k, _)| *k == r.key));
            if let Some(r) = bad {
                failed.push((*ctx, rejected_status(&r.reason, &r.message)));
                false
            } else if w.pairs.is_empty() {
                released.push(*ctx);
                false
            } else {
                true
            }
        });
        Completed {
            ok: true,
            acked_entries: done.stored.entries(),
            released,
            failed,
            rejected,
            stored: done.stored,
        }
    }

    /// Held streams whose timeout has passed: answer them UNAVAILABLE. Their mappings
    /// stay pending and are still delivered.
    pub fn expired(&mut self, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        self.waiters.retain(|ctx, w| {
            if w.deadline <= now {
                out.push(*ctx);
                false
            } else {
                true
            }
        });
        out
    }

    /// Makes everything pending due at once, ignoring the debounce windows (not a retry
    /// backoff): for a context that is stopping.
    pub fn flush(&mut self) {
        self.debouncer.flush();
    }

    /// Forgets retry delays and failure counts, so what backs off goes at the next poll:
    /// for a context that is stopping.
    pub fn reset_backoff(&mut self) {
        self.debouncer.reset_backoff();
    }

    /// Stream `ctx` is gone (client cancelled): stop holding a reply for it.
    pub fn forget(&mut self, ctx: u32) {
        self.waiters.remove(&ctx);
    }

    /// Whether stream `ctx` is held.
    pub fn is_held(&self, ctx: u32) -> bool {
        self.waiters.contains_key(&ctx)
    }

    /// Keys waiting for a batch.
    pub fn pending_keys(&self) -> usize {
        self.debouncer.pending_keys()
    }

    /// Keys the shim rejected for good, parked.
    pub fn parked_keys(&self) -> usize {
        self.debouncer.parked_keys()
    }

    /// Replies held (durable mode).
    pub fn held(&self) -> usize {
        self.waiters.len()
    }

    /// Batches in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether nothing is pending, in flight or held.
    pub fn is_idle(&self) -> bool {
        self.debouncer.is_idle() && self.waiters.is_empty() && self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snp_proto::api::PushMappingsRequest;

    fn ms(t: u64) -> Instant {
        Instant::from_millis(t)
    }

    fn reg(ns: &str, app: &str, ifaces: &[&str]) -> Registration {
        Registration {
            namespace: ns.into(),
            application: app.into(),
            interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn engine(mode: AckMode) -> Engine {
        let cfg = DebounceConfig {
            retry: snp_core::Backoff::new(Duration::from_millis(500), Duration::from_secs(4), 3),
            ..DebounceConfig::default()
        };
        Engine::new(cfg, mode, Duration::from_secs(2), "node-1".into())
    }

    fn decode(o: &Outgoing) -> PushMappingsRequest {
        PushMappingsRequest::decode(o.payload.as_slice()).unwrap()
    }

    #[test]
    fn a_storm_becomes_one_merged_batch() {
        let mut e = engine(AckMode::Immediate);
        for i in 0..1000u64 {
            let r = reg(
                "default",
                &format!("app-{}", i % 3),
                &[&format!("org.S{}", i % 10)],
            );
            assert_eq!(e.offer(ms(i / 10), i as u32, &r), Ok(Accepted::Reply));
        }
        assert!(
            e.next_batch(ms(150)).is_none(),
            "the first check is 200 ms after the burst"
        );
        // Burst lasted 99 ms: quiet at 199, first check at 200.
        let b = e.next_batch(ms(200)).expect("due");
        let req = decode(&b);
        assert_eq!(req.batch_id, "node-1/1");
        assert_eq!(req.source, "node-1");
        assert_eq!(req.mappings.len(), 10);
        assert_eq!(b.entries, 30);
        for m in &req.mappings {
            assert_eq!(m.namespace, "default");
            assert_eq!(m.application_names, vec!["app-0", "app-1", "app-2"]);
        }
        e.sent(7, b.clone());
        assert!(e.next_batch(ms(210)).is_none(), "one batch in flight");
        let done = e.completed(ms(230), 7, true, &[]).unwrap();
        assert_eq!((done.ok, done.acked_entries), (true, 30));
        assert!(e.is_idle());
        // Repeats of acknowledged mappings are absorbed.
        e.offer(ms(300), 1, &reg("default", "app-0", &["org.S1"]))
            .unwrap();
        assert!(e.next_batch(ms(2000)).is_none());
        assert_eq!(
            e.completed(ms(2000), 7, true, &[]),
            None,
            "tokens complete once"
        );
    }

    #[test]
    fn repeats_of_mappings_in_flight_need_no_new_batch() {
        let mut e = engine(AckMode::Immediate);
        e.offer(ms(0), 1, &reg("default", "a", &["x.A"])).unwrap();
        let b = e.next_batch(ms(200)).unwrap();
        e.sent(1, b.clone());
        // A repeat while the batch is in flight starts no burst...
        e.offer(ms(210), 2, &reg("default", "a", &["x.A"])).unwrap();
        assert_eq!(e.pending_keys(), 0);
        // ...but a new app for the same key does.
        e.offer(ms(220), 3, &reg("default", "b", &["x.A"])).unwrap();
        assert_eq!(e.pending_keys(), 1);
        // If the batch fails, the repeat's mapping is merged back all the same.
        e.completed(ms(230), 1, false, &[]).unwrap();
        let b = e.next_batch(ms(2000)).unwrap();
        let req = decode(&b);
        assert_eq!(req.mappings[0].application_names, vec!["a", "b"]);
    }

    #[test]
    fn failed_batches_are_merged_back_and_retried_with_backoff() {
        let mut e = engine(AckMode::Immediate);
        e.offer(ms(0), 1, &reg("default", "a", &["x.A"])).unwrap();
        let b = e.next_batch(ms(200)).unwrap();
        e.sent(1, b.clone());
        e.offer(ms(210), 2, &reg("default", "b", &["x.A", "x.B"]))
            .unwrap();
        let done = e.completed(ms(220), 1, false, &[]).unwrap();
        assert!(!done.ok && done.released.is_empty());
        assert_eq!(e.pending_keys(), 2);
        // Backoff is per key: x.B, new, goes after its own window, not after x.A's retry.
        let b = e.next_batch(ms(900)).expect("x.B's own batch");
        let req = decode(&b);
        assert_eq!(req.mappings.len(), 1);
        assert_eq!(req.mappings[0].interface_name, "x.B");
        e.sent(2, b.clone());
        assert!(e.completed(ms(905), 2, true, &[]).unwrap().ok);
        // x.A: 500 ms << 1 = 1 s after its failure, minus up to 20 % jitter.
        assert!(e.next_batch(ms(950)).is_none());
        let b = e.next_batch(ms(1300)).expect("retry due");
        let req = decode(&b);
        assert_eq!(req.mappings.len(), 1);
        assert_eq!(req.mappings[0].application_names, vec!["a", "b"]);
        // A send that fails at once backs off too.
        e.send_failed(ms(1300), b.clone());
        assert!(e.next_batch(ms(1400)).is_none());
        let b = e.next_batch(ms(4000)).expect("second retry");
        e.sent(9, b.clone());
        assert!(e.completed(ms(4010), 9, true, &[]).unwrap().ok);
        assert!(e.is_idle());
    }

    #[test]
    fn durable_replies_wait_for_the_batch_that_carries_them() {
        let mut e = engine(AckMode::Durable);
        assert_eq!(
            e.offer(ms(0), 1, &reg("default", "a", &["x.A", "x.B"])),
            Ok(Accepted::Hold)
        );
        assert_eq!(
            e.offer(ms(10), 2, &reg("default", "b", &["x.A"])),
            Ok(Accepted::Hold)
        );
        let b = e.next_batch(ms(200)).unwrap();
        e.sent(1, b.clone());
        // Arrives while the batch is in flight: it is pending again and waits.
        assert_eq!(
            e.offer(ms(205), 3, &reg("default", "c", &["x.C"])),
            Ok(Accepted::Hold)
        );
        let done = e.completed(ms(250), 1, true, &[]).unwrap();
        assert_eq!(done.released, vec![1, 2]);
        assert!(e.is_held(3) && !e.is_held(1));
        // Already acknowledged: answered at once.
        assert_eq!(
            e.offer(ms(260), 4, &reg("default", "a", &["x.B"])),
            Ok(Accepted::Reply)
        );
        let b = e.next_batch(ms(600)).unwrap();
        e.sent(2, b.clone());
        assert_eq!(
            e.completed(ms(610), 2, true, &[]).unwrap().released,
            vec![3]
        );
        assert_eq!(e.held(), 0);
    }

    #[test]
    fn durable_replies_time_out_and_the_mapping_stays_pending() {
        let mut e = engine(AckMode::Durable);
        assert_eq!(
            e.offer(ms(0), 1, &reg("default", "a", &["x.A"])),
            Ok(Accepted::Hold)
        );
        let b = e.next_batch(ms(200)).unwrap();
        e.sent(1, b.clone());
        assert!(e
            .completed(ms(300), 1, false, &[])
            .unwrap()
            .released
            .is_empty());
        assert!(e.expired(ms(1999)).is_empty());
        assert_eq!(e.expired(ms(2000)), vec![1]);
        assert_eq!(e.held(), 0);
        assert_eq!(e.pending_keys(), 1, "still pending after the timeout");
        let b = e.next_batch(ms(5000)).expect("retried");
        e.sent(2, b.clone());
        let done = e.completed(ms(5010), 2, true, &[]).unwrap();
        assert!(done.ok && done.released.is_empty());
        assert!(e.is_idle());
    }

    #[test]
    fn forgotten_streams_are_not_released() {
        let mut e = engine(AckMode::Durable);
        e.offer(ms(0), 1, &reg("default", "a", &["x.A"])).unwrap();
        e.forget(1);
        let b = e.next_batch(ms(200)).unwrap();
        e.sent(1, b.clone());
        assert!(e
            .completed(ms(210), 1, true, &[])
            .unwrap()
            .released
            .is_empty());
    }

    #[test]
    fn bounds_refuse_with_resource_exhausted() {
        let cfg = DebounceConfig {
            max_pending_keys: 2,
            ..DebounceConfig::default()
        };
        let mut e = Engine::new(cfg, AckMode::Immediate, Duration::from_secs(1), "s".into());
        e.offer(ms(0), 1, &reg("default", "a", &["x.A", "x.B"]))
            .unwrap();
        let r = e
            .offer(ms(0), 2, &reg("default", "a", &["x.C"]))
            .unwrap_err();
        assert_eq!(
            (r.code, r.reason),
            (Code::ResourceExhausted, Reason::PendingFull)
        );
        // All or nothing: the refused call left nothing behind.
        assert_eq!(e.pending_keys(), 2);
    }

    #[test]
    fn a_key_over_the_per_push_count_goes_in_pieces_in_separate_requests() {
        let mut e = engine(AckMode::Immediate);
        e.set_max_push_apps_per_key(2);
        for app in ["a", "b", "c", "d", "e"] {
            e.offer(ms(0), 1, &reg("default", app, &["x.K"])).unwrap();
        }
        e.offer(ms(0), 1, &reg("default", "z", &["x.Other"]))
            .unwrap();
        let first = e.next_batch(ms(200)).unwrap();
        assert_eq!(
            decode(&first).mappings.len(),
            2,
            "x.K's first piece and x.Other"
        );
        e.sent(1, first.clone());
        assert!(e.next_batch(ms(200)).is_none(), "x.K's next piece waits");
        assert!(!e.is_idle());
        e.completed(ms(210), 1, true, &[]).unwrap();
        let mut apps: Vec<String> = decode(&first)
            .mappings
            .iter()
            .flat_map(|m| m.application_names.clone())
            .collect();
        let mut token = 2;
        while let Some(b) = e.next_batch(ms(210)) {
            let req = decode(&b);
            assert_eq!(req.mappings.len(), 1);
            assert!(req.mappings[0].application_names.len() <= 2);
            apps.extend(req.mappings[0].application_names.clone());
            e.sent(token, b);
            assert!(e.next_batch(ms(210)).is_none());
            e.completed(ms(220), token, true, &[]).unwrap();
            token += 1;
        }
        apps.sort();
        assert_eq!(apps, ["a", "b", "c", "d", "e", "z"]);
        assert_eq!(
            token, 4,
            "three requests for five applications, two at a time"
        );
        assert!(e.is_idle());
    }

    #[test]
    fn the_shims_words_are_passed_on_whole() {
        let long = format!(
            "default/x.{} cannot be stored: namespace default not found",
            "L".repeat(900)
        );
        let r = rejected_status("namespace_not_found", &long);
        assert_eq!(r.code, Code::FailedPrecondition);
        assert_eq!(
            r.message,
            format!("{long} (reason namespace_not_found; the shim retries it on a slow schedule; see /parked)")
        );
    }

    mod split_props {
        use super::super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        proptest! {
            /// Whatever the batch and the limits: every application of every key is sent
            /// exactly once, no mapping carries more than `max_apps` applications, no request
            /// holds a key twice, and requests stay within the byte budget.
            #[test]
            fn pieces_add_up_and_keep_both_limits(
                keys in proptest::collection::btree_map(
                    "[a-z.]{1,30}",
                    proptest::collection::btree_set("[a-z0-9-]{1,60}", 1..80),
                    1..10,
                ),
                max_apps in 1usize..12,
                budget in 400usize..6000,
            ) {
                let mut batch = Mappings::new();
                for (iface, apps) in &keys {
                    for a in apps {
                        batch.insert(MappingKey::new("ns", iface.as_str()), a);
                    }
                }
                let parts = split(&batch, budget, max_apps);
                let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for part in &parts {
                    let size: usize = part.iter().map(|m| framed_len(m.encoded_len())).sum();
                    prop_assert!(size <= budget, "a request of {} bytes", size);
                    let mut in_part = BTreeSet::new();
                    for m in part {
                        prop_assert!(in_part.insert(m.interface_name.clone()), "a key twice in one request");
                        prop_assert!(!m.application_names.is_empty());
                        prop_assert!(m.application_names.len() <= max_apps);
                        for a in &m.application_names {
                            let fresh = seen.entry(m.interface_name.clone()).or_default().insert(a.clone());
                            prop_assert!(fresh, "{} sent twice", a);
                        }
                    }
                }
                let want: BTreeMap<String, BTreeSet<String>> = keys
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(seen, want);
            }
        }
    }
}
