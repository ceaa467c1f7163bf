//! The shim's use of the journal ([`snp_journal`]): an immediate OK means "on local disk".
//!
//! * **Where.** `<--data-dir>/journal/<--journal-instance>/`. In the DaemonSet the data
//!   directory is a hostPath, so the journal outlives the pod, and the instance is the pod's
//!   name, so the new pod of a surge rollout never contends with the old one for a lock.
//! * **Start.** [`open`] locks the directory (a second shim on it exits with an error that
//!   names it), replays it, and claims the journals of instances that are gone (a replaced
//!   or killed pod): their entries are journaled here, then their directories removed.
//!   Everything recovered goes to the pipeline as pending, so it gets written.
//! * **Immediate calls.** [`ShimJournal::record`], after the pipeline took the
//!   registration and before the OK: mappings already journaled, or already in the store,
//!   cost nothing; others are appended and the call waits for the group's `fdatasync`.
//! * **Stored.** The pipeline's stored hook ([`ShimJournal::stored_hook`]) forgets what a
//!   batch wrote, and a sweep every [`SWEEP`] forgets whatever else the store holds and
//!   adopts journals of instances that went away since.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use snp_core::{AppSet, MappingKey, Mappings, Registration};
use snp_journal::{Appended, Entry, Journal, JournalConfig, JournalError, Orphan};
use tokio::sync::watch;
use tonic::Status;

use crate::config::ServeArgs;
use crate::pipeline::{Payload, Pipeline, PipelineError, StoredHook};
use crate::store::Store;

/// Subdirectory of `--data-dir` holding one journal directory per instance.
pub const JOURNAL_DIR: &str = "journal";

/// How often stored entries are swept out and gone instances' journals adopted.
pub const SWEEP: Duration = Duration::from_secs(30);

/// Keys per offer when recovered entries are handed to the pipeline.
const REPLAY_CHUNK: usize = 1000;
/// Applications of one key offered at a time on replay (fewer if `--max-apps-per-key` is
/// lower).
const REPLAY_APPS: usize = 64;

/// The journal directory `args` select.
pub fn dir(args: &ServeArgs) -> PathBuf {
    args.data_dir.join(JOURNAL_DIR).join(&args.journal_instance)
}

/// The shim's journal handle (cheap to clone).
#[derive(Clone)]
pub struct ShimJournal {
    journal: Journal,
    root: PathBuf,
    /// Applications of one key offered at a time on replay: at most `--max-apps-per-key`.
    replay_apps: usize,
}

/// An opened journal and what it recovered.
pub struct Opened {
    /// The journal.
    pub journal: ShimJournal,
    /// Entries acknowledged before and not known to be stored: to be written.
    pub recovered: Vec<Entry>,
}

/// Opens the journal `args` select (`None` with `--journal=false`) and adopts the
/// journals of instances that are gone.
pub async fn open(args: &ServeArgs) -> Result<Option<Opened>, JournalError> {
    if !args.journal {
        return Ok(None);
    }
    let dir = dir(args);
    let root = args.data_dir.join(JOURNAL_DIR);
    let opened = tokio::task::spawn_blocking(move || Journal::open(&dir, JournalConfig::default()))
        .await
        .map_err(|_| JournalError::Closed)??;
    let (journal, replay) = opened;
    let journal = ShimJournal {
        journal,
        root,
        replay_apps: usize::try_from(args.max_apps_per_key)
            .unwrap_or(usize::MAX)
            .clamp(1, REPLAY_APPS),
    };
    let mut recovered = replay.entries;
    recovered.extend(journal.adopt_orphans().await);
    if !recovered.is_empty() {
        tracing::info!(
            entries = recovered.len(),
            "journal: registrations acknowledged before a restart are written again"
        );
    }
    Ok(Some(Opened { journal, recovered }))
}

impl ShimJournal {
    /// Applications of one key a replay offers at a time.
    pub fn replay_apps(&self) -> usize {
        self.replay_apps
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Makes an immediate registration durable before it is answered: returns once every
    /// mapping of it is in the journal (or already in the store).
    pub async fn record<S: Store>(&self, store: &S, r: &Registration) -> Result<(), Status> {
        let entries = r
            .interfaces
            .iter()
            .map(|i| (r.namespace.as_str(), i.as_str(), r.application.as_str()));
        if !self.journal.contains(entries.clone()) {
            let mut m = Mappings::new();
            for i in &r.interfaces {
                m.insert(
                    MappingKey::new(r.namespace.as_str(), i.as_str()),
                    &r.application,
                );
            }
            if store.contains_all(&m) {
                return Ok(());
            }
        }
        match self.journal.append_entries(entries).await {
            Ok(Appended::Known | Appended::Written) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "journal: cannot record a registration");
                Err(Status::unavailable(format!(
                    "the registration could not be made durable ({e}); register again"
                )))
            }
        }
    }

    /// The pipeline hook: forgets what a batch wrote.
    pub fn stored_hook(&self) -> StoredHook {
        let journal = self.journal.clone();
        Arc::new(move |m: &Mappings| {
            journal.forget(m.iter().flat_map(|(k, apps)| {
                apps.iter()
                    .map(move |a| (k.namespace.as_str(), k.interface.as_str(), a))
            }));
        })
    }

    /// Claims the journals of instances that are gone, journals their entries here, and
    /// removes them. Returns the entries (for the pipeline).
    async fn adopt_orphans(&self) -> Vec<Entry> {
        let own = self.journal.dir().to_path_buf();
        let mut out = Vec::new();
        for dir in siblings(&self.root, &own) {
            let orphan = match Orphan::claim(&dir) {
                Ok(Some(o)) => o,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "journal: cannot read another instance's journal");
                    continue;
                }
            };
            let appended = self
                .journal
                .append_entries(orphan.entries().iter().map(Entry::fields))
                .await;
            if let Err(e) = appended {
                tracing::warn!(dir = %dir.display(), error = %e, "journal: cannot adopt another instance's journal; retried later");
                continue;
            }
            let entries = orphan.entries().to_vec();
            match orphan.remove() {
                Ok(_) => {
                    tracing::info!(dir = %dir.display(), entries = entries.len(), "journal: adopted the journal of an instance that is gone")
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "journal: adopted, but cannot remove the old directory")
                }
            }
            out.extend(entries);
        }
        out
    }

    /// Every [`SWEEP`]: forgets entries the store holds (a forget can race with the append
    /// of the same mapping), and adopts journals of instances gone since the start.
    pub async fn sweep<S: Store>(
        self,
        store: S,
        pipeline: Pipeline,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP) => {}
                _ = crate::shutdown::signalled(&mut shutdown) => return,
            }
            let live = self.journal.live();
            let stored: Vec<&Entry> = live
                .iter()
                .filter(|e| store.contains_all(&mappings(std::iter::once(*e))))
                .collect();
            if !stored.is_empty() {
                self.journal.forget(stored.iter().map(|e| e.fields()));
            }
            let adopted = self.adopt_orphans().await;
            if !adopted.is_empty() {
                offer_recovered(&pipeline, &adopted, self.replay_apps).await;
            }
        }
    }
}

/// Writes what is queued, compacts, and releases the journal's lock (shutdown). Handles
/// still held elsewhere get `UNAVAILABLE` from then on.
pub async fn close(journal: Option<ShimJournal>) {
    if let Some(j) = journal {
        let journal = j.journal;
        let _ = tokio::task::spawn_blocking(move || journal.close()).await;
    }
}

fn siblings(root: &Path, own: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p != own)
        .collect();
    v.sort();
    v
}

fn mappings<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Mappings {
    let mut m = Mappings::new();
    for e in entries {
        m.insert(
            MappingKey::new(e.namespace.as_str(), e.interface.as_str()),
            &e.application,
        );
    }
    m
}

/// Hands recovered entries to the pipeline as pending, in chunks; waits and retries while
/// the pending set is full. They stay in the journal until the store holds them.
pub async fn offer_recovered(pipeline: &Pipeline, entries: &[Entry], replay_apps: usize) {
    // Pieces of at most `replay_apps` applications of one key, at most one piece of a key per
    // offer: a key that gathered more applications than the pipeline holds pending for one
    // key (--max-apps-per-key) is replayed over several batches instead of being refused
    // whole, again and again.
    let mut pieces = Vec::new();
    for (k, apps) in mappings(entries) {
        let mut piece = AppSet::default();
        for a in apps.iter() {
            piece.insert(a);
            if piece.len() >= replay_apps {
                pieces.push((k.clone(), std::mem::take(&mut piece)));
            }
        }
        if !piece.is_empty() {
            pieces.push((k, piece));
        }
    }
    let mut pieces = pieces.into_iter().peekable();
    while pieces.peek().is_some() {
        let mut chunk = Mappings::new();
        while chunk.len() < REPLAY_CHUNK {
            match pieces.peek() {
                Some((k, _)) if chunk.get(k).is_none() => {}
                _ => break,
            }
            let Some((k, apps)) = pieces.next() else {
                break;
            };
            chunk.insert_set(k, &apps);
        }
        loop {
            match pipeline.offer(Payload::Batch(chunk.clone()), false).await {
                Ok(_) => break,
                Err(PipelineError::Closed) => return,
                Err(PipelineError::Full(e)) => {
                    tracing::warn!(error = %e, "journal: pending set full; recovered mappings wait");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Exposes the journal's counters on `/metrics`, read at scrape time.
#[derive(Clone)]
pub struct JournalCollector(pub Journal);

impl std::fmt::Debug for JournalCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("JournalCollector")
            .field(&self.0.dir())
            .finish()
    }
}

impl Collector for JournalCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        let counters = [
            (
                "snp_journal_records",
                "Journal records appended (one per registration with new mappings)",
                s.records,
            ),
            (
                "snp_journal_syncs",
                "Journal group commits: one fdatasync each",
                s.syncs,
            ),
            (
                "snp_journal_bytes",
                "Bytes written to the journal, compaction snapshots included",
                s.bytes,
            ),
            (
                "snp_journal_rotations",
                "Journal compactions (segment rewritten from the live set)",
                s.rotations,
            ),
            (
                "snp_journal_failures",
                "Failed journal writes or syncs (their calls got UNAVAILABLE)",
                s.failures,
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        // Divided by the syncs, the disk's flush latency: what an immediate OK waits for.
        let c = ConstCounter::new(s.sync_nanos as f64 / 1e9);
        let m = encoder.encode_descriptor(
            "snp_journal_sync_seconds",
            "Time spent in the journal's fdatasyncs",
            None,
            c.metric_type(),
        )?;
        c.encode(m)?;
        let gauges = [
            (
                "snp_journal_live_entries",
                "Journaled mappings the store does not hold yet",
                s.live_entries,
            ),
            (
                "snp_journal_segment_bytes",
                "Size of the journal's current segment file",
                s.segment_bytes,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(m)?;
        }
        Ok(())
    }
}

/// `snp-shim prepare-data-dir`: creates the directory, makes it private (0750) and gives
/// it to `owner` (`uid:gid`). Run as root with CAP_CHOWN; the mode is set while root still
/// owns it (changing the mode of a file one does not own would need CAP_FOWNER).
pub fn prepare_data_dir(p: &crate::config::PrepareArgs) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("--owner {:?} is not uid:gid", p.owner),
        )
    };
    let (uid, gid) = p.owner.split_once(':').ok_or_else(bad)?;
    let uid: u32 = uid.parse().map_err(|_| bad())?;
    let gid: u32 = gid.parse().map_err(|_| bad())?;
    std::fs::create_dir_all(&p.data_dir)?;
    let meta = std::fs::metadata(&p.data_dir)?;
    if meta.uid() == uid && meta.gid() == gid {
        return Ok(());
    }
    if meta.uid() != uid {
        std::fs::set_permissions(&p.data_dir, std::fs::Permissions::from_mode(0o750))?;
    }
    std::os::unix::fs::chown(&p.data_dir, Some(uid), Some(gid))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn prepare_data_dir_hands_the_directory_over_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(tmp.path()).unwrap();
        // As root (CI, the init container) give it away; otherwise to ourselves.
        let (uid, gid) = if me.uid() == 0 {
            (12345, 23456)
        } else {
            (me.uid(), me.gid())
        };
        let p = crate::config::PrepareArgs {
            data_dir: tmp.path().join("var/lib/snp"),
            owner: format!("{uid}:{gid}"),
        };
        prepare_data_dir(&p).unwrap();
        let m = std::fs::metadata(&p.data_dir).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid));
        // The next pod start finds it already handed over.
        prepare_data_dir(&p).unwrap();
        let bad = crate::config::PrepareArgs {
            owner: "nobody".into(),
            ..p
        };
        assert!(prepare_data_dir(&bad).is_err());
    }
}
