//! The embedded store: a directory of `ServiceNameMapping` manifests, for runs without a
//! cluster.
//!
//! Layout: `<data-dir>/<namespace>/<object-name>.yaml`, one object per file, each exactly
//! the object the Kubernetes store would create (`apiVersion`, `kind`, `metadata` with
//! name, namespace and labels, `spec`), so `kubectl apply -R -f <data-dir>` loads it into a
//! cluster. Object names come from [`snp_core::naming::candidate_names`]: the first
//! candidate that is free or already holds the same `spec.interfaceName`, so `com.Foo` and
//! `com.foo` get files of their own and objects written with the seed's naming are reused.
//!
//! Every write is atomic and durable: a temporary file in the same directory (a dot file
//! without a `.yaml` suffix, so `kubectl apply` never sees it), written, fsynced, renamed
//! over the target, and the directory fsynced. A crash leaves either the old or the new
//! file. Leftover temporary files are removed at startup.
//!
//! The store is union-only and keeps every object in memory: lookups, `contains_all` and
//! no-op detection never touch the disk. The revision of an object is its
//! `metadata.generation`, bumped on every write (an API server ignores a generation in a
//! manifest it creates, so `kubectl apply` is unaffected).
//!
//! Limits, on purpose: the directory has one writer (this process). Files are read at
//! startup only; a manifest another tool adds or edits while the shim runs is seen after a
//! restart, and an edit to an object the shim then writes is overwritten by its union.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use kube::core::ApiResource;
use serde::Deserialize;
use snp_core::{naming, AppSet, MappingKey, Mappings};
use tokio::sync::broadcast;

use super::{Change, Entry, MergeOutcome, Store, StoreError};
use crate::crd::{self, MappingObject};
use crate::metrics::{Metrics, Outcome, Verb};

/// Capacity of the change channel; a watcher further behind re-reads a snapshot.
const CHANGES_CAPACITY: usize = 4096;

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedStoreConfig {
    /// The directory holding one subdirectory per namespace.
    pub dir: PathBuf,
    /// API group written into `apiVersion`.
    pub group: String,
    /// API version written into `apiVersion`.
    pub version: String,
}

/// Handle on the embedded store (cheap to clone).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    ar: ApiResource,
    cache: RwLock<Cache>,
    /// Serialises writers: one batch at a time touches the files.
    write: Mutex<()>,
    changes: broadcast::Sender<Change>,
    metrics: Metrics,
    /// Held while the store is open (journal hook: snp_journal::DirLock).
    _lock: snp_journal::DirLock,
}

#[derive(Clone)]
struct Stored {
    object: MappingObject,
    apps: AppSet,
    path: PathBuf,
}

impl Stored {
    fn revision(&self) -> String {
        self.object.metadata.generation.unwrap_or(0).to_string()
    }

    fn entry(&self) -> Entry {
        Entry {
            apps: self.apps.clone(),
            revision: self.revision(),
        }
    }
}

#[derive(Default)]
struct Cache {
    by_key: BTreeMap<MappingKey, Stored>,
    /// `(namespace, object name)` of every object on disk, so a new interface never takes
    /// a name already in use.
    names: HashSet<(String, String)>,
    /// Files that held several objects: never overwritten with one of them.
    multi_doc: HashSet<PathBuf>,
}

fn lock_err<T>(_: T) -> StoreError {
    StoreError::Unavailable("embedded store lock poisoned".into())
}

impl EmbeddedStore {
    /// Opens (creating if needed) the directory and loads every manifest in it.
    pub async fn open(cfg: EmbeddedStoreConfig, metrics: Metrics) -> Result<Self, StoreError> {
        // Journal hook: one writer per directory (a second shim on it gets a clear error).
        let lock = snp_journal::DirLock::acquire(&cfg.dir)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let dir = cfg.dir.clone();
        let cache = tokio::task::spawn_blocking(move || load(&dir, true))
            .await
            .map_err(|e| StoreError::Unavailable(format!("loading the embedded store: {e}")))??;
        metrics.store_write(Verb::List, Outcome::Ok);
        tracing::info!(
            dir = %cfg.dir.display(),
            objects = cache.by_key.len(),
            "embedded store loaded"
        );
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        Ok(Self {
            inner: Arc::new(Inner {
                dir: cfg.dir,
                ar: crd::api_resource(&cfg.group, &cfg.version),
                cache: RwLock::new(cache),
                write: Mutex::new(()),
                changes,
                metrics,
                _lock: lock,
            }),
        })
    }

    /// The directory of manifests.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Store for EmbeddedStore {
    async fn merge(&self, batch: &Mappings) -> Result<MergeOutcome, StoreError> {
        if self.contains_all(batch) {
            self.inner.metrics.noop_skips.inc_by(batch.len() as u64);
            return Ok(MergeOutcome {
                unchanged: batch.len(),
                ..MergeOutcome::default()
            });
        }
        let inner = Arc::clone(&self.inner);
        let batch = batch.clone();
        tokio::task::spawn_blocking(move || inner.merge_blocking(&batch))
            .await
            .map_err(|e| StoreError::Unavailable(format!("write task failed: {e}")))?
    }

    fn get(&self, namespace: &str, interfaces: &[String]) -> Vec<(MappingKey, Entry)> {
        let Ok(cache) = self.inner.cache.read() else {
            return Vec::new();
        };
        if interfaces.is_empty() {
            let from = MappingKey::new(namespace, "");
            return cache
                .by_key
                .range(from..)
                .take_while(|(k, _)| k.namespace == namespace)
                .map(|(k, s)| (k.clone(), s.entry()))
                .collect();
        }
        let mut out: Vec<(MappingKey, Entry)> = interfaces
            .iter()
            .filter_map(|i| {
                let key = MappingKey::new(namespace, i.as_str());
                cache.by_key.get(&key).map(|s| (key, s.entry()))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    fn contains_all(&self, mappings: &Mappings) -> bool {
        let Ok(cache) = self.inner.cache.read() else {
            return false;
        };
        mappings.iter().all(|(key, apps)| {
            cache
                .by_key
                .get(key)
                .is_some_and(|s| apps.is_subset(&s.apps))
        })
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    fn is_ready(&self) -> bool {
        true
    }
}

impl Inner {
    fn merge_blocking(&self, batch: &Mappings) -> Result<MergeOutcome, StoreError> {
        let _writer = self.write.lock().map_err(lock_err)?;
        let mut outcome = MergeOutcome::default();
        let mut written: Vec<(MappingKey, Stored)> = Vec::new();
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        let mut failure = None;
        for (key, apps) in batch.iter() {
            match self.merge_one(key, apps, &mut dirs) {
                Ok(None) => {
                    outcome.unchanged += 1;
                    self.metrics.noop_skips.inc();
                }
                Ok(Some((stored, created))) => {
                    if created {
                        outcome.created += 1;
                    } else {
                        outcome.updated += 1;
                    }
                    written.push((key.clone(), stored));
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "embedded store write failed");
                    failure = Some(e);
                    break;
                }
            }
        }
        // Make the renames durable before anyone is told about them.
        for dir in &dirs {
            if let Err(e) = fsync_dir(dir) {
                failure.get_or_insert(StoreError::Io(e));
                written.clear();
            }
        }
        {
            let mut cache = self.cache.write().map_err(lock_err)?;
            for (key, stored) in &written {
                if let Some(name) = stored.object.metadata.name.clone() {
                    cache.names.insert((key.namespace.clone(), name));
                }
                cache.by_key.insert(key.clone(), stored.clone());
            }
        }
        for (key, stored) in written {
            // No receiver is not an error: nobody is watching.
            let _ = self.changes.send(Change::Upsert {
                entry: stored.entry(),
                key,
            });
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(outcome),
        }
    }

    /// Writes `key <- apps` if it adds anything: `Ok(None)` when nothing was needed,
    /// else the new object and whether it was created.
    fn merge_one(
        &self,
        key: &MappingKey,
        apps: &AppSet,
        dirs: &mut BTreeSet<PathBuf>,
    ) -> Result<Option<(Stored, bool)>, StoreError> {
        let (existing, path) = {
            let cache = self.cache.read().map_err(lock_err)?;
            match cache.by_key.get(key) {
                Some(s) if apps.is_subset(&s.apps) => return Ok(None),
                Some(s) => {
                    let path = if cache.multi_doc.contains(&s.path) {
                        self.free_path(&cache, key, s.object.metadata.name.as_deref())
                    } else {
                        Some(s.path.clone())
                    };
                    (Some(s.clone()), path)
                }
                None => (None, None),
            }
        };
        let ns_dir = self.dir.join(&key.namespace);
        match existing {
            Some(mut stored) => {
                let path = path.ok_or_else(|| {
                    StoreError::Rejected(format!("no file name is free for {key}"))
                })?;
                stored.apps.union(apps);
                stored.object.spec.application_names = stored.apps.as_slice().to_vec();
                stored.object.metadata.generation =
                    Some(stored.object.metadata.generation.unwrap_or(0) + 1);
                stored.path = path;
                let result = write_object(&stored.object, &stored.path);
                self.count(Verb::Update, &result);
                result?;
                dirs.insert(parent_of(&stored.path, &ns_dir));
                Ok(Some((stored, false)))
            }
            None => {
                let (name, path) = {
                    let cache = self.cache.read().map_err(lock_err)?;
                    self.choose_name(&cache, key)
                }
                .ok_or_else(|| StoreError::Rejected(format!("no object name is free for {key}")))?;
                let mut object = crd::new_object(&self.ar, &name, key, apps);
                object.metadata.generation = Some(1);
                let new_dir = !ns_dir.is_dir();
                if new_dir {
                    fs::create_dir_all(&ns_dir)?;
                    fsync_dir(&self.dir)?;
                }
                let result = write_object(&object, &path);
                self.count(Verb::Create, &result);
                result?;
                dirs.insert(ns_dir);
                Ok(Some((
                    Stored {
                        object,
                        apps: apps.clone(),
                        path,
                    },
                    true,
                )))
            }
        }
    }

    fn count(&self, verb: Verb, result: &Result<(), StoreError>) {
        let outcome = if result.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        };
        self.metrics.store_write(verb, outcome);
    }

    /// The first candidate name that no object in the namespace uses and no file occupies.
    fn choose_name(&self, cache: &Cache, key: &MappingKey) -> Option<(String, PathBuf)> {
        naming::candidate_names(&key.interface)
            .into_iter()
            .find_map(|name| {
                if cache.names.contains(&(key.namespace.clone(), name.clone())) {
                    return None;
                }
                let path = self.dir.join(&key.namespace).join(format!("{name}.yaml"));
                (!path.exists()).then_some((name, path))
            })
    }

    /// A file of its own for an object loaded from a multi-object file.
    fn free_path(&self, cache: &Cache, key: &MappingKey, name: Option<&str>) -> Option<PathBuf> {
        let name = name?;
        let dir = self.dir.join(&key.namespace);
        [format!("{name}.yaml"), format!("{name}.snp.yaml")]
            .into_iter()
            .map(|f| dir.join(f))
            .find(|p| !cache.multi_doc.contains(p))
    }
}

fn parent_of(path: &Path, fallback: &Path) -> PathBuf {
    path.parent()
        .map_or_else(|| fallback.to_path_buf(), Path::to_path_buf)
}

/// Serialises `object` and writes it to `path` atomically and durably (the caller fsyncs
/// the directory).
fn write_object(object: &MappingObject, path: &Path) -> Result<(), StoreError> {
    let yaml = serde_yaml_ng::to_string(object)
        .map_err(|e| StoreError::Rejected(format!("serialising {}: {e}", path.display())))?;
    write_atomic(path, yaml.as_bytes())?;
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", path.display())))?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn is_temp_file(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Reads every manifest under `dir`. Unreadable or foreign files are logged and skipped:
/// a bad file must not keep the shim from starting. With `clean`, temporary files left by
/// an interrupted write are removed (only the store itself may do that: a reader running
/// beside a live store would delete its writes in progress).
fn load(dir: &Path, clean: bool) -> Result<Cache, StoreError> {
    fs::create_dir_all(dir)?;
    let mut cache = Cache::default();
    let mut ns_dirs: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    ns_dirs.sort();
    for ns_dir in ns_dirs {
        let dir_ns = ns_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let mut files: Vec<PathBuf> = match fs::read_dir(&ns_dir) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect(),
            Err(e) => {
                tracing::warn!(dir = %ns_dir.display(), error = %e, "skipping unreadable directory");
                continue;
            }
        };
        files.sort();
        for path in files {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if is_temp_file(name) {
                if clean {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            if !path.is_file() || !is_manifest(&path) {
                continue;
            }
            load_file(&mut cache, &path, &dir_ns);
        }
    }
    Ok(cache)
}

fn load_file(cache: &mut Cache, path: &Path, dir_ns: &str) {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "skipping unreadable manifest");
            return;
        }
    };
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = match serde_yaml_ng::Value::deserialize(doc) {
            Ok(serde_yaml_ng::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping malformed YAML");
                return;
            }
        };
        if value.get("kind").and_then(|k| k.as_str()) != Some(crd::KIND) {
            tracing::warn!(file = %path.display(), "skipping a document that is not a ServiceNameMapping");
            continue;
        }
        match serde_yaml_ng::from_value::<MappingObject>(value) {
            Ok(obj) => objects.push(obj),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping an invalid ServiceNameMapping");
            }
        }
    }
    if objects.len() > 1 {
        cache.multi_doc.insert(path.to_path_buf());
    }
    for mut object in objects {
        let namespace = object
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| dir_ns.to_owned());
        object.metadata.namespace = Some(namespace.clone());
        let Some(name) = object.metadata.name.clone() else {
            tracing::warn!(file = %path.display(), "skipping an object without metadata.name");
            continue;
        };
        let key = MappingKey::new(namespace.clone(), object.spec.interface_name.clone());
        let apps = crd::apps_of(&object);
        if !cache.names.insert((namespace, name.clone())) {
            tracing::warn!(file = %path.display(), %name, "object name used twice; the later file is ignored");
            continue;
        }
        match cache.by_key.get_mut(&key) {
            Some(existing) => {
                tracing::warn!(%key, file = %path.display(), "two objects hold one interface; merging their applications");
                existing.apps.union(&apps);
                existing.object.spec.application_names = existing.apps.as_slice().to_vec();
            }
            None => {
                cache.by_key.insert(
                    key,
                    Stored {
                        object,
                        apps,
                        path: path.to_path_buf(),
                    },
                );
            }
        }
    }
}

/// Test and tool helper: every `(namespace, interface) -> apps` held in the manifests under
/// `dir`, read from disk as a restart would (read-only: safe beside a running store).
pub fn read_dir_mappings(dir: &Path) -> Result<Mappings, StoreError> {
    let cache = load(dir, false)?;
    Ok(cache.by_key.into_iter().map(|(k, s)| (k, s.apps)).collect())
}

/// The file of every object, keyed by mapping (for tests and tools).
pub fn read_dir_files(dir: &Path) -> Result<HashMap<MappingKey, PathBuf>, StoreError> {
    let cache = load(dir, false)?;
    Ok(cache.by_key.into_iter().map(|(k, s)| (k, s.path)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> EmbeddedStoreConfig {
        EmbeddedStoreConfig {
            dir: dir.to_path_buf(),
            group: crd::DEFAULT_GROUP.into(),
            version: crd::DEFAULT_VERSION.into(),
        }
    }

    fn batch(entries: &[(&str, &str, &[&str])]) -> Mappings {
        entries
            .iter()
            .map(|(ns, i, apps)| (MappingKey::new(*ns, *i), apps.iter().collect::<AppSet>()))
            .collect()
    }

    #[tokio::test]
    async fn writes_one_manifest_per_object_and_unions() {
        let tmp = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(cfg(tmp.path()), Metrics::unregistered())
            .await
            .unwrap();
        let mut changes = store.changes();
        let out = store
            .merge(&batch(&[
                ("default", "com.Foo", &["a"]),
                ("default", "com.foo", &["b"]),
                ("default", "com.x.Outer$Inner_1", &["c"]),
            ]))
            .await
            .unwrap();
        assert_eq!(out.created, 3);
        let out = store
            .merge(&batch(&[("default", "com.Foo", &["a", "z"])]))
            .await
            .unwrap();
        assert_eq!((out.updated, out.unchanged), (1, 0));
        let out = store
            .merge(&batch(&[("default", "com.Foo", &["z"])]))
            .await
            .unwrap();
        assert_eq!(out.unchanged, 1);

        let foo = fs::read_to_string(tmp.path().join("default/com-foo.yaml")).unwrap();
        assert!(
            foo.contains("apiVersion: extensions.istio.io/v1alpha1"),
            "{foo}"
        );
        assert!(foo.contains("kind: ServiceNameMapping"));
        assert!(foo.contains("interfaceName: com.Foo"));
        assert!(foo.contains("generation: 2"));
        let files = read_dir_files(tmp.path()).unwrap();
        let lower = &files[&MappingKey::new("default", "com.foo")];
        assert_ne!(lower, &tmp.path().join("default/com-foo.yaml"));
        let inner = files[&MappingKey::new("default", "com.x.Outer$Inner_1")]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(inner.starts_with("com-x-outer-inner-1-"), "{inner}");

        let on_disk = read_dir_mappings(tmp.path()).unwrap();
        assert_eq!(
            on_disk,
            batch(&[
                ("default", "com.Foo", &["a", "z"]),
                ("default", "com.foo", &["b"]),
                ("default", "com.x.Outer$Inner_1", &["c"]),
            ])
        );
        let mut seen = 0;
        while let Ok(Change::Upsert { .. }) = changes.try_recv() {
            seen += 1;
        }
        assert_eq!(seen, 4);
        // Nothing but manifests is left behind.
        for e in fs::read_dir(tmp.path().join("default")).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(name.ends_with(".yaml"), "{name}");
        }
    }

    #[tokio::test]
    async fn reads_seed_manifests_and_survives_bad_files() {
        let tmp = tempfile::tempdir().unwrap();
        let ns = tmp.path().join("default");
        fs::create_dir_all(&ns).unwrap();
        // As the seed server named and labelled it, created by kubectl (no generation).
        fs::write(
            ns.join("org-apache-dubbo-demo-demoservice.yaml"),
            "apiVersion: extensions.istio.io/v1alpha1\nkind: ServiceNameMapping\nmetadata:\n  name: org-apache-dubbo-demo-demoservice\n  namespace: default\n  labels:\n    interface: org.apache.dubbo.demo.DemoService\nspec:\n  interfaceName: org.apache.dubbo.demo.DemoService\n  applicationNames:\n  - old-app\n",
        )
        .unwrap();
        fs::write(ns.join("broken.yaml"), "{{{ not yaml").unwrap();
        fs::write(ns.join("other.yaml"), "apiVersion: v1\nkind: ConfigMap\n").unwrap();
        fs::write(ns.join(".x.yaml.tmp-1"), "junk").unwrap();
        let store = EmbeddedStore::open(cfg(tmp.path()), Metrics::unregistered())
            .await
            .unwrap();
        assert!(!ns.join(".x.yaml.tmp-1").exists());
        let key = MappingKey::new("default", "org.apache.dubbo.demo.DemoService");
        let got = store.get("default", &[]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.revision, "0");
        let out = store
            .merge(&batch(&[(
                "default",
                "org.apache.dubbo.demo.DemoService",
                &["new-app"],
            )]))
            .await
            .unwrap();
        assert_eq!(out.updated, 1);
        // The seed's object was reused, not duplicated.
        let files = read_dir_files(tmp.path()).unwrap();
        assert_eq!(
            files[&key],
            ns.join("org-apache-dubbo-demo-demoservice.yaml")
        );
        assert_eq!(files.len(), 1);
        let text = fs::read_to_string(&files[&key]).unwrap();
        assert!(
            text.contains("- new-app") && text.contains("- old-app"),
            "{text}"
        );
        assert_eq!(
            fs::read_to_string(ns.join("broken.yaml")).unwrap(),
            "{{{ not yaml"
        );
    }

    #[tokio::test]
    async fn multi_object_files_are_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let ns = tmp.path().join("default");
        fs::create_dir_all(&ns).unwrap();
        let doc = |name: &str, i: &str| {
            format!("apiVersion: extensions.istio.io/v1alpha1\nkind: ServiceNameMapping\nmetadata:\n  name: {name}\nspec:\n  interfaceName: {i}\n  applicationNames: [a]\n")
        };
        let text = format!("{}---\n{}", doc("com-a", "com.A"), doc("com-b", "com.B"));
        fs::write(ns.join("com-a.yaml"), &text).unwrap();
        let store = EmbeddedStore::open(cfg(tmp.path()), Metrics::unregistered())
            .await
            .unwrap();
        assert_eq!(store.get("default", &[]).len(), 2);
        store
            .merge(&batch(&[("default", "com.A", &["b"])]))
            .await
            .unwrap();
        assert_eq!(fs::read_to_string(ns.join("com-a.yaml")).unwrap(), text);
        let m = read_dir_mappings(tmp.path()).unwrap();
        assert_eq!(
            m.get(&MappingKey::new("default", "com.A")),
            Some(&["a", "b"].iter().collect::<AppSet>())
        );
    }
}
