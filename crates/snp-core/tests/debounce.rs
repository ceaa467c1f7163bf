//! The debouncer on a virtual clock: window rules, the single in-flight batch, retries,
//! bounds, and the guarantee that nothing offered is lost.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use snp_core::debounce::Offered;
use snp_core::{
    Backoff, Batch, DebounceConfig, Debouncer, Instant, MappingKey, Mappings, OfferError,
};

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn key(i: usize) -> MappingKey {
    MappingKey::new("default", format!("com.example.Service{i}"))
}

fn no_jitter() -> DebounceConfig {
    DebounceConfig {
        retry: Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 6),
        ..DebounceConfig::default()
    }
}

/// Only the seed's window rules: no absorption of acknowledged repeats, no jitter.
fn seed_rules() -> DebounceConfig {
    DebounceConfig {
        suppress_acked_for: Duration::ZERO,
        ..no_jitter()
    }
}

/// Polls every millisecond up to `until` and returns the batches with their times,
/// completing each one successfully `latency` ms later.
fn run(
    d: &mut Debouncer,
    offers: &[(u64, usize, &str)],
    until: u64,
    latency: u64,
) -> Vec<(u64, Batch)> {
    let mut out = Vec::new();
    let mut in_flight: Option<(u64, Batch)> = None;
    let mut offers = offers.iter().peekable();
    for now in 0..=until {
        // A batch whose store answered by now completes before this millisecond's offers
        // (with latency 0 it is answered within the millisecond it went out): an offer at
        // that instant is not a repeat of a mapping still in flight.
        if let Some((done, _)) = &in_flight {
            if *done <= now {
                let (_, b) = in_flight.take().unwrap();
                assert!(d.complete(t(now), b.id, true).is_some());
            }
        }
        while let Some((at, k, app)) = offers.peek() {
            if *at != now {
                break;
            }
            let key = key(*k);
            d.offer(t(now), &key.namespace, &key.interface, app)
                .unwrap();
            offers.next();
        }
        if let Some(b) = d.poll(t(now)) {
            assert!(in_flight.is_none(), "two batches in flight");
            out.push((now, b.clone()));
            in_flight = Some((now + latency, b));
        }
    }
    out
}

#[test]
fn a_lone_registration_waits_for_the_first_check() {
    let mut d = Debouncer::new(no_jitter());
    d.offer(t(1000), "default", "com.example.A", "a").unwrap();
    assert_eq!(d.next_wakeup(), Some(t(1200)));
    assert!(d.poll(t(1199)).is_none());
    let b = d.poll(t(1200)).unwrap();
    assert_eq!(b.mappings.entries(), 1);
    assert_eq!(d.next_wakeup(), None);
}

#[test]
fn a_burst_goes_out_once_quiet() {
    // Offers at 0, 50, ..., 400 ms: quiet from 400, so the batch goes at 500.
    let offers: Vec<(u64, usize, &str)> = (0..9).map(|i| (i * 50, i as usize % 3, "app")).collect();
    let batches = run(&mut Debouncer::new(seed_rules()), &offers, 3000, 10);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].0, 500);
    assert_eq!(batches[0].1.mappings.len(), 3);
}

#[test]
fn an_endless_storm_is_cut_every_debounce_max() {
    // One offer every 20 ms for 3.5 s: never quiet, so batches at 1000, then a new
    // burst starts at the next offer (1020) and goes at 2020, and so on.
    let offers: Vec<(u64, usize, &str)> =
        (0..175).map(|i| (i * 20, i as usize % 7, "app")).collect();
    let batches = run(&mut Debouncer::new(seed_rules()), &offers, 5000, 5);
    let times: Vec<u64> = batches.iter().map(|(at, _)| *at).collect();
    assert_eq!(times, vec![1000, 2020, 3040, 3580]);
}

#[test]
fn completion_re_evaluates_at_once_where_the_seed_stalls() {
    let mut d = Debouncer::new(no_jitter());
    d.offer(t(0), "default", "com.example.A", "a").unwrap();
    let first = d.poll(t(200)).unwrap();
    // Offered while the first batch is in flight; due at 450 (first check) but the
    // slot is busy until 2000.
    d.offer(t(250), "default", "com.example.B", "b").unwrap();
    assert!(d.poll(t(450)).is_none());
    assert_eq!(
        d.next_wakeup(),
        None,
        "waiting on the completion, not a timer"
    );
    d.complete(t(2000), first.id, true).unwrap();
    assert_eq!(d.next_wakeup(), Some(t(450)));
    let second = d.poll(t(2000)).expect("due immediately after completion");
    assert!(second
        .mappings
        .contains(&MappingKey::new("default", "com.example.B"), "b"));
}

#[test]
fn failed_batches_come_back_with_nacos_backoff() {
    let mut d = Debouncer::new(no_jitter());
    d.offer(t(0), "default", "com.example.A", "a").unwrap();
    let mut now = 200;
    let mut retries = Vec::new();
    for _ in 0..8 {
        let b = d.poll(t(now)).expect("due");
        assert!(d.complete(t(now), b.id, false).is_none());
        let at = d.next_wakeup().unwrap().as_millis();
        retries.push(at - now);
        assert!(d.poll(t(at - 1)).is_none());
        now = at;
    }
    assert_eq!(
        retries,
        vec![1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    );
    let b = d.poll(t(now)).unwrap();
    assert_eq!(d.complete(t(now), b.id, true).unwrap().entries(), 1);
    assert_eq!(d.failures(), 0);
    assert!(d.is_idle());
}

#[test]
fn offers_during_backoff_join_the_retry() {
    let mut d = Debouncer::new(no_jitter());
    d.offer(t(0), "default", "com.example.A", "a").unwrap();
    let b = d.poll(t(200)).unwrap();
    d.complete(t(210), b.id, false);
    d.offer(t(500), "default", "com.example.A", "b").unwrap();
    d.offer(t(600), "default", "com.example.C", "c").unwrap();
    let retry = d.poll(t(1210)).unwrap();
    assert_eq!(retry.mappings.entries(), 3);
}

#[test]
fn disabled_debounce_sends_each_registration_with_bounded_concurrency() {
    let mut d = Debouncer::new(DebounceConfig {
        enabled: false,
        max_in_flight: 2,
        ..no_jitter()
    });
    let mut batches = Vec::new();
    for i in 0..3 {
        let k = key(i);
        d.offer(t(10), &k.namespace, &k.interface, "a").unwrap();
        if let Some(b) = d.poll(t(10)) {
            batches.push(b);
        }
    }
    assert_eq!(batches.len(), 2);
    assert!(batches.iter().all(|b| b.mappings.len() == 1));
    assert!(d.poll(t(11)).is_none(), "limit of two in flight");
    d.complete(t(12), batches[0].id, true);
    let third = d.poll(t(12)).unwrap();
    assert!(third.mappings.get(&key(2)).is_some());
}

#[test]
fn pending_state_is_bounded_per_key() {
    let mut d = Debouncer::new(DebounceConfig {
        max_pending_keys: 2,
        max_apps_per_key: 2,
        ..no_jitter()
    });
    for _ in 0..1000 {
        d.offer(t(0), "default", "com.example.A", "a").unwrap();
    }
    assert_eq!((d.pending_keys(), d.pending_entries()), (1, 1));
    d.offer(t(0), "default", "com.example.A", "b").unwrap();
    assert!(matches!(
        d.offer(t(0), "default", "com.example.A", "c"),
        Err(OfferError::TooManyApps { .. })
    ));
    d.offer(t(0), "default", "com.example.B", "a").unwrap();
    assert_eq!(
        d.offer(t(0), "default", "com.example.C", "a"),
        Err(OfferError::PendingFull { limit: 2 })
    );
    // All or nothing for a multi-interface registration.
    assert!(d
        .offer_all(t(0), "default", "z", &["com.example.A", "com.example.D"])
        .is_err());
    assert_eq!(d.pending_entries(), 3);
    assert!(!d.is_pending(&MappingKey::new("default", "com.example.A"), "z"));
}

#[test]
fn acknowledged_mappings_are_absorbed_until_the_window_ends() {
    let mut d = Debouncer::new(no_jitter());
    d.offer(t(0), "default", "com.example.A", "a").unwrap();
    let b = d.poll(t(200)).unwrap();
    d.complete(t(220), b.id, true);
    for ms in (300..60_000).step_by(1000) {
        assert_eq!(
            d.offer(t(ms), "default", "com.example.A", "a"),
            Ok(Offered::Acknowledged)
        );
    }
    assert!(d.is_idle());
    assert_eq!(
        d.offer(t(300), "default", "com.example.A", "other"),
        Ok(Offered::Pending)
    );
    assert_eq!(
        d.offer(t(60_220), "default", "com.example.A", "a"),
        Ok(Offered::Pending)
    );
}

#[test]
fn oversized_pending_sets_go_out_in_capped_batches_back_to_back() {
    let mut d = Debouncer::new(DebounceConfig {
        max_batch_keys: 10,
        ..no_jitter()
    });
    for i in 0..25 {
        let k = key(i);
        d.offer(t(0), &k.namespace, &k.interface, "a").unwrap();
    }
    let mut sizes = Vec::new();
    let mut now = 200;
    while let Some(b) = d.poll(t(now)) {
        sizes.push(b.mappings.len());
        d.complete(t(now), b.id, true);
        now += 1;
    }
    assert_eq!(sizes, vec![10, 10, 5]);
}

#[test]
fn flush_ignores_the_windows() {
    let mut d = Debouncer::new(no_jitter());
    d.offer(t(5), "default", "com.example.A", "a").unwrap();
    d.flush();
    assert!(d.poll(t(6)).is_some());
}

/// Offers the `(at, key, app)` entries of `offers` due at `now`, from `*i` on; returns them.
fn offer_due(
    d: &mut Debouncer,
    offers: &[(u64, usize, u8)],
    i: &mut usize,
    now: u64,
) -> Vec<(MappingKey, String)> {
    let mut out = Vec::new();
    while *i < offers.len() && offers[*i].0 == now {
        let (_, k, app) = offers[*i];
        let key = key(k);
        let app = format!("app{app}");
        d.offer(t(now), &key.namespace, &key.interface, &app)
            .unwrap();
        out.push((key, app));
        *i += 1;
    }
    out
}

/// What the receiver holds after a run with random failures.
fn storm(
    offers: &[(u64, usize, u8)],
    fail: &[bool],
    latency: u64,
    cfg: DebounceConfig,
) -> (Mappings, Mappings, usize) {
    let mut d = Debouncer::new(cfg);
    let mut sent = Mappings::new();
    let mut store = Mappings::new();
    let mut in_flight: BTreeMap<u64, Vec<Batch>> = BTreeMap::new();
    // The receiver fails by the pattern for a while, then recovers.
    let mut fails = fail
        .iter()
        .copied()
        .cycle()
        .take(fail.len() * 2)
        .chain(std::iter::repeat(false));
    let mut batches = 0;
    let mut i = 0;
    let end = offers.last().map_or(0, |o| o.0) + 1_200_000;
    for now in 0..end {
        for (key, app) in offer_due(&mut d, offers, &mut i, now) {
            sent.insert(key, &app);
        }
        for b in in_flight.remove(&now).unwrap_or_default() {
            let ok = !fails.next().unwrap_or(false);
            if ok {
                store.union(&b.mappings);
            }
            d.complete(t(now), b.id, ok);
        }
        while let Some(b) = d.poll(t(now)) {
            batches += 1;
            in_flight.entry(now + latency).or_default().push(b);
            assert!(d.in_flight() <= 1);
        }
        if i == offers.len() && d.is_idle() {
            break;
        }
    }
    (sent, store, batches)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// With debouncing, every batch time obeys the rules, and a batch goes at the earliest
    /// instant the rules allow.
    #[test]
    fn batch_times_obey_the_quiet_and_max_rules(gaps in proptest::collection::vec(0u64..300, 1..60)) {
        let mut at = 0;
        let offers: Vec<(u64, usize, &str)> = gaps.iter().enumerate().map(|(i, g)| { at += g; (at, i % 5, "a") }).collect();
        let batches = run(&mut Debouncer::new(seed_rules()), &offers, at + 2000, 0);
        let mut burst_start: Option<u64> = None;
        let mut last = 0;
        let mut oi = 0;
        for now in 0..=at + 2000 {
            while oi < offers.len() && offers[oi].0 == now {
                burst_start.get_or_insert(now);
                last = now;
                oi += 1;
            }
            let due = burst_start.is_some_and(|s| now >= s + 200 && (now >= last + 100 || now >= s + 1000));
            let sent = batches.iter().any(|(bt, _)| *bt == now);
            prop_assert_eq!(due, sent, "at {} ms", now);
            if sent { burst_start = None; }
        }
    }

    /// Random failures and latencies: everything offered reaches the store, one batch at a time.
    #[test]
    fn nothing_is_lost_when_batches_fail(
        gaps in proptest::collection::vec((0u64..200, 0usize..20, 0u8..4), 1..200),
        fail in proptest::collection::vec(any::<bool>(), 1..16),
        latency in 1u64..500,
        jitter in 0.0f64..1.0,
    ) {
        let mut at = 0;
        let offers: Vec<(u64, usize, u8)> = gaps.iter().map(|(g, k, a)| { at += g; (at, *k, *a) }).collect();
        let cfg = DebounceConfig { retry: Backoff::default().with_jitter(jitter), seed: at, ..DebounceConfig::default() };
        let (sent, store, _) = storm(&offers, &fail, latency, cfg);
        prop_assert_eq!(store, sent);
    }
}

/// A case the property above once found: the same mapping offered again 1 ms after its
/// batch went out (and was answered) opens a new burst, written 200 ms later.
#[test]
fn a_repeat_right_after_its_batch_opens_a_new_burst() {
    let offers = [
        (0, 0, "a"),
        (0, 1, "a"),
        (0, 2, "a"),
        (48, 3, "a"),
        (100, 4, "a"),
        (201, 0, "a"),
    ];
    let batches = run(&mut Debouncer::new(seed_rules()), &offers, 2201, 0);
    let times: Vec<u64> = batches.iter().map(|(at, _)| *at).collect();
    assert_eq!(times, [200, 401]);
}

#[test]
fn a_storm_of_ten_thousand_becomes_a_handful_of_batches() {
    // 10,000 registrations over 100 keys within 2 s.
    let offers: Vec<(u64, usize, u8)> = (0..10_000u64)
        .map(|i| (i / 5, (i % 100) as usize, (i % 3) as u8))
        .collect();
    let (sent, store, batches) = storm(&offers, &[false], 20, DebounceConfig::default());
    assert_eq!(store, sent);
    assert_eq!(store.entries(), 300);
    assert!(batches <= 3, "{batches} batches");
}

#[test]
fn repeats_of_in_flight_mappings_open_no_new_burst() {
    let mut d = Debouncer::new(seed_rules());
    d.offer(t(0), "default", "com.example.A", "a").unwrap();
    let b = d.poll(t(200)).unwrap();
    // The whole rollout repeats the mapping while the batch is in flight.
    for ms in 201..400 {
        assert_eq!(
            d.offer(t(ms), "default", "com.example.A", "a"),
            Ok(Offered::InFlight)
        );
    }
    let s = d
        .offer_all(t(400), "default", "a", &["com.example.A", "com.example.B"])
        .unwrap();
    assert_eq!((s.in_flight, s.pending), (1, 1));
    assert!(d.is_pending(&MappingKey::new("default", "com.example.A"), "a"));
    // A failure merges it back, so nothing is lost; then repeats queue normally again.
    d.complete(t(450), b.id, false);
    assert_eq!(d.pending_entries(), 2);
    assert_eq!(
        d.offer(t(460), "default", "com.example.A", "a"),
        Ok(Offered::Pending)
    );
    let retry = d.poll(t(2000)).unwrap();
    assert_eq!(retry.mappings.entries(), 2);
    d.complete(t(2010), retry.id, true);
    assert!(d.is_idle());
}

#[test]
fn retry_now_skips_the_delay_but_keeps_the_failure_count() {
    let mut d = Debouncer::new(no_jitter());
    d.offer(t(0), "default", "com.example.A", "a").unwrap();
    let b = d.poll(t(200)).unwrap();
    d.complete(t(200), b.id, false);
    assert_eq!(d.next_wakeup(), Some(t(1200)));
    d.retry_now();
    let again = d.poll(t(300)).expect("due at once");
    assert_eq!(d.failures(), 1);
    // Failing again continues the backoff (2 s after the second failure), not from base.
    d.complete(t(310), again.id, false);
    assert_eq!(d.next_wakeup(), Some(t(2310)));
}

// ---- Per-key outcomes -------------------------------------------------------------

use snp_core::KeyResult;

fn permanent(why: &str) -> KeyResult {
    KeyResult::Permanent {
        reason: "namespace_not_found".into(),
        message: why.into(),
    }
}

#[test]
fn a_failed_key_waits_its_own_backoff_and_the_others_go_on() {
    let mut d = Debouncer::new(seed_rules());
    let (bad, good) = (key(0), key(1));
    d.offer(t(0), &bad.namespace, &bad.interface, "a").unwrap();
    d.offer(t(0), &good.namespace, &good.interface, "a")
        .unwrap();
    let b = d.poll(t(200)).unwrap();
    assert_eq!(b.mappings.len(), 2);
    let done = d
        .complete_with(t(210), b.id, |k| {
            if *k == bad {
                KeyResult::Transient
            } else {
                KeyResult::Stored
            }
        })
        .unwrap();
    assert!(done.stored.contains(&good, "a"));
    assert_eq!(done.retrying, vec![bad.clone()]);
    // A new key offered now goes after its own windows, not after the bad key's backoff.
    let other = key(2);
    d.offer(t(300), &other.namespace, &other.interface, "a")
        .unwrap();
    let next = d.poll(t(500)).expect("the new key's first check");
    assert_eq!(next.mappings.len(), 1);
    assert!(next.mappings.contains(&other, "a"));
    d.complete(t(510), next.id, true).unwrap();
    // The bad key comes back after its own first backoff (1 s after its failure).
    assert_eq!(d.next_wakeup(), Some(t(1210)));
    let retry = d.poll(t(1210)).unwrap();
    assert!(retry.mappings.contains(&bad, "a"));
    assert_eq!(d.failures(), 1);
}

#[test]
fn permanent_failures_are_parked_then_probed_on_the_slow_schedule() {
    let mut d = Debouncer::new(DebounceConfig {
        park_probe: Duration::from_secs(300),
        ..seed_rules()
    });
    let bad = key(0);
    d.offer(t(0), &bad.namespace, &bad.interface, "a").unwrap();
    let b = d.poll(t(200)).unwrap();
    let done = d
        .complete_with(t(250), b.id, |_| permanent("namespaces \"x\" not found"))
        .unwrap();
    assert_eq!(done.parked, vec![bad.clone()]);
    assert!(d.is_idle(), "a parked key is not pending");
    assert_eq!((d.pending_keys(), d.parked_keys()), (0, 1));
    let p = d.parked(&bad).unwrap().clone();
    assert_eq!(p.reason, "namespace_not_found");
    assert_eq!(p.message, "namespaces \"x\" not found");
    assert_eq!(
        (p.since, p.last_tried, p.next_probe),
        (t(250), t(250), t(300_250))
    );
    // Offers join the parked key and are told so; nothing goes before the probe.
    assert_eq!(
        d.offer(t(1000), &bad.namespace, &bad.interface, "b"),
        Ok(Offered::Parked)
    );
    let s = d
        .offer_all(t(1000), &bad.namespace, "c", &[bad.interface.as_str()])
        .unwrap();
    assert_eq!(s.parked, 1);
    assert_eq!(d.next_wakeup(), Some(t(300_250)));
    assert!(d.poll(t(300_249)).is_none());
    let probe = d.poll(t(300_250)).unwrap();
    assert_eq!(probe.mappings.get(&bad).unwrap().len(), 3);
    // Still failing: parked again, the first-parked time kept, the count grown.
    d.complete_with(t(300_260), probe.id, |_| permanent("still"))
        .unwrap();
    let p = d.parked(&bad).unwrap();
    assert_eq!((p.since, p.tries, p.next_probe), (t(250), 2, t(600_260)));
    // Then the namespace appears: the probe stores it and the key leaves the parked set.
    let probe = d.poll(t(600_260)).unwrap();
    let done = d
        .complete_with(t(600_270), probe.id, |_| KeyResult::Stored)
        .unwrap();
    assert_eq!(done.stored.entries(), 3);
    assert_eq!(d.parked_keys(), 0);
    assert!(d.is_idle());
}

#[test]
fn the_parked_set_is_bounded() {
    let mut d = Debouncer::new(DebounceConfig {
        max_parked_keys: 3,
        ..seed_rules()
    });
    let mut evicted = Vec::new();
    for i in 0..10 {
        let k = key(i);
        d.offer(t(i as u64 * 1000), &k.namespace, &k.interface, "a")
            .unwrap();
        let b = d.poll(t(i as u64 * 1000 + 200)).unwrap();
        let done = d
            .complete_with(t(i as u64 * 1000 + 201), b.id, |_| permanent("no"))
            .unwrap();
        evicted.extend(done.evicted.into_iter().map(|(k, _)| k));
        assert!(d.parked_keys() <= 3);
    }
    assert_eq!(evicted, (0..7).map(key).collect::<Vec<_>>(), "oldest first");
}

/// A virtual-clock run in which `bad` keys fail on every attempt (transiently or for good)
/// and every other key is stored. Returns, per good `(key, app)`, when it was offered and
/// when it was stored.
fn poisoned_run(
    offers: &[(u64, usize, u8)],
    bad: &std::collections::BTreeSet<usize>,
    permanent_failure: bool,
    latency: u64,
    cfg: DebounceConfig,
) -> (Vec<(u64, Option<u64>)>, Debouncer) {
    let mut d = Debouncer::new(cfg);
    let bad_keys: std::collections::HashSet<MappingKey> = bad.iter().map(|i| key(*i)).collect();
    let mut stored_at: BTreeMap<(MappingKey, String), Vec<u64>> = BTreeMap::new();
    let mut offered: Vec<((MappingKey, String), u64)> = Vec::new();
    let mut in_flight: BTreeMap<u64, Vec<Batch>> = BTreeMap::new();
    let mut i = 0;
    let end = offers.last().map_or(0, |o| o.0) + 20_000;
    for now in 0..end {
        for (key, app) in offer_due(&mut d, offers, &mut i, now) {
            if !bad_keys.contains(&key) {
                offered.push(((key, app), now));
            }
        }
        for b in in_flight.remove(&now).unwrap_or_default() {
            let done = d
                .complete_with(t(now), b.id, |k| {
                    if !bad_keys.contains(k) {
                        KeyResult::Stored
                    } else if permanent_failure {
                        permanent("refused")
                    } else {
                        KeyResult::Transient
                    }
                })
                .unwrap();
            for (k, apps) in done.stored.iter() {
                for a in apps.iter() {
                    stored_at
                        .entry((k.clone(), a.to_owned()))
                        .or_default()
                        .push(now);
                }
            }
        }
        while let Some(b) = d.poll(t(now)) {
            in_flight.entry(now + latency).or_default().push(b);
        }
        // Bounded: never more waiting keys than distinct keys offered; the parked set
        // within its limit.
        assert!(d.pending_keys() <= 20);
        assert!(d.parked_keys() <= d.config().max_parked_keys);
    }
    let times = offered
        .into_iter()
        .map(|(pair, at)| {
            // The first store at or after the offer.
            let s = stored_at
                .get(&pair)
                .and_then(|times| times.iter().copied().find(|s| *s >= at));
            (at, s)
        })
        .collect();
    (times, d)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Keys that fail for ever (transiently or for good) never hold another key up by more
    /// than one batch: every writable key is stored within the debounce window plus two
    /// batch latencies (one batch ahead of it, then its own) of being offered, as without
    /// failures; and the waiting state stays bounded.
    #[test]
    fn a_key_that_fails_for_ever_never_delays_another(
        gaps in proptest::collection::vec((0u64..400, 0usize..20, 0u8..3), 1..120),
        bad in proptest::collection::btree_set(0usize..20, 1..4),
        permanent_failure in any::<bool>(),
        latency in 1u64..300,
    ) {
        let mut at = 0;
        let offers: Vec<(u64, usize, u8)> = gaps.iter().map(|(g, k, a)| { at += g; (at, *k, *a) }).collect();
        let cfg = DebounceConfig {
            suppress_acked_for: Duration::ZERO,
            max_parked_keys: 2,
            ..DebounceConfig::default()
        };
        let bound = cfg.debounce_max.as_millis() as u64 + 2 * latency;
        let (times, d) = poisoned_run(&offers, &bad, permanent_failure, latency, cfg);
        for (offered, stored) in times {
            let stored = stored.expect("every writable key is stored");
            prop_assert!(stored <= offered + bound, "offered at {offered} ms, stored at {stored} ms (bound {bound} ms)");
        }
        if permanent_failure {
            prop_assert!(d.parked_keys() <= 2);
            prop_assert_eq!(d.pending_keys(), 0, "parked keys leave the pending set");
        }
    }
}

/// The figure: a healthy key offered after 8 failures of a poisoned one waited
/// 29,990 ms under a batch-wide backoff. Now it goes after its own first check.
#[test]
fn a_healthy_key_offered_after_eight_failures_of_another_goes_after_its_own_window() {
    let mut d = Debouncer::new(seed_rules());
    let (bad, good) = (key(0), key(1));
    d.offer(t(0), &bad.namespace, &bad.interface, "a").unwrap();
    let mut now = 200;
    for _ in 0..8 {
        let b = d.poll(t(now)).expect("the bad key's attempt");
        assert!(b.mappings.get(&good).is_none());
        d.complete(t(now + 10), b.id, false);
        now = d.next_wakeup().unwrap().as_millis();
    }
    assert_eq!(d.failures(), 6, "its backoff is at the cap");
    // 25 s into the bad key's 30 s backoff.
    let offered = now - 5_000;
    d.offer(t(offered), &good.namespace, &good.interface, "a")
        .unwrap();
    assert!(d.poll(t(offered + 199)).is_none());
    let b = d
        .poll(t(offered + 200))
        .expect("the healthy key's own first check");
    assert!(b.mappings.contains(&good, "a"));
    assert!(b.mappings.get(&bad).is_none());
}

/// Offers `(key, app)` at `now`, and acknowledges whatever becomes due by `now`.
fn offer_and_ack(d: &mut Debouncer, now: u64, k: usize, app: &str) -> Offered {
    let o = d
        .offer(t(now), "default", &key(k).interface, app)
        .expect("room");
    if let Some(b) = d.poll(t(now + 1000)) {
        d.complete(t(now + 1000), b.id, true);
    }
    o
}

#[test]
fn acked_pairs_expire_per_application_even_on_a_busy_key() {
    let mut d = Debouncer::new(DebounceConfig {
        suppress_acked_for: Duration::from_secs(10),
        ..no_jitter()
    });
    // app-0 is acknowledged at 1,000 ms.
    assert_eq!(offer_and_ack(&mut d, 0, 1, "app-0"), Offered::Pending);
    assert_eq!(
        offer_and_ack(&mut d, 2000, 1, "app-0"),
        Offered::Acknowledged
    );
    // The key stays busy: a new application is acknowledged every 2 s.
    for i in 1..10u64 {
        offer_and_ack(&mut d, i * 2000, 1, &format!("app-{i}"));
    }
    // 10 s after its own acknowledgement, app-0 is no longer suppressed, however recently
    // its key was acknowledged for others.
    assert_eq!(
        d.offer(t(11_000), "default", &key(1).interface, "app-0"),
        Ok(Offered::Pending)
    );
    assert_eq!(
        d.offer(t(11_000), "default", &key(1).interface, "app-9"),
        Ok(Offered::Acknowledged)
    );
}

#[test]
fn the_acked_set_forgets_the_oldest_pairs_first_when_full() {
    let mut d = Debouncer::new(DebounceConfig {
        suppress_acked_for: Duration::from_secs(3600),
        max_acked_entries: 3,
        ..no_jitter()
    });
    for (i, app) in ["a", "b", "c", "d"].iter().enumerate() {
        offer_and_ack(&mut d, i as u64 * 2000, i, app);
    }
    assert_eq!(d.acked_entries(), 3);
    // "a" (the oldest) is forgotten; "b" .. "d" are still absorbed.
    assert_eq!(
        d.offer(t(9000), "default", &key(0).interface, "a"),
        Ok(Offered::Pending)
    );
    assert_eq!(
        d.offer(t(9000), "default", &key(3).interface, "d"),
        Ok(Offered::Acknowledged)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A steady stream of registrations over many keys and applications, every batch
    /// acknowledged: the acked set never holds more than its bound, nor a pair older than
    /// the suppression window after an offer.
    #[test]
    fn the_acked_set_stays_bounded_under_a_steady_stream(
        max in 1usize..200,
        ttl_ms in 100u64..5000,
        stream in proptest::collection::vec((0usize..50, 0usize..40, 1u64..300), 1..600),
    ) {
        let mut d = Debouncer::new(DebounceConfig {
            suppress_acked_for: Duration::from_millis(ttl_ms),
            max_acked_entries: max,
            ..no_jitter()
        });
        let mut now = 0u64;
        let mut acked_at: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        for (k, app, gap) in stream {
            now += gap;
            let o = d.offer(t(now), "default", &key(k).interface, &format!("app-{app}")).expect("room");
            if o == Offered::Acknowledged {
                // Only within the window of the pair's own last acknowledgement.
                let at = acked_at.get(&(k, app)).copied();
                prop_assert!(at.is_some_and(|a| now < a + ttl_ms), "{k}/{app} at {now}: acked at {at:?}");
            }
            prop_assert!(d.acked_entries() <= max);
            // Nothing left in the set is older than the window.
            prop_assert!(d.acked_entries() <= acked_at.values().filter(|a| now < **a + ttl_ms).count());
            if let Some(b) = d.poll(t(now)) {
                for (key, apps) in b.mappings.iter() {
                    let k: usize = key.interface.trim_start_matches("com.example.Service").parse().expect("n");
                    for a in apps.iter() {
                        let a: usize = a.trim_start_matches("app-").parse().expect("n");
                        acked_at.insert((k, a), now);
                    }
                }
                d.complete(t(now), b.id, true);
                prop_assert!(d.acked_entries() <= max);
            }
        }
    }
}
