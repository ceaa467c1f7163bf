//! The in-memory index of `ServiceNameMapping` objects, fed by the watch and by the
//! store's own write responses.
//!
//! Two indexes:
//!
//! * by key `(namespace, spec.interfaceName)`: every object holding that interface, by
//!   object name. Normally one; more only if some other tool (or a race with an operator's
//!   delete) produced a second object. The key's applications are the union over them.
//! * by name `(namespace, object name)`: which interface occupies a name, so the writer
//!   knows which candidate names are free.
//!
//! Everything here is pure (no I/O), so the naming and update rules are unit-tested.

use std::collections::{BTreeMap, HashMap};

use ::kube::api::{DynamicObject, TypeMeta};
use ::kube::core::ApiResource;
use serde_json::Value;
use snp_core::{naming, AppSet, MappingKey, Mappings};

use crate::store::{Change, Entry};

/// One object, as cached.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    /// The object as the server returned it, without `managedFields` (kept for the
    /// replace body, so labels, annotations and unknown fields survive a union update).
    pub obj: DynamicObject,
    /// Its application names.
    pub apps: AppSet,
    /// Its `resourceVersion`.
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

/// The cache proper.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    keys: BTreeMap<MappingKey, BTreeMap<String, Held>>,
    names: HashMap<(String, String), Occupant>,
}

/// What the writer should do for a key, decided from the cache.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    /// The cache already holds every application: no request.
    Nothing,
    /// Replace object `name` with `body` (which carries the cached `resourceVersion`).
    Update {
        name: String,
        body: Box<DynamicObject>,
    },
    /// Create a new object named `name`.
    Create { name: String },
    /// Every candidate name is held by another interface (an 80-bit hash collision).
    NoName,
}

/// `spec.interfaceName` and `spec.applicationNames` of an object, read leniently: objects
/// written by other tools may lack the list, hold `null`, or hold duplicates.
pub(crate) fn read_spec(obj: &DynamicObject) -> Option<(String, AppSet)> {
    let spec = obj.data.get("spec")?;
    let iface = spec.get("interfaceName")?.as_str()?;
    if iface.is_empty() {
        return None;
    }
    let apps = spec
        .get("applicationNames")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Some((iface.to_owned(), apps))
}

/// Whether resourceVersion `a` is older than `b`. Resource versions are opaque strings in
/// the API contract; every etcd-backed server uses integers, so they are compared as
/// integers when both parse, and treated as "not older" otherwise (the newer event wins).
pub(crate) fn rv_older(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x < y,
        _ => false,
    }
}

/// The replace body that adds `want` to `held`: the cached object with the union of its
/// names and `want` as `spec.applicationNames` (sorted, deduplicated), its
/// `resourceVersion` kept, so a stale cache gets 409 instead of losing another writer's
/// names. Every other field is left as it was. `None` if the object already holds `want`.
pub(crate) fn union_body(held: &Held, want: &AppSet, ar: &ApiResource) -> Option<DynamicObject> {
    let mut apps = held.apps.clone();
    if apps.union(want) == 0 {
        return None;
    }
    let mut body = held.obj.clone();
    body.types = Some(TypeMeta {
        api_version: ar.api_version.clone(),
        kind: ar.kind.clone(),
    });
    body.metadata.resource_version = Some(held.rv.clone());
    body.metadata.managed_fields = None;
    let names = Value::Array(apps.into_vec().into_iter().map(Value::String).collect());
    match body.data.get_mut("spec").and_then(Value::as_object_mut) {
        Some(spec) => {
            spec.insert("applicationNames".to_owned(), names);
        }
        None => return None,
    }
    Some(body)
}

impl Cache {
    /// Whether the key's objects together hold every app of `want`.
    pub fn holds(&self, key: &MappingKey, want: &AppSet) -> bool {
        match self.keys.get(key) {
            Some(objs) => want
                .iter()
                .all(|a| objs.values().any(|h| h.apps.contains(a))),
            None => want.is_empty(),
        }
    }

    /// What to do to make the store hold `want` under `key`.
    pub fn plan(&self, key: &MappingKey, want: &AppSet, ar: &ApiResource) -> Plan {
        if self.holds(key, want) {
            return Plan::Nothing;
        }
        if let Some(held) = self.target(key) {
            return match union_body(held, want, ar) {
                Some(body) => Plan::Update {
                    name: held.obj.metadata.name.clone().unwrap_or_default(),
                    body: Box::new(body),
                },
                // The target holds `want` but the key is not complete without it: can't
                // happen (the target is one of the key's objects); write nothing.
                None => Plan::Nothing,
            };
        }
        match self.choose_name(key) {
            Some(name) => Plan::Create { name },
            None => Plan::NoName,
        }
    }

    /// The object a union update goes to: the first candidate name holding the key (the
    /// seed's name before the hashed one), else the smallest other name.
    pub fn target(&self, key: &MappingKey) -> Option<&Held> {
        let objs = self.keys.get(key)?;
        naming::candidate_names(&key.interface)
            .iter()
            .find_map(|n| objs.get(n))
            .or_else(|| objs.values().next())
    }

    /// The name a new object for `key` gets: the first candidate that is free or already
    /// holds the same interface.
    pub fn choose_name(&self, key: &MappingKey) -> Option<String> {
        naming::candidate_names(&key.interface)
            .into_iter()
            .find(
                |name| match self.names.get(&(key.namespace.clone(), name.clone())) {
                    None => true,
                    Some(Occupant::Interface(i)) => *i == key.interface,
                    Some(Occupant::Unreadable) => false,
                },
            )
    }

    /// What the store holds for `key`.
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

    /// Cached content of `namespace`, limited to `interfaces` unless empty.
    pub fn get(&self, namespace: &str, interfaces: &[String]) -> Vec<(MappingKey, Entry)> {
        if interfaces.is_empty() {
            let start = MappingKey::new(namespace, "");
            self.keys
                .range(start..)
                .take_while(|(k, _)| k.namespace == namespace)
                .filter_map(|(k, _)| Some((k.clone(), self.entry(k)?)))
                .collect()
        } else {
            interfaces
                .iter()
                .filter_map(|i| {
                    let k = MappingKey::new(namespace, i.as_str());
                    let e = self.entry(&k)?;
                    Some((k, e))
                })
                .collect()
        }
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

    /// Whether every `(key, app)` of `mappings` is cached.
    pub fn contains_all(&self, mappings: &Mappings) -> bool {
        mappings.iter().all(|(k, apps)| self.holds(k, apps))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Adds or replaces an object (from the watch or a write response) unless the cache
    /// already has a newer version of it. Returns the changes it made visible.
    pub fn apply(&mut self, mut obj: DynamicObject) -> Vec<Change> {
        let (Some(ns), Some(name)) = (obj.metadata.namespace.clone(), obj.metadata.name.clone())
        else {
            return Vec::new();
        };
        let rv = obj.metadata.resource_version.clone().unwrap_or_default();
        let slot = (ns.clone(), name.clone());
        let old_key = match self.names.get(&slot) {
            Some(Occupant::Interface(i)) => {
                let k = MappingKey::new(ns.as_str(), i.as_str());
                if let Some(h) = self.keys.get(&k).and_then(|o| o.get(&name)) {
                    if rv_older(&rv, &h.rv) || h.rv == rv {
                        return Vec::new();
                    }
                }
                Some(k)
            }
            _ => None,
        };
        obj.metadata.managed_fields = None;
        let parsed = read_spec(&obj);
        let new_key = parsed
            .as_ref()
            .map(|(i, _)| MappingKey::new(ns.as_str(), i.as_str()));
        let mut touched: Vec<MappingKey> = old_key.iter().chain(new_key.iter()).cloned().collect();
        touched.dedup();
        let before: Vec<Option<Entry>> = touched.iter().map(|k| self.entry(k)).collect();

        if let Some(k) = &old_key {
            self.remove_from_key(k, &name);
        }
        match parsed {
            Some((iface, apps)) => {
                self.names.insert(slot, Occupant::Interface(iface.clone()));
                self.keys
                    .entry(MappingKey::new(ns, iface))
                    .or_default()
                    .insert(name, Held { obj, apps, rv });
            }
            None => {
                tracing::warn!(namespace = %ns, name = %name, "ServiceNameMapping without a readable spec.interfaceName; its name is treated as taken");
                self.names.insert(slot, Occupant::Unreadable);
            }
        }
        self.diff(touched, before)
    }

    /// Removes object `name` of `namespace` unless the cache holds a version newer than
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

    /// Replaces the whole content with a fresh list (after the watch (re)started) and
    /// returns the differences as changes.
    pub fn replace_all(&mut self, objs: Vec<DynamicObject>) -> Vec<Change> {
        let old = std::mem::take(self);
        for obj in objs {
            self.apply(obj);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd;
    use serde_json::json;

    fn ar() -> ApiResource {
        crd::api_resource(crd::DEFAULT_GROUP, crd::DEFAULT_VERSION)
    }

    fn obj(ns: &str, name: &str, iface: &str, apps: &[&str], rv: &str) -> DynamicObject {
        let mut o = DynamicObject::new(name, &ar()).within(ns).data(json!({
            "spec": {"interfaceName": iface, "applicationNames": apps}
        }));
        o.metadata.resource_version = Some(rv.to_owned());
        o
    }

    fn set(apps: &[&str]) -> AppSet {
        apps.iter().collect()
    }

    #[test]
    fn a_new_interface_gets_the_seed_name() {
        let c = Cache::default();
        let k = MappingKey::new("ns", "com.acme.Foo");
        assert_eq!(
            c.plan(&k, &set(&["a"]), &ar()),
            Plan::Create {
                name: "com-acme-foo".into()
            }
        );
    }

    #[test]
    fn a_seed_name_held_by_a_case_twin_moves_to_the_hash() {
        let mut c = Cache::default();
        c.apply(obj("ns", "com-foo", "com.Foo", &["a"], "1"));
        let k = MappingKey::new("ns", "com.foo");
        assert_eq!(c.choose_name(&k), Some(naming::hashed_name("com.foo")));
        // The twin's own key still targets the seed object.
        let twin = MappingKey::new("ns", "com.Foo");
        assert_eq!(c.choose_name(&twin), Some("com-foo".into()));
        // Another namespace is independent.
        assert_eq!(
            c.choose_name(&MappingKey::new("other", "com.foo")),
            Some("com-foo".into())
        );
    }

    #[test]
    fn unreadable_objects_block_their_name() {
        let mut c = Cache::default();
        let mut o = obj("ns", "com-foo", "x", &[], "1");
        o.data = json!({"spec": {"something": 1}});
        assert!(c.apply(o).is_empty());
        assert_eq!(
            c.choose_name(&MappingKey::new("ns", "com.foo")),
            Some(naming::hashed_name("com.foo"))
        );
        assert!(c.remove("ns", "com-foo", None).is_empty());
        assert_eq!(
            c.choose_name(&MappingKey::new("ns", "com.foo")),
            Some("com-foo".into())
        );
    }

    #[test]
    fn names_the_seed_cannot_build_get_the_hash() {
        let c = Cache::default();
        for iface in ["com.acme.Outer$Inner", "com.acme.snake_case"] {
            let k = MappingKey::new("ns", iface);
            assert_eq!(c.choose_name(&k), Some(naming::hashed_name(iface)));
        }
    }

    #[test]
    fn every_candidate_taken_is_no_name() {
        let mut c = Cache::default();
        let iface = "com.foo";
        c.apply(obj("ns", "com-foo", "com.Foo", &["a"], "1"));
        c.apply(obj(
            "ns",
            &naming::hashed_name(iface),
            "com.FOO",
            &["a"],
            "2",
        ));
        let k = MappingKey::new("ns", iface);
        assert_eq!(c.plan(&k, &set(&["a"]), &ar()), Plan::NoName);
    }

    #[test]
    fn seed_objects_are_found_by_interface_and_union_updated() {
        let mut c = Cache::default();
        let mut seed = obj(
            "ns",
            "org-apache-dubbo-demo-demoservice",
            "org.apache.dubbo.demo.DemoService",
            &["a"],
            "41",
        );
        seed.metadata.labels = Some(
            [(
                "interface".to_owned(),
                "org.apache.dubbo.demo.DemoService".to_owned(),
            )]
            .into(),
        );
        seed.data["spec"]["extra"] = json!("kept");
        c.apply(seed);
        let k = MappingKey::new("ns", "org.apache.dubbo.demo.DemoService");
        assert_eq!(c.plan(&k, &set(&["a"]), &ar()), Plan::Nothing);
        let Plan::Update { name, body } = c.plan(&k, &set(&["b", "a"]), &ar()) else {
            panic!("expected an update");
        };
        assert_eq!(name, "org-apache-dubbo-demo-demoservice");
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["spec"]["applicationNames"], json!(["a", "b"]));
        assert_eq!(v["spec"]["extra"], "kept");
        assert_eq!(v["metadata"]["resourceVersion"], "41");
        assert_eq!(
            v["metadata"]["labels"]["interface"],
            "org.apache.dubbo.demo.DemoService"
        );
        assert_eq!(v["apiVersion"], "extensions.istio.io/v1alpha1");
        assert_eq!(v["kind"], "ServiceNameMapping");
    }

    #[test]
    fn union_body_dedups_and_sorts_foreign_lists() {
        let mut c = Cache::default();
        c.apply(obj("ns", "x", "com.X", &["z", "a", "z"], "3"));
        let k = MappingKey::new("ns", "com.X");
        let Plan::Update { body, .. } = c.plan(&k, &set(&["m"]), &ar()) else {
            panic!("expected an update");
        };
        assert_eq!(
            body.data["spec"]["applicationNames"],
            json!(["a", "m", "z"])
        );
    }

    #[test]
    fn null_or_missing_lists_read_as_empty() {
        let mut o = obj("ns", "x", "com.X", &[], "1");
        o.data["spec"]["applicationNames"] = Value::Null;
        assert_eq!(read_spec(&o), Some(("com.X".into(), AppSet::new())));
        o.data["spec"]
            .as_object_mut()
            .unwrap()
            .remove("applicationNames");
        assert_eq!(read_spec(&o), Some(("com.X".into(), AppSet::new())));
    }

    #[test]
    fn stale_events_never_roll_the_cache_back() {
        let mut c = Cache::default();
        let k = MappingKey::new("ns", "com.X");
        assert_eq!(c.apply(obj("ns", "x", "com.X", &["a", "b"], "10")).len(), 1);
        assert!(c.apply(obj("ns", "x", "com.X", &["a"], "9")).is_empty());
        assert!(c
            .apply(obj("ns", "x", "com.X", &["a", "b"], "10"))
            .is_empty());
        assert_eq!(c.entry(&k).unwrap().apps, set(&["a", "b"]));
        // A delete older than the cached object is ignored too.
        assert!(c.remove("ns", "x", Some("9")).is_empty());
        assert_eq!(
            c.remove("ns", "x", Some("11")),
            vec![Change::Delete { key: k.clone() }]
        );
        assert!(c.entry(&k).is_none());
    }

    #[test]
    fn duplicate_objects_of_one_key_union_and_prefer_the_seed_name() {
        let mut c = Cache::default();
        let iface = "com.acme.Foo";
        let k = MappingKey::new("ns", iface);
        c.apply(obj("ns", &naming::hashed_name(iface), iface, &["b"], "5"));
        c.apply(obj("ns", "com-acme-foo", iface, &["a"], "6"));
        let e = c.entry(&k).unwrap();
        assert_eq!(e.apps, set(&["a", "b"]));
        assert!(c.holds(&k, &set(&["a", "b"])));
        assert_eq!(
            c.target(&k).unwrap().obj.metadata.name.as_deref(),
            Some("com-acme-foo")
        );
        // Removing one leaves the other's names.
        let ch = c.remove("ns", "com-acme-foo", None);
        assert_eq!(
            ch,
            vec![Change::Upsert {
                key: k.clone(),
                entry: Entry {
                    apps: set(&["b"]),
                    revision: "5".into()
                }
            }]
        );
    }

    #[test]
    fn an_edited_interface_name_moves_the_object() {
        let mut c = Cache::default();
        c.apply(obj("ns", "x", "com.A", &["a"], "1"));
        let ch = c.apply(obj("ns", "x", "com.B", &["a"], "2"));
        assert_eq!(ch.len(), 2);
        assert!(c.entry(&MappingKey::new("ns", "com.A")).is_none());
        assert!(c.entry(&MappingKey::new("ns", "com.B")).is_some());
    }

    #[test]
    fn resync_reports_only_differences() {
        let mut c = Cache::default();
        c.apply(obj("ns", "a", "com.A", &["1"], "1"));
        c.apply(obj("ns", "b", "com.B", &["1"], "2"));
        let ch = c.replace_all(vec![
            obj("ns", "a", "com.A", &["1"], "1"),
            obj("ns", "c", "com.C", &["1"], "3"),
        ]);
        assert_eq!(ch.len(), 2);
        assert!(ch.contains(&Change::Delete {
            key: MappingKey::new("ns", "com.B")
        }));
        assert!(matches!(&ch[1], Change::Upsert { key, .. } if key.interface == "com.C"));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("ns", &[]).len(), 2);
        assert_eq!(c.get("ns", &["com.C".into(), "nope".into()]).len(), 1);
        assert!(c.get("other", &[]).is_empty());
    }

    #[test]
    fn get_by_namespace_does_not_leak_into_neighbours() {
        let mut c = Cache::default();
        c.apply(obj("a", "x", "com.X", &["1"], "1"));
        c.apply(obj("ab", "x", "com.X", &["1"], "2"));
        c.apply(obj("b", "x", "com.X", &["1"], "3"));
        let got = c.get("ab", &[]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.namespace, "ab");
        c.apply(obj("a", "y", "com.Y", &["1"], "4"));
        assert_eq!(c.namespaces(), ["a", "ab", "b"]);
    }
}
