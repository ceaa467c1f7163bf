//! The Nacos client's subscription refresh schedule (`ServiceInfoUpdateService.UpdateTask`),
//! sans-io.
//!
//! Each subscribed key gets one task: its first refresh is due `first_delay` after the first
//! subscriber arrives, then every `cache_millis * refresh_multiple` (6 s). A failure or an
//! empty answer backs off as `min(interval << fail_count, max_delay)`: 12, 24, 48, 60 s.
//! The caller asks [`Scheduler::due`] which keys to fetch, fetches them however it can, and
//! reports back with [`Scheduler::on_result`]; listeners get a [`Notification`] only when the
//! content really changed.
//!
//! Deliberate departures from Nacos:
//! * A failed or empty answer never clears the cache and never notifies. A registry blip
//!   must not make every consumer drop its providers (Nacos needs the optional "push empty
//!   protection" for that); mappings only disappear when their last listener leaves.
//! * A late subscriber is handed the cached content at once instead of waiting up to 6 s.
//! * A task stops the moment its last listener leaves, not on its next run.

use core::time::Duration;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use crate::backoff::Backoff;
use crate::model::{AppSet, MappingKey};
use crate::time::Instant;

/// Timing policy. Defaults are the Nacos client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Delay from the first subscription to the first refresh (Nacos `DEFAULT_DELAY`).
    pub first_delay: Duration,
    /// The server's suggested cache lifetime; multiplied by `refresh_multiple`.
    pub cache_millis: Duration,
    /// Refreshes happen every `cache_millis * refresh_multiple`.
    pub refresh_multiple: u32,
    /// Failure count at which the backoff stops growing.
    pub max_fail_count: u32,
    /// Upper bound of any refresh delay.
    pub max_delay: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(1),
            cache_millis: Duration::from_secs(1),
            refresh_multiple: 6,
            max_fail_count: 6,
            max_delay: Duration::from_secs(60),
        }
    }
}

impl ScheduleConfig {
    /// The steady-state refresh interval, `cache_millis * refresh_multiple` (saturating).
    pub fn refresh_interval(&self) -> Duration {
        self.cache_millis
            .checked_mul(self.refresh_multiple)
            .unwrap_or(Duration::MAX)
    }

    /// The backoff this schedule uses: the refresh interval is the unit that failures shift.
    /// No jitter, to match Nacos and keep the schedule exact.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.refresh_interval(), self.max_delay, self.max_fail_count)
    }
}

/// What the caller's fetch of a due key produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshResult {
    /// The registry answered. An empty set is treated like [`RefreshResult::Failed`].
    Fetched(AppSet),
    /// The fetch failed (timeout, connection error, bad response).
    Failed,
}

impl<E> From<Result<AppSet, E>> for RefreshResult {
    fn from(r: Result<AppSet, E>) -> Self {
        r.map_or(Self::Failed, Self::Fetched)
    }
}

/// Tells `listener` that `key` now maps to `apps` (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification<L> {
    /// Who to tell.
    pub listener: L,
    /// Which mapping changed.
    pub key: MappingKey,
    /// The new content, in full.
    pub apps: AppSet,
}

/// One subscribed key.
#[derive(Debug, Clone)]
struct Task<L> {
    listeners: BTreeSet<L>,
    /// Last non-empty content; `None` until the first one arrives.
    cached: Option<AppSet>,
    fail_count: u32,
    /// When the next refresh is due. Meaningless while `in_flight`.
    next_refresh: Instant,
    /// Handed out by `due`, result not back yet.
    in_flight: bool,
}

impl<L: Ord + Clone> Task<L> {
    fn new(next_refresh: Instant) -> Self {
        Self {
            listeners: BTreeSet::new(),
            cached: None,
            fail_count: 0,
            next_refresh,
            in_flight: false,
        }
    }

    /// Caches non-empty `apps`; notifies every listener if it differs from the cache.
    fn update(&mut self, key: &MappingKey, apps: AppSet) -> Vec<Notification<L>> {
        if apps.is_empty() || self.cached.as_ref() == Some(&apps) {
            return Vec::new();
        }
        let notes = self
            .listeners
            .iter()
            .map(|l| Notification {
                listener: l.clone(),
                key: key.clone(),
                apps: apps.clone(),
            })
            .collect();
        self.cached = Some(apps);
        notes
    }
}

/// The refresh schedule of every subscribed key, driven by the caller's clock.
///
/// `L` identifies a listener (a connection id, a stream id...).
#[derive(Debug, Clone)]
pub struct Scheduler<L> {
    config: ScheduleConfig,
    backoff: Backoff,
    tasks: BTreeMap<MappingKey, Task<L>>,
    /// `(next_refresh, key)` of exactly the tasks not in flight, so `due` and `next_wakeup`
    /// touch only what is due instead of scanning thousands of keys.
    queue: BTreeSet<(Instant, MappingKey)>,
    /// Keys of each listener, so `unsubscribe_all` doesn't scan every task.
    by_listener: BTreeMap<L, BTreeSet<MappingKey>>,
}

impl<L: Ord + Clone> Default for Scheduler<L> {
    fn default() -> Self {
        Self::new(ScheduleConfig::default())
    }
}

impl<L: Ord + Clone> Scheduler<L> {
    /// An empty schedule.
    pub fn new(config: ScheduleConfig) -> Self {
        Self {
            backoff: config.backoff(),
            config,
            tasks: BTreeMap::new(),
            queue: BTreeSet::new(),
            by_listener: BTreeMap::new(),
        }
    }

    /// The policy in use.
    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    /// Registers `listener` for `key`. The key's first subscriber starts its task (first
    /// refresh at `now + first_delay`); later ones join it without moving its schedule and,
    /// if content is cached, get it back right away. Subscribing twice is a no-op (`None`).
    pub fn subscribe(
        &mut self,
        now: Instant,
        key: MappingKey,
        listener: L,
    ) -> Option<Notification<L>> {
        let task = match self.tasks.entry(key.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let at = now + self.config.first_delay;
                self.queue.insert((at, e.key().clone()));
                e.insert(Task::new(at))
            }
        };
        if !task.listeners.insert(listener.clone()) {
            return None;
        }
        self.by_listener
            .entry(listener.clone())
            .or_default()
            .insert(key.clone());
        let apps = task.cached.clone()?;
        Some(Notification {
            listener,
            key,
            apps,
        })
    }

    /// Removes `listener` from `key`; returns whether it was subscribed. The last listener
    /// leaving stops the task at once: its cache goes, and a result still in flight for it
    /// will be ignored.
    pub fn unsubscribe(&mut self, key: &MappingKey, listener: &L) -> bool {
        let Some(task) = self.tasks.get_mut(key) else {
            return false;
        };
        if !task.listeners.remove(listener) {
            return false;
        }
        let last = task.listeners.is_empty();
        if let Some(keys) = self.by_listener.get_mut(listener) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_listener.remove(listener);
            }
        }
        if last {
            self.stop(key);
        }
        true
    }

    /// Removes `listener` from every key (its connection went away); returns how many keys
    /// it was subscribed to.
    pub fn unsubscribe_all(&mut self, listener: &L) -> usize {
        let Some(keys) = self.by_listener.remove(listener) else {
            return 0;
        };
        for key in &keys {
            let last = self.tasks.get_mut(key).is_some_and(|task| {
                task.listeners.remove(listener);
                task.listeners.is_empty()
            });
            if last {
                self.stop(key);
            }
        }
        keys.len()
    }

    fn stop(&mut self, key: &MappingKey) {
        if let Some(task) = self.tasks.remove(key) {
            if !task.in_flight {
                self.queue.remove(&(task.next_refresh, key.clone()));
            }
        }
    }

    /// Keys whose refresh is due at or before `now`, earliest first. They are marked in
    /// flight and not handed out again until their [`Scheduler::on_result`], so a slow
    /// registry never gets the same query stacked up.
    pub fn due(&mut self, now: Instant) -> Vec<MappingKey> {
        let mut keys = Vec::new();
        while self.queue.first().is_some_and(|(at, _)| *at <= now) {
            let Some((_, key)) = self.queue.pop_first() else {
                break;
            };
            if let Some(task) = self.tasks.get_mut(&key) {
                task.in_flight = true;
            }
            keys.push(key);
        }
        keys
    }

    /// Records the outcome of refreshing `key` and schedules its next refresh. Non-empty
    /// content resets the failure count and notifies on change; a failure or an empty set
    /// bumps the count (capped) and keeps the cache as it was. Results for keys that are not
    /// in flight (stale, duplicated, or unsubscribed meanwhile) are ignored.
    ///
    /// Without a per-fetch token, a result from before an unsubscribe/resubscribe of the
    /// same key can answer the new task's fetch; it is still that key's content.
    pub fn on_result(
        &mut self,
        now: Instant,
        key: &MappingKey,
        result: RefreshResult,
    ) -> Vec<Notification<L>> {
        let Some(task) = self.tasks.get_mut(key) else {
            return Vec::new();
        };
        if !task.in_flight {
            return Vec::new();
        }
        task.in_flight = false;
        let notes = match result {
            RefreshResult::Fetched(apps) if !apps.is_empty() => {
                task.fail_count = 0;
                task.update(key, apps)
            }
            RefreshResult::Fetched(_) | RefreshResult::Failed => {
                task.fail_count = self.backoff.next_failures(task.fail_count);
                Vec::new()
            }
        };
        task.next_refresh = now + self.backoff.delay(task.fail_count);
        self.queue.insert((task.next_refresh, key.clone()));
        notes
    }

    /// Content pushed by a watch stream rather than fetched. It proves the registry healthy
    /// and the data fresh, so the failure count resets and the next refresh moves to one
    /// interval from `now`. A fetch already in flight stays in flight. An empty push is
    /// ignored, for the same reason an empty refresh never clears the cache.
    pub fn apply(&mut self, now: Instant, key: &MappingKey, apps: AppSet) -> Vec<Notification<L>> {
        if apps.is_empty() {
            return Vec::new();
        }
        let Some(task) = self.tasks.get_mut(key) else {
            return Vec::new();
        };
        task.fail_count = 0;
        let next = now + self.backoff.delay(0);
        if !task.in_flight {
            self.queue.remove(&(task.next_refresh, key.clone()));
            self.queue.insert((next, key.clone()));
        }
        task.next_refresh = next;
        task.update(key, apps)
    }

    /// The earliest refresh due among keys not in flight: when the caller should next call
    /// [`Scheduler::due`]. `None` when nothing is scheduled.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// When `key` is next due; `None` if it is unknown or in flight.
    pub fn next_refresh(&self, key: &MappingKey) -> Option<Instant> {
        self.tasks
            .get(key)
            .filter(|t| !t.in_flight)
            .map(|t| t.next_refresh)
    }

    /// Whether `key` was handed out by `due` and its result is not back yet.
    pub fn is_in_flight(&self, key: &MappingKey) -> bool {
        self.tasks.get(key).is_some_and(|t| t.in_flight)
    }

    /// The last non-empty content of `key`, if any has arrived.
    pub fn cached(&self, key: &MappingKey) -> Option<&AppSet> {
        self.tasks.get(key).and_then(|t| t.cached.as_ref())
    }

    /// Consecutive failed or empty refreshes of `key`, capped at `max_fail_count`.
    pub fn fail_count(&self, key: &MappingKey) -> Option<u32> {
        self.tasks.get(key).map(|t| t.fail_count)
    }

    /// Listeners of `key`, in order.
    pub fn listeners(&self, key: &MappingKey) -> impl Iterator<Item = &L> + '_ {
        self.tasks
            .get(key)
            .into_iter()
            .flat_map(|t| t.listeners.iter())
    }

    /// Subscribed keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &MappingKey> + '_ {
        self.tasks.keys()
    }

    /// Number of tasks (subscribed keys).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no key is subscribed.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn key(i: &str) -> MappingKey {
        MappingKey::new("ns", format!("com.example.{i}"))
    }

    fn apps(names: &[&str]) -> AppSet {
        names.iter().collect()
    }

    fn fetched(names: &[&str]) -> RefreshResult {
        RefreshResult::Fetched(apps(names))
    }

    impl<L: Ord + Clone + core::fmt::Debug> Scheduler<L> {
        /// Internal consistency: the queue holds exactly the tasks not in flight, the
        /// listener index mirrors the tasks, no task is listener-less, no cache is empty.
        fn check(&self) {
            let expected: BTreeSet<(Instant, MappingKey)> = self
                .tasks
                .iter()
                .filter(|(_, t)| !t.in_flight)
                .map(|(k, t)| (t.next_refresh, k.clone()))
                .collect();
            assert_eq!(self.queue, expected);
            let mut by_listener: BTreeMap<L, BTreeSet<MappingKey>> = BTreeMap::new();
            for (k, task) in &self.tasks {
                assert!(!task.listeners.is_empty(), "{k} has no listener");
                assert!(task.cached.as_ref().is_none_or(|a| !a.is_empty()));
                assert!(task.fail_count <= self.config.max_fail_count);
                for l in &task.listeners {
                    by_listener.entry(l.clone()).or_default().insert(k.clone());
                }
            }
            assert_eq!(self.by_listener, by_listener);
        }
    }

    #[test]
    fn nacos_sequence_on_a_virtual_clock() {
        let mut s = Scheduler::<u32>::default();
        let k = key("A");
        assert_eq!(s.subscribe(t(0), k.clone(), 1), None);
        assert_eq!(s.next_wakeup(), Some(t(1000)));
        assert!(s.due(t(999)).is_empty());
        assert_eq!(s.due(t(1000)), vec![k.clone()]);
        assert_eq!(s.next_wakeup(), None);

        let notes = s.on_result(t(1000), &k, fetched(&["app"]));
        assert_eq!(notes.len(), 1);
        assert_eq!(s.fail_count(&k), Some(0));
        assert_eq!(s.next_wakeup(), Some(t(7000)));

        let mut now = 7000;
        for (delay_s, fails) in [
            (12, 1),
            (24, 2),
            (48, 3),
            (60, 4),
            (60, 5),
            (60, 6),
            (60, 6),
        ] {
            assert!(s.due(t(now - 1)).is_empty());
            assert_eq!(s.due(t(now)), vec![k.clone()]);
            assert!(s.on_result(t(now), &k, RefreshResult::Failed).is_empty());
            assert_eq!(s.fail_count(&k), Some(fails));
            now += delay_s * 1000;
            assert_eq!(s.next_wakeup(), Some(t(now)));
            assert_eq!(
                s.cached(&k),
                Some(&apps(&["app"])),
                "a failure keeps the cache"
            );
            s.check();
        }

        assert_eq!(s.due(t(now)), vec![k.clone()]);
        assert!(s.on_result(t(now), &k, fetched(&["app"])).is_empty());
        assert_eq!(s.fail_count(&k), Some(0));
        assert_eq!(s.next_wakeup(), Some(t(now + 6000)));
        s.check();
    }

    #[test]
    fn an_empty_result_counts_as_a_failure_and_keeps_the_cache() {
        let mut s = Scheduler::<u32>::default();
        let k = key("A");
        s.subscribe(t(0), k.clone(), 1);
        // Empty before any content: nothing cached, nothing said.
        assert_eq!(s.due(t(1000)), vec![k.clone()]);
        assert!(s.on_result(t(1000), &k, fetched(&[])).is_empty());
        assert_eq!(s.cached(&k), None);
        assert_eq!(s.fail_count(&k), Some(1));
        assert_eq!(s.next_wakeup(), Some(t(13_000)));

        assert_eq!(s.due(t(13_000)), vec![k.clone()]);
        assert_eq!(s.on_result(t(13_000), &k, fetched(&["a"])).len(), 1);
        let mut now = 19_000;
        for (delay_s, fails) in [
            (12, 1),
            (24, 2),
            (48, 3),
            (60, 4),
            (60, 5),
            (60, 6),
            (60, 6),
        ] {
            assert_eq!(s.due(t(now)), vec![k.clone()]);
            assert!(s.on_result(t(now), &k, fetched(&[])).is_empty());
            assert_eq!(s.fail_count(&k), Some(fails));
            assert_eq!(s.cached(&k), Some(&apps(&["a"])));
            now += delay_s * 1000;
            assert_eq!(s.next_wakeup(), Some(t(now)));
        }
        // Coming back with the same content is not a change either.
        assert_eq!(s.due(t(now)), vec![k.clone()]);
        assert!(s.on_result(t(now), &k, fetched(&["a"])).is_empty());
        s.check();
    }

    #[test]
    fn listeners_hear_only_about_changes_to_their_keys() {
        let mut s = Scheduler::<&str>::default();
        let (a, b) = (key("A"), key("B"));
        s.subscribe(t(0), a.clone(), "x");
        s.subscribe(t(0), a.clone(), "y");
        s.subscribe(t(0), b.clone(), "z");
        assert_eq!(s.due(t(1000)), vec![a.clone(), b.clone()]);
        let notes = s.on_result(t(1000), &a, fetched(&["p"]));
        let to: Vec<_> = notes.iter().map(|n| n.listener).collect();
        assert_eq!(to, vec!["x", "y"]);
        assert!(notes.iter().all(|n| n.key == a && n.apps == apps(&["p"])));
        assert_eq!(s.on_result(t(1000), &b, fetched(&["q"])).len(), 1);

        // Same content again: silence.
        assert_eq!(s.due(t(7000)), vec![a.clone(), b.clone()]);
        assert!(s.on_result(t(7000), &a, fetched(&["p"])).is_empty());
        assert!(s.on_result(t(7000), &b, fetched(&["q"])).is_empty());

        // A change, including a shrink, reaches every listener of that key and nobody else.
        assert_eq!(s.due(t(13_000)), vec![a.clone(), b.clone()]);
        let notes = s.on_result(t(13_000), &a, fetched(&["p", "r"]));
        assert_eq!(
            notes,
            vec![
                Notification {
                    listener: "x",
                    key: a.clone(),
                    apps: apps(&["p", "r"])
                },
                Notification {
                    listener: "y",
                    key: a.clone(),
                    apps: apps(&["p", "r"])
                },
            ]
        );
        assert!(s.on_result(t(13_000), &b, fetched(&["q"])).is_empty());
        assert_eq!(s.due(t(19_000)), vec![a.clone(), b.clone()]);
        let notes = s.on_result(t(19_000), &a, fetched(&["r"]));
        assert_eq!(notes.len(), 2);
        assert!(notes.iter().all(|n| n.apps == apps(&["r"])));
        assert_eq!(s.cached(&a), Some(&apps(&["r"])));
        s.check();
    }

    #[test]
    fn a_late_subscriber_gets_the_cache_at_once_and_duplicates_are_no_ops() {
        let mut s = Scheduler::<u32>::default();
        let k = key("A");
        assert_eq!(s.subscribe(t(0), k.clone(), 1), None);
        assert_eq!(s.subscribe(t(10), k.clone(), 2), None, "nothing cached yet");
        assert_eq!(s.due(t(1000)), vec![k.clone()]);
        assert_eq!(s.on_result(t(1000), &k, fetched(&["a"])).len(), 2);

        let late = s.subscribe(t(2000), k.clone(), 3);
        assert_eq!(
            late,
            Some(Notification {
                listener: 3,
                key: k.clone(),
                apps: apps(&["a"])
            })
        );
        assert_eq!(s.subscribe(t(2500), k.clone(), 3), None);
        assert_eq!(s.subscribe(t(2500), k.clone(), 1), None);
        assert_eq!(s.listeners(&k).copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(s.len(), 1);
        // Joining does not move the schedule.
        assert_eq!(s.next_wakeup(), Some(t(7000)));
        s.check();
    }

    #[test]
    fn the_last_unsubscribe_stops_the_task() {
        let mut s = Scheduler::<u32>::default();
        let (a, b) = (key("A"), key("B"));
        s.subscribe(t(0), a.clone(), 1);
        s.subscribe(t(0), a.clone(), 2);
        s.subscribe(t(500), b.clone(), 1);

        // One of two leaves: the task carries on.
        assert!(s.unsubscribe(&a, &1));
        assert!(!s.unsubscribe(&a, &1));
        assert_eq!(s.due(t(1000)), vec![a.clone()]);
        assert_eq!(s.on_result(t(1000), &a, fetched(&["x"])).len(), 1);

        // The last one leaves while queued.
        assert!(s.unsubscribe(&a, &2));
        assert_eq!(s.cached(&a), None);
        assert_eq!(s.next_wakeup(), Some(t(1500)));
        assert_eq!(s.due(t(1500)), vec![b.clone()]);

        // The last one leaves while in flight: the late result is dropped.
        assert!(s.unsubscribe(&b, &1));
        assert!(s.on_result(t(1600), &b, fetched(&["y"])).is_empty());
        assert!(s.is_empty());
        assert_eq!(s.next_wakeup(), None);
        assert!(s.due(t(1_000_000)).is_empty());
        s.check();

        // Coming back starts afresh.
        assert_eq!(s.subscribe(t(2000), a.clone(), 3), None);
        assert_eq!(s.next_wakeup(), Some(t(3000)));
        s.check();
    }

    #[test]
    fn unsubscribe_all_leaves_every_key() {
        let mut s = Scheduler::<u32>::default();
        let (a, b) = (key("A"), key("B"));
        s.subscribe(t(0), a.clone(), 1);
        s.subscribe(t(0), b.clone(), 1);
        s.subscribe(t(0), b.clone(), 2);
        assert_eq!(s.due(t(1000)), vec![a.clone(), b.clone()]);
        assert_eq!(s.unsubscribe_all(&1), 2);
        assert_eq!(s.unsubscribe_all(&1), 0);
        assert_eq!(s.keys().cloned().collect::<Vec<_>>(), vec![b.clone()]);
        assert!(s.on_result(t(1100), &a, fetched(&["x"])).is_empty());
        assert_eq!(s.on_result(t(1100), &b, fetched(&["x"])).len(), 1);
        s.check();
    }

    #[test]
    fn in_flight_keys_are_not_handed_out_twice() {
        let mut s = Scheduler::<u32>::default();
        let (a, b) = (key("A"), key("B"));
        s.subscribe(t(0), a.clone(), 1);
        s.subscribe(t(100), b.clone(), 1);
        assert_eq!(s.due(t(1000)), vec![a.clone()]);
        assert!(s.is_in_flight(&a));
        assert_eq!(s.next_refresh(&a), None);
        assert_eq!(s.next_wakeup(), Some(t(1100)));
        assert_eq!(s.due(t(1_000_000)), vec![b.clone()]);
        assert!(s.due(t(2_000_000)).is_empty());
        assert_eq!(s.next_wakeup(), None);

        assert_eq!(s.on_result(t(2_000_000), &a, fetched(&["x"])).len(), 1);
        // A duplicate result for a key no longer in flight changes nothing.
        assert!(s
            .on_result(t(2_000_001), &a, RefreshResult::Failed)
            .is_empty());
        assert_eq!(s.fail_count(&a), Some(0));
        assert_eq!(s.next_refresh(&a), Some(t(2_006_000)));
        assert_eq!(s.next_wakeup(), Some(t(2_006_000)));
        s.check();
    }

    #[test]
    fn apply_notifies_on_change_and_postpones_the_refresh() {
        let mut s = Scheduler::<u32>::default();
        let k = key("A");
        s.subscribe(t(0), k.clone(), 1);
        let notes = s.apply(t(500), &k, apps(&["a"]));
        assert_eq!(
            notes,
            vec![Notification {
                listener: 1,
                key: k.clone(),
                apps: apps(&["a"])
            }]
        );
        assert_eq!(s.next_wakeup(), Some(t(6500)));
        assert!(s.due(t(1000)).is_empty());
        assert!(s.apply(t(600), &k, apps(&["a"])).is_empty());
        assert_eq!(s.next_wakeup(), Some(t(6600)));
        // Empty pushes and unknown keys are ignored.
        assert!(s.apply(t(700), &k, AppSet::new()).is_empty());
        assert!(s.apply(t(700), &key("B"), apps(&["b"])).is_empty());
        assert_eq!(s.next_wakeup(), Some(t(6600)));
        assert_eq!(s.cached(&k), Some(&apps(&["a"])));

        // After failures, a push resets the backoff.
        assert_eq!(s.due(t(6600)), vec![k.clone()]);
        s.on_result(t(6600), &k, RefreshResult::Failed);
        assert_eq!(s.next_wakeup(), Some(t(18_600)));
        assert_eq!(s.apply(t(7000), &k, apps(&["a", "b"])).len(), 1);
        assert_eq!(s.fail_count(&k), Some(0));
        assert_eq!(s.next_wakeup(), Some(t(13_000)));

        // A push while a fetch is in flight leaves the fetch in flight.
        assert_eq!(s.due(t(13_000)), vec![k.clone()]);
        assert_eq!(s.apply(t(13_100), &k, apps(&["b"])).len(), 1);
        assert!(s.is_in_flight(&k));
        assert_eq!(s.next_wakeup(), None);
        assert!(s.due(t(100_000)).is_empty());
        assert!(s.on_result(t(13_200), &k, fetched(&["b"])).is_empty());
        assert_eq!(s.next_wakeup(), Some(t(19_200)));
        s.check();
    }

    #[test]
    fn config_arithmetic() {
        let c = ScheduleConfig::default();
        assert_eq!(c.refresh_interval(), Duration::from_secs(6));
        let huge = ScheduleConfig {
            cache_millis: Duration::MAX,
            ..ScheduleConfig::default()
        };
        assert_eq!(huge.refresh_interval(), Duration::MAX);
        // Even the success delay respects max_delay, as in Nacos (`min(delay << 0, 60 s)`).
        let mut s = Scheduler::<u32>::new(huge);
        s.subscribe(t(0), key("A"), 1);
        assert_eq!(s.due(t(1000)).len(), 1);
        s.on_result(t(1000), &key("A"), fetched(&["a"]));
        assert_eq!(s.next_wakeup(), Some(t(61_000)));
        assert_eq!(
            RefreshResult::from(Ok::<_, ()>(apps(&["a"]))),
            fetched(&["a"])
        );
        assert_eq!(
            RefreshResult::from(Err::<AppSet, _>("boom")),
            RefreshResult::Failed
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Subscribe(u8, u8),
        Unsubscribe(u8, u8),
        UnsubscribeAll(u8),
        Advance(u64),
        Due,
        Result(u8, Option<u8>),
        Apply(u8, u8),
    }

    const KEYS: u8 = 4;
    const LISTENERS: u8 = 3;

    /// Content drawn from a handful of sets, so repeats (and non-changes) are common.
    /// Variant 0 is the empty set.
    fn content(v: u8) -> AppSet {
        match v % 4 {
            0 => AppSet::new(),
            1 => apps(&["a"]),
            2 => apps(&["a", "b"]),
            _ => apps(&["b"]),
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..KEYS, 0..LISTENERS).prop_map(|(k, l)| Op::Subscribe(k, l)),
            1 => (0..KEYS, 0..LISTENERS).prop_map(|(k, l)| Op::Unsubscribe(k, l)),
            1 => (0..LISTENERS).prop_map(Op::UnsubscribeAll),
            3 => prop_oneof![0..2000u64, 0..70_000u64].prop_map(Op::Advance),
            3 => Just(Op::Due),
            4 => (0..KEYS, proptest::option::of(0..4u8)).prop_map(|(k, c)| Op::Result(k, c)),
            2 => (0..KEYS, 0..4u8).prop_map(|(k, c)| Op::Apply(k, c)),
        ]
    }

    fn k(i: u8) -> MappingKey {
        key(&format!("I{i}"))
    }

    /// Checks and records notifications against the model of who is subscribed.
    fn deliver(
        notes: Vec<Notification<u8>>,
        s: &Scheduler<u8>,
        subs: &BTreeSet<(u8, u8)>,
        heard: &mut BTreeMap<(u8, u8), AppSet>,
    ) -> Result<(), TestCaseError> {
        for n in notes {
            let ki = (0..KEYS).find(|i| k(*i) == n.key).unwrap_or(u8::MAX);
            prop_assert!(
                subs.contains(&(ki, n.listener)),
                "{n:?} to a non-subscriber"
            );
            prop_assert!(!n.apps.is_empty());
            prop_assert_eq!(s.cached(&n.key), Some(&n.apps));
            let prev = heard.insert((ki, n.listener), n.apps.clone());
            prop_assert_ne!(prev.as_ref(), Some(&n.apps), "repeated notification");
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn random_operations_keep_the_invariants(ops in proptest::collection::vec(op(), 0..200)) {
            let mut s = Scheduler::<u8>::default();
            let backoff = s.config().backoff();
            let mut now = 0u64;
            let mut last_due: Option<u64> = None;
            // Model: who is subscribed to what, which keys are in flight.
            let mut subs: BTreeSet<(u8, u8)> = BTreeSet::new();
            let mut in_flight: BTreeSet<u8> = BTreeSet::new();
            // Last content each (listener, key) heard during its current subscription.
            let mut heard: BTreeMap<(u8, u8), AppSet> = BTreeMap::new();

            for op in ops {
                match op {
                    Op::Subscribe(ki, l) => {
                        let new_key = !subs.iter().any(|(k2, _)| *k2 == ki);
                        let dup = subs.contains(&(ki, l));
                        let cached = s.cached(&k(ki)).cloned();
                        let note = s.subscribe(t(now), k(ki), l);
                        if dup {
                            prop_assert_eq!(note, None);
                        } else {
                            subs.insert((ki, l));
                            if new_key {
                                prop_assert_eq!(s.next_refresh(&k(ki)), Some(t(now + 1000)));
                            }
                            prop_assert_eq!(note.as_ref().map(|n| &n.apps), cached.as_ref());
                            deliver(note.into_iter().collect(), &s, &subs, &mut heard)?;
                        }
                    }
                    Op::Unsubscribe(ki, l) => {
                        prop_assert_eq!(s.unsubscribe(&k(ki), &l), subs.remove(&(ki, l)));
                        heard.remove(&(ki, l));
                    }
                    Op::UnsubscribeAll(l) => {
                        let mine: Vec<_> = subs.iter().filter(|(_, l2)| *l2 == l).copied().collect();
                        prop_assert_eq!(s.unsubscribe_all(&l), mine.len());
                        for sub in mine {
                            subs.remove(&sub);
                            heard.remove(&sub);
                        }
                    }
                    Op::Advance(ms) => now += ms,
                    Op::Due => {
                        // Brute force over all tasks agrees with the time index.
                        let expected: BTreeSet<MappingKey> = s
                            .keys()
                            .filter(|key| s.next_refresh(key).is_some_and(|at| at <= t(now)))
                            .cloned()
                            .collect();
                        let got = s.due(t(now));
                        prop_assert_eq!(&got.iter().cloned().collect::<BTreeSet<_>>(), &expected);
                        prop_assert_eq!(got.len(), expected.len());
                        for key in &got {
                            prop_assert!(s.listeners(key).next().is_some());
                            let ki = (0..KEYS).find(|i| k(*i) == *key).unwrap_or(u8::MAX);
                            prop_assert!(in_flight.insert(ki), "{key} handed out twice");
                        }
                        last_due = Some(now);
                    }
                    Op::Result(ki, c) => {
                        let result = c.map_or(RefreshResult::Failed, |c| RefreshResult::Fetched(content(c)));
                        let success = c.is_some_and(|c| !content(c).is_empty());
                        let live = in_flight.remove(&ki);
                        prop_assert_eq!(live, s.is_in_flight(&k(ki)));
                        let fails = s.fail_count(&k(ki));
                        let notes = s.on_result(t(now), &k(ki), result);
                        if live {
                            let f = if success { 0 } else { backoff.next_failures(fails.unwrap_or(0)) };
                            prop_assert_eq!(s.fail_count(&k(ki)), Some(f));
                            prop_assert_eq!(s.next_refresh(&k(ki)), Some(t(now) + backoff.delay(f)));
                        } else {
                            prop_assert!(notes.is_empty());
                        }
                        deliver(notes, &s, &subs, &mut heard)?;
                    }
                    Op::Apply(ki, c) => {
                        let flying = s.is_in_flight(&k(ki));
                        let notes = s.apply(t(now), &k(ki), content(c));
                        prop_assert_eq!(s.is_in_flight(&k(ki)), flying);
                        deliver(notes, &s, &subs, &mut heard)?;
                    }
                }
                // A key stopped while in flight forgets its flight.
                in_flight.retain(|ki| s.is_in_flight(&k(*ki)));
                s.check();
                prop_assert_eq!(
                    s.keys().cloned().collect::<BTreeSet<_>>(),
                    subs.iter().map(|(ki, _)| k(*ki)).collect::<BTreeSet<_>>()
                );
                if let (Some(wake), Some(d)) = (s.next_wakeup(), last_due) {
                    prop_assert!(wake > t(d), "{wake:?} not after the last due({d})");
                }
                prop_assert_eq!(
                    s.next_wakeup(),
                    s.keys().filter_map(|key| s.next_refresh(key)).min()
                );
            }
        }
    }
}
