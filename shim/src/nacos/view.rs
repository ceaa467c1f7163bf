//! What a Nacos client sees of a mapping: the store's cache plus the mappings this endpoint
//! accepted that are not in the store yet (read-your-writes).
//!
//! Dubbo registers an interface by query → publish → query: a query right after an
//! accepted publish must already show it, or Dubbo publishes again (and the next interface
//! of the app waits for a debounce window). The overlay holds accepted `(key, apps)` until
//! the store's cache holds them; [`View::prune`] is called for every key the store reports
//! changed. The overlay is bounded by the pipeline: only offers the pipeline accepted are
//! added, and it refuses more than `--max-pending-keys` keys.

use std::collections::HashMap;
use std::sync::Mutex;

use snp_core::{AppSet, MappingKey, Mappings};

use crate::store::Store;

/// Separator of application names in a `mapping` config.
pub const SEPARATOR: char = ',';

/// The cache plus accepted-but-unwritten mappings.
pub struct View<S: Store> {
    store: S,
    overlay: Mutex<HashMap<MappingKey, AppSet>>,
}

impl<S: Store> View<S> {
    /// A view of `store` with nothing pending.
    pub fn new(store: S) -> Self {
        Self {
            store,
            overlay: Mutex::new(HashMap::new()),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, HashMap<MappingKey, AppSet>> {
        self.overlay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every application of `key` a client should see.
    pub fn apps(&self, key: &MappingKey) -> AppSet {
        let mut apps = self
            .store
            .get(&key.namespace, std::slice::from_ref(&key.interface))
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, e)| e.apps)
            .unwrap_or_default();
        if let Some(pending) = self.overlay().get(key) {
            apps.union(pending);
        }
        apps
    }

    /// Whether the store's cache (not the overlay) holds every app of `apps` for `key`.
    pub fn stored(&self, key: &MappingKey, apps: &AppSet) -> bool {
        let mut one = Mappings::new();
        one.insert_set(key.clone(), apps);
        self.store.contains_all(&one)
    }

    /// Records `apps` of `key` as accepted; returns whether the view changed.
    pub fn accept(&self, key: &MappingKey, apps: &AppSet) -> bool {
        let before = self.apps(key);
        if apps.is_subset(&before) {
            return false;
        }
        self.overlay().entry(key.clone()).or_default().union(apps);
        true
    }

    /// Drops what the store now holds of `key` from the overlay.
    pub fn prune(&self, key: &MappingKey) {
        let Some(pending) = self.overlay().get(key).cloned() else {
            return;
        };
        if self.stored(key, &pending) {
            let mut overlay = self.overlay();
            // Only if nothing was added meanwhile; else the next change prunes it.
            if overlay.get(key) == Some(&pending) {
                overlay.remove(key);
            }
        }
    }

    /// Prunes every key (after missing store changes).
    pub fn prune_all(&self) {
        let keys: Vec<MappingKey> = self.overlay().keys().cloned().collect();
        for key in keys {
            self.prune(&key);
        }
    }

    /// Keys waiting in the overlay.
    pub fn pending_keys(&self) -> usize {
        self.overlay().len()
    }
}

/// The content of a `mapping` config: the application names, sorted, comma-separated.
pub fn content(apps: &AppSet) -> String {
    let mut out = String::new();
    for (i, app) in apps.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        out.push_str(app);
    }
    out
}

/// The application names of published content: split on commas, trimmed (as Dubbo reads
/// them), empty entries skipped.
pub fn parse_content(content: &str) -> Vec<&str> {
    content
        .split(SEPARATOR)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Lower-case hex MD5 of the UTF-8 bytes of `content`; "" for no content (what a client
/// that holds nothing sends).
pub fn md5_hex(content: &str) -> String {
    use md5::Digest;
    if content.is_empty() {
        return String::new();
    }
    let digest = md5::Md5::digest(content.as_bytes());
    let mut out = String::with_capacity(32);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The interface name of a `mapping` data id. Dubbo's Nacos metadata report writes `$` as
/// `___` and `/` as `-` (Nacos forbids both in data ids); this undoes it. Java interface
/// names never contain `-`, so the decoding is unambiguous for them.
pub fn decode_data_id(data_id: &str) -> String {
    data_id.replace("___", "$").replace('-', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_is_lower_case_hex_of_utf8() {
        assert_eq!(md5_hex("hello"), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(md5_hex("app-ä,b"), "160f2380a783076568e8deb2005f9d9f");
        assert_eq!(md5_hex(""), "");
    }

    #[test]
    fn data_ids_decode_to_interface_names() {
        assert_eq!(decode_data_id("snp.it.Outer___Inner"), "snp.it.Outer$Inner");
        assert_eq!(decode_data_id("com.acme.Svc"), "com.acme.Svc");
        assert_eq!(decode_data_id("a-b"), "a/b");
    }

    #[test]
    fn content_round_trips() {
        let apps: AppSet = ["b", "a"].iter().collect();
        assert_eq!(content(&apps), "a,b");
        assert_eq!(parse_content(" a, b,,c ,"), vec!["a", "b", "c"]);
        assert!(parse_content("").is_empty());
    }
}
