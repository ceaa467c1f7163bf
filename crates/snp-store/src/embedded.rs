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
//! Every write is atomic and durable: a temporary file in the same directory (a short dot
//! file without a `.yaml` suffix, so `kubectl apply` never sees it), written, fsynced,
//! renamed over the target, and the directory fsynced. A crash leaves either the old or the
//! new file. Leftover temporary files are removed at startup.
//!
//! File names stay within the file system's 255-byte limit for every object name the
//! Kubernetes store accepts (up to 253 characters): a name whose `<name>.yaml` would be
//! longer is cut and given a hash of the whole name ([`file_name`]). The file's content
//! carries the real `metadata.name`, which is what loading goes by.
//!
//! The store is union-only and keeps every object in memory, in the shared
//! [`MappingIndex`]: lookups, `contains_all` and no-op detection never touch the disk.
//! Its own objects are held as their mapping, file and generation and rebuilt when
//! written; a manifest another writer made is held whole, so a rewrite keeps its fields.
//! Each key of a batch is written on its own: one key's failure is its own
//! [`KeyOutcome`], and the other keys are still written. The revision of an object is its
//! `metadata.generation`, bumped on every write (an API server ignores a generation in a
//! manifest it creates, so `kubectl apply` is unaffected).
//!
//! Limits, on purpose: the directory has one writer (this process). Files are read at
//! startup only; a manifest another tool adds or edits while the shim runs is seen after a
//! restart, and an edit to an object the shim then writes is overwritten by its union.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use kube::core::ApiResource;
use serde::Deserialize;
use snp_core::{naming, AppSet, MappingKey, Mappings};
use tokio::sync::broadcast;

use crate::crd::{self, MappingObject};
use crate::index::MappingIndex;
use crate::observe::{Observer, RequestResult, Verb};
use crate::{Change, Entry, KeyOutcome, MergeReport, Store, StoreError};

/// Capacity of the change channel; a watcher further behind re-reads a snapshot.
const CHANGES_CAPACITY: usize = 4096;
/// Longest file name most file systems take (bytes).
pub const MAX_FILE_NAME: usize = 255;
/// Longest readable part of a shortened file name; the rest is a hash.
const FILE_STEM_PREFIX: usize = 200;

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
    metrics: Arc<dyn Observer>,
    /// Held while the store is open: one writer per directory.
    _lock: snp_journal::DirLock,
}

/// One object as the embedded store keeps it: its file and generation, and the object
/// itself only when it is not exactly what this store writes (a manifest of the seed or of
/// another tool, whose other labels, annotations and fields a rewrite keeps). The store's
/// own objects are rebuilt from the index (name, key, applications) when written: a typed
/// object with its metadata maps would cost about 2 KiB a key.
#[derive(Debug, Clone)]
pub struct Stored {
    path: PathBuf,
    /// `metadata.generation` (0 when the manifest has none).
    generation: i64,
    foreign: Option<Box<MappingObject>>,
}

#[derive(Default)]
struct Cache {
    index: MappingIndex<Stored>,
    /// Files that held several objects: never overwritten with one of them.
    multi_doc: HashSet<PathBuf>,
}

fn lock_err<T>(_: T) -> StoreError {
    StoreError::Unavailable("embedded store lock poisoned".into())
}

/// The file name of object `name`: `<name>.yaml`, or, when that would pass
/// [`MAX_FILE_NAME`] bytes, a readable prefix of the name and a hash of all of it.
pub fn file_name(name: &str) -> String {
    const SUFFIX: &str = ".yaml";
    if name.len() + SUFFIX.len() <= MAX_FILE_NAME {
        return format!("{name}{SUFFIX}");
    }
    let mut cut = FILE_STEM_PREFIX.min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{}{SUFFIX}", &name[..cut], naming::interface_hash(name))
}

/// A file name for the temporary copy of `target` while it is written: short whatever
/// the target's length, unique per process and write.
fn temp_name(target: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        ".tmp-{}-{}-{seq}",
        &naming::interface_hash(target)[..12],
        std::process::id()
    )
}

impl EmbeddedStore {
    /// Opens (creating if needed) the directory and loads every manifest in it.
    pub async fn open(
        cfg: EmbeddedStoreConfig,
        metrics: impl Observer,
    ) -> Result<Self, StoreError> {
        // One writer per directory (a second shim on it gets a clear error).
        let lock = snp_journal::DirLock::acquire(&cfg.dir)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let dir = cfg.dir.clone();
        let ar = crd::api_resource(&cfg.group, &cfg.version);
        let load_ar = ar.clone();
        let cache = tokio::task::spawn_blocking(move || load(&dir, &load_ar, true))
            .await
            .map_err(|e| StoreError::Unavailable(format!("loading the embedded store: {e}")))??;
        metrics.request(Verb::List, RequestResult::Ok);
        tracing::info!(
            dir = %cfg.dir.display(),
            objects = cache.index.len(),
            "embedded store loaded"
        );
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        Ok(Self {
            inner: Arc::new(Inner {
                dir: cfg.dir,
                ar,
                cache: RwLock::new(cache),
                write: Mutex::new(()),
                changes,
                metrics: Arc::new(metrics),
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
    async fn merge_keys(&self, batch: &Mappings) -> MergeReport {
        if self.contains_all(batch) {
            self.inner.metrics.noop_skips(batch.len() as u64);
            return MergeReport {
                keys: batch
                    .iter()
                    .map(|(k, _)| (k.clone(), KeyOutcome::Unchanged))
                    .collect(),
                conflicts: 0,
            };
        }
        let inner = Arc::clone(&self.inner);
        let owned = batch.clone();
        match tokio::task::spawn_blocking(move || inner.merge_blocking(&owned)).await {
            Ok(report) => report,
            Err(e) => MergeReport::all_failed(batch, || {
                StoreError::Unavailable(format!("the write task failed: {e}"))
            }),
        }
    }

    fn get(&self, namespace: &str, interfaces: &[String]) -> Vec<(MappingKey, Entry)> {
        match self.inner.cache.read() {
            Ok(cache) => cache.index.get(namespace, interfaces),
            Err(_) => Vec::new(),
        }
    }

    fn contains_all(&self, mappings: &Mappings) -> bool {
        self.inner
            .cache
            .read()
            .is_ok_and(|cache| cache.index.contains_all(mappings))
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn namespaces(&self) -> Vec<String> {
        let Ok(cache) = self.inner.cache.read() else {
            return Vec::new();
        };
        cache.index.namespaces()
    }
}

/// A written object, before its directory is fsynced.
struct Written {
    key: MappingKey,
    name: String,
    stored: Stored,
    apps: AppSet,
    created: bool,
}

impl Inner {
    fn merge_blocking(&self, batch: &Mappings) -> MergeReport {
        let mut report = MergeReport::default();
        let _writer = match self.write.lock() {
            Ok(w) => w,
            Err(_) => return MergeReport::all_failed(batch, || lock_err(())),
        };
        let mut written: Vec<Written> = Vec::new();
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        for (key, apps) in batch.iter() {
            match self.merge_one(key, apps, &mut dirs) {
                Ok(None) => {
                    report.keys.push((key.clone(), KeyOutcome::Unchanged));
                    self.metrics.noop_skips(1);
                }
                Ok(Some(w)) => written.push(w),
                Err(e) => {
                    if e.is_permanent() {
                        tracing::error!(%key, reason = e.reason(), error = %e, "embedded store cannot write the key");
                    } else {
                        tracing::warn!(%key, reason = e.reason(), error = %e, "embedded store write failed");
                    }
                    report.keys.push((key.clone(), KeyOutcome::failed(e)));
                }
            }
        }
        // Make the renames durable before anyone is told about them. A key whose
        // directory could not be synced is not reported stored (a retry rewrites it).
        let mut unsynced: HashMap<PathBuf, String> = HashMap::new();
        for dir in &dirs {
            if let Err(e) = fsync_dir(dir) {
                unsynced.insert(dir.clone(), e.to_string());
            }
        }
        let mut changes = Vec::new();
        if let Ok(mut cache) = self.cache.write() {
            for w in written {
                let dir = parent_of(&w.stored.path, &self.dir);
                if let Some(e) = unsynced.get(&dir) {
                    let e = StoreError::Io(io::Error::other(format!(
                        "syncing directory {}: {e}",
                        dir.display()
                    )));
                    report.keys.push((w.key, KeyOutcome::failed(e)));
                    continue;
                }
                let rv = w.stored.generation.to_string();
                changes.extend(cache.index.upsert(
                    &w.key.namespace,
                    &w.name,
                    Some((w.key.interface.clone(), w.apps)),
                    rv,
                    w.stored,
                ));
                report
                    .keys
                    .push((w.key, KeyOutcome::Written { created: w.created }));
            }
        } else {
            for w in written {
                report.keys.push((w.key, KeyOutcome::failed(lock_err(()))));
            }
        }
        for change in changes {
            // No receiver is not an error: nobody is watching.
            let _ = self.changes.send(change);
        }
        report
    }

    /// Writes `key <- apps` if it adds anything: `Ok(None)` when nothing was needed,
    /// else the new object.
    fn merge_one(
        &self,
        key: &MappingKey,
        apps: &AppSet,
        dirs: &mut BTreeSet<PathBuf>,
    ) -> Result<Option<Written>, StoreError> {
        let ns_dir = self.dir.join(&key.namespace);
        let cache = self.cache.read().map_err(lock_err)?;
        if cache.index.holds(key, apps) {
            return Ok(None);
        }
        if let Some((name, held)) = cache.index.target(key) {
            let name = name.to_owned();
            let mut stored = held.payload.clone();
            let mut all = held.apps.clone();
            all.union(apps);
            if cache.multi_doc.contains(&stored.path) {
                stored.path = free_path(&cache, &ns_dir, &name)
                    .ok_or_else(|| StoreError::NoName(format!("no file name is free for {key}")))?;
            }
            drop(cache);
            stored.generation += 1;
            let object = match stored.foreign.as_mut() {
                Some(object) => {
                    object.spec.application_names = all.as_slice().to_vec();
                    crd::set_app_count(&mut object.metadata, all.len());
                    object.metadata.generation = Some(stored.generation);
                    &**object
                }
                None => &self.own_object(&name, key, &all, stored.generation),
            };
            let result = write_object(object, &stored.path);
            self.count(Verb::Update, &result);
            result?;
            dirs.insert(parent_of(&stored.path, &ns_dir));
            return Ok(Some(Written {
                key: key.clone(),
                name,
                stored,
                apps: all,
                created: false,
            }));
        }
        let name = cache
            .index
            .choose_name(key, |name| !ns_dir.join(file_name(name)).exists())
            .ok_or_else(|| StoreError::NoName(format!("no object name is free for {key}")))?;
        drop(cache);
        let path = ns_dir.join(file_name(&name));
        let object = self.own_object(&name, key, apps, 1);
        if !ns_dir.is_dir() {
            fs::create_dir_all(&ns_dir)?;
            fsync_dir(&self.dir)?;
        }
        let result = write_object(&object, &path);
        self.count(Verb::Create, &result);
        result?;
        dirs.insert(ns_dir);
        Ok(Some(Written {
            key: key.clone(),
            name,
            stored: Stored {
                path,
                generation: 1,
                foreign: None,
            },
            apps: apps.clone(),
            created: true,
        }))
    }

    /// The object this store writes for `key -> apps` under `name`.
    fn own_object(
        &self,
        name: &str,
        key: &MappingKey,
        apps: &AppSet,
        generation: i64,
    ) -> MappingObject {
        own_object(&self.ar, name, key, apps, generation)
    }

    fn count(&self, verb: Verb, result: &Result<(), StoreError>) {
        let outcome = match result {
            Ok(()) => RequestResult::Ok,
            Err(e) if e.is_permanent() => RequestResult::Rejected,
            Err(_) => RequestResult::Failed,
        };
        self.metrics.request(verb, outcome);
    }
}

/// A file of its own for an object loaded from a multi-object file.
fn free_path(cache: &Cache, ns_dir: &Path, name: &str) -> Option<PathBuf> {
    [file_name(name), file_name(&format!("{name}.snp"))]
        .into_iter()
        .map(|f| ns_dir.join(f))
        .find(|p| !cache.multi_doc.contains(p))
}

/// The object the store writes for `key -> apps` under `name`: [`crd::new_object`] with its
/// generation.
fn own_object(
    ar: &ApiResource,
    name: &str,
    key: &MappingKey,
    apps: &AppSet,
    generation: i64,
) -> MappingObject {
    let mut object = crd::new_object(ar, name, key, apps);
    object.metadata.generation = Some(generation);
    object
}

fn parent_of(path: &Path, fallback: &Path) -> PathBuf {
    path.parent()
        .map_or_else(|| fallback.to_path_buf(), Path::to_path_buf)
}

/// Serialises `object` and writes it to `path` atomically and durably (the caller fsyncs
/// the directory).
fn write_object(object: &MappingObject, path: &Path) -> Result<(), StoreError> {
    let yaml = serde_yaml_ng::to_string(object)
        .map_err(|e| StoreError::Invalid(format!("serialising {}: {e}", path.display())))?;
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
    let tmp = dir.join(temp_name(file_name));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Temporary files of an interrupted write: `.tmp-*`, and `.<file>.tmp-<pid>` from
/// earlier versions.
fn is_temp_file(name: &str) -> bool {
    name.starts_with('.') && name.contains("tmp-")
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
fn load(dir: &Path, ar: &ApiResource, clean: bool) -> Result<Cache, StoreError> {
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
            load_file(&mut cache, &path, &dir_ns, ar);
        }
    }
    Ok(cache)
}

/// Whether two objects serialise the same.
fn same_object(a: &MappingObject, b: &MappingObject) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn load_file(cache: &mut Cache, path: &Path, dir_ns: &str, ar: &ApiResource) {
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
        if cache.index.is_taken(&namespace, &name) {
            tracing::warn!(file = %path.display(), %name, "object name used twice; the later file is ignored");
            continue;
        }
        let key = MappingKey::new(namespace.clone(), object.spec.interface_name.clone());
        if cache.index.contains_key(&key) {
            tracing::warn!(%key, file = %path.display(), "two objects hold one interface; their applications are merged, the preferred one is updated");
        }
        let apps = crd::apps_of(&object);
        let generation = object.metadata.generation.unwrap_or(0);
        // Kept whole only if a rewrite could not rebuild it exactly.
        let own = same_object(&object, &own_object(ar, &name, &key, &apps, generation));
        let stored = Stored {
            path: path.to_path_buf(),
            generation,
            foreign: (!own).then(|| Box::new(object)),
        };
        let spec = (!key.interface.is_empty()).then(|| (key.interface.clone(), apps));
        cache
            .index
            .upsert(&namespace, &name, spec, generation.to_string(), stored);
    }
}

/// The default group and version: what a reader that only wants the mappings compares
/// objects with (an object of another group is then kept whole, which changes nothing).
fn default_resource() -> ApiResource {
    crd::api_resource(crd::DEFAULT_GROUP, crd::DEFAULT_VERSION)
}

/// Test and tool helper: every `(namespace, interface) -> apps` held in the manifests under
/// `dir`, read from disk as a restart would (read-only: safe beside a running store).
pub fn read_dir_mappings(dir: &Path) -> Result<Mappings, StoreError> {
    let cache = load(dir, &default_resource(), false)?;
    Ok(cache
        .index
        .keys()
        .filter_map(|k| Some((k.clone(), cache.index.entry(k)?.apps)))
        .collect())
}

/// The file of every object, keyed by mapping (the preferred object's, when several hold
/// one interface), for tests and tools.
pub fn read_dir_files(dir: &Path) -> Result<HashMap<MappingKey, PathBuf>, StoreError> {
    let cache = load(dir, &default_resource(), false)?;
    Ok(cache
        .index
        .keys()
        .filter_map(|k| {
            let (_, held) = cache.index.target(k)?;
            Some((k.clone(), held.payload.path.clone()))
        })
        .collect())
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
        let store = EmbeddedStore::open(cfg(tmp.path()), ()).await.unwrap();
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
        let store = EmbeddedStore::open(cfg(tmp.path()), ()).await.unwrap();
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
    async fn rewrites_keep_what_other_writers_put_in_a_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let ns = tmp.path().join("default");
        fs::create_dir_all(&ns).unwrap();
        fs::write(
            ns.join("com-a.yaml"),
            "apiVersion: extensions.istio.io/v1alpha1\nkind: ServiceNameMapping\nmetadata:\n  name: com-a\n  namespace: default\n  generation: 3\n  labels:\n    team: pay\n  annotations:\n    owner: ops\nspec:\n  interfaceName: com.A\n  applicationNames:\n  - a\n",
        )
        .unwrap();
        let store = EmbeddedStore::open(cfg(tmp.path()), ()).await.unwrap();
        store
            .merge(&batch(&[
                ("default", "com.A", &["b"]),
                ("default", "com.B", &["c"]),
            ]))
            .await
            .unwrap();
        let a = fs::read_to_string(ns.join("com-a.yaml")).unwrap();
        for want in ["team: pay", "owner: ops", "generation: 4", "- a\n  - b"] {
            assert!(a.contains(want), "{want} in {a}");
        }
        // The store's own object, rewritten after a restart, is what a store that never
        // stopped writes.
        drop(store);
        let store = EmbeddedStore::open(cfg(tmp.path()), ()).await.unwrap();
        // Only the other writer's object is kept whole.
        let kept = |store: &EmbeddedStore, i: &str| {
            let cache = store.inner.cache.read().unwrap();
            let (_, held) = cache.index.target(&MappingKey::new("default", i)).unwrap();
            held.payload.foreign.is_some()
        };
        assert!(kept(&store, "com.A") && !kept(&store, "com.B"));
        store
            .merge(&batch(&[("default", "com.B", &["d"])]))
            .await
            .unwrap();
        let other = tempfile::tempdir().unwrap();
        let fresh = EmbeddedStore::open(cfg(other.path()), ()).await.unwrap();
        fresh
            .merge(&batch(&[("default", "com.B", &["c"])]))
            .await
            .unwrap();
        fresh
            .merge(&batch(&[("default", "com.B", &["d"])]))
            .await
            .unwrap();
        assert_eq!(
            fs::read_to_string(ns.join("com-b.yaml")).unwrap(),
            fs::read_to_string(other.path().join("default/com-b.yaml")).unwrap()
        );
        assert_eq!(store.get("default", &[])[1].1.revision, "2");
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
        let store = EmbeddedStore::open(cfg(tmp.path()), ()).await.unwrap();
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

    #[tokio::test]
    async fn stores_every_name_the_kubernetes_store_accepts() {
        let tmp = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(cfg(tmp.path()), ()).await.unwrap();
        // Seed names of 240 to 253 characters (the longest object names), names that only
        // the hash fits, and the longest interface the shim takes by default.
        let mut want = Mappings::new();
        for len in 240..=253 {
            let iface = format!("com.{}", "a".repeat(len - 4));
            assert_eq!(naming::seed_name(&iface).len(), len);
            want.insert(MappingKey::new("default", iface), "app");
        }
        want.insert(
            MappingKey::new("default", format!("com.{}", "b".repeat(1020))),
            "app",
        );
        want.insert(
            MappingKey::new("default", format!("com.x$Y_{}", "c".repeat(600))),
            "app",
        );
        let report = store.merge_keys(&want).await;
        for (k, o) in &report.keys {
            assert!(o.is_stored(), "{} chars: {o:?}", k.interface.len());
        }
        assert_eq!(report.summary().created, want.len());
        for e in fs::read_dir(tmp.path().join("default")).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(name.len() <= MAX_FILE_NAME, "{name}");
            assert!(name.ends_with(".yaml"), "{name}");
        }
        // Read back as a restart would, and again through a new store.
        assert_eq!(read_dir_mappings(tmp.path()).unwrap(), want);
        drop(store);
        let again = EmbeddedStore::open(cfg(tmp.path()), ()).await.unwrap();
        assert!(again.contains_all(&want));
        let more: Mappings = want
            .iter()
            .map(|(k, _)| (k.clone(), ["other"].iter().collect::<AppSet>()))
            .collect();
        assert_eq!(again.merge_keys(&more).await.summary().updated, want.len());
        assert_eq!(
            fs::read_dir(tmp.path().join("default")).unwrap().count(),
            want.len()
        );
    }

    #[tokio::test]
    async fn one_key_failing_never_stops_the_others() {
        let tmp = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(cfg(tmp.path()), ()).await.unwrap();
        // A file where the namespace's directory should be: that key cannot be written.
        fs::write(tmp.path().join("blocked"), "not a directory").unwrap();
        let report = store
            .merge_keys(&batch(&[
                ("aaa", "com.A", &["a"]),
                ("blocked", "com.B", &["b"]),
                ("zzz", "com.C", &["c"]),
            ]))
            .await;
        let s = report.summary();
        assert_eq!((s.created, s.transient + s.permanent), (2, 1), "{report:?}");
        let failed = report
            .outcome(&MappingKey::new("blocked", "com.B"))
            .unwrap()
            .error()
            .unwrap()
            .to_string();
        assert!(failed.starts_with("store I/O"), "{failed}");
        assert_eq!(
            read_dir_mappings(tmp.path()).unwrap(),
            batch(&[("aaa", "com.A", &["a"]), ("zzz", "com.C", &["c"])])
        );
    }

    #[test]
    fn file_names_fit_and_stay_distinct() {
        assert_eq!(file_name("com-acme-foo"), "com-acme-foo.yaml");
        let a = file_name(&"a".repeat(253));
        let b = file_name(&format!("{}b", "a".repeat(252)));
        assert!(a.len() <= MAX_FILE_NAME && b.len() <= MAX_FILE_NAME);
        assert_ne!(a, b);
        assert_eq!(file_name(&"a".repeat(250)).len(), 255);
        assert!(temp_name(&a).len() < 40);
        assert!(is_temp_file(&temp_name(&a)));
        assert!(is_temp_file(".com-a.yaml.tmp-12"));
    }
}
