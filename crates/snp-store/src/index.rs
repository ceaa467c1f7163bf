//! The one in-memory index of mapping objects both stores keep, and the one name chooser.
//!
//! Two indexes:
//!
//! * by key `(namespace, spec.interfaceName)`: every object holding that interface, by
//!   object name. Normally one; more only if some other tool (or a race with an operator's
//!   delete) produced a second object. The key's applications are the union over them.
//!   This is the secondary index by `spec.interfaceName` that lookups, watches and the
//!   "already there" check use.
//! * by name `(namespace, object name)`: which interface occupies a name, so the writer
//!   knows which candidate names are free.
//!
//! Each object carries a payload of the store's own (the Kubernetes store keeps the
//! server's JSON of the object, the embedded store its file and generation). Everything
//! here is pure (no I/O), so the naming and update rules are unit-tested.

use std::collections::{BTreeMap, HashMap};

use snp_core::{naming, AppSet, MappingKey, Mappings};

use crate::{Change, Entry};

/// One object, as indexed.
#[derive(Debug, Clone)]
pub struct Held<T> {
    /// The store's own copy of the object.
    pub payload: T,
    /// Its application names.
    pub apps: AppSet,
    /// Its revision (`resourceVersion`, or a file generation).
    pub rv: String,
}

/// Who occupies an object name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Occupant {
    /// An object holding this interface.
    Interface(String),
    /// An object whose spec could not be read: the name is taken, by nobody we know.
    Unreadable,
}

/// The objects holding one key, by name, sorted. Almost always exactly one: a `Vec` sized to
/// its content, where a `BTreeMap` would allocate a node of eleven object slots per key
/// (about 6 KiB a key with the stores' payloads).
#[derive(Debug, Clone)]
pub struct Objects<T>(Vec<(Box<str>, Held<T>)>);

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> Objects<T> {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| (**n).cmp(name))
    }

    /// Object `name`.
    pub fn get(&self, name: &str) -> Option<&Held<T>> {
        self.position(name).ok().map(|i| &self.0[i].1)
    }

    /// Object `name`, with its name.
    fn get_key_value(&self, name: &str) -> Option<(&str, &Held<T>)> {
        self.position(name)
            .ok()
            .map(|i| (&*self.0[i].0, &self.0[i].1))
    }

    /// Adds or replaces object `name`, growing by exactly one slot when it is new.
    fn insert(&mut self, name: &str, held: Held<T>) {
        match self.position(name) {
            Ok(i) => self.0[i].1 = held,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (name.into(), held));
            }
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(i) = self.position(name) {
            self.0.remove(i);
            self.0.shrink_to_fit();
        }
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no object.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The objects with their names, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Held<T>)> {
        self.0.iter().map(|(n, h)| (&**n, h))
    }

    /// The objects, by name.
    pub fn values(&self) -> impl Iterator<Item = &Held<T>> {
        self.0.iter().map(|(_, h)| h)
    }
}

/// The index. See the module docs.
#[derive(Debug)]
pub struct MappingIndex<T> {
    keys: BTreeMap<MappingKey, Objects<T>>,
    names: HashMap<(String, String), Occupant>,
}

impl<T> Default for MappingIndex<T> {
    fn default() -> Self {
        Self {
            keys: BTreeMap::new(),
            names: HashMap::new(),
        }
    }
}

/// Whether revision `a` is older than `b`. Resource versions are opaque strings in the API
/// contract; every etcd-backed server uses integers (and file generations are integers),
/// so they are compared as integers when both parse, and treated as "not older" otherwise
/// (the newer event wins).
pub fn rv_older(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x < y,
        _ => false,
    }
}

impl<T> MappingIndex<T> {
    /// Whether the key's objects together hold every app of `want`.
    pub fn holds(&self, key: &MappingKey, want: &AppSet) -> bool {
        match self.keys.get(key) {
            Some(objs) => want
                .iter()
                .all(|a| objs.values().any(|h| h.apps.contains(a))),
            None => want.is_empty(),
        }
    }

    /// Whether every `(key, app)` of `mappings` is held.
    pub fn contains_all(&self, mappings: &Mappings) -> bool {
        mappings.iter().all(|(k, apps)| self.holds(k, apps))
    }

    /// The object a union update of `key` goes to, with its name: the first candidate name
    /// holding the key (the seed's name before the hashed one), else the smallest other
    /// name.
    pub fn target(&self, key: &MappingKey) -> Option<(&str, &Held<T>)> {
        let objs = self.keys.get(key)?;
        naming::candidate_names(&key.interface)
            .iter()
            .find_map(|n| objs.get_key_value(n.as_str()))
            .or_else(|| objs.iter().next())
    }

    /// Object `name` of `key`, if the index holds it under that key.
    pub fn held(&self, key: &MappingKey, name: &str) -> Option<&Held<T>> {
        self.keys.get(key)?.get(name)
    }

    /// Whether object `name` of `namespace` exists.
    pub fn is_taken(&self, namespace: &str, name: &str) -> bool {
        self.names
            .contains_key(&(namespace.to_owned(), name.to_owned()))
    }

    /// The name a new object for `key` gets: the first candidate that is free (and that
    /// `usable` accepts, e.g. no foreign file holds it) or already holds the same
    /// interface. `None` if every candidate holds another interface.
    pub fn choose_name(&self, key: &MappingKey, usable: impl Fn(&str) -> bool) -> Option<String> {
        naming::candidate_names(&key.interface)
            .into_iter()
            .find(
                |name| match self.names.get(&(key.namespace.clone(), name.clone())) {
                    None => usable(name),
                    Some(Occupant::Interface(i)) => *i == key.interface,
                    Some(Occupant::Unreadable) => false,
                },
            )
    }

    /// What the store holds for `key`: the union over its objects, and their revision
    /// (`name:rv,...` when there are several).
    pub fn entry(&self, key: &MappingKey) -> Option<Entry> {
        let objs = self.keys.get(key)?;
        let mut apps = AppSet::new();
        for h in objs.values() {
            apps.union(&h.apps);
        }
        let revision = if objs.len() == 1 {
            objs.values()
                .next()
                .map(|h| h.rv.clone())
                .unwrap_or_default()
        } else {
            objs.iter()
                .map(|(name, h)| format!("{name}:{}", h.rv))
                .collect::<Vec<_>>()
                .join(",")
        };
        Some(Entry { apps, revision })
    }

    /// Content of `namespace`, limited to `interfaces` unless empty; sorted by key.
    pub fn get(&self, namespace: &str, interfaces: &[String]) -> Vec<(MappingKey, Entry)> {
        if interfaces.is_empty() {
            let start = MappingKey::new(namespace, "");
            return self
                .keys
                .range(start..)
                .take_while(|(k, _)| k.namespace == namespace)
                .filter_map(|(k, _)| Some((k.clone(), self.entry(k)?)))
                .collect();
        }
        let mut out: Vec<(MappingKey, Entry)> = interfaces
            .iter()
            .filter_map(|i| {
                let k = MappingKey::new(namespace, i.as_str());
                let e = self.entry(&k)?;
                Some((k, e))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Namespaces with at least one key, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for key in self.keys.keys() {
            if out.last() != Some(&key.namespace) {
                out.push(key.namespace.clone());
            }
        }
        out
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &MappingKey> {
        self.keys.keys()
    }

    /// Whether some object holds `key`.
    pub fn contains_key(&self, key: &MappingKey) -> bool {
        self.keys.contains_key(key)
    }

    /// Adds or replaces object `name` of `namespace` unless the index already has this or
    /// a newer revision of it. `spec` is `(interface, apps)`, `None` for an object whose
    /// spec is unreadable (its name counts as taken). Returns the changes it made visible.
    pub fn upsert(
        &mut self,
        namespace: &str,
        name: &str,
        spec: Option<(String, AppSet)>,
        rv: String,
        payload: T,
    ) -> Vec<Change> {
        let slot = (namespace.to_owned(), name.to_owned());
        let old_key = match self.names.get(&slot) {
            Some(Occupant::Interface(i)) => {
                let k = MappingKey::new(namespace, i.as_str());
                if let Some(h) = self.keys.get(&k).and_then(|o| o.get(name)) {
                    if rv_older(&rv, &h.rv) || h.rv == rv {
                        return Vec::new();
                    }
                }
                Some(k)
            }
            _ => None,
        };
        let new_key = spec
            .as_ref()
            .map(|(i, _)| MappingKey::new(namespace, i.as_str()));
        let mut touched: Vec<MappingKey> = old_key.iter().chain(new_key.iter()).cloned().collect();
        touched.dedup();
        let before: Vec<Option<Entry>> = touched.iter().map(|k| self.entry(k)).collect();
        if let Some(k) = &old_key {
            self.remove_from_key(k, name);
        }
        match spec {
            Some((iface, apps)) => {
                self.names.insert(slot, Occupant::Interface(iface.clone()));
                self.keys
                    .entry(MappingKey::new(namespace, iface))
                    .or_default()
                    .insert(name, Held { payload, apps, rv });
            }
            None => {
                tracing::warn!(%namespace, %name, "ServiceNameMapping without a readable spec.interfaceName; its name is treated as taken");
                self.names.insert(slot, Occupant::Unreadable);
            }
        }
        self.diff(touched, before)
    }

    /// Removes object `name` of `namespace` unless the index holds a version newer than
    /// `rv` (a delete event for an object that was re-created since).
    pub fn remove(&mut self, namespace: &str, name: &str, rv: Option<&str>) -> Vec<Change> {
        let slot = (namespace.to_owned(), name.to_owned());
        let key = match self.names.get(&slot) {
            None => return Vec::new(),
            Some(Occupant::Unreadable) => {
                self.names.remove(&slot);
                return Vec::new();
            }
            Some(Occupant::Interface(i)) => MappingKey::new(namespace, i.as_str()),
        };
        if let (Some(rv), Some(h)) = (rv, self.keys.get(&key).and_then(|o| o.get(name))) {
            if rv_older(rv, &h.rv) {
                return Vec::new();
            }
        }
        let before = vec![self.entry(&key)];
        self.names.remove(&slot);
        self.remove_from_key(&key, name);
        self.diff(vec![key], before)
    }

    /// Replaces the whole content with `fresh` (after a re-list) and returns the
    /// differences as changes.
    pub fn replace_all(&mut self, fresh: Self) -> Vec<Change> {
        let old = std::mem::replace(self, fresh);
        let mut changes = Vec::new();
        for key in old.keys.keys() {
            if !self.keys.contains_key(key) {
                changes.push(Change::Delete { key: key.clone() });
            }
        }
        for key in self.keys.keys() {
            let new = self.entry(key);
            if new != old.entry(key) {
                if let Some(entry) = new {
                    changes.push(Change::Upsert {
                        key: key.clone(),
                        entry,
                    });
                }
            }
        }
        changes
    }

    fn remove_from_key(&mut self, key: &MappingKey, name: &str) {
        if let Some(objs) = self.keys.get_mut(key) {
            objs.remove(name);
            if objs.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    fn diff(&self, keys: Vec<MappingKey>, before: Vec<Option<Entry>>) -> Vec<Change> {
        keys.into_iter()
            .zip(before)
            .filter_map(|(key, old)| {
                let new = self.entry(&key);
                if new == old {
                    return None;
                }
                Some(match new {
                    Some(entry) => Change::Upsert { key, entry },
                    None => Change::Delete { key },
                })
            })
            .collect()
    }
}

/// The naming, revision and change rules are tested through the Kubernetes store's view
/// (`kube::cache`); these cover what only the index does.
#[cfg(test)]
mod tests {
    use super::*;

    fn set(apps: &[&str]) -> AppSet {
        apps.iter().collect()
    }

    fn put(ix: &mut MappingIndex<()>, ns: &str, name: &str, iface: &str, apps: &[&str], rv: &str) {
        ix.upsert(ns, name, Some((iface.into(), set(apps))), rv.into(), ());
    }

    #[test]
    fn a_new_interface_gets_the_seed_name_unless_its_file_is_taken() {
        let ix = MappingIndex::<()>::default();
        let k = MappingKey::new("ns", "com.acme.Foo");
        assert_eq!(ix.choose_name(&k, |_| true), Some("com-acme-foo".into()));
        assert_eq!(
            ix.choose_name(&k, |n| n != "com-acme-foo"),
            Some(naming::hashed_name("com.acme.Foo"))
        );
    }

    #[test]
    fn get_is_sorted_deduplicated_and_stays_in_its_namespace() {
        let mut ix = MappingIndex::default();
        put(&mut ix, "a", "x", "com.X", &["1"], "1");
        put(&mut ix, "ab", "x", "com.X", &["1"], "2");
        put(&mut ix, "ab", "y", "com.A", &["1"], "3");
        assert_eq!(ix.get("ab", &[]).len(), 2);
        let got = ix.get("ab", &["com.X".into(), "com.A".into(), "com.X".into()]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.interface, "com.A");
    }
}
