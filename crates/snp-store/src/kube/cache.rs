//! The Kubernetes store's view of the shared [`MappingIndex`]: objects as the server
//! returned them (fed by the watch and by the store's own write responses), and the
//! write plan for a key.
//!
//! Everything here is pure (no I/O), so the naming and update rules are unit-tested.

use std::collections::HashMap;

use ::kube::api::{DynamicObject, TypeMeta};
use ::kube::core::ApiResource;
use serde_json::Value;
use snp_core::{AppSet, MappingKey, Mappings};

use crate::crd;
use crate::index::{Held, MappingIndex};
use crate::{Change, Entry};

/// The cache proper: the shared index, holding each object as the server returned it
/// (as a [`Body`]), kept for the replace body so labels, annotations and unknown fields
/// survive a union update.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    index: MappingIndex<Body>,
    /// The `resourceVersion` of this writer's last write of each object, by namespace and
    /// name: while the cached version is that one, nobody else has written the object
    /// since (see [`Cache::last_written_by_us`]).
    own: HashMap<(String, String), String>,
}

/// An object as the cache holds it: the server's JSON without `managedFields` and without
/// `spec.applicationNames` (the index holds the names), parsed again only to build a
/// replace body. A parsed `DynamicObject`, with its metadata and data maps, takes about
/// 3 KiB; its JSON about half a KiB.
#[derive(Debug, Clone)]
pub(crate) struct Body(Box<str>);

impl Body {
    fn of(obj: &DynamicObject) -> Self {
        let mut obj = obj.clone();
        obj.metadata.managed_fields = None;
        if let Some(spec) = obj.data.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("applicationNames");
        }
        // Serialising a `DynamicObject` cannot fail (its maps have string keys); if it
        // did, the empty body would not parse and the writer would re-read the object.
        Self(serde_json::to_string(&obj).unwrap_or_default().into())
    }

    fn object(&self) -> Option<DynamicObject> {
        serde_json::from_str(&self.0).ok()
    }
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
    /// The cached copy of object `name` cannot be read back: re-read it from the server.
    Refresh { name: String },
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

/// The replace body that adds `want` to `held`: the cached object with the union of its
/// names and `want` as `spec.applicationNames` (sorted, deduplicated), its
/// `resourceVersion` kept, so a stale cache gets 409 instead of losing another writer's
/// names. Every other field is left as it was. `Ok(None)` if the object already holds
/// `want`, `Err(())` if the cached copy cannot be read back.
pub(crate) fn union_body(
    held: &Held<Body>,
    want: &AppSet,
    ar: &ApiResource,
) -> Result<Option<DynamicObject>, ()> {
    let mut apps = held.apps.clone();
    if apps.union(want) == 0 {
        return Ok(None);
    }
    let mut body = held.payload.object().ok_or(())?;
    body.types = Some(TypeMeta {
        api_version: ar.api_version.clone(),
        kind: ar.kind.clone(),
    });
    body.metadata.resource_version = Some(held.rv.clone());
    body.metadata.managed_fields = None;
    crd::set_app_count(&mut body.metadata, apps.len());
    let names = Value::Array(apps.into_vec().into_iter().map(Value::String).collect());
    match body.data.get_mut("spec").and_then(Value::as_object_mut) {
        Some(spec) => {
            spec.insert("applicationNames".to_owned(), names);
        }
        None => return Ok(None),
    }
    Ok(Some(body))
}

impl Cache {
    /// Whether the key's objects together hold every app of `want`.
    pub fn holds(&self, key: &MappingKey, want: &AppSet) -> bool {
        self.index.holds(key, want)
    }

    /// What to do to make the store hold `want` under `key`.
    pub fn plan(&self, key: &MappingKey, want: &AppSet, ar: &ApiResource) -> Plan {
        if self.holds(key, want) {
            return Plan::Nothing;
        }
        if let Some((name, held)) = self.index.target(key) {
            return match union_body(held, want, ar) {
                Ok(Some(body)) => Plan::Update {
                    name: name.to_owned(),
                    body: Box::new(body),
                },
                // The target holds `want` but the key is not complete without it: can't
                // happen (the target is one of the key's objects); write nothing.
                Ok(None) => Plan::Nothing,
                Err(()) => Plan::Refresh {
                    name: name.to_owned(),
                },
            };
        }
        match self.choose_name(key) {
            Some(name) => Plan::Create { name },
            None => Plan::NoName,
        }
    }

    /// The name a new object for `key` gets (see [`MappingIndex::choose_name`]).
    pub fn choose_name(&self, key: &MappingKey) -> Option<String> {
        self.index.choose_name(key, |_| true)
    }

    /// What the store holds for `key`.
    #[cfg(test)]
    pub fn entry(&self, key: &MappingKey) -> Option<Entry> {
        self.index.entry(key)
    }

    /// Cached content of `namespace`, limited to `interfaces` unless empty.
    pub fn get(&self, namespace: &str, interfaces: &[String]) -> Vec<(MappingKey, Entry)> {
        self.index.get(namespace, interfaces)
    }

    /// Namespaces with at least one key, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        self.index.namespaces()
    }

    /// Whether every `(key, app)` of `mappings` is cached.
    pub fn contains_all(&self, mappings: &Mappings) -> bool {
        self.index.contains_all(mappings)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Adds or replaces an object (from the watch or a write response) unless the cache
    /// already has a newer version of it. Returns the changes it made visible.
    pub fn apply(&mut self, obj: DynamicObject) -> Vec<Change> {
        let (Some(ns), Some(name)) = (&obj.metadata.namespace, &obj.metadata.name) else {
            return Vec::new();
        };
        let rv = obj.metadata.resource_version.clone().unwrap_or_default();
        let spec = read_spec(&obj);
        self.index.upsert(ns, name, spec, rv, Body::of(&obj))
    }

    /// [`Cache::apply`] for the answer to this writer's own create or replace: remembers
    /// its `resourceVersion` as ours.
    pub fn apply_own(&mut self, obj: DynamicObject) -> Vec<Change> {
        if let (Some(ns), Some(name), Some(rv)) = (
            &obj.metadata.namespace,
            &obj.metadata.name,
            &obj.metadata.resource_version,
        ) {
            self.own.insert((ns.clone(), name.clone()), rv.clone());
        }
        self.apply(obj)
    }

    /// Whether version `rv` of object `name` is the one this writer wrote last: nobody
    /// else has changed the object since, as far as the watch has told.
    pub fn last_written_by_us(&self, namespace: &str, name: &str, rv: &str) -> bool {
        self.own
            .get(&(namespace.to_owned(), name.to_owned()))
            .is_some_and(|own| own == rv)
    }

    /// Whether an update of object `name` with `body` (from [`Cache::plan`]) would replace
    /// a version another writer wrote: the case for the update spread.
    pub fn updates_another_writers(
        &self,
        namespace: &str,
        name: &str,
        body: &DynamicObject,
    ) -> bool {
        let rv = body
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default();
        !self.last_written_by_us(namespace, name, rv)
    }

    /// Whether the cache has learnt something about object `name` of `key` since a write
    /// of it was refused with 409: after a Conflict (`stale`: the refused version) it
    /// holds another version or none; after AlreadyExists (`None`) the name is taken.
    pub fn moved_past(&self, key: &MappingKey, name: &str, stale: Option<&str>) -> bool {
        match stale {
            Some(stale) => self.index.held(key, name).is_none_or(|h| h.rv != stale),
            None => self.index.is_taken(&key.namespace, name),
        }
    }

    /// Removes object `name` of `namespace` unless the cache holds a version newer than
    /// `rv` (a delete event for an object that was re-created since).
    pub fn remove(&mut self, namespace: &str, name: &str, rv: Option<&str>) -> Vec<Change> {
        let changes = self.index.remove(namespace, name, rv);
        if !self.index.is_taken(namespace, name) {
            self.own.remove(&(namespace.to_owned(), name.to_owned()));
        }
        changes
    }

    /// Replaces the whole content with a fresh list (after the watch (re)started) and
    /// returns the differences as changes.
    pub fn replace_all(&mut self, objs: Vec<DynamicObject>) -> Vec<Change> {
        let mut fresh = Cache::default();
        for obj in objs {
            fresh.apply(obj);
        }
        let changes = self.index.replace_all(fresh.index);
        let index = &self.index;
        self.own.retain(|(ns, name), _| index.is_taken(ns, name));
        changes
    }

    #[cfg(test)]
    fn target_name(&self, key: &MappingKey) -> Option<&str> {
        self.index.target(key).map(|(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use snp_core::naming;

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
        seed.metadata.annotations = Some([("owner".to_owned(), "ops".to_owned())].into());
        seed.metadata.managed_fields = Some(vec![Default::default()]);
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
        assert_eq!(v["metadata"]["annotations"]["owner"], "ops");
        assert_eq!(v["metadata"]["annotations"][crd::ANNOTATION_APP_COUNT], "2");
        assert!(v["metadata"].get("managedFields").is_none(), "{v}");
        assert_eq!(v["apiVersion"], "extensions.istio.io/v1alpha1");
        assert_eq!(v["kind"], "ServiceNameMapping");
    }

    #[test]
    fn a_cached_copy_that_cannot_be_read_back_is_re_read() {
        let mut c = Cache::default();
        c.index.upsert(
            "ns",
            "com-x",
            Some(("com.X".into(), set(&["a"]))),
            "1".into(),
            Body("".into()),
        );
        let k = MappingKey::new("ns", "com.X");
        assert_eq!(c.plan(&k, &set(&["a"]), &ar()), Plan::Nothing);
        assert_eq!(
            c.plan(&k, &set(&["b"]), &ar()),
            Plan::Refresh {
                name: "com-x".into()
            }
        );
        c.apply(obj("ns", "com-x", "com.X", &["a"], "2"));
        assert!(matches!(
            c.plan(&k, &set(&["b"]), &ar()),
            Plan::Update { .. }
        ));
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
        let annotations = body.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[crd::ANNOTATION_APP_COUNT], "3");
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
    fn own_writes_are_known_until_another_writer_changes_the_object() {
        let mut c = Cache::default();
        c.apply(obj("ns", "x", "com.X", &["a"], "1"));
        assert!(!c.last_written_by_us("ns", "x", "1"));
        c.apply_own(obj("ns", "x", "com.X", &["a", "b"], "2"));
        assert!(c.last_written_by_us("ns", "x", "2"));
        // The watch echoing our own write changes nothing.
        c.apply(obj("ns", "x", "com.X", &["a", "b"], "2"));
        assert!(c.last_written_by_us("ns", "x", "2"));
        // Another writer's version is not ours.
        c.apply(obj("ns", "x", "com.X", &["a", "b", "c"], "3"));
        assert!(!c.last_written_by_us("ns", "x", "3"));
        // A deleted object forgets it; so does a re-list without it.
        c.apply_own(obj("ns", "x", "com.X", &["a", "b", "c", "d"], "4"));
        c.remove("ns", "x", None);
        assert!(!c.last_written_by_us("ns", "x", "4"));
        c.apply_own(obj("ns", "y", "com.Y", &["a"], "5"));
        c.replace_all(vec![obj("ns", "z", "com.Z", &["a"], "6")]);
        assert!(c.own.is_empty());
    }

    #[test]
    fn moved_past_tells_whether_the_watch_has_brought_news_since_a_409() {
        let mut c = Cache::default();
        let k = MappingKey::new("ns", "com.X");
        // AlreadyExists: news once the name is taken.
        assert!(!c.moved_past(&k, "x", None));
        c.apply(obj("ns", "x", "com.X", &["a"], "1"));
        assert!(c.moved_past(&k, "x", None));
        // Conflict on version 1: news once another version (or none) is cached.
        assert!(!c.moved_past(&k, "x", Some("1")));
        c.apply(obj("ns", "x", "com.X", &["a", "b"], "2"));
        assert!(c.moved_past(&k, "x", Some("1")));
        c.remove("ns", "x", None);
        assert!(c.moved_past(&k, "x", Some("2")));
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
        assert_eq!(c.target_name(&k), Some("com-acme-foo"));
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
