//! Signals: the first SIGTERM or SIGINT starts a graceful stop; a second one exits at once,
//! for an operator who does not want to wait for the drain, and so does a drain that takes
//! longer than `node.stop_timeout`.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit code when the drain was cut short (a second signal or the deadline): not 0, so that
/// systemd and scripts see that calls in progress may not have been saved.
const EXIT_CUT_SHORT: i32 = 130;

/// Cancels `token` on the first signal and exits the process on the second, or when the
/// drain has not ended `stop_timeout` after the first.
pub fn watch(token: CancellationToken, stop_timeout: Duration) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
        }
        crate::notify::stopping();
        token.cancel();
        tokio::select! {
            _ = term.recv() => {
                tracing::warn!("second signal: exiting without waiting for the drain");
            }
            _ = int.recv() => {
                tracing::warn!("second signal: exiting without waiting for the drain");
            }
            () = tokio::time::sleep(stop_timeout) => {
                tracing::error!(
                    stop_timeout = %humantime::format_duration(stop_timeout),
                    "the drain did not finish within node.stop_timeout: exiting anyway"
                );
            }
        }
        crate::logwriter::flush();
        std::process::exit(EXIT_CUT_SHORT);
    });
    Ok(())
}
