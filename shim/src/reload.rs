//! Credentials that are reloaded when their files change: the bearer token and the TLS
//! certificate, key and client CA. One mechanism for all of them ([`watch_files`]).
//!
//! The files are polled by content, not watched with inotify or by mtime: a Secret mounted
//! as a volume is updated by the kubelet swapping a symlink (`..data`), which neither an
//! event on the file nor its mtime reliably shows. The files are small, and one read per
//! file per period is cheap.
//!
//! A change that does not load (a half-written rotation, a key that does not match its
//! certificate, an empty token) keeps the credential in use, is logged as an error and
//! counted in `snp_credential_reloads_total{result="error"}`: a bad file must neither
//! crash the shim nor open the door. The next change is tried again.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::{Credential, Metrics};

/// How often watched files are read by default.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(1);

/// Reads each file; the first that cannot be read is the error.
pub fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, (PathBuf, std::io::Error)> {
    paths
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| (p.clone(), e)))
        .collect()
}

/// Watches `paths` every `period` until `shutdown`, and calls `reload` with the contents of
/// all of them (in order) whenever any changed from `initial` or from the last contents
/// seen. `reload` returns why the new contents were not taken; the old credential then
/// stays in use.
pub fn watch_files<E, F>(
    credential: Credential,
    paths: Vec<PathBuf>,
    initial: Vec<Vec<u8>>,
    period: Duration,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    mut reload: F,
) -> JoinHandle<()>
where
    E: std::fmt::Display,
    F: FnMut(&[Vec<u8>]) -> Result<(), E> + Send + 'static,
{
    // Both series exist from the start, at zero, for alerts on `result="error"`.
    metrics.credential_reloads(credential, true);
    metrics.credential_reloads(credential, false);
    tokio::spawn(async move {
        let mut seen = initial;
        // The last read failure logged, so that a missing file is not logged every period.
        let mut unreadable: Option<String> = None;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = crate::shutdown::signalled(&mut shutdown) => break,
            }
            let now = match read_all(&paths) {
                Ok(now) => {
                    unreadable = None;
                    now
                }
                Err((path, e)) => {
                    let why = format!("reading {}: {e}", path.display());
                    if unreadable.as_deref() != Some(why.as_str()) {
                        tracing::error!(
                            credential = credential.as_str(),
                            error = %why,
                            "cannot read a credential file; keeping the {} in use",
                            credential.describe()
                        );
                        metrics.credential_reload(credential, false);
                        unreadable = Some(why);
                    }
                    continue;
                }
            };
            if now == seen {
                continue;
            }
            match reload(&now) {
                Ok(()) => {
                    tracing::info!(
                        credential = credential.as_str(),
                        files = ?paths,
                        "{} reloaded",
                        credential.describe()
                    );
                    metrics.credential_reload(credential, true);
                }
                Err(e) => {
                    tracing::error!(
                        credential = credential.as_str(),
                        files = ?paths,
                        error = %e,
                        "changed credential files do not load; keeping the {} in use",
                        credential.describe()
                    );
                    metrics.credential_reload(credential, false);
                }
            }
            seen = now;
        }
        tracing::debug!(credential = credential.as_str(), "credential watch stopped");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test(start_paused = true)]
    async fn changes_are_reloaded_failures_kept_and_the_watch_stops_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "one").unwrap();
        let metrics = Metrics::unregistered();
        let (stop, shutdown) = watch::channel(false);
        let got = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&got);
        let task = watch_files(
            Credential::Token,
            vec![file.clone()],
            read_all(std::slice::from_ref(&file)).unwrap(),
            Duration::from_secs(1),
            metrics.clone(),
            shutdown,
            move |files: &[Vec<u8>]| {
                let text = String::from_utf8_lossy(&files[0]).into_owned();
                if text == "bad" {
                    return Err("refused".to_owned());
                }
                sink.lock().unwrap().push(text);
                Ok(())
            },
        );
        let step = || tokio::time::sleep(Duration::from_millis(1100));
        step().await;
        assert!(got.lock().unwrap().is_empty(), "unchanged: no reload");
        std::fs::write(&file, "two").unwrap();
        step().await;
        std::fs::write(&file, "bad").unwrap();
        step().await;
        step().await;
        std::fs::remove_file(&file).unwrap();
        step().await;
        step().await;
        std::fs::write(&file, "three").unwrap();
        step().await;
        assert_eq!(*got.lock().unwrap(), vec!["two", "three"]);
        assert_eq!(metrics.credential_reloads(Credential::Token, true), 2);
        // One for the refused content, one for the missing file (logged once).
        assert_eq!(metrics.credential_reloads(Credential::Token, false), 2);
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watch ends at shutdown")
            .unwrap();
    }
}
