//! Process signals: SIGTERM / SIGINT start a shutdown (both servers drain
//! or stop on either).

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT (Ctrl-C).
pub fn cancel_on_shutdown_signal(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_shutdown_signal().await;
        token.cancel();
    });
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
