//! An exclusive, advisory lock on a directory, held for the life of the process.
//!
//! Two processes writing one data directory would each believe it owns the files: the
//! second would rewrite or delete what the first wrote. [`DirLock::acquire`] takes an
//! `flock(LOCK_EX | LOCK_NB)` lock (std's `File::try_lock`) on a lock file inside the
//! directory and writes its own process id into it, so a second process gets an error that
//! names the directory and, where it can be read, the holder's pid.
//!
//! The lock belongs to the open file, not to the path: it goes away when the process
//! exits, however it exits (SIGKILL included), so a crash never leaves a stale lock behind.
//! Opening the same directory twice in one process also fails, which catches a
//! configuration that points two stores at one directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside a locked directory. A dot file without `.yaml`, so neither
/// `kubectl apply -R` nor the embedded store's loader reads it.
pub const LOCK_FILE: &str = ".snp.lock";

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (or another open of the same directory) holds the lock.
    #[error(
        "{dir} is in use by another process{holder}: only one snp-shim may use a data directory at a time (give each its own --data-dir)",
        dir = .dir.display(),
        holder = .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held {
        /// The directory.
        dir: PathBuf,
        /// The holder's process id, if its lock file says.
        pid: Option<u32>,
    },
    /// The directory or its lock file could not be created or opened.
    #[error("locking {path}: {source}", path = .path.display())]
    Io {
        /// What failed.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A held lock on a directory; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and locks it, or fails at once if another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid: read_pid(&mut file),
                })
            }
            Err(TryLockError::Error(source)) => return Err(LockError::Io { path, source }),
        }
        // Who holds it, for the error of the next process that tries. Not synced: after a
        // crash the pid is stale anyway, and the lock itself is what counts.
        file.set_len(0).map_err(io(&path))?;
        file.seek(SeekFrom::Start(0)).map_err(io(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            _file: file,
        })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_and_names_the_directory_and_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let held = DirLock::acquire(&dir).unwrap();
        assert_eq!(held.dir(), dir);
        let err = DirLock::acquire(&dir).unwrap_err();
        match &err {
            LockError::Held { dir: d, pid } => {
                assert_eq!(d, &dir);
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&dir.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(held);
        DirLock::acquire(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_place_is_an_io_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let err = DirLock::acquire(&file.join("sub")).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
    }
}
