//! snp-journal: the local journal that makes an immediate OK mean "on disk".
//!
//! In immediate mode the shim answers a registration before the store holds it. Without
//! a journal, a crash (SIGKILL, OOM kill, node reboot) loses every mapping it had answered
//! and not yet written, and grpc-java never registers again. With it, the shim answers only
//! once the mapping is in an `fdatasync`ed journal record, replays the journal at start,
//! and forgets entries once the store holds them.
//!
//! * [`Journal`]: append (group commit), forget, compaction, replay.
//! * [`DirLock`]: the exclusive lock every data directory takes (also used by the
//!   embedded store), so two processes never share one.
//! * [`record`]: the checksummed on-disk format and its torn-tail handling.
//!
//! Why not a WAL crate: the well-known Rust WALs (okaywal, the logs inside sled or
//! other databases) checkpoint whole segments, once the application says everything in a
//! segment is applied. Here an entry is done when the store holds it, in any order and
//! possibly never (a key waiting out an outage), so a segment is never wholly done; what
//! is needed is a live set rewritten on rotation. okaywal also still calls itself early in
//! development with an unstable format. The format here is small (a length, a CRC-32 and
//! three strings per entry), so it is written out, and the well-kept pieces are crates:
//! `crc32fast` for the checksum, std's `File::try_lock` (flock) for the lock.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod journal;
pub mod lock;
pub mod record;

pub use journal::{
    Appended, Journal, JournalConfig, JournalError, Orphan, Replay, Stats, TornTail,
};
pub use lock::{DirLock, LockError, LOCK_FILE};

/// One journaled registration: `application` provides `interface` in `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    /// Namespace.
    pub namespace: String,
    /// Interface name.
    pub interface: String,
    /// Application name.
    pub application: String,
}

impl Entry {
    /// An entry.
    pub fn new(namespace: &str, interface: &str, application: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            interface: interface.to_owned(),
            application: application.to_owned(),
        }
    }

    /// Whether it is `(namespace, interface, application)`.
    pub fn is(&self, namespace: &str, interface: &str, application: &str) -> bool {
        self.namespace == namespace
            && self.interface == interface
            && self.application == application
    }

    /// As borrowed fields.
    pub fn fields(&self) -> (&str, &str, &str) {
        (&self.namespace, &self.interface, &self.application)
    }
}
