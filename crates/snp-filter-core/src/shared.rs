//! One batch per Envoy: the outbox every worker's VM shares, and the lease that elects the
//! one worker that sends it.
//!
//! Envoy runs one VM per worker, each with its own [`crate::engine::Engine`], so without
//! this an Envoy with N workers sends N batches per debounce window. proxy-wasm's shared
//! data is a key-value store per `vm_id` that lives in the Envoy process, outside every VM
//! (proxy-wasm-cpp-host keeps it until the last VM of the `vm_id` is gone): every worker
//! reaches it, and a VM that dies or is reloaded loses none of it. The ABI has `get` and
//! `set` with compare-and-swap (`cas`), no key listing and no removal, so the layout is a
//! fixed set of keys under `snp/`. Every configuration of the filter in one `vm_id` shares
//! them (a replaced configuration's mappings are sent by the new one's sender):
//!
//! * `lease`: `<expiry wall-clock ms> <holder>`. The worker holding it sends; it renews it
//!   on its tick. Another worker takes it by CAS once it has expired (the holder died, or
//!   its VM was replaced), and then sends everything left in the outbox.
//! * `dirty`: set by a worker after it added mappings, cleared by the sender before it reads
//!   the shards, so the sender reads them only when something was added;
//! * `settled`: a counter the sender moves when mappings leave the outbox, so a worker
//!   waiting for its mappings reads the shards only then;
//! * `outbox/<i>` for `i < SHARDS`: the mappings answered OK by some worker and not yet
//!   stored by the shim (hashed by key), and the keys the shim rejected for good. A worker
//!   adds a mapping it has never seen before it answers the call (one CAS, only for a new
//!   `(namespace, interface, application)`); the sender removes mappings once the shim
//!   stored them, and moves a rejected key to the parked list, which tells every worker.
//!
//! Bounds: the outbox holds what is pending and what is in flight, so each shard holds at
//! most `2 * max_pending_keys / SHARDS` keys (at least one) of at most
//! `2 * max_apps_per_key` applications, and `max_parked_keys / SHARDS` parked keys: it is
//! bounded by keys Envoy-wide, whatever the worker count.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use snp_core::{DebounceConfig, MappingKey, Mappings};
use snp_proto::api::Mapping;

use crate::host::{Host, SharedSetError};
use crate::request::{Code, Reason, Rejection};

/// Shards of the outbox: a new mapping rewrites one of them, the sender reads them all on
/// its tick.
pub const SHARDS: usize = 16;

/// Tries of one compare-and-swap update before giving up (workers rarely collide: only a
/// new mapping writes).
const CAS_TRIES: usize = 32;

/// The `cas` used to create a key only if it is absent: the host ignores `cas` for an
/// absent key, and refuses it for a present one unless its version is exactly this (one
/// write in 2^32), so a value another worker wrote first is never overwritten.
const CREATE_CAS: u32 = u32::MAX;

/// A shard as stored: protobuf, like everything the filter sends.
#[derive(Clone, PartialEq, Message)]
struct ShardRecord {
    #[prost(message, repeated, tag = "1")]
    pending: Vec<Mapping>,
    #[prost(message, repeated, tag = "2")]
    parked: Vec<ParkedRecord>,
}

#[derive(Clone, PartialEq, Message)]
struct ParkedRecord {
    #[prost(string, tag = "1")]
    namespace: String,
    #[prost(string, tag = "2")]
    interface: String,
    #[prost(string, tag = "3")]
    reason: String,
    #[prost(string, tag = "4")]
    message: String,
}

/// A key the shim rejected for good, as the outbox tells the workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedKey {
    /// The shim's reason code.
    pub reason: String,
    /// The shim's message.
    pub message: String,
}

/// One shard of the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shard {
    /// Mappings answered OK and not yet stored by the shim.
    pub pending: BTreeMap<MappingKey, BTreeSet<String>>,
    /// Keys the shim rejected for good, oldest first.
    pub parked: Vec<(MappingKey, ParkedKey)>,
}

impl Shard {
    fn decode(bytes: &[u8]) -> Option<Self> {
        let r = ShardRecord::decode(bytes).ok()?;
        let mut s = Self::default();
        for m in r.pending {
            let key = MappingKey::new(m.namespace, m.interface_name);
            s.pending
                .entry(key)
                .or_default()
                .extend(m.application_names);
        }
        s.parked = r
            .parked
            .into_iter()
            .map(|p| {
                (
                    MappingKey::new(p.namespace, p.interface),
                    ParkedKey {
                        reason: p.reason,
                        message: p.message,
                    },
                )
            })
            .collect();
        Some(s)
    }

    fn encode(&self) -> Vec<u8> {
        ShardRecord {
            pending: self
                .pending
                .iter()
                .map(|(k, apps)| Mapping {
                    namespace: k.namespace.clone(),
                    interface_name: k.interface.clone(),
                    application_names: apps.iter().cloned().collect(),
                })
                .collect(),
            parked: self
                .parked
                .iter()
                .map(|(k, p)| ParkedRecord {
                    namespace: k.namespace.clone(),
                    interface: k.interface.clone(),
                    reason: p.reason.clone(),
                    message: p.message.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// The parked record of `key`.
    pub fn parked(&self, key: &MappingKey) -> Option<&ParkedKey> {
        self.parked.iter().find(|(k, _)| k == key).map(|(_, p)| p)
    }

    /// Whether `key <- app` waits in this shard.
    pub fn holds(&self, key: &MappingKey, app: &str) -> bool {
        self.pending.get(key).is_some_and(|a| a.contains(app))
    }

    /// Removes `key <- app` if it waits here, and the key once none of its applications
    /// is left; whether it was there.
    fn remove_pair(&mut self, key: &MappingKey, app: &str) -> bool {
        let Some(set) = self.pending.get_mut(key) else {
            return false;
        };
        let removed = set.remove(app);
        if set.is_empty() {
            self.pending.remove(key);
        }
        removed
    }

    /// `(key, app)` pairs waiting.
    pub fn entries(&self) -> usize {
        self.pending.values().map(BTreeSet::len).sum()
    }
}

/// The shard of a key: FNV-1a of `namespace NUL interface`, the same in every VM.
pub fn shard_of(key: &MappingKey) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key
        .namespace
        .bytes()
        .chain(core::iter::once(0))
        .chain(key.interface.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    usize::try_from(h % SHARDS as u64).unwrap_or(0)
}

/// Adds one to the decimal counter at `key` of the shared data by compare-and-swap (an
/// absent key counts from 0): the new value, or `None` if other workers kept changing it.
fn increment(host: &impl Host, key: &str) -> Option<u64> {
    for _ in 0..CAS_TRIES {
        let (n, cas) = match host.shared_get(key) {
            Some((v, cas)) => (String::from_utf8_lossy(&v).parse::<u64>().unwrap_or(0), cas),
            None => (0, CREATE_CAS),
        };
        let next = n.wrapping_add(1);
        if host
            .shared_set(key, next.to_string().as_bytes(), cas)
            .is_ok()
        {
            return Some(next);
        }
    }
    None
}

/// Why an update of the outbox failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UpdateError {
    /// Refused by the update itself.
    Refused(Rejection),
    /// Other workers kept writing the shard, or the host refused the write.
    Busy,
}

/// What leaves one shard: stored `(key, apps)`, and rejected keys.
type SettleShard<'a> = (
    Vec<(&'a MappingKey, Vec<&'a str>)>,
    Vec<(&'a MappingKey, &'a ParkedKey)>,
);

/// What a write to the outbox cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// `(key, app)` pairs added (or removed).
    pub pairs: usize,
    /// Writes refused for a stale `cas` and retried.
    pub conflicts: usize,
}

/// Where the outbox lives in the shared data of the `vm_id`.
const PREFIX: &str = "snp/";

/// The outbox and lease, in the host's shared data.
#[derive(Debug, Clone)]
pub struct Outbox {
    lease_ms: u64,
    max_keys: usize,
    max_apps: usize,
    max_parked: usize,
}

/// What the lease step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// This worker holds the lease; `taken`: it just took it from another (or nobody).
    Held {
        /// The lease changed hands to this worker now.
        taken: bool,
        /// Wall-clock ms when to renew it (nobody can take it before).
        until: u64,
    },
    /// Another worker holds it.
    Other {
        /// Wall-clock ms when it may expire: no need to look before.
        until: u64,
    },
}

impl Outbox {
    /// The outbox, bounded by `debounce`'s key limits; the lease lasts `lease_ms`.
    pub fn new(lease_ms: u64, debounce: &DebounceConfig) -> Self {
        Self {
            lease_ms,
            // Twice the engine's bounds: the outbox holds what is pending and what is in
            // flight, and the engine bounds each.
            max_keys: (debounce.max_pending_keys.saturating_mul(2) / SHARDS).max(1),
            max_apps: debounce.max_apps_per_key.saturating_mul(2),
            max_parked: (debounce.max_parked_keys / SHARDS).max(1),
        }
    }

    fn shard_key(&self, i: usize) -> String {
        format!("{PREFIX}outbox/{i}")
    }

    fn lease_key(&self) -> String {
        format!("{PREFIX}lease")
    }

    fn dirty_key(&self) -> String {
        format!("{PREFIX}dirty")
    }

    fn settled_key(&self) -> String {
        format!("{PREFIX}settled")
    }

    /// A number no other VM of this `vm_id` got (a counter in the shared data), so that
    /// two VMs started at the same instant still tell their lease apart.
    pub fn register(&self, host: &impl Host) -> u64 {
        // Contended beyond reason: 0, and the wall clock still tells VMs apart, almost
        // surely.
        increment(host, &format!("{PREFIX}workers")).unwrap_or(0)
    }

    /// Creates the keys that are absent, never overwriting one another worker wrote.
    pub fn ensure(&self, host: &impl Host) {
        for i in 0..SHARDS {
            let key = self.shard_key(i);
            if host.shared_get(&key).is_none() {
                let _ = host.shared_set(&key, &[], CREATE_CAS);
            }
        }
        for (key, initial) in [
            (self.lease_key(), &b"0 -"[..]),
            (self.dirty_key(), b"1"),
            (self.settled_key(), b"0"),
        ] {
            if host.shared_get(&key).is_none() {
                let _ = host.shared_set(&key, initial, CREATE_CAS);
            }
        }
    }

    /// Shard `i` and its version; a shard that does not decode (not written by this
    /// filter) reads as empty.
    pub fn read(&self, host: &impl Host, i: usize) -> Option<(Shard, u32)> {
        let (bytes, cas) = host.shared_get(&self.shard_key(i))?;
        Some((Shard::decode(&bytes).unwrap_or_default(), cas))
    }

    /// Applies `f` to shard `i` by compare-and-swap, until it sticks. `f` returns how many
    /// pairs it changed (0: nothing to write).
    fn update(
        &self,
        host: &impl Host,
        i: usize,
        mut f: impl FnMut(&mut Shard) -> Result<usize, Rejection>,
    ) -> Result<Written, UpdateError> {
        let key = self.shard_key(i);
        let mut conflicts = 0;
        for _ in 0..CAS_TRIES {
            let (mut shard, cas) = match host.shared_get(&key) {
                Some((bytes, cas)) => (Shard::decode(&bytes).unwrap_or_default(), cas),
                None => (Shard::default(), CREATE_CAS),
            };
            let pairs = f(&mut shard).map_err(UpdateError::Refused)?;
            if pairs == 0 {
                return Ok(Written { pairs, conflicts });
            }
            match host.shared_set(&key, &shard.encode(), cas) {
                Ok(()) => return Ok(Written { pairs, conflicts }),
                Err(SharedSetError::CasMismatch) => conflicts += 1,
                Err(SharedSetError::Refused) => return Err(UpdateError::Busy),
            }
        }
        Err(UpdateError::Busy)
    }

    /// Adds `app` to each of `keys` (one namespace), before the call is answered: all of
    /// them or (barring a race with another worker between shards) none. A key the shim
    /// rejected for good refuses the call with the shim's words, as the sender would.
    pub fn hand(
        &self,
        host: &impl Host,
        keys: &[MappingKey],
        app: &str,
    ) -> Result<Written, Rejection> {
        let mut by_shard: BTreeMap<usize, Vec<&MappingKey>> = BTreeMap::new();
        for k in keys {
            by_shard.entry(shard_of(k)).or_default().push(k);
        }
        let mut total = Written::default();
        for (i, keys) in by_shard {
            let w = self.update(host, i, |shard| {
                let mut added = 0;
                for k in &keys {
                    if let Some(p) = shard.parked(k) {
                        return Err(crate::engine::rejected_status(&p.reason, &p.message));
                    }
                    let apps = shard.pending.get(*k);
                    if apps.is_none() && shard.pending.len() >= self.max_keys {
                        return Err(Rejection::new(
                            Code::ResourceExhausted,
                            Reason::PendingFull,
                            format!(
                                "too many pending mappings in this Envoy ({} keys); retry later",
                                self.max_keys.saturating_mul(SHARDS)
                            ),
                        ));
                    }
                    if apps.is_some_and(|a| !a.contains(app) && a.len() >= self.max_apps) {
                        return Err(Rejection::new(
                            Code::ResourceExhausted,
                            Reason::PendingFull,
                            format!(
                                "interface {k} already has {} pending applications",
                                self.max_apps
                            ),
                        ));
                    }
                }
                for k in &keys {
                    if shard
                        .pending
                        .entry((*k).clone())
                        .or_default()
                        .insert(app.to_owned())
                    {
                        added += 1;
                    }
                }
                Ok(added)
            });
            match w {
                Ok(w) => {
                    total.pairs += w.pairs;
                    total.conflicts += w.conflicts;
                }
                Err(UpdateError::Refused(r)) => return Err(r),
                Err(UpdateError::Busy) => {
                    return Err(Rejection::new(
                        Code::ResourceExhausted,
                        Reason::PendingFull,
                        "the filter's shared outbox is busy; retry",
                    ))
                }
            }
        }
        if total.pairs > 0 {
            self.mark_dirty(host);
        }
        Ok(total)
    }

    /// The shim stored `stored` and rejected `rejected` for good: they leave the outbox,
    /// and the rejected keys are parked there for every worker to see. Best effort: what
    /// cannot be removed now stays and is sent again (the shim's union makes that
    /// harmless).
    pub fn settle(
        &self,
        host: &impl Host,
        stored: &Mappings,
        rejected: &[(MappingKey, ParkedKey)],
    ) -> Written {
        let mut by_shard: BTreeMap<usize, SettleShard<'_>> = BTreeMap::new();
        for (k, apps) in stored.iter() {
            by_shard
                .entry(shard_of(k))
                .or_default()
                .0
                .push((k, apps.iter().collect()));
        }
        for (k, p) in rejected {
            by_shard.entry(shard_of(k)).or_default().1.push((k, p));
        }
        let mut total = Written::default();
        for (i, (stored, rejected)) in by_shard {
            let w = self.update(host, i, |shard| {
                let mut changed = 0;
                for (k, apps) in &stored {
                    for a in apps {
                        if shard.remove_pair(k, a) {
                            changed += 1;
                        }
                    }
                    // Stored after a probe: no longer parked.
                    let before = shard.parked.len();
                    shard.parked.retain(|(pk, _)| pk != *k);
                    changed += before - shard.parked.len();
                }
                for (k, p) in &rejected {
                    if let Some(set) = shard.pending.remove(*k) {
                        changed += set.len();
                    }
                    shard.parked.retain(|(pk, _)| pk != *k);
                    shard.parked.push(((*k).clone(), (*p).clone()));
                    if shard.parked.len() > self.max_parked {
                        shard.parked.remove(0);
                    }
                    changed += 1;
                }
                Ok(changed)
            });
            if let Ok(w) = w {
                total.pairs += w.pairs;
                total.conflicts += w.conflicts;
            }
        }
        if total.pairs > 0 {
            self.bump_settled(host);
        }
        total
    }

    /// Removes pairs the sender found already stored (acknowledged recently) or joined to a
    /// parked key.
    pub fn forget(&self, host: &impl Host, i: usize, pairs: &[(MappingKey, String)]) -> Written {
        let w = self
            .update(host, i, |shard| {
                let mut changed = 0;
                for (k, a) in pairs {
                    if shard.remove_pair(k, a) {
                        changed += 1;
                    }
                }
                Ok(changed)
            })
            .unwrap_or_default();
        if w.pairs > 0 {
            self.bump_settled(host);
        }
        w
    }

    /// Takes, keeps or gives up the lease for worker `me` at wall-clock `now_ms`. The
    /// holder renews it once half of it has run out; anyone takes it once it expired, or if
    /// its expiry is implausibly far ahead (the wall clock stepped back).
    pub fn lease_step(&self, host: &impl Host, me: &str, now_ms: u64) -> LeaseState {
        let key = self.lease_key();
        let (value, cas) = host
            .shared_get(&key)
            .unwrap_or_else(|| (Vec::new(), CREATE_CAS));
        let text = String::from_utf8_lossy(&value);
        let (expiry, holder) = text.split_once(' ').unwrap_or(("0", ""));
        let expiry: u64 = expiry.parse().unwrap_or(0);
        let mine = holder == me;
        let free = expiry <= now_ms || expiry > now_ms.saturating_add(2 * self.lease_ms);
        let renew_at = |expiry: u64| expiry.saturating_sub(self.lease_ms / 2);
        if mine && !free && now_ms < renew_at(expiry) {
            return LeaseState::Held {
                taken: false,
                until: renew_at(expiry),
            };
        }
        if !mine && !free {
            return LeaseState::Other {
                until: expiry.min(now_ms.saturating_add(self.lease_ms)),
            };
        }
        let expiry = now_ms.saturating_add(self.lease_ms);
        let value = format!("{expiry} {me}");
        match host.shared_set(&key, value.as_bytes(), cas) {
            Ok(()) => LeaseState::Held {
                taken: !mine,
                until: renew_at(expiry),
            },
            // Someone else wrote it first: look again on the next tick.
            Err(_) => LeaseState::Other { until: now_ms },
        }
    }

    /// Tells the sender that the outbox has new mappings (after a worker added some).
    fn mark_dirty(&self, host: &impl Host) {
        let _ = host.shared_set(&self.dirty_key(), b"1", 0);
    }

    /// Whether workers added mappings since the sender last looked; clears the flag. The
    /// flag is cleared before the shards are read, and a worker sets it after writing its
    /// shard, so no addition goes unseen.
    pub fn take_dirty(&self, host: &impl Host) -> bool {
        let key = self.dirty_key();
        match host.shared_get(&key) {
            Some((v, cas)) if v.as_slice() != b"0" => {
                let _ = host.shared_set(&key, b"0", cas);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// A number that changes whenever mappings leave the outbox (stored, parked, or found
    /// stored already): workers waiting for theirs look at the shards only when it moved.
    pub fn settled(&self, host: &impl Host) -> Option<Vec<u8>> {
        host.shared_get(&self.settled_key()).map(|(v, _)| v)
    }

    fn bump_settled(&self, host: &impl Host) {
        let _ = increment(host, &self.settled_key());
    }

    /// Gives up the lease if `me` holds it (a draining worker that is done), so another
    /// worker need not wait for it to expire.
    pub fn release(&self, host: &impl Host, me: &str) {
        let key = self.lease_key();
        if let Some((value, cas)) = host.shared_get(&key) {
            let text = String::from_utf8_lossy(&value);
            if text.split_once(' ').is_some_and(|(_, h)| h == me) {
                let _ = host.shared_set(&key, b"0 -", cas);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockHost;

    fn k(i: &str) -> MappingKey {
        MappingKey::new("default", i)
    }

    fn outbox() -> Outbox {
        let cfg = DebounceConfig {
            max_pending_keys: SHARDS,
            ..DebounceConfig::default()
        };
        Outbox::new(1000, &cfg)
    }

    #[test]
    fn ensure_never_overwrites_what_another_worker_wrote() {
        let host = MockHost::new(1);
        let o = outbox();
        o.ensure(&host);
        o.hand(&host, &[k("x.A")], "a").unwrap();
        // A second VM starting later creates nothing over it.
        o.ensure(&host);
        let i = shard_of(&k("x.A"));
        assert!(o.read(&host, i).unwrap().0.holds(&k("x.A"), "a"));
    }

    #[test]
    fn hand_settle_and_park() {
        let host = MockHost::new(1);
        let o = outbox();
        o.ensure(&host);
        let w = o.hand(&host, &[k("x.A"), k("x.B")], "a").unwrap();
        assert_eq!(w.pairs, 2);
        assert_eq!(o.hand(&host, &[k("x.A")], "a").unwrap().pairs, 0);
        let mut stored = Mappings::new();
        stored.insert(k("x.A"), "a");
        let bad = ParkedKey {
            reason: "namespace_not_found".into(),
            message: "no".into(),
        };
        o.settle(&host, &stored, &[(k("x.B"), bad.clone())]);
        let a = o.read(&host, shard_of(&k("x.A"))).unwrap().0;
        assert!(!a.holds(&k("x.A"), "a"));
        let b = o.read(&host, shard_of(&k("x.B"))).unwrap().0;
        assert_eq!(b.parked(&k("x.B")), Some(&bad));
        let r = o.hand(&host, &[k("x.B")], "c").unwrap_err();
        assert_eq!(r.code, Code::FailedPrecondition);
    }

    #[test]
    fn shards_are_bounded_by_keys() {
        let host = MockHost::new(1);
        let o = outbox();
        o.ensure(&host);
        let mut refused = 0;
        for n in 0..200 {
            if o.hand(&host, &[k(&format!("x.K{n}"))], "a").is_err() {
                refused += 1;
            }
        }
        let held: usize = (0..SHARDS)
            .map(|i| o.read(&host, i).unwrap().0.pending.len())
            .sum();
        assert!(held <= SHARDS * 2, "{held} keys held");
        assert_eq!(held + refused, 200);
    }

    #[test]
    fn one_lease_holder_at_a_time_and_takeover_after_expiry() {
        let host = MockHost::new(1);
        let o = outbox();
        o.ensure(&host);
        assert_eq!(
            o.lease_step(&host, "w1", 10_000),
            LeaseState::Held {
                taken: true,
                until: 10_500
            }
        );
        // Nobody needs to look again before it may expire.
        assert_eq!(
            o.lease_step(&host, "w2", 10_100),
            LeaseState::Other { until: 11_000 }
        );
        assert_eq!(
            o.lease_step(&host, "w1", 10_200),
            LeaseState::Held {
                taken: false,
                until: 10_500
            }
        );
        // w1 renews past half its lease...
        assert_eq!(
            o.lease_step(&host, "w1", 10_600),
            LeaseState::Held {
                taken: false,
                until: 11_100
            }
        );
        assert_eq!(
            o.lease_step(&host, "w2", 11_500),
            LeaseState::Other { until: 11_600 }
        );
        // ...and then stops (it died): w2 takes over once it expired.
        assert!(matches!(
            o.lease_step(&host, "w2", 11_601),
            LeaseState::Held { taken: true, .. }
        ));
        o.release(&host, "w1");
        assert!(matches!(
            o.lease_step(&host, "w1", 11_700),
            LeaseState::Other { .. }
        ));
        o.release(&host, "w2");
        assert!(matches!(
            o.lease_step(&host, "w1", 11_800),
            LeaseState::Held { taken: true, .. }
        ));
    }
}
