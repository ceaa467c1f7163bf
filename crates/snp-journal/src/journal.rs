//! The journal: the live set in memory, segment files on disk, one writer thread.
//!
//! * **Append.** [`Journal::append`] looks each entry up in the live set. Entries already
//!   there cost nothing: the caller only waits, if at all, for the `fdatasync` of the record
//!   that carries them. New entries become one record on the writer's queue.
//! * **Group commit.** The writer thread takes everything queued, writes it with one
//!   `write`, and hands one `fdatasync` to a sync thread, which then wakes every caller
//!   whose record that covered. Calls that arrive meanwhile form the next group, so the
//!   cost is one `fdatasync` per group, not per call. Groups are pipelined: the writer
//!   writes the next group while up to [`JournalConfig::syncs_in_flight`] earlier ones
//!   sync, so a call waits for about one `fdatasync` (not for the one in progress and then
//!   its own), and devices that overlap flushes are used. A sync that answers makes durable
//!   every record written before it began, in whatever order the syncs answer. The queue
//!   is bounded in bytes: when it is full, appends wait for room.
//! * **Forget and compaction.** [`Journal::forget`] drops entries the store now holds from
//!   the live set. When the segment is large against the live set (or the live set is
//!   empty and the writer idle), the writer rotates: it writes the live set into a new
//!   segment, syncs it and the directory, and deletes the older segments. The journal's
//!   size therefore follows the entries not yet stored, not the number of calls.
//! * **Failure.** If a write or an `fdatasync` fails, every caller still waiting gets the
//!   error (nothing was acknowledged), the entries of records not yet durable leave the
//!   live set, and the next group starts a new segment: bytes after a failed write are
//!   never trusted again, and a later sync of that segment acknowledges nothing.
//! * **Replay.** [`Journal::open`] locks the directory, reads every segment up to its
//!   torn tail, rotates into a fresh segment holding the union, and returns it.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::lock::{DirLock, LockError};
use crate::record;
use crate::Entry;

/// Settings of a journal.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// A segment at least this large is rewritten once it is twice the live set
    /// (default 4 MiB).
    pub rotate_bytes: u64,
    /// Bytes of records waiting for the writer; beyond it appends wait (default 8 MiB).
    pub max_queued_bytes: usize,
    /// After this long without appends, a segment that holds only forgotten entries is
    /// emptied (default 1 s).
    pub idle: Duration,
    /// Groups whose `fdatasync` may be in flight at once (default 4, at least 1). The
    /// writer writes the next group while earlier ones sync, so a caller waits for about
    /// one `fdatasync`, not for the one in progress and then its own.
    pub syncs_in_flight: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            rotate_bytes: 4 << 20,
            max_queued_bytes: 8 << 20,
            idle: Duration::from_secs(1),
            syncs_in_flight: 4,
        }
    }
}

/// Why the journal failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The directory is locked by another process, or cannot be locked.
    #[error(transparent)]
    Lock(Arc<LockError>),
    /// Reading, writing or syncing failed.
    #[error("journal {path}: {what}: {source}", path = .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: Arc<io::Error>,
    },
    /// An entry has a field longer than the format holds.
    #[error("a journal entry field is longer than {max} bytes", max = record::MAX_FIELD)]
    TooLong,
    /// The journal was closed.
    #[error("the journal is closed")]
    Closed,
}

impl From<LockError> for JournalError {
    fn from(e: LockError) -> Self {
        JournalError::Lock(Arc::new(e))
    }
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |e| JournalError::Io {
        path,
        what,
        source: Arc::new(e),
    }
}

/// A torn tail met while replaying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub file: PathBuf,
    /// Bytes before the tail (whole records).
    pub offset: u64,
    /// Bytes ignored from there.
    pub ignored: u64,
    /// What was wrong.
    pub reason: String,
}

/// What [`Journal::open`] found.
#[derive(Debug, Default, Clone)]
pub struct Replay {
    /// Segment files read.
    pub segments: usize,
    /// Whole records read.
    pub records: usize,
    /// Distinct entries recovered: acknowledged but, as far as the journal knows, not yet
    /// stored. The caller hands them to its pipeline again.
    pub entries: Vec<Entry>,
    /// Torn tails ignored.
    pub torn: Vec<TornTail>,
}

/// Counters of a journal, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Records appended.
    pub records: u64,
    /// Groups written (one `fdatasync` each).
    pub syncs: u64,
    /// Time spent in `fdatasync`, all syncs (nanoseconds): divided by `syncs`, the disk's
    /// flush latency, which bounds how fast a caller gets its OK.
    pub sync_nanos: u64,
    /// Record bytes written (snapshots of rotations included).
    pub bytes: u64,
    /// Rotations (compactions).
    pub rotations: u64,
    /// Failed writes or syncs.
    pub failures: u64,
    /// Entries in the live set.
    pub live_entries: u64,
    /// Bytes of the current segment.
    pub segment_bytes: u64,
}

/// Whether an append had to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Every entry was already journaled (and durable, once this returns).
    Known,
    /// New entries were written and synced.
    Written,
}

/// Handle on an open journal (cheap to clone). Dropping the last handle stops the
/// writer after it wrote what is queued.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
        if let Ok(mut w) = self.writer.lock() {
            if let Some(w) = w.take() {
                let _ = w.join();
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer.
    work: Condvar,
    /// Wakes appends that wait for room in the queue.
    room: Notify,
    cfg: JournalConfig,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
    bytes: AtomicU64,
    rotations: AtomicU64,
    failures: AtomicU64,
    segment_bytes: AtomicU64,
}

/// `namespace -> interface -> application -> sequence of its record`: nested so that
/// lookups borrow `&str` and allocate nothing, and hashed at every level because one key
/// may hold thousands of applications.
type Live = HashMap<String, HashMap<String, HashMap<String, u64>>>;

#[derive(Default)]
struct State {
    live: Live,
    live_entries: u64,
    live_bytes: u64,
    next_seq: u64,
    /// Every record up to this sequence is durable.
    durable: u64,
    queue: Vec<u8>,
    /// `(sequence, entries)` of the queued records, for rollback on failure.
    queued: Vec<(u64, Vec<Entry>)>,
    /// `(sequence, entries)` of records handed to the writer and not yet durable, oldest
    /// first, all in the current segment: rolled back if a write or sync fails.
    unsynced: VecDeque<(u64, Vec<Entry>)>,
    /// Sync slots with an `fdatasync` in flight.
    busy: Vec<bool>,
    /// A segment whose write or sync failed: nothing more is acknowledged from it.
    poisoned: Option<u64>,
    waiters: Vec<(u64, oneshot::Sender<Result<(), JournalError>>)>,
    closed: bool,
    /// The writer sleeps on `work`: only then does an append pay for a wake-up.
    writer_waiting: bool,
    /// Set when the last append was at a time the writer can compare with `idle`.
    last_append: Option<Instant>,
}

impl State {
    fn lookup(&self, ns: &str, iface: &str, app: &str) -> Option<u64> {
        self.live.get(ns)?.get(iface)?.get(app).copied()
    }

    fn insert(&mut self, e: &Entry, seq: u64) {
        let apps = self
            .live
            .entry(e.namespace.clone())
            .or_default()
            .entry(e.interface.clone())
            .or_default();
        if let Some(slot) = apps.get_mut(e.application.as_str()) {
            *slot = (*slot).max(seq);
            return;
        }
        apps.insert(e.application.clone(), seq);
        self.live_entries += 1;
        self.live_bytes += record::entry_len(e) as u64;
    }

    /// Removes `(ns, iface, app)`; with `only_seq`, only if its record is that one.
    fn remove(&mut self, ns: &str, iface: &str, app: &str, only_seq: Option<u64>) -> bool {
        let Some(ifaces) = self.live.get_mut(ns) else {
            return false;
        };
        let Some(apps) = ifaces.get_mut(iface) else {
            return false;
        };
        if apps
            .get(app)
            .is_none_or(|s| only_seq.is_some_and(|q| q != *s))
        {
            return false;
        }
        apps.remove(app);
        self.live_entries -= 1;
        self.live_bytes = self
            .live_bytes
            .saturating_sub((6 + ns.len() + iface.len() + app.len()) as u64);
        if apps.is_empty() {
            ifaces.remove(iface);
            if ifaces.is_empty() {
                self.live.remove(ns);
            }
        }
        true
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.live_bytes as usize + 64);
        let mut chunk: Vec<(&str, &str, &str)> = Vec::new();
        for (ns, ifaces) in &self.live {
            for (iface, apps) in ifaces {
                for app in apps.keys() {
                    chunk.push((ns, iface, app));
                    if chunk.len() == 4096 {
                        record::encode(&mut out, chunk.drain(..));
                    }
                }
            }
        }
        if !chunk.is_empty() {
            record::encode(&mut out, chunk);
        }
        out
    }
}

impl State {
    /// A write or sync failed: records not yet durable lose their entries (they may or may
    /// not be on disk; no caller was told they are), and every caller still waiting gets
    /// the error, including one that also waits for a later record (its earlier entries
    /// may be among those rolled back).
    fn fail_unsynced(&mut self, e: &JournalError) {
        let durable = self.durable;
        let gone = std::mem::take(&mut self.unsynced);
        for (seq, entries) in &gone {
            if *seq > durable {
                for en in entries {
                    self.remove(&en.namespace, &en.interface, &en.application, Some(*seq));
                }
            }
        }
        for (_, tx) in drain_where(&mut self.waiters, |(need, _)| *need > durable) {
            let _ = tx.send(Err(e.clone()));
        }
    }
}

impl Shared {
    /// The sync of `slot` (records up to `last` of `segment`) answered.
    fn synced(&self, slot: usize, segment: u64, last: u64, result: Result<(), JournalError>) {
        let c = &self.counters;
        let mut st = self.lock();
        if let Some(b) = st.busy.get_mut(slot) {
            *b = false;
        }
        if st.poisoned == Some(segment) {
            // Its records were rolled back and their callers told when the segment failed;
            // a later success on it proves nothing.
        } else {
            match result {
                Ok(()) => {
                    // Everything written before this sync began is durable: every record up
                    // to `last`, whatever the order the syncs in flight answer in.
                    st.durable = st.durable.max(last);
                    let mut records = 0;
                    while st.unsynced.front().is_some_and(|r| r.0 <= last) {
                        st.unsynced.pop_front();
                        records += 1;
                    }
                    c.records.fetch_add(records, Ordering::Relaxed);
                    c.syncs.fetch_add(1, Ordering::Relaxed);
                    let durable = st.durable;
                    for (_, tx) in drain_where(&mut st.waiters, |(s, _)| *s <= durable) {
                        let _ = tx.send(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, records = st.unsynced.len(), "journal: write failed; calls waiting get an error and the next group starts a new segment");
                    c.failures.fetch_add(1, Ordering::Relaxed);
                    st.poisoned = Some(segment);
                    st.fail_unsynced(&e);
                }
            }
        }
        if st.writer_waiting {
            self.work.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed in a way that
        // loses an acknowledgement: keep going with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.work.notify_all();
        self.room.notify_waiters();
    }
}

fn segment_name(n: u64) -> String {
    format!("journal-{n:016}.log")
}

fn segment_number(name: &str) -> Option<u64> {
    name.strip_prefix("journal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Segment files of `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir, "listing segments"))? {
        let entry = entry.map_err(io_err(dir, "listing segments"))?;
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(segment_number) {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "syncing the directory"))
}

/// Reads every segment of `dir` (locked by the caller) into `state`.
fn replay_into(dir: &Path, state: &mut State) -> Result<Replay, JournalError> {
    let mut replay = Replay::default();
    for (_, path) in segments(dir)? {
        let bytes = fs::read(&path).map_err(io_err(&path, "reading a segment"))?;
        let read = record::read_segment(&bytes);
        replay.segments += 1;
        replay.records += read.records;
        if let Some(t) = read.torn {
            let torn = TornTail {
                file: path.clone(),
                offset: read.valid_len as u64,
                ignored: (bytes.len() - read.valid_len) as u64,
                reason: t.to_string(),
            };
            tracing::warn!(file = %path.display(), offset = torn.offset, ignored = torn.ignored, reason = %torn.reason, "journal: ignoring a torn tail (a write cut short by a crash; nothing acknowledged is in it)");
            replay.torn.push(torn);
        }
        for e in read.entries {
            if state
                .lookup(&e.namespace, &e.interface, &e.application)
                .is_none()
            {
                state.insert(&e, 0);
                replay.entries.push(e);
            }
        }
    }
    Ok(replay)
}

/// The journal directory of a process that is gone (a shim replaced on its node, or
/// killed), claimed by its lock so that no one else adopts it at the same time. The caller
/// journals [`Orphan::entries`] itself, then [`Orphan::remove`]s the directory.
#[derive(Debug)]
pub struct Orphan {
    dir: PathBuf,
    replay: Replay,
    _lock: DirLock,
}

impl Orphan {
    /// Claims `dir` if no process holds it. `Ok(None)` if a live process does.
    pub fn claim(dir: &Path) -> Result<Option<Self>, JournalError> {
        let lock = match DirLock::acquire(dir) {
            Ok(l) => l,
            Err(LockError::Held { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut state = State::default();
        let replay = replay_into(dir, &mut state)?;
        Ok(Some(Self {
            dir: dir.to_path_buf(),
            replay,
            _lock: lock,
        }))
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its entries.
    pub fn entries(&self) -> &[Entry] {
        &self.replay.entries
    }

    /// Deletes the directory (call once its entries are journaled elsewhere).
    pub fn remove(self) -> Result<Replay, JournalError> {
        for (_, path) in segments(&self.dir)? {
            fs::remove_file(&path).map_err(io_err(&path, "removing an adopted segment"))?;
        }
        let _ = fs::remove_file(self.dir.join(crate::lock::LOCK_FILE));
        let _ = fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            sync_dir(parent)?;
        }
        Ok(self.replay)
    }
}

impl Journal {
    /// Locks `dir` (creating it), replays its segments, and starts the writer. Fails if
    /// another process holds the directory, or on I/O errors; a torn tail is never an
    /// error (it is reported in [`Replay::torn`]).
    pub fn open(dir: &Path, cfg: JournalConfig) -> Result<(Self, Replay), JournalError> {
        let lock = DirLock::acquire(dir)?;
        let mut state = State::default();
        let replay = replay_into(dir, &mut state)?;
        state.next_seq = 1;
        let slots = cfg.syncs_in_flight.max(1);
        state.busy = vec![false; slots];
        let last = segments(dir)?.last().map_or(0, |(n, _)| *n);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            work: Condvar::new(),
            room: Notify::new(),
            cfg,
            counters: Counters::default(),
        });
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            shared: Arc::clone(&shared),
            file: None,
            segment: last,
            segment_bytes: 0,
            needs_rotation: true,
            buf: Vec::new(),
            sync_files: Vec::new(),
            jobs: Vec::with_capacity(slots),
            workers: Vec::with_capacity(slots),
            _lock: lock,
        };
        for i in 0..slots {
            let (tx, rx) = mpsc::channel();
            let shared = Arc::clone(&shared);
            let worker = std::thread::Builder::new()
                .name(format!("snp-journal-sync-{i}"))
                .spawn(move || sync_thread(shared, rx))
                .map_err(io_err(dir, "starting a sync thread"))?;
            writer.jobs.push(tx);
            writer.workers.push(worker);
        }
        // Start from a fresh segment holding what was recovered: the torn tail (if any)
        // is never appended to, and older segments are gone.
        writer.rotate()?;
        let thread = std::thread::Builder::new()
            .name("snp-journal".into())
            .spawn(move || writer.run())
            .map_err(io_err(dir, "starting the writer thread"))?;
        tracing::info!(
            dir = %dir.display(),
            segments = replay.segments,
            records = replay.records,
            entries = replay.entries.len(),
            torn = replay.torn.len(),
            "journal opened"
        );
        Ok((
            Self {
                inner: Arc::new(Handle {
                    shared,
                    writer: Mutex::new(Some(thread)),
                    dir: dir.to_path_buf(),
                }),
            },
            replay,
        ))
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Journals `(namespace, interface, application)` for each interface and returns once
    /// all of them are durable. Entries already journaled are not written again.
    pub async fn append<S: AsRef<str>>(
        &self,
        namespace: &str,
        application: &str,
        interfaces: &[S],
    ) -> Result<Appended, JournalError> {
        self.append_entries(
            interfaces
                .iter()
                .map(|i| (namespace, i.as_ref(), application)),
        )
        .await
    }

    /// [`Journal::append`] for any entries.
    pub async fn append_entries<'a, I>(&self, entries: I) -> Result<Appended, JournalError>
    where
        I: IntoIterator<Item = (&'a str, &'a str, &'a str)> + Clone,
    {
        for (ns, iface, app) in entries.clone() {
            if ns.len().max(iface.len()).max(app.len()) > record::MAX_FIELD {
                return Err(JournalError::TooLong);
            }
        }
        loop {
            let room = self.inner.shared.room.notified();
            match self.stage(entries.clone())? {
                Staged::Done(outcome) => return Ok(outcome),
                Staged::Full => room.await,
                Staged::Wait(rx, outcome) => {
                    return match rx.await {
                        Ok(Ok(())) => Ok(outcome),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(JournalError::Closed),
                    }
                }
            }
        }
    }

    /// Looks the entries up and queues a record of the new ones, under the lock.
    fn stage<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> Result<Staged, JournalError> {
        let shared = &self.inner.shared;
        let mut st = shared.lock();
        if st.closed {
            return Err(JournalError::Closed);
        }
        let mut need = 0u64;
        let mut new: Vec<Entry> = Vec::new();
        for (ns, iface, app) in entries {
            match st.lookup(ns, iface, app) {
                Some(seq) => need = need.max(seq),
                None if new.iter().any(|e| e.is(ns, iface, app)) => {}
                None => new.push(Entry::new(ns, iface, app)),
            }
        }
        let outcome = if new.is_empty() {
            Appended::Known
        } else {
            if !st.queue.is_empty() && st.queue.len() >= shared.cfg.max_queued_bytes {
                return Ok(Staged::Full);
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            record::encode(
                &mut st.queue,
                new.iter().map(|e| {
                    (
                        e.namespace.as_str(),
                        e.interface.as_str(),
                        e.application.as_str(),
                    )
                }),
            );
            for e in &new {
                st.insert(e, seq);
            }
            st.queued.push((seq, new));
            st.last_append = Some(Instant::now());
            need = seq;
            // Wake the writer only if it can write now: with every sync slot busy, the
            // sync that answers first wakes it, and this record goes in that group. Waking
            // it for each append during a sync only costs it a context switch per call.
            if st.writer_waiting && st.busy.iter().any(|b| !b) {
                shared.work.notify_one();
            }
            Appended::Written
        };
        if need <= st.durable {
            return Ok(Staged::Done(outcome));
        }
        let (tx, rx) = oneshot::channel();
        st.waiters.push((need, tx));
        Ok(Staged::Wait(rx, outcome))
    }

    /// Whether every entry is journaled (not necessarily durable yet).
    pub fn contains<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> bool {
        let st = self.inner.shared.lock();
        entries
            .into_iter()
            .all(|(ns, i, a)| st.lookup(ns, i, a).is_some())
    }

    /// Drops entries from the live set: the store holds them now. They leave the files at
    /// the next rotation.
    pub fn forget<'a>(&self, entries: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) {
        let mut st = self.inner.shared.lock();
        let mut any = false;
        for (ns, i, a) in entries {
            any |= st.remove(ns, i, a, None);
        }
        if any && st.live_entries == 0 {
            self.inner.shared.work.notify_one();
        }
    }

    /// Drops every entry for which `stored` says the store holds it (a sweep that also
    /// catches entries whose forget raced with their append).
    pub fn forget_where(&self, mut stored: impl FnMut(&str, &str, &str) -> bool) -> usize {
        let mut st = self.inner.shared.lock();
        let mut gone = Vec::new();
        for (ns, ifaces) in &st.live {
            for (iface, apps) in ifaces {
                for (app, seq) in apps {
                    if *seq <= st.durable && stored(ns, iface, app) {
                        gone.push((ns.clone(), iface.clone(), app.clone(), *seq));
                    }
                }
            }
        }
        for (ns, iface, app, seq) in &gone {
            st.remove(ns, iface, app, Some(*seq));
        }
        gone.len()
    }

    /// Every live entry (journaled and not yet forgotten).
    pub fn live(&self) -> Vec<Entry> {
        let st = self.inner.shared.lock();
        let mut out = Vec::with_capacity(st.live_entries as usize);
        for (ns, ifaces) in &st.live {
            for (iface, apps) in ifaces {
                for app in apps.keys() {
                    out.push(Entry::new(ns, iface, app));
                }
            }
        }
        out
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let s = &self.inner.shared;
        let c = &s.counters;
        Stats {
            records: c.records.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            sync_nanos: c.sync_nanos.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            rotations: c.rotations.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            live_entries: s.lock().live_entries,
            segment_bytes: c.segment_bytes.load(Ordering::Relaxed),
        }
    }

    /// Writes what is queued, stops the writer, and releases the directory. Appends after
    /// this fail with [`JournalError::Closed`].
    pub fn close(&self) {
        self.inner.shared.close();
        if let Ok(mut w) = self.inner.writer.lock() {
            if let Some(w) = w.take() {
                let _ = w.join();
            }
        }
    }
}

enum Staged {
    Done(Appended),
    Wait(oneshot::Receiver<Result<(), JournalError>>, Appended),
    Full,
}

/// A sync handed to a sync thread: `fdatasync` of `file`, then everything written up to
/// record `last` is durable.
struct Job {
    slot: usize,
    segment: u64,
    last: u64,
    file: Arc<File>,
    path: PathBuf,
}

/// What the writer does next.
enum Step {
    /// Write the queued group and hand its sync to the free `slot`.
    Write {
        slot: usize,
        bytes: Vec<u8>,
        /// Sequence of its last record.
        last: u64,
    },
    /// Start a new segment from the live set (no sync in flight).
    Rotate,
    /// Closed, nothing queued or in flight.
    Close,
}

struct Writer {
    dir: PathBuf,
    shared: Arc<Shared>,
    file: Option<File>,
    segment: u64,
    segment_bytes: u64,
    needs_rotation: bool,
    buf: Vec<u8>,
    /// One handle per sync slot on the current segment, opened before anything is written
    /// to it, and never used by two syncs at once: each one reports every write-back error
    /// of the segment (Linux reports such an error once per open file, so a shared handle
    /// could let one sync see it and a concurrent one succeed).
    sync_files: Vec<Arc<File>>,
    jobs: Vec<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    _lock: DirLock,
}

impl Writer {
    fn run(mut self) {
        loop {
            match self.next_step() {
                Step::Write { slot, bytes, last } => self.write_group(slot, bytes, last),
                Step::Rotate => {
                    if let Err(e) = self.rotate() {
                        self.rotation_failed(&e);
                    }
                }
                Step::Close => {
                    // A clean stop leaves only the live entries on disk, so the next start
                    // replays exactly what the store does not hold.
                    if self.segment_bytes > MAGIC_LEN {
                        if let Err(e) = self.rotate() {
                            tracing::warn!(error = %e, "journal: final compaction failed");
                        }
                    }
                    self.jobs.clear();
                    for w in self.workers.drain(..) {
                        let _ = w.join();
                    }
                    return;
                }
            }
        }
    }

    /// Waits until there is something to do: a group to write while a sync slot is free,
    /// a compaction once no sync is in flight, or the end.
    fn next_step(&mut self) -> Step {
        let shared = Arc::clone(&self.shared);
        let cfg = &shared.cfg;
        let mut st = shared.lock();
        loop {
            if st.poisoned == Some(self.segment) {
                self.needs_rotation = true;
            }
            let syncing = st.busy.iter().any(|b| *b);
            if !st.queue.is_empty() {
                if self.needs_rotation {
                    if !syncing {
                        return Step::Rotate;
                    }
                } else if let Some(slot) = st.busy.iter().position(|b| !b) {
                    st.busy[slot] = true;
                    std::mem::swap(&mut st.queue, &mut self.buf);
                    let queued = std::mem::take(&mut st.queued);
                    let last = queued.last().map_or(0, |r| r.0);
                    st.unsynced.extend(queued);
                    drop(st);
                    shared.room.notify_waiters();
                    return Step::Write {
                        slot,
                        bytes: std::mem::take(&mut self.buf),
                        last,
                    };
                }
            } else if !syncing {
                if st.closed {
                    return Step::Close;
                }
                let idle = st.last_append.is_none_or(|t| t.elapsed() >= cfg.idle);
                let emptied = idle && st.live_entries == 0 && self.segment_bytes > MAGIC_LEN;
                let large = self.segment_bytes >= cfg.rotate_bytes
                    && self.segment_bytes >= 2 * st.live_bytes + MAGIC_LEN;
                if emptied || large || (self.needs_rotation && self.segment_bytes > MAGIC_LEN) {
                    return Step::Rotate;
                }
            }
            st.writer_waiting = true;
            let (g, _) = shared
                .work
                .wait_timeout(st, cfg.idle)
                .unwrap_or_else(|p| p.into_inner());
            st = g;
            st.writer_waiting = false;
        }
    }

    /// Writes a group with one `write` and hands its `fdatasync` to the sync thread of
    /// `slot`; the writer goes on with the next group meanwhile.
    fn write_group(&mut self, slot: usize, mut bytes: Vec<u8>, last: u64) {
        let path = self.path(self.segment);
        let written = match self.file.as_mut() {
            Some(f) => f.write_all(&bytes).map_err(io_err(&path, "writing")),
            None => Err(JournalError::Closed),
        };
        let len = bytes.len() as u64;
        bytes.clear();
        self.buf = bytes;
        let c = &self.shared.counters;
        let job = match written {
            Ok(()) => {
                self.segment_bytes += len;
                c.bytes.fetch_add(len, Ordering::Relaxed);
                c.segment_bytes.store(self.segment_bytes, Ordering::Relaxed);
                let cfg = &self.shared.cfg;
                if self.segment_bytes >= cfg.rotate_bytes {
                    // Checked against the live set once the syncs in flight are done.
                    let st = self.shared.lock();
                    self.needs_rotation |= self.segment_bytes >= 2 * st.live_bytes + MAGIC_LEN;
                }
                Job {
                    slot,
                    segment: self.segment,
                    last,
                    file: Arc::clone(&self.sync_files[slot]),
                    path,
                }
            }
            Err(e) => {
                self.needs_rotation = true;
                self.shared.synced(slot, self.segment, last, Err(e));
                return;
            }
        };
        if let Err(mpsc::SendError(job)) = self.jobs[slot].send(job) {
            self.needs_rotation = true;
            self.shared
                .synced(job.slot, job.segment, job.last, Err(JournalError::Closed));
        }
    }

    /// A rotation failed: what is queued fails (nothing of it was acknowledged), and the
    /// next group tries again.
    fn rotation_failed(&mut self, e: &JournalError) {
        tracing::warn!(error = %e, "journal: starting a new segment failed; queued calls get an error, the next group retries");
        self.needs_rotation = true;
        let mut st = self.shared.lock();
        if st.queue.is_empty() {
            // Nothing waits for it: retry after a pause instead of spinning.
            let _ = self
                .shared
                .work
                .wait_timeout(st, self.shared.cfg.idle)
                .unwrap_or_else(|p| p.into_inner());
            return;
        }
        st.queue.clear();
        let queued = std::mem::take(&mut st.queued);
        st.unsynced.extend(queued);
        self.shared
            .counters
            .failures
            .fetch_add(1, Ordering::Relaxed);
        st.fail_unsynced(e);
        drop(st);
        self.shared.room.notify_waiters();
    }

    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(segment_name(n))
    }

    /// Starts a new segment holding the live set, then deletes the older ones. Only with
    /// no sync in flight.
    fn rotate(&mut self) -> Result<(), JournalError> {
        let snapshot = self.shared.lock().snapshot();
        let next = self.segment + 1;
        let path = self.path(next);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path, "creating a segment"))?;
        let mut sync_files = Vec::with_capacity(self.jobs.len());
        for _ in 0..self.jobs.len() {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path, "opening a segment for syncing"))?;
            sync_files.push(Arc::new(f));
        }
        file.write_all(record::MAGIC)
            .and_then(|()| file.write_all(&snapshot))
            .and_then(|()| file.sync_all())
            .map_err(io_err(&path, "writing a segment"))?;
        sync_dir(&self.dir)?;
        self.file = Some(file);
        self.sync_files = sync_files;
        self.segment = next;
        self.segment_bytes = MAGIC_LEN + snapshot.len() as u64;
        self.needs_rotation = false;
        let c = &self.shared.counters;
        c.rotations.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(snapshot.len() as u64, Ordering::Relaxed);
        c.segment_bytes.store(self.segment_bytes, Ordering::Relaxed);
        let mut removed = false;
        for (n, old) in segments(&self.dir)? {
            if n < next {
                match fs::remove_file(&old) {
                    Ok(()) => removed = true,
                    Err(e) => {
                        tracing::warn!(file = %old.display(), error = %e, "journal: cannot remove an old segment (it is replayed again at the next start)")
                    }
                }
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// A sync thread: `fdatasync`s what the writer hands it, and reports.
fn sync_thread(shared: Arc<Shared>, jobs: mpsc::Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        let started = Instant::now();
        let result = job.file.sync_data().map_err(io_err(&job.path, "syncing"));
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        shared
            .counters
            .sync_nanos
            .fetch_add(took, Ordering::Relaxed);
        shared.synced(job.slot, job.segment, job.last, result);
    }
}

const MAGIC_LEN: u64 = record::MAGIC.len() as u64;

fn drain_where<T>(v: &mut Vec<T>, mut f: impl FnMut(&T) -> bool) -> Vec<T> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        if f(&v[i]) {
            out.push(v.swap_remove(i));
        } else {
            i += 1;
        }
    }
    out
}
