//! One shutdown signal for every server: a `watch` flag that turns true once.
//!
//! The runtime owns the sender; each listener, the admin server and the control loops hold a
//! receiver and stop accepting when it flips. A listener removed by a reload gets its own flag.
use tokio::sync::watch;

/// Resolves once the flag turns true (or its sender is gone).
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
