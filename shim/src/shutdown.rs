//! The shutdown flag every long-running part watches.

use tokio::sync::watch;

/// Resolves once `flag` is `true` (or its sender is gone). Holds no borrow of the value
/// across the await, so the future stays `Send`.
pub async fn signalled(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}
