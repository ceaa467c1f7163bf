//! The journal: the live set in memory, segment files on disk, one writer thread.
//!
//! * **Append.** [`Journal::append`] looks each entry up in the live set. Entries already
//!   there cost nothing: the caller only waits, if at all, for the `fdatasync` of the record
//!   that carries them. New entries become one record on the writer's queue.
//! * **Group commit.** The writer thread takes everything queued, writes it with one
//!   `write`, calls `fdatasync` once, then wakes every caller whose record that covered.
//!   Calls that arrive during an `fdatasync` form the next group, so the cost is one
//!   `fdatasync` per group, not per call. The queue is bounded in bytes: when it is full,
//!   appends wait for room.
//! * **Forget and compaction.** [`Journal::forget`] drops entries the store now holds from
//!   the live set. When the segment is large against the live set (or the live set is
//!   empty and the writer idle), the writer rotates: it writes the live set into a new
//!   segment, syncs it and the directory, and deletes the older segments. The journal's
//!   size therefore follows the entries not yet stored, not the number of calls.
//! * **Failure.** If a write or an `fdatasync` fails, the group's callers get the error
//!   (nothing was acknowledged), their entries leave the live set, and the next group
//!   starts a new segment: bytes after a failed write are never trusted again.
//! * **Replay.** [`Journal::open`] locks the directory, reads every segment up to its
//!   torn tail, rotates into a fresh segment holding the union, and returns it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            rotate_bytes: 4 << 20,
            max_queued_bytes: 8 << 20,
            idle: Duration::from_secs(1),
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
    bytes: AtomicU64,
    rotations: AtomicU64,
    failures: AtomicU64,
    segment_bytes: AtomicU64,
}

/// `namespace -> interface -> [(application, sequence of its record)]`: nested so that
/// lookups borrow `&str` and allocate nothing.
type Live = HashMap<String, HashMap<String, Vec<(String, u64)>>>;

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
    waiters: Vec<(u64, oneshot::Sender<Result<(), JournalError>>)>,
    closed: bool,
    /// The writer sleeps on `work`: only then does an append pay for a wake-up.
    writer_waiting: bool,
    /// Set when the last append was at a time the writer can compare with `idle`.
    last_append: Option<Instant>,
}

impl State {
    fn lookup(&self, ns: &str, iface: &str, app: &str) -> Option<u64> {
        self.live
            .get(ns)?
            .get(iface)?
            .iter()
            .find(|(a, _)| a == app)
            .map(|(_, s)| *s)
    }

    fn insert(&mut self, e: &Entry, seq: u64) {
        let apps = self
            .live
            .entry(e.namespace.clone())
            .or_default()
            .entry(e.interface.clone())
            .or_default();
        if let Some(slot) = apps.iter_mut().find(|(a, _)| *a == e.application) {
            slot.1 = slot.1.max(seq);
            return;
        }
        apps.push((e.application.clone(), seq));
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
        let Some(pos) = apps
            .iter()
            .position(|(a, s)| a == app && only_seq.is_none_or(|q| q == *s))
        else {
            return false;
        };
        apps.swap_remove(pos);
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
                for (app, _) in apps {
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

impl Shared {
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
            _lock: lock,
        };
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
            if st.writer_waiting {
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
                for (app, _) in apps {
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

struct Writer {
    dir: PathBuf,
    shared: Arc<Shared>,
    file: Option<File>,
    segment: u64,
    segment_bytes: u64,
    needs_rotation: bool,
    buf: Vec<u8>,
    _lock: DirLock,
}

impl Writer {
    fn run(mut self) {
        loop {
            let (bytes, records) = {
                let mut st = self.shared.lock();
                loop {
                    if !st.queue.is_empty() {
                        break;
                    }
                    if st.closed {
                        drop(st);
                        // A clean stop leaves only the live entries on disk, so the next
                        // start replays exactly what the store does not hold.
                        if self.segment_bytes > MAGIC_LEN {
                            if let Err(e) = self.rotate() {
                                tracing::warn!(error = %e, "journal: final compaction failed");
                            }
                        }
                        return;
                    }
                    let idle = st
                        .last_append
                        .is_none_or(|t| t.elapsed() >= self.shared.cfg.idle);
                    if idle && st.live_entries == 0 && self.segment_bytes > MAGIC_LEN {
                        break;
                    }
                    st.writer_waiting = true;
                    let (g, _) = self
                        .shared
                        .work
                        .wait_timeout(st, self.shared.cfg.idle)
                        .unwrap_or_else(|p| p.into_inner());
                    st = g;
                    st.writer_waiting = false;
                }
                std::mem::swap(&mut st.queue, &mut self.buf);
                (
                    std::mem::take(&mut self.buf),
                    std::mem::take(&mut st.queued),
                )
            };
            self.shared.room.notify_waiters();
            if records.is_empty() {
                // Idle with nothing live: empty the segment.
                if let Err(e) = self.rotate() {
                    tracing::warn!(error = %e, "journal: compaction failed");
                }
                continue;
            }
            let result = self.write_group(&bytes);
            self.finish(records, bytes, result);
        }
    }

    fn write_group(&mut self, bytes: &[u8]) -> Result<(), JournalError> {
        if self.needs_rotation || self.file.is_none() {
            self.rotate()?;
        }
        let path = self.path(self.segment);
        let file = self.file.as_mut().ok_or(JournalError::Closed)?;
        file.write_all(bytes).map_err(io_err(&path, "writing"))?;
        file.sync_data().map_err(io_err(&path, "syncing"))?;
        self.segment_bytes += bytes.len() as u64;
        Ok(())
    }

    fn finish(
        &mut self,
        records: Vec<(u64, Vec<Entry>)>,
        mut bytes: Vec<u8>,
        result: Result<(), JournalError>,
    ) {
        let c = &self.shared.counters;
        let first = records.first().map_or(0, |r| r.0);
        let last = records.last().map_or(0, |r| r.0);
        let rotate = {
            let mut st = self.shared.lock();
            match &result {
                Ok(()) => {
                    st.durable = last;
                    c.records.fetch_add(records.len() as u64, Ordering::Relaxed);
                    c.syncs.fetch_add(1, Ordering::Relaxed);
                    c.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    let done: Vec<_> = drain_where(&mut st.waiters, |(s, _)| *s <= last);
                    for (_, tx) in done {
                        let _ = tx.send(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, records = records.len(), "journal: write failed; those calls get an error and the next group starts a new segment");
                    c.failures.fetch_add(1, Ordering::Relaxed);
                    self.needs_rotation = true;
                    for (seq, entries) in &records {
                        for en in entries {
                            st.remove(&en.namespace, &en.interface, &en.application, Some(*seq));
                        }
                    }
                    // Later records are still queued and will be written after a rotation;
                    // callers that waited on this group's records fail.
                    st.durable = st.durable.max(last);
                    let done: Vec<_> =
                        drain_where(&mut st.waiters, |(s, _)| *s >= first && *s <= last);
                    for (_, tx) in done {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
            let cfg = &self.shared.cfg;
            self.segment_bytes >= cfg.rotate_bytes
                && self.segment_bytes >= 2 * st.live_bytes + MAGIC_LEN
        };
        c.segment_bytes.store(self.segment_bytes, Ordering::Relaxed);
        bytes.clear();
        self.buf = bytes;
        if rotate && result.is_ok() {
            if let Err(e) = self.rotate() {
                tracing::warn!(error = %e, "journal: compaction failed; retried with the next group");
                self.needs_rotation = true;
            }
        }
    }

    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(segment_name(n))
    }

    /// Starts a new segment holding the live set, then deletes the older ones.
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
        file.write_all(record::MAGIC)
            .and_then(|()| file.write_all(&snapshot))
            .and_then(|()| file.sync_all())
            .map_err(io_err(&path, "writing a segment"))?;
        sync_dir(&self.dir)?;
        self.file = Some(file);
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
